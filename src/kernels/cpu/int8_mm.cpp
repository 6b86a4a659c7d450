// LLM.int8 kernels (int8_mm.h): row quantization, the scalar reference matmul and the AVX2 one.
//
// AVX2: per 32 int8 weights, vpabsb gives |w| (unsigned, so a stored -128 is 128), vpsignb moves w's sign
// onto each token's x (|x| <= 127: the negation cannot overflow), vpmaddubsw(|w|, ±x) sums pairs in int16 (at
// most 2 * 128 * 127 < 2^15, never saturating) and vpmaddwd(1) widens to int32: exact. Rows are taken in
// tiles that stay in L2 while every group of up to 4 tokens passes over them (a prompt re-reads x per tile,
// not the weights per token).
#include "kernels/cpu/int8_mm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/avx2_common.h"
#include "nibble/dtype.h"
#include "nibble/error.h"

namespace nibble::kernels {

namespace {

// torch's round() then .to(int8) for a finite value in range; NaN (0 * inf of an all-zero row) -> 0
int8_t to_int8(float v) {
  if (std::isnan(v)) return 0;
  return static_cast<int8_t>(std::clamp(std::nearbyint(v), -128.0f, 127.0f));
}

// The dequantized outlier columns of rows [n0, n1): ws[(n - n0) * C + c]
void outlier_weights(const I8Weights& w, const Int8Epilogue& e, int64_t n0, int64_t n1, float* ws) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.cb + n * w.K;
    const float s = w.scb[n];
    for (int64_t c = 0; c < e.C; ++c)
      ws[(n - n0) * e.C + c] = round_to(e.dtype, static_cast<float>(row[e.cols[c]]) * s * kInt8Dequant);
  }
}

// bitsandbytes' int8_mm_dequant (+ bias, to the model dtype), then the outlier columns' sum added
inline float finish(const Int8Epilogue& e, int32_t acc, float rs, float scb, int64_t n, float osum) {
  float v = static_cast<float>(acc) * (rs * scb) * kInt8MmDequant;
  if (e.bias) v += e.bias[n];
  v = round_to(e.dtype, v);
  if (e.C > 0) v = round_to(e.dtype, v + round_to(e.dtype, osum));
  return v;
}

thread_local std::vector<float> tl_ws;  // outlier weights of the rows a thread is on

void ref_rows(const I8Weights& w, const int8_t* a, const float* rs, int64_t M, float* y,
              const Int8Epilogue& e, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N;
  tl_ws.reserve(static_cast<size_t>(w.K));  // the most columns a call can have: no regrowth per call
  tl_ws.resize(static_cast<size_t>(e.C));
  for (int64_t n = n0; n < n1; ++n) {
    outlier_weights(w, e, n, n + 1, tl_ws.data());
    for (int64_t m = 0; m < M; ++m) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<int32_t>(a[m * K + k]) * static_cast<int32_t>(w.cb[n * K + k]);
      float osum = 0;
      for (int64_t c = 0; c < e.C; ++c) osum += e.xo[m * e.C + c] * tl_ws[static_cast<size_t>(c)];
      y[m * N + n] = finish(e, acc, rs[m], w.scb[n], n, osum);
    }
  }
}

// --- AVX2 ---------------------------------------------------------------------------------------------

NB_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// osum[m] = sum_c xo[m, c] * ws[c] for MT tokens: each 8 columns of ws loaded once, MT independent FMA chains
// (two per token when MT = 1: one chain would wait on the FMA latency)
template <int MT>
NB_AVX2 inline void outlier_dots(const float* xo, int64_t C, const float* ws, float* osum) {
  constexpr int NA = MT == 1 ? 2 : 1;
  __m256 acc[MT][NA];
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NA; ++j) acc[m][j] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 * NA <= C; c += 8 * NA)
#pragma GCC unroll 2
    for (int j = 0; j < NA; ++j) {
      const __m256 wv = _mm256_loadu_ps(ws + c + 8 * j);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m)
        acc[m][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xo + m * C + c + 8 * j), wv, acc[m][j]);
    }
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m) {
    __m256 a = acc[m][0];
    if constexpr (NA == 2) a = _mm256_add_ps(a, acc[m][1]);
    float r = avx2::hsum(a);
    for (int64_t k = c; k < C; ++k) r += xo[m * C + k] * ws[k];
    osum[m] = r;
  }
}

// Row n met by tokens [m0, m0 + MT): y[m, n] for each; ws: the row's dequantized outlier columns, filled
// here by the first token group (`fill`) while the row is in L1 (before, they would be cache misses).
template <int MT>
NB_AVX2 inline void avx2_row(const I8Weights& w, const int8_t* a, const float* rs, const Int8Epilogue& e,
                             float* ws, bool fill, int64_t m0, int64_t n, float* y) {
  const int64_t K = w.K, K32 = K & ~int64_t{31};
  const int8_t* row = w.cb + n * K;
  const int8_t* x0 = a + m0 * K;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MT];
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_si256();
  for (int64_t k = 0; k < K32; k += 32) {
    // the first pass over a row streams it from DRAM: fetch the next row meanwhile (a row is a few KB, too
    // short for the hardware prefetcher to ramp up in)
    if (fill) _mm_prefetch(reinterpret_cast<const char*>(row + K + k), _MM_HINT_T0);
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
    const __m256i aw = _mm256_abs_epi8(wv);
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + m * K + k));
      const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
      acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(p, ones));
    }
  }
  if (fill && e.C > 0) outlier_weights(w, e, n, n + 1, ws);
  float osum[MT] = {};
  if (e.C > 0) outlier_dots<MT>(e.xo + m0 * e.C, e.C, ws, osum);
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m) {
    int32_t s = hsum_i32(acc[m]);
    for (int64_t k = K32; k < K; ++k) s += static_cast<int32_t>(x0[m * K + k]) * static_cast<int32_t>(row[k]);
    y[(m0 + m) * w.N + n] = finish(e, s, rs[m0 + m], w.scb[n], n, osum[m]);
  }
}

template <int MT>
NB_AVX2 void avx2_tile(const I8Weights& w, const int8_t* a, const float* rs, const Int8Epilogue& e, float* ws,
                       int64_t m0, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) avx2_row<MT>(w, a, rs, e, ws + (n - n0) * e.C, m0 == 0, m0, n, y);
}

void avx2_rows(const I8Weights& w, const int8_t* a, const float* rs, int64_t M, float* y,
               const Int8Epilogue& e, int64_t n0, int64_t n1) {
  // about 128 KB of weight rows per tile: L2-resident while the token groups pass
  const int64_t tile = std::max<int64_t>(4, (int64_t{128} << 10) / std::max<int64_t>(1, w.K));
  tl_ws.reserve(static_cast<size_t>(tile * w.K));  // the most columns a call can have: no regrowth per call
  tl_ws.resize(static_cast<size_t>(tile * e.C));
  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int64_t t1 = std::min(n1, t0 + tile);
    avx2::for_token_groups(M, [&](auto mt, int64_t m0) {
      avx2_tile<decltype(mt)::value>(w, a, rs, e, tl_ws.data(), m0, y, t0, t1);
    });
  }
}

bool avx2_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

float int8_quantize_row(const float* v, int64_t K, int8_t* q) {
  float amax = 0;
  for (int64_t j = 0; j < K; ++j) amax = std::max(amax, std::fabs(v[j]));
  // torch evaluates 127.0 / row_stats as reciprocal() * 127: two float32 roundings (a true division differs
  // by one step for about a quarter of the float16 absmax values). An all-zero row: 0 * inf = NaN -> 0.
  const float s = (1.0f / amax) * 127.0f;
  for (int64_t j = 0; j < K; ++j) q[j] = to_int8(v[j] * s);
  return amax;
}

void int8_quantize_activations(const float* x, int64_t M, int64_t K, float threshold, int8_t* q, float* rs,
                               std::vector<int32_t>& outlier_cols) {
  outlier_cols.clear();
  outlier_cols.reserve(static_cast<size_t>(K));  // once: the count varies per call
  // torch compares the float16 tensor with the threshold in float16
  const float thr = round_to(DType::Float16, threshold);
  const bool decompose = threshold > 0.0f;
  thread_local std::vector<float> row;  // scratch kept between calls: no allocation per decode step
  thread_local std::vector<uint8_t> is_outlier_col;
  row.resize(static_cast<size_t>(K));
  if (decompose) {
    is_outlier_col.assign(static_cast<size_t>(K), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        if (std::fabs(round_to(DType::Float16, x[m * K + k])) >= thr)
          is_outlier_col[static_cast<size_t>(k)] = 1;
    for (int64_t k = 0; k < K; ++k)
      if (is_outlier_col[static_cast<size_t>(k)]) outlier_cols.push_back(static_cast<int32_t>(k));
  }
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const float v = round_to(DType::Float16, x[m * K + k]);
      row[static_cast<size_t>(k)] = decompose && std::fabs(v) >= thr ? 0.0f : v;  // outlier elements zeroed
    }
    rs[m] = int8_quantize_row(row.data(), K, q + m * K);
    if (M > 1)
      for (const int32_t c : outlier_cols) q[m * K + c] = 0;
  }
}

GemmPath int8_mm_auto_path() {
  return avx2_supported() ? GemmPath::Avx2 : GemmPath::Reference;
}

std::string int8_mm_path_name(GemmPath p) {
  return p == GemmPath::Avx2 ? "avx2-int8mm" : "reference-int8mm";
}

void int8_mm_dequant(const I8Weights& w, const int8_t* a, const float* rs, int64_t M, float* y,
                     const Int8Epilogue& e, GemmPath path) {
  if (path == GemmPath::Auto) path = int8_mm_auto_path();
  if (path != GemmPath::Avx2 && path != GemmPath::Reference)
    throw NotSupportedError("int8_mm_dequant: no " + gemm_path_name(path, DType::Float32) + " path");
  if (path == GemmPath::Avx2 && !avx2_supported())
    throw NotSupportedError("int8_mm_dequant: the avx2 path needs AVX2 and FMA");
  const bool avx2 = path == GemmPath::Avx2;
#pragma omp parallel if (w.N * w.K * M > (1 << 15))
  {
    const auto [n0, n1] = thread_rows(w.N);
    if (n0 < n1) {
      if (avx2)
        avx2_rows(w, a, rs, M, y, e, n0, n1);
      else
        ref_rows(w, a, rs, M, y, e, n0, n1);
    }
  }
}

}  // namespace nibble::kernels
