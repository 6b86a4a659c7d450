#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/avx2_common.h"

namespace nibble::kernels {

namespace {
// The reference's softmax over scores row[0, n): exponentiates in place (exp(v - max)) and returns 1 / sum.
float softmax_exp(float* row, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - mx));
  return 1.0f / sum;
}

// One (token, head): scores, softmax, weighted sum. Dot/axpy are the only parts that differ by path.
template <typename Dot, typename Axpy>
void one_head(const AttentionShape& s, const float* qv, const float* kc, const float* vc, int64_t hk,
              int64_t pos, float* out, std::vector<float>& sc, Dot dot, Axpy axpy) {
  const int64_t D = s.head_dim, stride = s.kv_heads * D;
  const int64_t lo = s.window > 0 ? std::max<int64_t>(0, pos - s.window + 1) : 0, n = pos + 1 - lo;
  // capacity in steps of 1024 positions: a decode loop reallocates once per 1024 tokens, not per token
  if (sc.capacity() < static_cast<size_t>(n)) sc.reserve(static_cast<size_t>((n + 1023) / 1024 * 1024));
  sc.resize(static_cast<size_t>(n));
  const float* krow = kc + (lo - s.kv_first) * stride + hk * D;  // position lo's row
  for (int64_t j = lo; j <= pos; ++j, krow += stride)
    sc[static_cast<size_t>(j - lo)] = dot(qv, krow, D) * s.scale;
  if (s.softcap != 0)
    for (float& v : sc) v = std::tanh(v / s.softcap) * s.softcap;
  const float inv = softmax_exp(sc.data(), n);
  std::fill(out, out + D, 0.0f);
  const float* vrow = vc + (lo - s.kv_first) * stride + hk * D;
  for (int64_t j = lo; j <= pos; ++j, vrow += stride)
    axpy(sc[static_cast<size_t>(j - lo)] * inv, vrow, out, D);
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
void axpy_scalar(float p, const float* v, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += p * v[i];
}

__attribute__((target("avx512f"))) float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i < n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
__attribute__((target("avx512f"))) void axpy_avx512(float p, const float* v, float* out, int64_t n) {
  const __m512 pv = _mm512_set1_ps(p);
  for (int64_t i = 0; i < n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_fmadd_ps(pv, _mm512_loadu_ps(v + i), _mm512_loadu_ps(out + i)));
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i < n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  return avx2::hsum(_mm256_add_ps(s0, s1));
}
__attribute__((target("avx2,fma"))) void axpy_avx2(float p, const float* v, float* out, int64_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  for (int64_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
}

// --- prefill: many new tokens at once ----------------------------------------------------------------------
// Per kv head, the keys are transposed once into blocks of 16 ([P/16][D][16]), so the scores of 16 queries
// against 16 keys are 16 register accumulators fed by one key-row load and 16 broadcasts per d: no horizontal
// sums. Softmax is the reference's (max, exp, sum over the whole row); the weighted sum of v keeps one
// query's output (up to 128 floats) in registers across all its keys.
constexpr int64_t kQB = 16;
// Below this many new tokens (decode, short continuations) the per-token dot/axpy path is cheaper than
// transposing the keys.
constexpr int64_t kPrefillMinTokens = 8;

__attribute__((target("avx512f"))) void prefill_head_block(const AttentionShape& s, const float* q,
                                                           const float* kt, const float* vh, float* out,
                                                           int64_t h, int64_t t0, float* sc, int64_t ldsc) {
  const int64_t D = s.head_dim, nq = std::min(kQB, s.T - t0);
  const int64_t P = s.start + t0 + nq;  // keys any query of the block sees
  const float* qrow[kQB];
  for (int64_t i = 0; i < kQB; ++i) qrow[i] = q + ((t0 + std::min(i, nq - 1)) * s.heads + h) * D;
  const __m512 scale = _mm512_set1_ps(s.scale);
  for (int64_t j0 = 0; j0 < P; j0 += 16) {
    const float* kb = kt + j0 * D;  // [D][16]
    __m512 acc[kQB];
#pragma GCC unroll 16
    for (int64_t i = 0; i < kQB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 kv = _mm512_loadu_ps(kb + d * 16);
#pragma GCC unroll 16
      for (int64_t i = 0; i < kQB; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(qrow[i][d]), kv, acc[i]);
    }
    // the reference scales each dot product after summing: (q . k) * scale
#pragma GCC unroll 16
    for (int64_t i = 0; i < kQB; ++i) _mm512_storeu_ps(sc + i * ldsc + j0, _mm512_mul_ps(acc[i], scale));
  }
  for (int64_t i = 0; i < nq; ++i) {
    float* row = sc + i * ldsc;
    const int64_t n = s.start + t0 + i + 1;
    const float inv = softmax_exp(row, n);
    float* o = out + ((t0 + i) * s.heads + h) * D;
    for (int64_t d0 = 0; d0 < D; d0 += 128) {
      const int64_t nc = std::min<int64_t>(8, (D - d0) / 16);
      __m512 acc[8];
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) acc[c] = _mm512_setzero_ps();
      const float* vb = vh + d0;
      if (nc == 8) {
        for (int64_t j = 0; j < n; ++j) {
          const __m512 p = _mm512_set1_ps(row[j] * inv);
#pragma GCC unroll 8
          for (int c = 0; c < 8; ++c)
            acc[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vb + j * D + 16 * c), acc[c]);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const __m512 p = _mm512_set1_ps(row[j] * inv);
          for (int64_t c = 0; c < nc; ++c)
            acc[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vb + j * D + 16 * c), acc[c]);
        }
      }
      for (int64_t c = 0; c < nc; ++c) _mm512_storeu_ps(o + d0 + 16 * c, acc[c]);
    }
  }
}

void prefill_avx512(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out) {
  const int64_t D = s.head_dim, stride = s.kv_heads * D, group = s.heads / s.kv_heads;
  const int64_t P = s.start + s.T, Ppad = (P + 15) / 16 * 16;
#pragma omp parallel
  {
    // this head's keys and values, contiguous: in the cache consecutive positions are kv_heads * D floats
    // apart, so every step of a sweep over positions would touch a new page
    std::vector<float> kt(static_cast<size_t>(Ppad * D)), vh(static_cast<size_t>(P * D)),
        sc(static_cast<size_t>(kQB * Ppad));
#pragma omp for schedule(dynamic, 1)
    for (int64_t hk = 0; hk < s.kv_heads; ++hk) {
      for (int64_t j = 0; j < Ppad; ++j)  // keys past P are zero (their scores are never read)
        for (int64_t d = 0; d < D; ++d)
          kt[static_cast<size_t>((j / 16 * D + d) * 16 + j % 16)] =
              j < P ? kc[j * stride + hk * D + d] : 0.0f;
      for (int64_t j = 0; j < P; ++j) std::copy_n(vc + j * stride + hk * D, D, vh.data() + j * D);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
        for (int64_t t0 = 0; t0 < s.T; t0 += kQB)
          prefill_head_block(s, q, kt.data(), vh.data(), out, h, t0, sc.data(), Ppad);
    }
  }
}

template <typename Dot, typename Axpy>
void run(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out, Dot dot,
         Axpy axpy) {
  const int64_t group = s.heads / s.kv_heads, D = s.head_dim;
#pragma omp parallel
  {
    // scores of one head, reused across calls: the decode loop allocates nothing after its first token
    static thread_local std::vector<float> sc;
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t h = 0; h < s.heads; ++h)
        one_head(s, q + (t * s.heads + h) * D, kc, vc, h / group, s.start + t, out + (t * s.heads + h) * D,
                 sc, dot, axpy);
  }
}
}  // namespace

namespace ref {
void attention(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out) {
  run(s, q, kc, vc, out, dot_scalar, axpy_scalar);
}
}  // namespace ref

namespace avx2 {
bool supported(int64_t head_dim) {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return cpu && head_dim % 8 == 0;
}
void attention(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out) {
  run(s, q, kc, vc, out, dot_avx2, axpy_avx2);
}
}  // namespace avx2

void attention(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out) {
  static const bool avx512 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  // the blocked prefill has no sliding-window mask, soft-capping or dropped rows: such layers take the
  // per-token path
  if (avx512 && s.head_dim % 16 == 0 && s.T >= kPrefillMinTokens && s.window == 0 && s.softcap == 0 &&
      s.kv_first == 0) {
    prefill_avx512(s, q, kc, vc, out);
  } else if (avx512 && s.head_dim % 16 == 0) {
    run(s, q, kc, vc, out, dot_avx512, axpy_avx512);
  } else if (avx2::supported(s.head_dim)) {
    avx2::attention(s, q, kc, vc, out);
  } else {
    ref::attention(s, q, kc, vc, out);
  }
}

}  // namespace nibble::kernels
