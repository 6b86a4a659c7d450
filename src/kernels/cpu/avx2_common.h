// Shared by the AVX2 kernel files (gemm4_avx2.cpp, gemm4_int8.cpp, attention.cpp): nibble unpacking, the
// horizontal sum, and the token grouping of the small-batch kernels. Functions carry target attributes and
// run only after a CPU feature check.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#define NB_AVX2 __attribute__((target("avx2,fma")))

namespace nibble::kernels::avx2 {

// 16 packed bytes -> 32 nibble indices: high nibbles (elements 0, 2, ..., 30) in the low 128-bit lane, low
// nibbles (elements 1, 3, ..., 31) in the high lane
NB_AVX2 inline __m256i nibble_indices(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m));
}

// 32 packed bytes -> high nibbles (elements 2p) and low nibbles (2p + 1), 32 indices each
NB_AVX2 inline void nibble_indices64(const uint8_t* p, __m256i& hi, __m256i& lo) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i m = _mm256_set1_epi8(15);
  hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  lo = _mm256_and_si256(v, m);
}

NB_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// f(std::integral_constant<int, MT>{}, m0) for the groups [m0, m0 + MT) of up to 4 of M tokens that the
// small-batch kernels take at once (more would spill their accumulators: 8 measured slower per token).
template <class F>
void for_token_groups(int64_t M, F&& f) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    switch (std::min<int64_t>(4, M - m0)) {
      case 1:
        f(std::integral_constant<int, 1>{}, m0);
        break;
      case 2:
        f(std::integral_constant<int, 2>{}, m0);
        break;
      case 3:
        f(std::integral_constant<int, 3>{}, m0);
        break;
      default:
        f(std::integral_constant<int, 4>{}, m0);
        break;
    }
  }
}

}  // namespace nibble::kernels::avx2
