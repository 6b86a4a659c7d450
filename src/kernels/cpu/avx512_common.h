// Shared by the AVX-512 kernel files (gemv4_avx512.cpp, gemm4_avx512.cpp, gemm4_amx.cpp): the target
// attributes, the vector absmax decode, and the x conversions/packings more than one path uses. Functions
// carry target attributes (Debian's Highway 1.0.3 has no AVX512-BF16 target) and run only after a CPU
// feature check. GCC 12's AVX-512 headers trip -Wuninitialized inside their own _mm512_undefined_* helpers
// (a known false positive); silence it for the files that include this header.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "kernels/cpu/gemm4.h"

#define NB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define NB_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define NB_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

namespace nibble::kernels::avx512 {

// 16 bytes -> 16 lanes holding the high nibbles (elements 0, 2, ..., 30) and the low ones (1, 3, ..., 31).
NB_AVX512 inline void nibbles(const uint8_t* p, __m512i& hi, __m512i& lo) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  hi = _mm512_srli_epi32(v, 4);
  lo = _mm512_and_si512(v, _mm512_set1_epi32(15));
}

// absmax of blocks b0 .. b0 + n - 1 (n <= 16) in lanes 0 .. n - 1, bit-identical to Q4Weights::block_absmax
// (code2[q] * absmax2[b >> shift], then + offset, as two roundings).
NB_AVX512 inline __m512 absmax16(const Q4Weights& w, int64_t b0, int64_t n) {
  const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1);
  if (w.absmax) return _mm512_maskz_loadu_ps(m, w.absmax + b0);
  const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, w.absmax_q + b0));
  const __m512 c = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, q, w.code2, 4);
  __m512 s;
  // the usual case (nested blocks of 256): all 16 blocks in one nested block, found with shifts only
  if (w.nested_shift >= 0 && b0 >> w.nested_shift == (b0 + n - 1) >> w.nested_shift) {
    s = _mm512_set1_ps(w.absmax2[b0 >> w.nested_shift]);
  } else {
    alignas(64) float t[16];
    for (int64_t i = 0; i < 16; ++i) t[i] = w.absmax2[w.nested_block(b0 + std::min(i, n - 1))];
    s = _mm512_load_ps(t);
  }
  return _mm512_add_ps(_mm512_mul_ps(c, s), _mm512_set1_ps(w.offset));
}

// float32 -> bfloat16 (round to nearest even), n elements.
NB_BF16 void to_bf16(const float* x, int64_t n, uint16_t* out);
// One token's bfloat16 x in the nibble order of gemv_bf16_128: per 128-chunk, elements 4j+1, 4j, 4j+3, 4j+2.
void to_nibble_order(const uint16_t* x, int64_t K, uint16_t* out);
// x [M][K] as (k, k+1) dword pairs per group of G tokens, [groups][K/2][G] (see gemm4_avx512.cpp).
std::vector<uint32_t> pack_pairs(const uint16_t* xb, int64_t M, int64_t K, int64_t G, int64_t groups,
                                 bool nibble_order);
// One weight row decoded to bfloat16 (code * absmax, rounded); tmp holds K floats.
NB_BF16 void decode_row_bf16(const Q4Weights& w, int64_t n, uint16_t* out, float* tmp);

// GEMV (M = 1) on rows [n0, n1): float32 x; bfloat16 x pre-split per 64-chunk (even, odd elements); in the
// nibble order per 128-chunk (K % 128 == 0; kBs64: blocksize 64); natural order (blocksize 32).
NB_AVX512 void gemv_f32(const Q4Weights& w, const float* x, float* y, int64_t n0, int64_t n1);
NB_BF16 void gemv_bf16(const Q4Weights& w, const uint16_t* xeo, float* y, int64_t n0, int64_t n1);
template <bool kBs64>
NB_BF16 void gemv_bf16_128(const Q4Weights& w, const uint16_t* xq, float* y, int64_t n0, int64_t n1);
NB_BF16 void gemv_bf16_bs32(const Q4Weights& w, const uint16_t* xb, float* y, int64_t n0, int64_t n1);

// The AMX-BF16 GEMM (gemm4_amx.cpp): x in bfloat16, M > 1.
void gemm_bf16_amx(const Q4Weights& w, const uint16_t* xb, int64_t M, float* y);
bool amx_supported();
bool supported(DType compute);

}  // namespace nibble::kernels::avx512
