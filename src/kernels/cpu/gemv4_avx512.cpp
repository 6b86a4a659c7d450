// AVX-512 / AVX512-BF16 GEMV (M = 1) of the fused 4-bit kernels: weights are decoded in registers and never
// stored: 16 packed bytes (32 elements) are widened to 16 x 32-bit lanes; the high and low nibbles index the
// 16-entry table with one permute each (float32: vpermps on even/odd elements against a de-interleaved x;
// bfloat16: vpermw on the natural order, then vdpbf16ps against x in bfloat16). Partial sums per
// quantization block are scaled by that block's absmax (decoded on the fly when nested).
#include "kernels/cpu/avx512_common.h"

namespace nibble::kernels::avx512 {

// --- GEMV, float32 compute -----------------------------------------------------------------------------
NB_AVX512 void gemv_f32(const Q4Weights& w, const float* x, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  // de-interleave x per 32-element chunk: 16 even elements, then 16 odd ones
  // (per thread, reused across calls: no allocation per token once grown)
  static thread_local std::vector<float> xd;
  if (xd.size() < static_cast<size_t>(K)) xd.resize(static_cast<size_t>(K));
  for (int64_t c = 0; c < K; c += 32)
    for (int64_t j = 0; j < 16; ++j) {
      xd[static_cast<size_t>(c + j)] = x[c + 2 * j];
      xd[static_cast<size_t>(c + 16 + j)] = x[c + 2 * j + 1];
    }
  const __m512 table = _mm512_loadu_ps(w.code);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m512 total = _mm512_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += 32) {
        __m512i hi, lo;
        _mm_prefetch(reinterpret_cast<const char*>(row + c / 2 + K / 2),
                     _MM_HINT_T1);  // next row, same offset
        nibbles(row + c / 2, hi, lo);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi, table), _mm512_loadu_ps(xd.data() + c), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo, table), _mm512_loadu_ps(xd.data() + c + 16), acc1);
      }
      total = _mm512_fmadd_ps(_mm512_add_ps(acc0, acc1), _mm512_set1_ps(w.block_absmax(n * nbr + b)), total);
    }
    y[n] = _mm512_reduce_add_ps(total);
  }
}

// --- GEMV, bfloat16 compute ----------------------------------------------------------------------------
// 32 packed bytes (64 elements) per step: widened to 32 x 16-bit lanes, the high nibbles (even elements) and
// the low ones (odd elements) each index the bfloat16 table with one vpermw. The dot product does not care
// about element order, so x is pre-split per 64-element chunk into its 32 even and 32 odd elements.
// Blocksize >= 64; four rows in flight; each block's partial sum starts from zero, so the only loop-carried
// dependency is one FMA per block and row (scaling by that block's absmax).
NB_BF16 inline __m512 dot64_bf16(const uint8_t* p, const uint16_t* xeo, __m512i table, __m512 acc) {
  const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i hi = _mm512_srli_epi16(v, 4), lo = _mm512_and_si512(v, _mm512_set1_epi16(15));
  acc =
      _mm512_dpbf16_ps(acc, (__m512bh)_mm512_permutexvar_epi16(hi, table), (__m512bh)_mm512_loadu_si512(xeo));
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_permutexvar_epi16(lo, table),
                          (__m512bh)_mm512_loadu_si512(xeo + 32));
}

NB_BF16 void gemv_bf16(const Q4Weights& w, const uint16_t* xeo, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  alignas(64) uint16_t t16[32] = {};
  for (int i = 0; i < 16; ++i) t16[i] = float_to_bf16(w.code[i]);
  const __m512i table = _mm512_load_si512(t16);
  constexpr int64_t R = 4;
  int64_t n = n0;
  for (; n < n1; n += R) {
    const int64_t rows = std::min(R, n1 - n);
    const uint8_t* rp[R];
    __m512 t[R];
#pragma GCC unroll 4
    for (int64_t r = 0; r < R; ++r) {
      rp[r] = w.packed + (n + std::min(r, rows - 1)) * K / 2;
      t[r] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nbr; ++b) {
      __m512 a[R];
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += 64)
#pragma GCC unroll 4
        for (int64_t r = 0; r < R; ++r) a[r] = dot64_bf16(rp[r] + c / 2, xeo + c, table, a[r]);
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r)
        t[r] = _mm512_fmadd_ps(a[r], _mm512_set1_ps(w.block_absmax((n + std::min(r, rows - 1)) * nbr + b)),
                               t[r]);
    }
    for (int64_t r = 0; r < rows; ++r) y[n + r] = _mm512_reduce_add_ps(t[r]);
  }
}

// 64 packed bytes (128 elements) per step, with no widening: each 16-bit lane holds bytes 2i, 2i+1, i.e.
// elements 4i (bits 4-7), 4i+1 (bits 0-3), 4i+2 (bits 12-15), 4i+3 (bits 8-11). vpermw reads the low 5 bits
// of each index, so with the table duplicated into entries 16-31 the lane itself, and the lane shifted by 4,
// 8 and 12, are the four index vectors: 3 shifts + 4 vpermw + 4 vdpbf16ps per 128 weights. x is pre-split per
// 128-chunk into the matching four groups of 32. Accumulator lane j sums elements of 16-bit lanes 2j, 2j+1,
// i.e. elements [8j, 8j + 8): one quantization block covers 128 / blocksize... lanes, so the per-chunk scale
// vector holds each block's absmax over its lanes.
template <bool kBs64>  // blocksize == 64, compiled apart so the other blocksizes' branches cost it nothing
NB_BF16 void gemv_bf16_128(const Q4Weights& w, const uint16_t* xq, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  alignas(64) uint16_t t16[32];
  for (int i = 0; i < 32; ++i) t16[i] = float_to_bf16(w.code[i & 15]);
  const __m512i table = _mm512_load_si512(t16);
  const int64_t bpc = bs >= 128 ? 1 : 128 / bs;                               // blocks per 128-element chunk
  const int bs_shift = __builtin_ctzll(static_cast<unsigned long long>(bs));  // blocksize is a power of two
  // blocksize 64 (bitsandbytes' default): the absmax of 16 blocks (1024 elements) is decoded as one vector
  // per row and each chunk takes its two blocks' lanes with one permute; decoding and broadcasting two
  // scalars per chunk and row cost a quarter of the kernel's time
  const __m512i pair0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  constexpr int64_t R = 4;
  for (int64_t n = n0; n < n1; n += R) {
    const int64_t rows = std::min(R, n1 - n);
    const uint8_t* rp[R];
    int64_t row[R];
    __m512 t[R], am[R];
#pragma GCC unroll 4
    for (int64_t r = 0; r < R; ++r) {
      row[r] = n + std::min(r, rows - 1);
      rp[r] = w.packed + row[r] * K / 2;
      t[r] = am[r] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < K; c += 128) {
      const __m512bh x0 = (__m512bh)_mm512_loadu_si512(xq + c),
                     x1 = (__m512bh)_mm512_loadu_si512(xq + c + 32);
      const __m512bh x2 = (__m512bh)_mm512_loadu_si512(xq + c + 64),
                     x3 = (__m512bh)_mm512_loadu_si512(xq + c + 96);
      if (kBs64 && c % 1024 == 0)
#pragma GCC unroll 4
        for (int64_t r = 0; r < R; ++r)
          am[r] = absmax16(w, row[r] * nbr + c / 64, std::min<int64_t>(16, (K - c) / 64));
      const __m512i pair = _mm512_add_epi32(pair0, _mm512_set1_epi32(static_cast<int>(c % 1024 / 64)));
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r) {
        // rows are short (K/2 bytes, often < one page) so the hardware prefetcher barely ramps up per row;
        // fetch the same offset of the next 4-row group (4 * K/2 bytes ahead) into L2 meanwhile
        _mm_prefetch(reinterpret_cast<const char*>(rp[r] + c / 2 + 2 * K), _MM_HINT_T1);
        const __m512i v = _mm512_loadu_si512(rp[r] + c / 2);
        __m512 a = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_permutexvar_epi16(v, table), x0);
        __m512 b = _mm512_dpbf16_ps(_mm512_setzero_ps(),
                                    (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table), x1);
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), table), x2);
        b = _mm512_dpbf16_ps(b, (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table), x3);
        a = _mm512_add_ps(a, b);
        const int64_t b0 = row[r] * nbr + (c >> bs_shift);
        __m512 scale;
        if constexpr (kBs64) {
          scale = _mm512_permutexvar_ps(pair, am[r]);
        } else if (bpc == 1) {
          scale = _mm512_set1_ps(w.block_absmax(b0));
        } else if (bpc == 2) {
          scale = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(w.block_absmax(b0)),
                                       _mm512_set1_ps(w.block_absmax(b0 + 1)));
        } else {  // blocksize 32: four blocks of 4 lanes
          const __m128 s4 = _mm_set_ps(w.block_absmax(b0 + 3), w.block_absmax(b0 + 2), w.block_absmax(b0 + 1),
                                       w.block_absmax(b0));
          scale = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                        _mm512_castps128_ps512(s4));
        }
        t[r] = _mm512_fmadd_ps(a, scale, t[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) y[n + r] = _mm512_reduce_add_ps(t[r]);
  }
}

// Blocksize 32: 16 bytes (32 elements, one block) per step, nibbles composed into natural order.
NB_BF16 void gemv_bf16_bs32(const Q4Weights& w, const uint16_t* xb, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, nbr = K / 32;
  alignas(64) uint16_t t16[32] = {};
  for (int i = 0; i < 16; ++i) t16[i] = float_to_bf16(w.code[i]);
  const __m512i table = _mm512_load_si512(t16);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m512 t0 = _mm512_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m512i hi, lo;
      nibbles(row + b * 16, hi, lo);
      const __m512 a = _mm512_dpbf16_ps(
          _mm512_setzero_ps(),
          (__m512bh)_mm512_permutexvar_epi16(_mm512_or_si512(hi, _mm512_slli_epi32(lo, 16)), table),
          (__m512bh)_mm512_loadu_si512(xb + b * 32));
      t0 = _mm512_fmadd_ps(a, _mm512_set1_ps(w.block_absmax(n * nbr + b)), t0);
    }
    y[n] = _mm512_reduce_add_ps(t0);
  }
}
template void gemv_bf16_128<true>(const Q4Weights&, const uint16_t*, float*, int64_t, int64_t);
template void gemv_bf16_128<false>(const Q4Weights&, const uint16_t*, float*, int64_t, int64_t);

}  // namespace nibble::kernels::avx512
