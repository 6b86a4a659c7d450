// CUDA gemv_4bit against the CPU reference (kernels::ref::gemm_4bit: bitsandbytes' dequantize-then-matmul in
// the compute dtype). Tolerance per output: 2e-5 * sum_k |x_k w_k| for the order of the float32 sums (and,
// with float32 compute, the absmax applied per 32-weight partial sum), plus one step of the compute dtype at
// the output (the same pre-rounding value can land on either side of a rounding tie). The weights themselves
// are rounded exactly as the reference rounds them. Reported skipped without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "cuda_test_util.h"
#include "kernels/cuda/quant4.h"
#include "nibble/quantize.h"

namespace nibble {
namespace {

using kernels::cuda::DeviceBuffer;

struct Shape {
  int64_t N, K, bs;
  QuantType qt;
  bool dq;
};

// Llama-7B/8B linears scaled in N for test time (K kept: it sets the row length the kernel walks), blocksize
// 4096 (one block per row), FP4, K = 101 (odd: rows start mid-byte, the scalar kernel) and 100 (even, not a
// multiple of 32: also scalar).
const Shape kShapes[] = {
    {4096, 4096, 64, QuantType::NF4, true},  {1376, 4096, 64, QuantType::NF4, true},
    {512, 11008, 64, QuantType::NF4, true},  {64, 14336, 64, QuantType::NF4, false},
    {37, 4096, 4096, QuantType::NF4, false}, {130, 512, 128, QuantType::FP4, true},
    {3, 2048, 32, QuantType::FP4, false},    {37, 101, 32, QuantType::NF4, true},
    {9, 100, 64, QuantType::FP4, false},
};

// x in the compute dtype as stored on the device, and the same values as float32 for the reference
struct Input {
  std::vector<uint8_t> bytes;
  std::vector<float> f;
};

Input make_x(int64_t K, DType cd, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(static_cast<size_t>(K));
  for (auto& e : v) e = nd(rng);
  const Tensor t = Tensor::from_vector(DType::Float32, {K}, v).to(cd);
  Input in;
  in.bytes.assign(t.raw(), t.raw() + t.nbytes());
  const Tensor back = t.to(DType::Float32);
  in.f.assign(back.data<float>(), back.data<float>() + K);
  return in;
}

float widen(const std::vector<uint8_t>& y, DType cd, size_t i) {
  if (cd == DType::Float32) return reinterpret_cast<const float*>(y.data())[i];
  const uint16_t h = reinterpret_cast<const uint16_t*>(y.data())[i];
  return cd == DType::BFloat16 ? bf16_to_float(h) : fp16_to_float(h);
}

double output_step(DType cd, float y) {
  if (cd == DType::BFloat16) return std::ldexp(std::fabs(y), -7) + 1e-38;
  if (cd == DType::Float16) return std::ldexp(std::fabs(y), -10) + std::ldexp(1.0, -24);
  return 0;
}

TEST(CudaGemv4, MatchesTheReferenceForEveryComputeDtype) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  for (const Shape& s : kShapes) {
    std::mt19937 rng(static_cast<unsigned>(s.N * 31 + s.K));
    std::student_t_distribution<float> sd(4.0f);
    std::vector<float> wv(static_cast<size_t>(s.N * s.K));
    for (auto& e : wv) e = 0.02f * sd(rng);
    const Quantized4bit q =
        quantize_4bit(Tensor::from_vector(DType::Float32, {s.N, s.K}, wv), s.bs, s.qt, s.dq);
    testing::DeviceQ4 d(q.packed, q.state);
    const bool vec = s.K % 32 == 0;
    EXPECT_EQ(kernels::cuda::gemv_vectorized(d.w), vec);
    // the host view for the reference, and the dequantized weights for the magnitude of each sum
    kernels::Q4Weights h = d.w;
    h.packed = q.packed.data<uint8_t>();
    h.code = q.state.code.data<float>();
    if (s.dq) {
      h.absmax_q = q.state.absmax.data<uint8_t>();
      h.code2 = q.state.nested_code.data<float>();
      h.absmax2 = q.state.nested_absmax.data<float>();
    } else {
      h.absmax = q.state.absmax.data<float>();
    }
    const Tensor deq = dequantize_4bit(q.packed, q.state, DType::Float32);
    for (DType cd : {DType::Float32, DType::BFloat16, DType::Float16}) {
      SCOPED_TRACE("N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " bs=" + std::to_string(s.bs) +
                   " " + std::string(quant_type_name(s.qt)) + (s.dq ? " dq " : " ") +
                   std::string(dtype_name(cd)) + (vec ? " vectorized" : " scalar"));
      const Input x = make_x(s.K, cd, static_cast<unsigned>(s.K));
      std::vector<float> yr(static_cast<size_t>(s.N));
      kernels::ref::gemm_4bit(h, x.f.data(), 1, yr.data(), cd, 0, s.N);
      DeviceBuffer dx = DeviceBuffer::from_host(x.bytes), dy(static_cast<size_t>(s.N) * dtype_size(cd));
      kernels::cuda::gemv_4bit(d.w, dx.data(), dy.data(), cd);
      const auto y = dy.to_host<uint8_t>();
      int bad = 0;
      double worst = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        double mag = 0;
        const float* wr = deq.data<float>() + n * s.K;
        for (int64_t k = 0; k < s.K; ++k)
          mag += std::fabs(static_cast<double>(x.f[static_cast<size_t>(k)]) * wr[k]);
        const float got = widen(y, cd, static_cast<size_t>(n)), want = yr[static_cast<size_t>(n)];
        const double err = std::fabs(static_cast<double>(got) - want);
        const double tol = 2e-5 * mag + output_step(cd, want);
        worst = std::max(worst, err / tol);
        if (!(err <= tol) && bad++ < 5)
          ADD_FAILURE() << "row " << n << ": " << got << " vs " << want << " (tol " << tol << ")";
      }
      EXPECT_EQ(bad, 0) << "worst error / tolerance " << worst;
    }
  }
}

TEST(CudaGemv4, MisalignedXTakesTheScalarKernelAndStillMatches) {
  NIBBLE_SKIP_WITHOUT_CUDA();
  const int64_t N = 64, K = 256;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> wv(static_cast<size_t>(N * K));
  for (auto& e : wv) e = 0.02f * nd(rng);
  const Quantized4bit q =
      quantize_4bit(Tensor::from_vector(DType::Float32, {N, K}, wv), 64, QuantType::NF4, false);
  testing::DeviceQ4 d(q.packed, q.state);
  const Input x = make_x(K, DType::Float32, 3);
  DeviceBuffer dx(x.bytes.size() + 4), y0(N * 4), y1(N * 4);
  dx.upload(x.bytes.data(), x.bytes.size());
  dx.upload(x.bytes.data(), x.bytes.size(), 4);
  kernels::cuda::gemv_4bit(d.w, dx.data(), y0.data(), DType::Float32);
  kernels::cuda::gemv_4bit(d.w, static_cast<char*>(dx.data()) + 4, y1.data(), DType::Float32);
  const auto a = y0.to_host<float>(), b = y1.to_host<float>();
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(a[n], b[n], 1e-4f * (1 + std::fabs(a[n]))) << n;
}

}  // namespace
}  // namespace nibble
