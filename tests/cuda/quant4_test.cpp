// CUDA quantize_4bit / double quant / dequantize_4bit against the CPU reference: bit for bit, for NF4 and
// FP4, every blocksize, float32/float16/bfloat16 input, odd lengths (a padded last block), an all-zero block
// and NaN / inf / subnormal inputs. Reported skipped without a CUDA device.
#include "kernels/cuda/quant4.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "cuda_test_util.h"
#include "nibble/error.h"
#include "nibble/quantize.h"

namespace nibble {
namespace {

using kernels::cuda::DeviceBuffer;
using testing::DeviceQ4;
using testing::same_bytes;

// n values (float32), block 1 all zeros, a few specials in block 2, the rest Student-t (heavy tails: some
// blocks have one large value, as real weights do), then rounded to dt.
Tensor make_input(int64_t n, int64_t bs, DType dt, unsigned seed, bool specials) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> sd(3.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = 0.05f * sd(rng);
  for (int64_t i = bs; i < std::min(2 * bs, n); ++i) v[static_cast<size_t>(i)] = 0.0f;
  if (specials && n > 2 * bs + 8) {
    const size_t b = static_cast<size_t>(2 * bs);
    v[b] = std::numeric_limits<float>::quiet_NaN();
    v[b + 1] = -0.0f;
    v[b + 2] = 1e-40f;  // float32 subnormal
    v[b + 3] = 3e-6f;   // float16 subnormal
  }
  Tensor f = Tensor::from_vector(DType::Float32, {n}, v);
  return dt == DType::Float32 ? f : f.to(dt);
}

const DType kDtypes[] = {DType::Float32, DType::Float16, DType::BFloat16};

TEST(CudaQuant4, QuantizeIsBitExactForEveryBlocksizeTypeAndDtype) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  for (int64_t bs = 32; bs <= 4096; bs *= 2)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (DType dt : kDtypes) {
        const int64_t n = 3 * bs + 17;  // odd: the last block is partial and its last byte padded
        SCOPED_TRACE("bs=" + std::to_string(bs) + " " + std::string(quant_type_name(qt)) + " " +
                     std::string(dtype_name(dt)));
        const Tensor a = make_input(n, bs, dt, static_cast<unsigned>(bs + n), true);
        const Quantized4bit ref = quantize_4bit(a, bs, qt, false);
        const int64_t nb = ref.state.num_blocks();
        DeviceBuffer src = testing::upload(a), absmax(static_cast<size_t>(nb) * 4),
                     packed(ref.packed.nbytes());
        kernels::cuda::quantize_4bit(src.data(), dt, n, bs, qt, absmax.as<float>(), packed.as<uint8_t>());
        const auto am = absmax.to_host<float>();
        const auto pk = packed.to_host<uint8_t>();
        EXPECT_TRUE(same_bytes(am.data(), ref.state.absmax.raw(), am.size() * 4, 4)) << "absmax";
        EXPECT_TRUE(same_bytes(pk.data(), ref.packed.raw(), pk.size(), 1)) << "packed";
        EXPECT_EQ(am[1], 0.0f);  // the all-zero block
      }
}

TEST(CudaQuant4, InfinitiesAndAllNaNBlocksMatchTheReference) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  const int64_t bs = 64, n = 4 * bs;
  std::vector<float> v(static_cast<size_t>(n), 0.25f);
  v[3] = std::numeric_limits<float>::infinity();  // block 0: absmax inf, inv 0, inf * 0 = NaN
  v[70] = -std::numeric_limits<float>::infinity();
  for (int64_t i = 2 * bs; i < 3 * bs; ++i)
    v[static_cast<size_t>(i)] = std::numeric_limits<float>::quiet_NaN();
  const Tensor a = Tensor::from_vector(DType::Float32, {n}, v);
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const Quantized4bit ref = quantize_4bit(a, bs, qt, false);
    DeviceBuffer src = testing::upload(a), absmax(4 * 4), packed(static_cast<size_t>(n / 2));
    kernels::cuda::quantize_4bit(src.data(), DType::Float32, n, bs, qt, absmax.as<float>(),
                                 packed.as<uint8_t>());
    const auto am = absmax.to_host<float>();
    const auto pk = packed.to_host<uint8_t>();
    EXPECT_TRUE(same_bytes(am.data(), ref.state.absmax.raw(), am.size() * 4, 4));
    EXPECT_TRUE(same_bytes(pk.data(), ref.packed.raw(), pk.size(), 1));
  }
}

// compress_statistics: offset, 8-bit codes and the nested absmax as quant/quantize_4bit.cpp makes them. Sizes
// give a partial last nested block and, at 1024x4096 / 64, 65536 absmax values (256 nested blocks).
TEST(CudaQuant4, DoubleQuantIsBitExact) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  const std::vector<float> dyn = create_dynamic_map();
  DeviceBuffer code = DeviceBuffer::from_host(dyn);
  struct Case {
    int64_t n, bs;
  };
  for (const Case c : {Case{1000, 64}, Case{64 * 300 + 5, 64}, Case{1024 * 4096, 64}, Case{4096 * 37, 4096},
                       Case{32 * 1000, 32}}) {
    SCOPED_TRACE("n=" + std::to_string(c.n) + " bs=" + std::to_string(c.bs));
    const Tensor a = make_input(c.n, c.bs, DType::BFloat16, static_cast<unsigned>(c.n), false);
    const Quantized4bit ref = quantize_4bit(a, c.bs, QuantType::NF4, true);
    const Quantized4bit plain = quantize_4bit(a, c.bs, QuantType::NF4, false);
    const int64_t nb = ref.state.num_blocks(), nb2 = (nb + 255) / 256;
    DeviceBuffer absmax = testing::upload(plain.state.absmax), q(static_cast<size_t>(nb)),
                 a2(static_cast<size_t>(nb2) * 4);
    const float offset = kernels::cuda::quantize_nested_absmax(absmax.as<float>(), nb, code.as<float>(), 256,
                                                               q.as<uint8_t>(), a2.as<float>());
    EXPECT_EQ(std::bit_cast<uint32_t>(offset), std::bit_cast<uint32_t>(ref.state.offset));
    const auto qh = q.to_host<uint8_t>();
    const auto a2h = a2.to_host<float>();
    EXPECT_TRUE(same_bytes(qh.data(), ref.state.absmax.raw(), qh.size(), 1)) << "absmax codes";
    EXPECT_TRUE(same_bytes(a2h.data(), ref.state.nested_absmax.raw(), a2h.size() * 4, 4)) << "nested absmax";
  }
}

TEST(CudaQuant4, DequantizeIsBitExactPlainAndNested) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  for (int64_t bs : {32, 64, 256, 4096})
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (bool nested : {false, true}) {
        const int64_t n = 5 * bs + 9;
        SCOPED_TRACE("bs=" + std::to_string(bs) + " " + std::string(quant_type_name(qt)) +
                     (nested ? " dq" : ""));
        const Tensor a = make_input(n, bs, DType::Float32, static_cast<unsigned>(3 * bs), true);
        const Quantized4bit q = quantize_4bit(a, bs, qt, nested);
        DeviceQ4 d(q.packed, q.state);
        for (DType out : kDtypes) {
          SCOPED_TRACE(std::string(dtype_name(out)));
          const Tensor ref = dequantize_4bit(q.packed, q.state, out);
          DeviceBuffer o(ref.nbytes());
          kernels::cuda::dequantize_4bit(d.w, n, out, o.data());
          const auto got = o.to_host<uint8_t>();
          EXPECT_TRUE(same_bytes(got.data(), ref.raw(), got.size(), dtype_size(out)));
        }
      }
}

TEST(CudaQuant4, RejectsBadArguments) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  DeviceBuffer buf(1024);
  EXPECT_THROW(kernels::cuda::quantize_4bit(buf.data(), DType::Float32, 64, 48, QuantType::NF4,
                                            buf.as<float>(), buf.as<uint8_t>()),
               ValueError);
  EXPECT_THROW(kernels::cuda::quantize_4bit(buf.data(), DType::Int8, 64, 64, QuantType::NF4, buf.as<float>(),
                                            buf.as<uint8_t>()),
               ValueError);
  kernels::Q4Weights w;  // no absmax
  w.packed = buf.as<uint8_t>();
  w.code = buf.as<float>();
  EXPECT_THROW(kernels::cuda::dequantize_4bit(w, 64, DType::Float32, buf.data()), ValueError);
  EXPECT_THROW(buf.upload(&w, 2048), ValueError);
}

}  // namespace
}  // namespace nibble
