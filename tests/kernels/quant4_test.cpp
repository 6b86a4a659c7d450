// Every SIMD target this CPU runs, bit-exact against the scalar reference, for 4-bit quantize and dequantize.
#include "kernels/cpu/quant4.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/cpu/reference.h"
#include "nibble/quant_type.h"
#include "nibble/tensor.h"

using namespace nibble;

namespace {

std::vector<float> test_values(int64_t n, int seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  // specials sprinkled in: zeros of both signs, exact table values, denormals, a large outlier
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 1e30f, 0.5f, -1.0f, 0.03979014977812767f};
  for (size_t i = 0; i < v.size(); i += 37) v[i] = specials[(i / 37) % 8];
  return v;
}

struct Forced {
  explicit Forced(int t) { kernels::force_target(t); }
  ~Forced() { kernels::force_target(-1); }
};

}  // namespace

TEST(Quant4Kernels, TargetsListed) {
  const auto t = kernels::available_targets();
  ASSERT_FALSE(t.empty());
  std::string all;
  for (const auto& s : t) all += s + " ";
  RecordProperty("targets", all);
}

TEST(Quant4Kernels, SimdMatchesReferenceBitExact) {
  const auto targets = kernels::available_targets();
  for (int ti = 0; ti < static_cast<int>(targets.size()); ++ti) {
    Forced f(ti);
    for (int64_t bs : {32, 64, 128, 256, 4096}) {
      for (int64_t n : {bs * 3, bs * 5 + 1, bs * 2 + 33, int64_t{7}}) {
        for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
          for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
            SCOPED_TRACE(targets[static_cast<size_t>(ti)] + " bs=" + std::to_string(bs) +
                         " n=" + std::to_string(n) + " " + std::string(dtype_name(dt)) + " " +
                         std::string(quant_type_name(qt)));
            std::vector<float> v = test_values(n, static_cast<int>(bs + n));
            if (n > bs) std::fill(v.begin() + bs, v.begin() + 2 * bs, 0.0f);  // an all-zero block
            const Tensor src = Tensor::from_vector(DType::Float32, {n}, v).to(dt);
            const int64_t nb = (n + bs - 1) / bs;
            std::vector<float> am_ref(static_cast<size_t>(nb)), am(static_cast<size_t>(nb));
            std::vector<uint8_t> p_ref(static_cast<size_t>((n + 1) / 2)), p(p_ref.size());
            kernels::ref::quantize_4bit(src.raw(), dt, n, bs, qt, am_ref.data(), p_ref.data(), 0, nb);
            kernels::quantize_4bit(src.raw(), dt, n, bs, qt, am.data(), p.data());
            ASSERT_EQ(0, std::memcmp(am.data(), am_ref.data(), am.size() * 4));
            ASSERT_EQ(p, p_ref);
            const auto& code = code_table(qt);
            for (DType out : {DType::Float32, DType::Float16, DType::BFloat16}) {
              Tensor r = Tensor::empty(out, {n}), s = Tensor::empty(out, {n});
              kernels::ref::dequantize_4bit(p.data(), am.data(), bs, code.data(), out, r.mutable_raw(), 0, n);
              kernels::dequantize_4bit(p.data(), am.data(), n, bs, code.data(), out, s.mutable_raw());
              ASSERT_EQ(0, std::memcmp(r.raw(), s.raw(), r.nbytes())) << dtype_name(out);
            }
          }
        }
      }
    }
  }
}

TEST(Quant4Kernels, ReferenceFollowsCudaRules) {
  using kernels::ref::quantize_fp4;
  using kernels::ref::quantize_nf4;
  // NF4: strict `>` against midpoints, ties to the lower code
  EXPECT_EQ(quantize_nf4(0.03979014977812767f), 7);
  EXPECT_EQ(quantize_nf4(std::nextafter(0.03979014977812767f, 1.0f)), 8);
  EXPECT_EQ(quantize_nf4(-1.0f), 0);
  EXPECT_EQ(quantize_nf4(1.0f), 15);
  EXPECT_EQ(quantize_nf4(0.0f), 7);
  EXPECT_EQ(quantize_nf4(-0.0f), 7);
  EXPECT_EQ(quantize_nf4(NAN), 0);  // 0 * inf of an all-zero block
  // FP4
  EXPECT_EQ(quantize_fp4(1.0f), 0b0011);
  EXPECT_EQ(quantize_fp4(-1.0f), 0b1011);
  EXPECT_EQ(quantize_fp4(-0.0f), 0);
  EXPECT_EQ(quantize_fp4(0.00260417f), 0);
  EXPECT_EQ(quantize_fp4(0.0026042f), 1);
  EXPECT_EQ(quantize_fp4(0.3f), 0b0100);
  EXPECT_EQ(quantize_fp4(NAN), 0);
  // every NF4 code decodes to its own table value and back
  for (int c = 0; c < 16; ++c) EXPECT_EQ(quantize_nf4(nf4_code()[static_cast<size_t>(c)]), c);
  for (int c = 0; c < 16; ++c) {
    if (c == 8) continue;  // +0 decodes to code 0
    EXPECT_EQ(quantize_fp4(fp4_code()[static_cast<size_t>(c)]), c) << c;
  }
}

TEST(Quant4Kernels, Fp4CodeTable) {
  const auto& t = fp4_code();
  EXPECT_FLOAT_EQ(t[1], 0.0052083335f);
  EXPECT_FLOAT_EQ(t[2], 0.6666667f);
  EXPECT_EQ(t[3], 1.0f);
  EXPECT_EQ(t[8], 0.0f);
  EXPECT_FALSE(std::signbit(t[8]));  // bnb saves +0 (Python integer -0)
  EXPECT_FLOAT_EQ(t[11], -1.0f);
}
