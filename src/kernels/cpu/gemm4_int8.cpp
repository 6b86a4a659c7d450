// The opt-in int8-activation 4-bit GEMV/GEMM (gemm4.h states the arithmetic): activation quantization shared
// by every path, the scalar reference, and the AVX2 path.
//
// AVX2, blocksize a multiple of 64 (every bitsandbytes blocksize but 32): 32 packed bytes give 32 high
// nibbles (elements 2p of a 64-weight group: the first x block's even elements in the low 128-bit lane, the
// second's in the high lane) and 32 low nibbles (the odd elements, same lanes); one vpshufb of the int8
// table each gives the weights, and x is quantized in that order. Per token: vpsignb moves the weight's sign
// onto x, vpmaddubsw(|w|, +-x) and vpmaddwd(1) sum the products exactly in int32 (|w|, |x| <= 127: pairs
// stay below 2^15), the high- and low-nibble sums add in int32, so each 128-bit lane holds one x block's sum;
// vcvtdq2ps and one FMA by [d_j x4, d_j+1 x4] scale it. Four rows at a time share the x loads for a single
// token, with the next four rows prefetched (short rows: the hardware prefetcher alone left ~40 % of the
// speed on the table, measured on Zen 3). Each weight block's sum is scaled by absmax_b / 127. Every
// (row, token) runs the same operations in the same order whatever rows and tokens are grouped with it.
// Blocksize 32: the 32-weight kernel (16 packed bytes, vperm-free: high nibbles in the low lane).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/avx2_common.h"
#include "kernels/cpu/gemm4.h"
#include "nibble/error.h"

namespace nibble::kernels {

namespace {

constexpr int64_t kQB = 32;            // activation block
constexpr float kInv127 = 1.0f / 127;  // absmax_b / 127 as a product (no division in the loop)

// How x's bytes are ordered: as in memory (the reference), in the 32-weight kernel's lookup order per block
// of 32, or in the 64-weight kernel's per group of 64.
enum class XOrder { Natural, Lookup32, Lookup64 };

// Activations quantized per block of 32: q[m * K + ...] (in `order`), d[m * (K / 32) + j], and for Lookup64
// dp[m * (K / 8) + 8 g + i]: group g's first block's d in lanes i < 4, its second's in lanes i >= 4.
struct Q8 {
  std::vector<int8_t> q;
  std::vector<float> d, dp;
  alignas(32) int8_t table[32];  // the weights' int8 code table, twice (both 128-bit lanes, for vpshufb)
};

// v rounded to the nearest integer, ties to even, for |v| < 2^22 (as std::nearbyint in the default rounding
// mode): adding 1.5 * 2^23 leaves no fraction bits. No libm call, so the loops below vectorize;
// -ffp-contract=off and no -ffast-math keep the two additions.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

void quantize_activations(const float* x, int64_t M, int64_t K, XOrder order, Q8& out) {
  const int64_t nb = K / kQB;
  out.q.resize(static_cast<size_t>(M * K));
  out.d.resize(static_cast<size_t>(M * nb));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < nb; ++j) {
      const float* xb = x + m * K + j * kQB;
      float amax = 0;
      for (int64_t i = 0; i < kQB; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
      out.d[static_cast<size_t>(m * nb + j)] = d;
      int8_t qb[kQB];  // natural order
      for (int64_t i = 0; i < kQB; ++i)
        qb[i] = static_cast<int8_t>(std::clamp(round_even(xb[i] * id), -127.0f, 127.0f));
      int8_t* qm = out.q.data() + m * K + j * kQB;
      if (order == XOrder::Natural) {
        std::copy(qb, qb + kQB, qm);
      } else if (order == XOrder::Lookup32) {  // even elements, then odd
        for (int64_t i = 0; i < kQB; ++i) qm[i % 2 ? 16 + i / 2 : i / 2] = qb[i];
      } else {  // a group's even elements, then its odd ones: block j is the group's first or second half
        int8_t* qg = out.q.data() + m * K + j / 2 * 64 + j % 2 * 16;
        for (int64_t i = 0; i < kQB; ++i) qg[i % 2 ? 32 + i / 2 : i / 2] = qb[i];
      }
    }
  if (order != XOrder::Lookup64) return;
  out.dp.resize(static_cast<size_t>(M * K / 8));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < K / 64; ++g)
      for (int i = 0; i < 8; ++i)
        out.dp[static_cast<size_t>(m * K / 8 + 8 * g + i)] =
            out.d[static_cast<size_t>(m * nb + 2 * g + i / 4)];
}

void int8_table(const float* code, int8_t* t) {
  for (int i = 0; i < 16; ++i)
    t[i] = static_cast<int8_t>(std::clamp(std::nearbyint(code[i] * 127.0f), -127.0f, 127.0f));
}

void ref_rows(const Q4Weights& w, const Q8& xq, int64_t M, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N, bs = w.blocksize, nb = K / kQB;
  int8_t t[16];
  int8_table(w.code, t);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float total = 0;
      for (int64_t b = 0; b < K / bs; ++b) {
        float block = 0;
        for (int64_t j = b * bs / kQB; j < (b + 1) * bs / kQB; ++j) {
          int32_t dot = 0;
          for (int64_t i = 0; i < kQB; ++i) {
            const int64_t e = n * K + j * kQB + i;
            const uint8_t byte = w.packed[e / 2];
            const int c = (e & 1) ? (byte & 0x0f) : (byte >> 4);
            dot += t[c] * xq.q[static_cast<size_t>(m * K + j * kQB + i)];
          }
          block += static_cast<float>(dot) * xq.d[static_cast<size_t>(m * nb + j)];
        }
        total += block * (w.block_absmax(n * (K / bs) + b) * kInv127);
      }
      y[m * N + n] = total;
    }
}

// --- AVX2 ---------------------------------------------------------------------------------------------

// int32 sums of 8 pairs of 4 products: weights w (int8, |w| = aw) times x (int8)
NB_AVX2 inline __m256 dot32(__m256i w, __m256i aw, const int8_t* xq) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// One block of 32 looked up (w, |w| = aw), met by MT tokens: block[m] += d_mj * (int32 sum of w * x_m)
template <int MT>
NB_AVX2 inline void meet(__m256i w, const int8_t* xq, const float* d, int64_t K, int64_t nb, __m256* block) {
  const __m256i aw = _mm256_abs_epi8(w);
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m)
    block[m] = _mm256_fmadd_ps(dot32(w, aw, xq + m * K), _mm256_broadcast_ss(d + m * nb), block[m]);
}

// Blocksize not a multiple of 64 (32, 96, ...): rows [n0, n1) for tokens [m0, m0 + MT), 16 packed bytes (one
// x block) at a time, each looked up once and met by every token.
template <int MT>
NB_AVX2 void avx2_rows32(const Q4Weights& w, const Q8& xq, int64_t m0, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N, bs = w.blocksize, nbr = K / bs, nb = K / kQB;
  const __m256i table = _mm256_load_si256(reinterpret_cast<const __m256i*>(xq.table));
  const int8_t* xq0 = xq.q.data() + m0 * K;
  const float* d0 = xq.d.data() + m0 * nb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 total[MT];
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) total[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m256 block[MT];
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) block[m] = _mm256_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += kQB)
        meet<MT>(_mm256_shuffle_epi8(table, avx2::nibble_indices(row + c / 2)), xq0 + c, d0 + c / kQB, K, nb,
                 block);
      const __m256 s = _mm256_set1_ps(w.block_absmax(n * nbr + b) * kInv127);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) total[m] = _mm256_fmadd_ps(block[m], s, total[m]);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) y[(m0 + m) * N + n] = avx2::hsum(total[m]);
  }
}

// One group of 64 weights, looked up as wh (high nibbles), wl (low) with |wh|, |wl| = awh, awl, met by one
// token's 64 x bytes at xm: the exact int32 sums as floats, lanes 0-3 the group's first x block's, 4-7 its
// second's.
NB_AVX2 inline __m256 group_sums(__m256i wh, __m256i wl, __m256i awh, __m256i awl, const int8_t* xm) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm));
  const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + 32));
  const __m256i sh = _mm256_madd_epi16(_mm256_maddubs_epi16(awh, _mm256_sign_epi8(xh, wh)), ones);
  const __m256i sl = _mm256_madd_epi16(_mm256_maddubs_epi16(awl, _mm256_sign_epi8(xl, wl)), ones);
  return _mm256_cvtepi32_ps(_mm256_add_epi32(sh, sl));
}

// Blocksize a multiple of 64: rows [n0, n1) R at a time (R = 1, or 4 for a single token; n1 - n0 a multiple
// of R) for tokens [m0, m0 + MT), 32 packed bytes (a group of 64 weights) at a time; the header states the
// arithmetic. kOneGroup (blocksize 64, bitsandbytes' default): no loop over a block's groups, whose per-block
// bookkeeping cost ~20 % at this size.
template <int R, int MT, bool kOneGroup>
NB_AVX2 void avx2_rows64(const Q4Weights& w, const Q8& xq, int64_t m0, float* y, int64_t n0, int64_t n1) {
  static_assert(R * MT <= 4, "more accumulators than registers");
  const int64_t K = w.K, N = w.N, nbr = K / w.blocksize, groups = kOneGroup ? 1 : w.blocksize / 64;
  const __m256i table = _mm256_load_si256(reinterpret_cast<const __m256i*>(xq.table));
  const __m256i m15 = _mm256_set1_epi8(15);
  const int8_t* xq0 = xq.q.data() + m0 * K;
  const float* dp0 = xq.dp.data() + m0 * (K / 8);
  for (int64_t n = n0; n < n1; n += R) {
    const uint8_t* rows = w.packed + n * K / 2;
    __m256 total[R][MT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) total[r][m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m256 block[R][MT] = {};  // set by each block's first group
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t c = (b * groups + g) * 64;
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const uint8_t* p = rows + r * K / 2 + c / 2;
          // the next R rows, one line per 64 bytes (the last group of rows reads past them only into the
          // prefetch, which never faults)
          if (R > 1 && (c & 64)) _mm_prefetch(reinterpret_cast<const char*>(p + R * K / 2), _MM_HINT_T0);
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          const __m256i wh = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m15));
          const __m256i wl = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m15));
          const __m256i awh = _mm256_abs_epi8(wh), awl = _mm256_abs_epi8(wl);
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) {
            const __m256 sums = group_sums(wh, wl, awh, awl, xq0 + m * K + c);
            const __m256 dp = _mm256_loadu_ps(dp0 + m * (K / 8) + c / 8);
            block[r][m] = g == 0 ? _mm256_mul_ps(sums, dp) : _mm256_fmadd_ps(sums, dp, block[r][m]);
          }
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256 s = _mm256_set1_ps(w.block_absmax((n + r) * nbr + b) * kInv127);
#pragma GCC unroll 4
        for (int m = 0; m < MT; ++m) total[r][m] = _mm256_fmadd_ps(block[r][m], s, total[r][m]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) y[(m0 + m) * N + n + r] = avx2::hsum(total[r][m]);
  }
}

template <bool kOneGroup>
void avx2_tokens64(const Q4Weights& w, const Q8& xq, int64_t M, float* y, int64_t a, int64_t b) {
  if (M == 1) {
    const int64_t n4 = a + (b - a) / 4 * 4;
    avx2_rows64<4, 1, kOneGroup>(w, xq, 0, y, a, n4);
    avx2_rows64<1, 1, kOneGroup>(w, xq, 0, y, n4, b);
    return;
  }
  avx2::for_token_groups(
      M, [&](auto mt, int64_t m0) { avx2_rows64<1, decltype(mt)::value, kOneGroup>(w, xq, m0, y, a, b); });
}

void avx2_tokens(const Q4Weights& w, const Q8& xq, int64_t M, float* y, int64_t a, int64_t b) {
  if (w.blocksize == 64)
    avx2_tokens64<true>(w, xq, M, y, a, b);
  else if (w.blocksize % 64 == 0)
    avx2_tokens64<false>(w, xq, M, y, a, b);
  else  // groups of up to 4 tokens share each lookup
    avx2::for_token_groups(
        M, [&](auto mt, int64_t m0) { avx2_rows32<decltype(mt)::value>(w, xq, m0, y, a, b); });
}

bool avx2_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

thread_local Q8 tl_q8;

}  // namespace

bool int8_shape_ok(const Q4Weights& w) {
  return w.K % kQB == 0 && w.blocksize % kQB == 0 && w.K % w.blocksize == 0;
}

GemmPath gemm_int8_auto_path(const Q4Weights& w) {
  return int8_shape_ok(w) && avx2_supported() ? GemmPath::Avx2 : GemmPath::Reference;
}

std::string gemm_int8_path_name(GemmPath p) {
  return p == GemmPath::Avx2 ? "avx2-int8" : "reference-int8";
}

void gemm_4bit_int8(const Q4Weights& w, const float* x, int64_t M, float* y, GemmPath path) {
  if (!int8_shape_ok(w))
    throw NotSupportedError(
        "int8 activations need K % 32 == 0 and a blocksize that is a multiple of 32 "
        "dividing K; got K = " +
        std::to_string(w.K) + ", blocksize " + std::to_string(w.blocksize));
  if (path == GemmPath::Auto) path = gemm_int8_auto_path(w);
  if (path != GemmPath::Avx2 && path != GemmPath::Reference)
    throw NotSupportedError("gemm_4bit_int8: no " + gemm_path_name(path, DType::Float32) + " path");
  if (path == GemmPath::Avx2 && !avx2_supported())
    throw NotSupportedError("gemm_4bit_int8: the avx2 path needs AVX2 and FMA");
  const bool avx2 = path == GemmPath::Avx2;
  Q8& xq = tl_q8;
  int8_table(w.code, xq.table);
  std::copy(xq.table, xq.table + 16, xq.table + 16);
  quantize_activations(x, M, w.K,
                       !avx2                   ? XOrder::Natural
                       : w.blocksize % 64 == 0 ? XOrder::Lookup64
                                               : XOrder::Lookup32,
                       xq);
#pragma omp parallel
  {
    const auto [a, b] = thread_rows(w.N);
    if (avx2)
      avx2_tokens(w, xq, M, y, a, b);
    else
      ref_rows(w, xq, M, y, a, b);
  }
}

}  // namespace nibble::kernels
