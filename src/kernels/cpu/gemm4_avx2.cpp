// AVX2 + FMA paths of the fused 4-bit GEMV/GEMM and the dense GEMM, for CPUs without AVX-512 (most laptops
// and desktops, AMD before Zen 4). Functions carry target attributes and run only after a CPU feature check.
//
// The 16-entry code table is two 8-lane halves: vpermps on each, blended on bit 3 of the index. 8 packed
// bytes (16 elements) widen to 8 x 32-bit lanes; the high nibbles (even elements) and the low ones (odd
// elements) meet x pre-split per 16-element chunk into its 8 even and 8 odd elements (the dot product does
// not care about order). bfloat16 compute follows the AVX512-BF16 path's arithmetic: x and the table rounded
// to bfloat16, products summed in float32, each block's sum scaled by its absmax. M > 1 decodes 4 rows at a
// time (code * absmax rounded to the compute dtype, in the same split order) and reuses them for every token.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/gemm4.h"
#include "nibble/tensor.h"

#define NB_AVX2 __attribute__((target("avx2,fma")))

namespace nibble::kernels::avx2 {

namespace {

float round_compute(DType cd, float v) {
  return cd == DType::BFloat16 ? bf16_to_float(float_to_bf16(v)) : v;
}

// x rounded to the compute dtype, each 16-element chunk as 8 even then 8 odd elements
std::vector<float> split_x(const float* x, int64_t M, int64_t K, DType cd) {
  std::vector<float> xd(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; c += 16)
      for (int64_t j = 0; j < 8; ++j) {
        xd[static_cast<size_t>(m * K + c + j)] = round_compute(cd, x[m * K + c + 2 * j]);
        xd[static_cast<size_t>(m * K + c + 8 + j)] = round_compute(cd, x[m * K + c + 2 * j + 1]);
      }
  return xd;
}

NB_AVX2 inline __m256 lookup(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

NB_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 packed bytes -> high nibbles (elements 0, 2, ..., 14) and low nibbles (1, 3, ..., 15) as 8 lanes each
NB_AVX2 inline void nibbles(const uint8_t* p, __m256i& hi, __m256i& lo) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  hi = _mm256_srli_epi32(v, 4);
  lo = _mm256_and_si256(v, _mm256_set1_epi32(15));
}

struct Table {
  __m256 lo, hi;
};

NB_AVX2 Table make_table(const Q4Weights& w, DType cd) {
  alignas(32) float t[16];
  for (int i = 0; i < 16; ++i) t[i] = round_compute(cd, w.code[i]);
  return {_mm256_load_ps(t), _mm256_load_ps(t + 8)};
}

NB_AVX2 void gemv(const Q4Weights& w, const float* xd, float* y, int64_t n0, int64_t n1, DType cd) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  const Table t = make_table(w, cd);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 total = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(row + c / 2 + K / 2), _MM_HINT_T1);  // next row
        __m256i hi, lo;
        nibbles(row + c / 2, hi, lo);
        a0 = _mm256_fmadd_ps(lookup(hi, t.lo, t.hi), _mm256_loadu_ps(xd + c), a0);
        a1 = _mm256_fmadd_ps(lookup(lo, t.lo, t.hi), _mm256_loadu_ps(xd + c + 8), a1);
      }
      total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(w.block_absmax(n * nbr + b)), total);
    }
    y[n] = hsum(total);
  }
}

// bfloat16 round-to-nearest-even of finite float32 lanes, kept as float32
NB_AVX2 inline __m256 round_bf16(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// one row as code * absmax rounded to the compute dtype (the reference's weight), in the split order
// raw: the float32 code table (the reference multiplies before rounding)
NB_AVX2 void decode_row(const Q4Weights& w, int64_t n, DType cd, const Table& raw, float* out) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  const uint8_t* row = w.packed + n * K / 2;
  for (int64_t b = 0; b < nbr; ++b) {
    const __m256 s = _mm256_set1_ps(w.block_absmax(n * nbr + b));
    for (int64_t c = b * bs; c < (b + 1) * bs; c += 16) {
      __m256i hi, lo;
      nibbles(row + c / 2, hi, lo);
      __m256 vh = _mm256_mul_ps(lookup(hi, raw.lo, raw.hi), s),
             vl = _mm256_mul_ps(lookup(lo, raw.lo, raw.hi), s);
      if (cd == DType::BFloat16) {
        vh = round_bf16(vh);
        vl = round_bf16(vl);
      }
      _mm256_storeu_ps(out + c, vh);
      _mm256_storeu_ps(out + c + 8, vl);
    }
  }
}

// y[m, n0 + r] for r < rows, all tokens, given decoded rows (split order) and split x
NB_AVX2 void rows_times_tokens(const float* const* wr, int64_t rows, const float* xd, int64_t M, int64_t K,
                               float* y, int64_t N, int64_t n0) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = xd + m * K;
    if (rows == 4) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k += 8) {
        const __m256 xv = _mm256_loadu_ps(xm + k);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[0] + k), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[1] + k), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[2] + k), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[3] + k), xv, a3);
      }
      y[m * N + n0] = hsum(a0);
      y[m * N + n0 + 1] = hsum(a1);
      y[m * N + n0 + 2] = hsum(a2);
      y[m * N + n0 + 3] = hsum(a3);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 8)
          a = _mm256_fmadd_ps(_mm256_loadu_ps(wr[r] + k), _mm256_loadu_ps(xm + k), a);
        y[m * N + n0 + r] = hsum(a);
      }
    }
  }
}

}  // namespace

bool supported(DType compute) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         (compute == DType::Float32 || compute == DType::BFloat16);
}

// Requires: supported(compute), K % blocksize == 0, K % 32 == 0 (blocksize >= 32).
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute) {
  const int64_t N = w.N, K = w.K;
  const std::vector<float> xd = split_x(x, M, K, compute);
  if (M == 1) {
#pragma omp parallel
    {
      const auto [a, b] = thread_rows(N);
      gemv(w, xd.data(), y, a, b, compute);
    }
    return;
  }
  constexpr int64_t R = 4;
  const int64_t tiles = (N + R - 1) / R;
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(R * K));
    const Table raw = make_table(w, DType::Float32);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t n0 = i * R, rows = std::min(R, N - n0);
      const float* wr[R];
      for (int64_t r = 0; r < rows; ++r) {
        decode_row(w, n0 + r, compute, raw, buf.data() + r * K);
        wr[r] = buf.data() + r * K;
      }
      rows_times_tokens(wr, rows, xd.data(), M, K, y, N, n0);
    }
  }
}

// Dense float32 / bfloat16 weights; bfloat16 weights meet x rounded to bfloat16, as on the AVX512-BF16 path.
// Requires K % 8 == 0.
void gemm_dense(const void* wp, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
  const bool bf = wdt == DType::BFloat16;
  std::vector<float> xr;  // bfloat16 weights: x rounded to bfloat16
  if (bf) {
    xr.resize(static_cast<size_t>(M * K));
    for (size_t i = 0; i < xr.size(); ++i) xr[i] = bf16_to_float(float_to_bf16(x[i]));
  }
  const float* xs = bf ? xr.data() : x;
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* wn = static_cast<const float*>(wp) + n * K;
      if (bf) {
        convert_floats(wdt, static_cast<const uint8_t*>(wp) + static_cast<size_t>(n * K) * 2, DType::Float32,
                       row.data(), static_cast<size_t>(K));
        wn = row.data();
      }
      const float* wr[1] = {wn};
      rows_times_tokens(wr, 1, xs, M, K, y, N, n);
    }
  }
}

}  // namespace nibble::kernels::avx2
