// LLM.int8 kernels: the AVX2 matmul gives the reference's bits (exact int32 sums, the same dequantization
// expression), for every int8 weight including -128 and for row lengths with a tail; row and activation
// quantization follow bitsandbytes' rules (checked against bitsandbytes' own output in
// tests/models/int8_golden_test.cpp; here the rules that need no golden: outlier columns, zero rows, ranges).
#include "kernels/cpu/int8_mm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "nibble/dtype.h"

using namespace nibble;
using namespace nibble::kernels;

namespace {
std::vector<float> random_x(int64_t M, int64_t K, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = nd(rng);
  return x;
}
}  // namespace

TEST(Int8Mm, Avx2MatchesReferenceBitForBit) {
  if (int8_mm_auto_path() != GemmPath::Avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  // N, K: one 32-byte step, several, a tail (K % 32 != 0), K < 32, more rows than one L2 tile
  for (auto [N, K] :
       std::vector<std::pair<int64_t, int64_t>>{{7, 32}, {33, 96}, {16, 100}, {5, 7}, {300, 4096}}) {
    std::mt19937 rng(static_cast<unsigned>(N * K));
    std::uniform_int_distribution<int> wd(-128, 127);  // every int8, -128 included
    std::vector<int8_t> cb(static_cast<size_t>(N * K));
    for (auto& v : cb) v = static_cast<int8_t>(wd(rng));
    for (int64_t i = 0; i < std::min<int64_t>(K, 64); ++i)
      cb[static_cast<size_t>(i)] = -128;  // row 0: all -128
    std::vector<float> scb(static_cast<size_t>(N));
    for (auto& v : scb) v = std::uniform_real_distribution<float>(0.01f, 2.0f)(rng);
    const I8Weights w{cb.data(), scb.data(), N, K};
    for (int64_t M : {1, 2, 3, 4, 5, 9}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
      const auto x = random_x(M, K, static_cast<unsigned>(M + K));
      std::vector<int8_t> a(static_cast<size_t>(M * K));
      std::vector<float> rs(static_cast<size_t>(M));
      std::vector<int32_t> cols;
      int8_quantize_activations(x.data(), M, K, 0.0f, a.data(), rs.data(), cols);
      for (int64_t i = 0; i < std::min<int64_t>(K, 16); ++i) a[static_cast<size_t>(i)] = -127;  // -128 * -127
      std::vector<float> yr(static_cast<size_t>(M * N)), ya(yr.size());
      int8_mm_dequant(w, a.data(), rs.data(), M, yr.data(), {}, GemmPath::Reference);
      int8_mm_dequant(w, a.data(), rs.data(), M, ya.data(), {}, GemmPath::Avx2);
      EXPECT_EQ(0, std::memcmp(yr.data(), ya.data(), yr.size() * sizeof(float)));
      // the reference is the exact integer dot product, dequantized as bitsandbytes does
      for (int64_t m = 0; m < M; m += 4) {
        int64_t dot = 0;
        for (int64_t k = 0; k < K; ++k)
          dot += int64_t{a[static_cast<size_t>(m * K + k)]} * cb[static_cast<size_t>(k)];
        EXPECT_EQ(yr[static_cast<size_t>(m * N)],
                  static_cast<float>(dot) * (rs[static_cast<size_t>(m)] * scb[0]) * 6.200124e-05f);
      }
    }
  }
}

TEST(Int8Mm, RowQuantizationRoundsHalfToEvenAndZeroRowIsZero) {
  // absmax 127 -> scale exactly 1: the values themselves are rounded, half to even
  const std::vector<float> v{127.0f, 2.5f, -2.5f, 3.5f, 0.5f, -0.49f, 1.5f, -127.0f};
  std::vector<int8_t> q(v.size());
  EXPECT_EQ(127.0f, int8_quantize_row(v.data(), static_cast<int64_t>(v.size()), q.data()));
  EXPECT_EQ((std::vector<int8_t>{127, 2, -2, 4, 0, 0, 2, -127}), q);
  const std::vector<float> z(5, 0.0f);
  std::vector<int8_t> qz(5, 9);
  EXPECT_EQ(0.0f, int8_quantize_row(z.data(), 5, qz.data()));
  EXPECT_EQ(std::vector<int8_t>(5, 0), qz);
}

TEST(Int8Mm, ActivationOutliersAreDecidedOverTheWholeCall) {
  const int64_t M = 3, K = 6;
  // column 1 has an outlier in row 0 only, column 4 in row 2 only; row 1 is all zero
  std::vector<float> x{1.0f, 7.0f, -2.0f, 0.5f, 3.0f,  1.0f,  //
                       0.0f, 0.0f, 0.0f,  0.0f, 0.0f,  0.0f,  //
                       2.0f, 1.0f, 0.25f, 1.0f, -6.0f, 4.0f};
  std::vector<int8_t> q(static_cast<size_t>(M * K));
  std::vector<float> rs(M);
  std::vector<int32_t> cols;
  int8_quantize_activations(x.data(), M, K, 6.0f, q.data(), rs.data(), cols);
  EXPECT_EQ((std::vector<int32_t>{1, 4}), cols);  // |x| >= threshold, any row
  EXPECT_EQ(3.0f, rs[0]);  // the outlier 7 is zeroed before the absmax; the rest of column 4 still counts
  EXPECT_EQ(0.0f, rs[1]);
  EXPECT_EQ(4.0f, rs[2]);
  for (int64_t m = 0; m < M; ++m) {  // every element of an outlier column is zero when M > 1
    EXPECT_EQ(0, q[static_cast<size_t>(m * K + 1)]);
    EXPECT_EQ(0, q[static_cast<size_t>(m * K + 4)]);
  }
  EXPECT_EQ(std::round(-2.0f * (127.0f / 3.0f)), q[2]);
  for (int64_t k = 0; k < K; ++k) EXPECT_EQ(0, q[static_cast<size_t>(K + k)]);  // all-zero row: 0, not NaN
  // one row: only the outlier elements are dropped (a column is an element); threshold 0: none
  int8_quantize_activations(x.data() + 2 * K, 1, K, 6.0f, q.data(), rs.data(), cols);
  EXPECT_EQ((std::vector<int32_t>{4}), cols);
  EXPECT_EQ(4.0f, rs[0]);
  int8_quantize_activations(x.data(), M, K, 0.0f, q.data(), rs.data(), cols);
  EXPECT_TRUE(cols.empty());
  EXPECT_EQ(7.0f, rs[0]);
  EXPECT_EQ(127, q[1]);
}

TEST(Int8Mm, ActivationsAreRoundedToFloat16First) {
  // 1 + 2^-12 is 1 in float16: it cannot be the row's absmax, and a value just under the threshold that
  // rounds up to it in float16 is an outlier
  const float tiny_over = 1.0f + 0x1p-12f, near6 = 6.0f - 0x1p-12f;
  std::vector<float> x{tiny_over, 0.5f, near6, 1.0f};
  std::vector<int8_t> q(4);
  std::vector<float> rs(1);
  std::vector<int32_t> cols;
  int8_quantize_activations(x.data(), 1, 4, 6.0f, q.data(), rs.data(), cols);
  EXPECT_EQ((std::vector<int32_t>{2}), cols);
  EXPECT_EQ(1.0f, rs[0]);
  EXPECT_EQ((std::vector<int8_t>{127, 64, 0, 127}), q);  // 0.5 * 127 = 63.5 -> 64 (half to even)
}

TEST(Int8Mm, Avx2EpilogueMatchesReference) {
  if (int8_mm_auto_path() != GemmPath::Avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  const int64_t N = 70, K = 200;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> wd(-127, 127);
  std::vector<int8_t> cb(static_cast<size_t>(N * K));
  for (auto& v : cb) v = static_cast<int8_t>(wd(rng));
  std::vector<float> scb(static_cast<size_t>(N)), bias(static_cast<size_t>(N));
  for (auto& v : scb) v = std::uniform_real_distribution<float>(0.01f, 2.0f)(rng);
  for (auto& v : bias) v = bf16_to_float(float_to_bf16(std::normal_distribution<float>()(rng)));
  for (DType dt : {DType::Float32, DType::BFloat16, DType::Float16})
    for (int64_t M : {1, 3, 6})
      for (int64_t C : {0, 1, 13, 40}) {  // 13 and 40: 8-column steps and a tail
        SCOPED_TRACE(std::string(dtype_name(dt)) + " M=" + std::to_string(M) + " C=" + std::to_string(C));
        const auto x = random_x(M, K, static_cast<unsigned>(M * 100 + C));
        std::vector<int8_t> a(static_cast<size_t>(M * K));
        std::vector<float> rs(static_cast<size_t>(M));
        std::vector<int32_t> none;
        int8_quantize_activations(x.data(), M, K, 0.0f, a.data(), rs.data(), none);
        std::vector<int32_t> cols;
        for (int64_t c = 0; c < C; ++c)
          cols.push_back(static_cast<int32_t>(c * (K / std::max<int64_t>(C, 1))));
        std::vector<float> xo(static_cast<size_t>(M * C));
        for (auto& v : xo) v = 8.0f * std::normal_distribution<float>()(rng);
        const Int8Epilogue e{.dtype = dt, .bias = bias.data(), .cols = cols.data(), .C = C, .xo = xo.data()};
        std::vector<float> yr(static_cast<size_t>(M * N)), ya(yr.size());
        int8_mm_dequant({cb.data(), scb.data(), N, K}, a.data(), rs.data(), M, yr.data(), e,
                        GemmPath::Reference);
        int8_mm_dequant({cb.data(), scb.data(), N, K}, a.data(), rs.data(), M, ya.data(), e, GemmPath::Avx2);
        if (C == 0) {
          EXPECT_EQ(0, std::memcmp(yr.data(), ya.data(), yr.size() * sizeof(float)));
          continue;
        }
        // the outlier sums differ in order only: 1e-6 of their magnitude, then one step of the model dtype
        const float step = dt == DType::Float32 ? 0.0f : dt == DType::BFloat16 ? 0x1p-7f : 0x1p-10f;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            float mag = 0;
            for (int64_t c = 0; c < C; ++c)
              mag += std::fabs(
                  xo[static_cast<size_t>(m * C + c)] *
                  static_cast<float>(cb[static_cast<size_t>(n * K + cols[static_cast<size_t>(c)])]) *
                  scb[static_cast<size_t>(n)] / 127.0f);
            const float r = yr[static_cast<size_t>(m * N + n)];
            EXPECT_NEAR(r, ya[static_cast<size_t>(m * N + n)], 1e-6f * mag + step * (std::fabs(r) + mag))
                << "m=" << m << " n=" << n;
          }
      }
}
