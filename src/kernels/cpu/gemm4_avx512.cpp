// AVX-512 / AVX512-BF16 paths of the fused 4-bit GEMV/GEMM and the dense GEMM. Functions carry target
// attributes (Debian's Highway 1.0.3 has no AVX512-BF16 target) and run only after a CPU feature check.
//
// GEMV (M = 1): weights are decoded in registers and never stored: 16 packed bytes (32 elements) are widened
// to 16 x 32-bit lanes; the high and low nibbles index the 16-entry table with one permute each (float32:
// vpermps on even/odd elements against a de-interleaved x; bfloat16: vpermw on the natural order, then
// vdpbf16ps against x in bfloat16). Partial sums per quantization block are scaled by that block's absmax
// (decoded on the fly when nested). GEMM (M > 1): a tile of 4 rows is decoded once into L1 (code * absmax in
// the compute dtype) and multiplied with 4 tokens at a time (16 accumulators), over token chunks sized for
// L2. GCC 12's AVX-512 headers trip -Wuninitialized inside their own _mm512_undefined_* helpers (a known
// false positive); silence it for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm4.h"

#define NB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define NB_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace nibble::kernels::avx512 {

namespace {

constexpr int64_t kRowTile = 4, kTokTile = 4, kTokChunk = 64;

// 16 bytes -> 16 lanes holding the high nibbles (elements 0, 2, ..., 30) and the low ones (1, 3, ..., 31).
NB_AVX512 inline void nibbles(const uint8_t* p, __m512i& hi, __m512i& lo) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  hi = _mm512_srli_epi32(v, 4);
  lo = _mm512_and_si512(v, _mm512_set1_epi32(15));
}

// --- GEMV, float32 compute -----------------------------------------------------------------------------
NB_AVX512 void gemv_f32(const Q4Weights& w, const float* x, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  // de-interleave x per 32-element chunk: 16 even elements, then 16 odd ones
  std::vector<float> xd(static_cast<size_t>(K));
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

// --- decode a row to float32 (code * absmax) or bfloat16 (rounded) ---------------------------------------
NB_AVX512 void decode_row_f32(const Q4Weights& w, int64_t n, float* out) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  const uint8_t* row = w.packed + n * K / 2;
  const __m512 table = _mm512_loadu_ps(w.code);
  const __m512i even = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i odd = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t b = 0; b < nbr; ++b) {
    const __m512 s = _mm512_set1_ps(w.block_absmax(n * nbr + b));
    for (int64_t c = b * bs; c < (b + 1) * bs; c += 32) {
      __m512i hi, lo;
      nibbles(row + c / 2, hi, lo);
      const __m512 vh = _mm512_mul_ps(_mm512_permutexvar_ps(hi, table), s);
      const __m512 vl = _mm512_mul_ps(_mm512_permutexvar_ps(lo, table), s);
      _mm512_storeu_ps(out + c, _mm512_permutex2var_ps(vh, even, vl));  // interleave back to memory order
      _mm512_storeu_ps(out + c + 16, _mm512_permutex2var_ps(vh, odd, vl));
    }
  }
}

NB_BF16 void decode_row_bf16(const Q4Weights& w, int64_t n, uint16_t* out, float* tmp) {
  decode_row_f32(w, n, tmp);
  for (int64_t k = 0; k < w.K; k += 32) {
    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(tmp + k + 16), _mm512_loadu_ps(tmp + k));
    _mm512_storeu_si512(out + k, v);
  }
}

// --- micro-kernels: R weight rows x T tokens, full K -------------------------------------------------------
template <int R, int T>
NB_BF16 inline void mk_bf16(const uint16_t* const* wr, const uint16_t* const* xt, int64_t K, float* out,
                            int64_t ldo, int64_t pf) {
  __m512 acc[T][R];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + k + pf), _MM_HINT_T1);
      wv[r] = (__m512bh)_mm512_loadu_si512(wr[r] + k);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xt[t] + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], wv[r], xv);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) out[t * ldo + r] = _mm512_reduce_add_ps(acc[t][r]);
}

template <int R, int T>
NB_AVX512 inline void mk_f32(const float* const* wr, const float* const* xt, int64_t K, float* out,
                             int64_t ldo, int64_t pf) {
  __m512 acc[T][R];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + k + pf), _MM_HINT_T1);
      wv[r] = _mm512_loadu_ps(wr[r] + k);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_loadu_ps(xt[t] + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[t][r] = _mm512_fmadd_ps(wv[r], xv, acc[t][r]);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) out[t * ldo + r] = _mm512_reduce_add_ps(acc[t][r]);
}

// y[m, n0..n0+rows) for tokens [m0, m1) given `rows` decoded weight rows.
template <typename E>
void tile(const E* const* wr, int64_t rows, const E* x, int64_t K, int64_t m0, int64_t m1, float* y,
          int64_t N, int64_t n0, bool stream) {
  // dense weights stream from memory with rows back to back: prefetch the next rows meanwhile (decoded
  // scratch rows are already in L1)
  const int64_t pf_tile = stream ? kRowTile * K : 0, pf_row = stream ? K : 0;
  for (int64_t m = m0; m < m1;) {
    const E* xt[kTokTile];
    const int64_t tcount = std::min<int64_t>(kTokTile, m1 - m);
    for (int64_t t = 0; t < tcount; ++t) xt[t] = x + (m + t) * K;
    float* out = y + m * N + n0;
    if constexpr (std::is_same_v<E, uint16_t>) {
      if (rows == kRowTile && tcount == kTokTile) {
        mk_bf16<4, 4>(wr, xt, K, out, N, pf_tile);
      } else {
        for (int64_t t = 0; t < tcount; ++t)
          for (int64_t r = 0; r < rows; ++r) mk_bf16<1, 1>(wr + r, xt + t, K, out + t * N + r, N, pf_row);
      }
    } else {
      if (rows == kRowTile && tcount == kTokTile) {
        mk_f32<4, 4>(wr, xt, K, out, N, pf_tile);
      } else {
        for (int64_t t = 0; t < tcount; ++t)
          for (int64_t r = 0; r < rows; ++r) mk_f32<1, 1>(wr + r, xt + t, K, out + t * N + r, N, pf_row);
      }
    }
    m += tcount;
  }
}

NB_BF16 void to_bf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(out + i,
                        (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
  for (; i < n; ++i) out[i] = float_to_bf16(x[i]);
}

// One token's bfloat16 x in the nibble order of gemv_bf16_128: per 128-chunk, elements 4j+1, 4j, 4j+3, 4j+2.
void to_nibble_order(const uint16_t* x, int64_t K, uint16_t* out) {
  for (int64_t c = 0; c < K; c += 128)
    for (int64_t j = 0; j < 32; ++j) {
      out[c + j] = x[c + 4 * j + 1];
      out[c + 32 + j] = x[c + 4 * j];
      out[c + 64 + j] = x[c + 4 * j + 3];
      out[c + 96 + j] = x[c + 4 * j + 2];
    }
}

// x [M][K] as (k, k+1) dword pairs per group of G tokens, [groups][K/2][G], so a micro-kernel reads one token
// group's pairs as one sequential stream. Tokens past M repeat the last one (their results are discarded);
// nibble_order permutes each token by to_nibble_order first.
std::vector<uint32_t> pack_pairs(const uint16_t* xb, int64_t M, int64_t K, int64_t G, int64_t groups,
                                 bool nibble_order) {
  const int64_t kp = K / 2;
  std::vector<uint32_t> out(static_cast<size_t>(groups * kp * G));
#pragma omp parallel
  {
    std::vector<uint16_t> perm(nibble_order ? static_cast<size_t>(K) : 0);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t t = 0; t < G; ++t) {
        const uint16_t* row = xb + std::min(g * G + t, M - 1) * K;
        if (nibble_order) {
          to_nibble_order(row, K, perm.data());
          row = perm.data();
        }
        uint32_t* dst = out.data() + g * kp * G + t;
        for (int64_t k = 0; k < kp; ++k) std::memcpy(dst + k * G, row + 2 * k, 4);
      }
  }
  return out;
}

// --- GEMM, bfloat16 compute, outer-product form ----------------------------------------------------------
// A panel of 32 weight rows is decoded once (bfloat16 of code * absmax) and packed as [K/2][32] dwords: each
// dword a (k, k+1) pair of one row. The micro-kernel holds 12 tokens x 32 rows in 24 accumulators; per k-pair
// it loads two weight vectors and broadcasts each token's (k, k+1) pair: 24 vdpbf16ps per 14 loads, no
// horizontal reductions. Rows beyond N are zero-filled.
constexpr int64_t kPanel = 32, kMt = 12;

NB_BF16 void pack_panel(const Q4Weights& w, int64_t n0, uint32_t* P, uint16_t* rows, float* tmp) {
  const int64_t K = w.K;
  for (int64_t r = 0; r < kPanel; ++r) {
    if (n0 + r < w.N)
      decode_row_bf16(w, n0 + r, rows + r * K, tmp);
    else
      std::memset(rows + r * K, 0, static_cast<size_t>(K) * 2);
  }
  for (int64_t kp = 0; kp < K / 2; ++kp)
    for (int64_t r = 0; r < kPanel; ++r) std::memcpy(P + kp * kPanel + r, rows + r * K + 2 * kp, 4);
}

// xp: this token group's x packed as [K/2][kMt] dwords (token t's (k, k+1) pair at kp * kMt + t), so the
// broadcasts read one sequential stream.
NB_BF16 inline void mk_outer(const uint32_t* P, const uint32_t* xp, int64_t K, float* const* yt) {
  __m512 acc[kMt][2];
#pragma GCC unroll 12
  for (int t = 0; t < kMt; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < K / 2; ++kp) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(P + kp * kPanel);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(P + kp * kPanel + 16);
    const uint32_t* xk = xp + kp * kMt;
#pragma GCC unroll 12
    for (int t = 0; t < kMt; ++t) {
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xk[t]));
      acc[t][0] = _mm512_dpbf16_ps(acc[t][0], w0, xb);
      acc[t][1] = _mm512_dpbf16_ps(acc[t][1], w1, xb);
    }
  }
#pragma GCC unroll 12
  for (int t = 0; t < kMt; ++t) {
    _mm512_storeu_ps(yt[t], acc[t][0]);
    _mm512_storeu_ps(yt[t] + 16, acc[t][1]);
  }
}

NB_BF16 void gemm_bf16_outer(const Q4Weights& w, const uint16_t* xb, int64_t M, float* y) {
  const int64_t N = w.N, K = w.K, panels = (N + kPanel - 1) / kPanel, groups = (M + kMt - 1) / kMt;
  const std::vector<uint32_t> xpk = pack_pairs(xb, M, K, kMt, groups, false);
#pragma omp parallel
  {
    std::vector<uint32_t> P(static_cast<size_t>(K / 2 * kPanel));
    std::vector<uint16_t> rows(static_cast<size_t>(kPanel * K));
    std::vector<float> tmp(static_cast<size_t>(K)), spill(static_cast<size_t>(kMt * kPanel));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = p * kPanel;
      pack_panel(w, n0, P.data(), rows.data(), tmp.data());
      const bool full = n0 + kPanel <= N;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t m = g * kMt, tc = std::min(kMt, M - m);
        float* yt[kMt];
        for (int64_t t = 0; t < kMt; ++t)
          yt[t] = full && t < tc ? y + (m + t) * N + n0 : spill.data() + t * kPanel;
        mk_outer(P.data(), xpk.data() + g * (K / 2) * kMt, K, yt);
        if (!full)
          for (int64_t t = 0; t < tc; ++t)
            for (int64_t r = 0; r < N - n0; ++r)
              y[(m + t) * N + n0 + r] = spill[static_cast<size_t>(t * kPanel + r)];
      }
    }
  }
}

// --- GEMM, bfloat16 compute, AMX tiles ------------------------------------------------------------------
// TDPBF16PS multiplies a 16 x 32 bfloat16 tile A by a 32 x 16 tile B held as 16 rows of (k, k+1) pairs and
// accumulates 16 x 16 float32: 8192 MACs per instruction. A is 16 decoded weight rows x 32 k; B is x packed
// per group of 16 tokens by pack_pairs. Each C tile is a block of y transposed (rows x tokens), scattered
// into y once per K. Tiles 0-3 accumulate a 32-row x 32-token block, 4-5 hold A, 6-7 hold B. A panel of np
// rows is decoded once per call into [K/32][np][32] (every A tile 1 KiB contiguous: a row stride of K would
// put a tile's 16 lines in one L1 set) and met by every token pair; within a token pair the x slices stay in
// L2 across the panel's 32-row sub-panels.
#define NB_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The compiler cannot see that tile loads read (and tile stores write) memory: fence ordinary accesses.
inline void compiler_fence() {
  __asm__ volatile("" ::: "memory");
}

// One weight row straight into the A-tile layout [K/32][np][32] at row r, in the nibble order of
// gemv_bf16_128 (per 128-chunk: elements 4j+1, 4j, 4j+3, 4j+2); x is packed in the same order. Each chunk's
// two blocks get one 32-entry table bf16(code * absmax) (lanes 0-15: first block, 16-31: second), so vpermw
// yields the reference's dequantized weight directly. Blocksize a multiple of 64, K % 128 == 0.
NB_BF16 void decode_row_tiles(const Q4Weights& w, int64_t n, uint16_t* tiles, int64_t np, int64_t r) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  const uint8_t* row = w.packed + n * K / 2;
  const __m512 code = _mm512_loadu_ps(w.code);
  const __m512i lo4 = _mm512_set1_epi16(15);
  const __m512i half = _mm512_set_epi16(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 am = _mm512_setzero_ps();
  for (int64_t c = 0; c < K; c += 128) {
    __m512 sa, sb;
    if (bs == 64) {  // 16 blocks' absmax decoded at once, each chunk's pair permuted out
      if (c % 1024 == 0) am = absmax16(w, n * nbr + c / 64, std::min<int64_t>(16, (K - c) / 64));
      const int j = static_cast<int>(c % 1024 / 128);
      sa = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * j), am);
      sb = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * j + 1), am);
    } else {
      sa = _mm512_set1_ps(w.block_absmax(n * nbr + c / bs));
      sb = _mm512_set1_ps(w.block_absmax(n * nbr + (c + 64) / bs));
    }
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(code, sb), _mm512_mul_ps(code, sa));
    const __m512i v = _mm512_loadu_si512(row + c / 2);
    // index = nibble | half: vpternlog 0xEA is (a & b) | c
    const __m512i idx[4] = {_mm512_ternarylogic_epi32(v, lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 8), lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 12), lo4, half, 0xEA)};
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
      _mm512_storeu_si512(tiles + ((c / 32 + i) * np + r) * 32, _mm512_permutexvar_epi16(idx[i], table));
  }
}

// One thread's share of the AMX GEMM (called inside the parallel region: clang outlines a parallel region
// into a function without the enclosing target attributes, so the tile code lives in its own function).
NB_AMX void amx_panels(const Q4Weights& w, const uint32_t* xpk, int64_t M, float* y, int64_t sub,
                       bool direct) {
  const int64_t N = w.N, K = w.K, kp = K / 2, np = 32 * sub;
  const int64_t panels = (N + np - 1) / np, pairs = (M + 31) / 32;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  std::vector<uint16_t> rows(static_cast<size_t>(np * K)), row(static_cast<size_t>(K));
  std::vector<float> tmp(static_cast<size_t>(K));
  alignas(64) float c[4][16][16];
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t n0 = p * np;
    for (int64_t r = 0; r < np; ++r) {
      if (n0 + r < N && direct) {
        decode_row_tiles(w, n0 + r, rows.data(), np, r);
        continue;
      }
      if (n0 + r < N)
        decode_row_bf16(w, n0 + r, row.data(), tmp.data());
      else
        std::fill(row.begin(), row.end(), uint16_t{0});
      for (int64_t k = 0; k < K; k += 32)  // to [K/32][np][32]: each A tile is 1 KiB contiguous
        std::memcpy(rows.data() + (k / 32 * np + r) * 32, row.data() + k, 64);
    }
    compiler_fence();
    for (int64_t g = 0; g < pairs; ++g) {
      const uint32_t* b0 = xpk + 2 * g * kp * 16;
      const uint32_t* b1 = b0 + kp * 16;
      for (int64_t s = 0; s < sub && n0 + 32 * s < N; ++s) {
        const uint16_t* a0 = rows.data() + 32 * s * 32;
        const uint16_t* a1 = a0 + 16 * 32;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = 0; k < K; k += 32) {
          _tile_loadd(4, a0 + k * np, 64);
          _tile_loadd(5, a1 + k * np, 64);
          _tile_loadd(6, b0 + k / 2 * 16, 64);
          _tile_loadd(7, b1 + k / 2 * 16, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        compiler_fence();
        // c[2 * ra + tb][r][t]: weight row n0 + 32 s + 16 ra + r, token 32 g + 16 tb + t
        for (int ra = 0; ra < 2; ++ra)
          for (int tb = 0; tb < 2; ++tb)
            for (int64_t t = 0; t < 16; ++t) {
              const int64_t m = 32 * g + 16 * tb + t;
              if (m >= M) break;
              const int64_t nb = n0 + 32 * s + 16 * ra, nr = std::min<int64_t>(16, N - nb);
              float* dst = y + m * N + nb;
              for (int64_t r = 0; r < nr; ++r) dst[r] = c[2 * ra + tb][r][t];
            }
      }
    }
  }
  _tile_release();
}

void gemm_bf16_amx(const Q4Weights& w, const uint16_t* xb, int64_t M, float* y) {
  const int64_t K = w.K;
  // panel rows: as many 32-row sub-panels as fit ~1 MiB of decoded bfloat16, 1 to 8
  const int64_t sub = std::clamp<int64_t>((int64_t{1} << 20) / (K * 2 * 32), 1, 8);
  // decode straight into tiles (nibble order, x permuted to match) where the shape allows
  const bool direct = w.blocksize % 64 == 0 && K % 128 == 0;
  const std::vector<uint32_t> xpk = pack_pairs(xb, M, K, 16, 2 * ((M + 31) / 32), direct);
#pragma omp parallel
  amx_panels(w, xpk.data(), M, y, sub, direct);
}

}  // namespace

bool supported(DType compute) {
  __builtin_cpu_init();
  const bool f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (compute == DType::BFloat16) return f && __builtin_cpu_supports("avx512bf16");
  return f && compute == DType::Float32;
}

// AMX needs the CPU bits (CPUID.7.0:EDX[22] AMX-BF16, [24] AMX-TILE) and the kernel's permission to use the
// 8 KiB tile state (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), asked once per process.
bool amx_supported() {
  static const bool ok = [] {
    if (!supported(DType::BFloat16)) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Requires: supported(compute), K % blocksize == 0 (blocks never straddle rows), K % 32 == 0; amx: also
// amx_supported(), bfloat16 compute and M > 1.
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, bool amx) {
  const int64_t N = w.N, K = w.K;
  if (M == 1) {
    if (compute == DType::BFloat16) {
      std::vector<uint16_t> xb(static_cast<size_t>(K));
      to_bf16(x, K, xb.data());
      const bool by128 = K % 128 == 0;
      std::vector<uint16_t> xp(static_cast<size_t>(K));
      if (by128) {
        to_nibble_order(xb.data(), K, xp.data());
      } else if (w.blocksize >= 64) {  // per 64-chunk: 32 even elements, then 32 odd ones
        for (int64_t c = 0; c < K; c += 64)
          for (int64_t j = 0; j < 32; ++j) {
            xp[static_cast<size_t>(c + j)] = xb[static_cast<size_t>(c + 2 * j)];
            xp[static_cast<size_t>(c + 32 + j)] = xb[static_cast<size_t>(c + 2 * j + 1)];
          }
      }
#pragma omp parallel
      {
        const auto [a, b] = thread_rows(N);
        if (by128 && w.blocksize == 64)
          gemv_bf16_128<true>(w, xp.data(), y, a, b);
        else if (by128)
          gemv_bf16_128<false>(w, xp.data(), y, a, b);
        else if (w.blocksize >= 64)
          gemv_bf16(w, xp.data(), y, a, b);
        else
          gemv_bf16_bs32(w, xb.data(), y, a, b);
      }
    } else {
#pragma omp parallel
      {
        const auto [a, b] = thread_rows(N);
        gemv_f32(w, x, y, a, b);
      }
    }
    return;
  }
  const bool bf = compute == DType::BFloat16;
  std::vector<uint16_t> xb(bf ? static_cast<size_t>(M * K) : 0);
  if (bf) to_bf16(x, M * K, xb.data());
  if (amx) {
    gemm_bf16_amx(w, xb.data(), M, y);
    return;
  }
  if (bf && M >= 32 && K % 2 == 0) {  // below ~32 tokens the panel packing costs more than it saves
    gemm_bf16_outer(w, xb.data(), M, y);
    return;
  }
  const int64_t tiles = (N + kRowTile - 1) / kRowTile;
  for (int64_t m0 = 0; m0 < M; m0 += kTokChunk) {
    const int64_t m1 = std::min(M, m0 + kTokChunk);
#pragma omp parallel
    {
      std::vector<float> f(static_cast<size_t>(kRowTile * K));
      std::vector<uint16_t> h(bf ? static_cast<size_t>(kRowTile * K) : 0);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t n0 = t * kRowTile, rows = std::min(kRowTile, N - n0);
        if (bf) {
          const uint16_t* wr[kRowTile];
          std::vector<float> tmp(static_cast<size_t>(K));
          for (int64_t r = 0; r < rows; ++r) {
            decode_row_bf16(w, n0 + r, h.data() + r * K, tmp.data());
            wr[r] = h.data() + r * K;
          }
          tile<uint16_t>(wr, rows, xb.data(), K, m0, m1, y, N, n0, false);
        } else {
          const float* wr[kRowTile];
          for (int64_t r = 0; r < rows; ++r) {
            decode_row_f32(w, n0 + r, f.data() + r * K);
            wr[r] = f.data() + r * K;
          }
          tile<float>(wr, rows, x, K, m0, m1, y, N, n0, false);
        }
      }
    }
  }
}

// Dense weights: float32 (FMA) or bfloat16 (vdpbf16ps against x in bfloat16). Requires K % 32 == 0.
void gemm_dense(const void* wp, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
  const bool bf = wdt == DType::BFloat16;
  std::vector<uint16_t> xb(bf ? static_cast<size_t>(M * K) : 0);
  if (bf) to_bf16(x, M * K, xb.data());
  const int64_t tiles = (N + kRowTile - 1) / kRowTile;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n0 = t * kRowTile, rows = std::min(kRowTile, N - n0);
    if (bf) {
      const uint16_t* wr[kRowTile];
      for (int64_t r = 0; r < rows; ++r) wr[r] = static_cast<const uint16_t*>(wp) + (n0 + r) * K;
      tile<uint16_t>(wr, rows, xb.data(), K, 0, M, y, N, n0, true);
    } else {
      const float* wr[kRowTile];
      for (int64_t r = 0; r < rows; ++r) wr[r] = static_cast<const float*>(wp) + (n0 + r) * K;
      tile<float>(wr, rows, x, K, 0, M, y, N, n0, true);
    }
  }
}

}  // namespace nibble::kernels::avx512
