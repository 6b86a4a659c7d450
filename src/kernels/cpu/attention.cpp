#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace nibble::kernels {

namespace {
// One (token, head): scores, softmax, weighted sum. Dot/axpy are the only parts that differ by path.
template <typename Dot, typename Axpy>
void one_head(const AttentionShape& s, const float* qv, const float* kc, const float* vc, int64_t hk,
              int64_t pos, float* out, std::vector<float>& sc, Dot dot, Axpy axpy) {
  const int64_t D = s.head_dim, stride = s.kv_heads * D;
  sc.resize(static_cast<size_t>(pos + 1));
  float mx = -INFINITY;
  for (int64_t j = 0; j <= pos; ++j) {
    const float v = dot(qv, kc + j * stride + hk * D, D) * s.scale;
    sc[static_cast<size_t>(j)] = v;
    mx = std::max(mx, v);
  }
  float sum = 0;
  for (auto& v : sc) sum += (v = std::exp(v - mx));
  std::fill(out, out + D, 0.0f);
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j <= pos; ++j) axpy(sc[static_cast<size_t>(j)] * inv, vc + j * stride + hk * D, out, D);
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

template <typename Dot, typename Axpy>
void run(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out, Dot dot,
         Axpy axpy) {
  const int64_t group = s.heads / s.kv_heads, D = s.head_dim;
#pragma omp parallel
  {
    std::vector<float> sc;
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

void attention(const AttentionShape& s, const float* q, const float* kc, const float* vc, float* out) {
  static const bool avx512 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  if (avx512 && s.head_dim % 16 == 0) {
    run(s, q, kc, vc, out, dot_avx512, axpy_avx512);
  } else {
    ref::attention(s, q, kc, vc, out);
  }
}

}  // namespace nibble::kernels
