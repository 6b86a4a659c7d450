// gemm_kn (training's many-row products) against a double-precision product, on ragged shapes that cross its
// 6-row, 16-column and 256-deep blocks, with and without accumulation; the AVX2 path must be the one taken
// where the CPU has it.
#include "kernels/cpu/gemm_kn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

namespace nibble {
namespace {

TEST(GemmKn, MatchesDoublePrecisionProduct) {
  std::mt19937 rng(3);
  std::normal_distribution<float> N(0.0f, 1.0f);
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_EQ(kernels::gemm_kn_path(), "avx2");
  }
  for (auto [m, k, n] :
       {std::tuple{1, 1, 1}, {7, 300, 33}, {13, 64, 16}, {50, 600, 70}, {6, 257, 300}, {97, 40, 5}})
    for (bool acc : {false, true}) {
      SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n) +
                   (acc ? " acc" : ""));
      std::vector<float> x(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)),
          y0(static_cast<size_t>(m * n));
      for (auto& v : x) v = N(rng);
      for (auto& v : b) v = N(rng);
      for (auto& v : y0) v = N(rng);
      for (bool reference : {false, true}) {
        std::vector<float> y = y0;
        if (reference)
          kernels::ref::gemm_kn(x.data(), m, k, b.data(), n, y.data(), acc);
        else
          kernels::gemm_kn(x.data(), m, k, b.data(), n, y.data(), acc);
        double worst = 0;
        for (int i = 0; i < m; ++i)
          for (int j = 0; j < n; ++j) {
            double s = acc ? y0[static_cast<size_t>(i * n + j)] : 0.0, mag = std::abs(s);
            for (int e = 0; e < k; ++e) {
              const double p =
                  static_cast<double>(x[static_cast<size_t>(i * k + e)]) * b[static_cast<size_t>(e * n + j)];
              s += p;
              mag += std::abs(p);
            }
            worst = std::max(worst, std::abs(y[static_cast<size_t>(i * n + j)] - s) / (mag + 1e-30));
          }
        EXPECT_LT(worst, 2e-6 * std::sqrt(static_cast<double>(k)) + 1e-6)
            << (reference ? "reference" : "fast");
      }
    }
}

}  // namespace
}  // namespace nibble
