// AVX-512 / AVX512-BF16 GEMM (M > 1) of the fused 4-bit kernels, the dense GEMM, and this ISA's entry point
// (gemm_4bit: GEMV for one token, AMX tiles, the outer-product GEMM or row tiles for more). Row tiles: 4
// weight rows are decoded once into L1 (code * absmax in the compute dtype) and multiplied with 4 tokens at a
// time (16 accumulators), over token chunks sized for L2.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/avx512_common.h"

namespace nibble::kernels::avx512 {

namespace {

constexpr int64_t kRowTile = 4, kTokTile = 4, kTokChunk = 64;

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

}  // namespace

NB_BF16 void decode_row_bf16(const Q4Weights& w, int64_t n, uint16_t* out, float* tmp) {
  decode_row_f32(w, n, tmp);
  for (int64_t k = 0; k < w.K; k += 32) {
    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(tmp + k + 16), _mm512_loadu_ps(tmp + k));
    _mm512_storeu_si512(out + k, v);
  }
}

namespace {

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
}  // namespace

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

bool supported(DType compute) {
  __builtin_cpu_init();
  const bool f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (compute == DType::BFloat16) return f && __builtin_cpu_supports("avx512bf16");
  // float16 compute takes the AVX2 path (bitsandbytes' fp16 weights looked up per block) on these CPUs too
  return f && compute == DType::Float32;
}

// Requires: supported(compute), K % blocksize == 0 (blocks never straddle rows), K % 32 == 0; amx: also
// amx_supported(), bfloat16 compute and M > 1.
// invariant: no GEMV for one token, no outer-product GEMM from 32 (the row-tile kernel for every M)
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, bool amx,
               bool invariant) {
  const int64_t N = w.N, K = w.K;
  if (M == 1 && !invariant) {
    if (compute == DType::BFloat16) {
      // per thread, reused across calls: the decode loop allocates nothing once warm
      static thread_local std::vector<uint16_t> xb, xp;
      xb.resize(static_cast<size_t>(K));
      to_bf16(x, K, xb.data());
      const bool by128 = K % 128 == 0;
      xp.resize(static_cast<size_t>(K));
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
  if (bf && M >= 32 && K % 2 == 0 &&
      !invariant) {  // below ~32 tokens the panel packing costs more than it saves
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
  static thread_local std::vector<uint16_t> xb;  // reused across calls (no allocation per token)
  xb.resize(bf ? static_cast<size_t>(M * K) : 0);
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
