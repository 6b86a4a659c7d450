// y[M, N] = x[M, K] @ B[K, N], all float32: a register-blocked GEMM (6 rows x 16 columns of y in 12 AVX2
// accumulators, K in panels that stay in L1/L2) for the large-M products of training, with a scalar
// reference.
#include "kernels/cpu/gemm_kn.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/avx2_common.h"

namespace nibble::kernels {

namespace {

constexpr int64_t kMr = 6, kNr = 16, kKc = 256;

// y[0..mr, 0..16] (+)= x[0..mr, k0..k0+kc] @ B[k0.., n..n+16] for a full 16-column strip.
template <int MR>
NB_AVX2 void micro_6x16(const float* x, int64_t ldx, const float* b, int64_t ldb, int64_t kc, float* y,
                        int64_t ldy, bool accumulate) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = accumulate ? _mm256_loadu_ps(y + r * ldy) : _mm256_setzero_ps();
    acc[r][1] = accumulate ? _mm256_loadu_ps(y + r * ldy + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(y + r * ldy, acc[r][0]);
    _mm256_storeu_ps(y + r * ldy + 8, acc[r][1]);
  }
}

NB_AVX2 void tile_avx2(const float* x, int64_t ldx, int64_t K, const float* B, int64_t N, float* y,
                       int64_t m0, int64_t m1, int64_t n0, int64_t n1, bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n = n0; n < n1; n += kNr) {
      if (n + kNr <= n1) {
        int64_t m = m0;
        for (; m + kMr <= m1; m += kMr)
          micro_6x16<kMr>(x + m * ldx + k0, ldx, B + k0 * N + n, N, kc, y + m * N + n, N, acc);
        for (; m < m1; ++m)
          micro_6x16<1>(x + m * ldx + k0, ldx, B + k0 * N + n, N, kc, y + m * N + n, N, acc);
      } else {  // the last, narrower strip
        for (int64_t m = m0; m < m1; ++m)
          for (int64_t j = n; j < n1; ++j) {
            float s = acc ? y[m * N + j] : 0.0f;
            for (int64_t k = 0; k < kc; ++k) s += x[m * ldx + k0 + k] * B[(k0 + k) * N + j];
            y[m * N + j] = s;
          }
      }
    }
  }
}

bool avx2_ok() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

namespace ref {
void gemm_kn(const float* x, int64_t M, int64_t K, const float* B, int64_t N, float* y, bool accumulate,
             int64_t ldx) {
  if (ldx == 0) ldx = K;
#pragma omp parallel for if (M * N * K > (1 << 18))
  for (int64_t m = 0; m < M; ++m) {
    if (!accumulate) std::fill(y + m * N, y + (m + 1) * N, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float a = x[m * ldx + k];
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += a * B[k * N + n];
    }
  }
}
}  // namespace ref

std::string gemm_kn_path() {
  return avx2_ok() ? "avx2" : "reference";
}

void gemm_kn(const float* x, int64_t M, int64_t K, const float* B, int64_t N, float* y, bool accumulate,
             int64_t ldx) {
  if (ldx == 0) ldx = K;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) std::fill(y, y + M * N, 0.0f);
    return;
  }
  if (!avx2_ok()) {
    ref::gemm_kn(x, M, K, B, N, y, accumulate, ldx);
    return;
  }
  // tiles of 48 rows x 256 columns: a B panel (256 x 256 floats) shared by the rows of a tile
  constexpr int64_t kTm = 8 * kMr, kTn = 16 * kNr;
  const int64_t tm = (M + kTm - 1) / kTm, tn = (N + kTn - 1) / kTn;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > (1 << 18))
  for (int64_t i = 0; i < tn; ++i)
    for (int64_t j = 0; j < tm; ++j)
      tile_avx2(x, ldx, K, B, N, y, j * kTm, std::min(M, (j + 1) * kTm), i * kTn, std::min(N, (i + 1) * kTn),
                accumulate);
}

}  // namespace nibble::kernels
