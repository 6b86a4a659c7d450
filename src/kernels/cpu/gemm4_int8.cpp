// The opt-in int8-activation 4-bit GEMV/GEMM (gemm4.h states the arithmetic): activation quantization shared
// by every path, the scalar reference, and the AVX2 path.
//
// AVX2: 16 packed bytes become 32 nibble indices (high nibbles, elements 2p, in the low lane; low nibbles,
// elements 2p + 1, in the high lane; from 32 bytes, vperm2i128 regroups them into two such registers), one
// vpshufb of the int8 table gives the weights, and per token and block of 32: vpsignb moves the weight's sign
// onto x, vpmaddubsw(|w|, ±x) and vpmaddwd(1) sum the products exactly in int32 (|w|, |x| <= 127: pairs stay
// below 2^15), vcvtdq2ps + FMA scale by d_j; each weight block's sum is scaled by absmax_b / 127. x is
// quantized once per call in the order of the lookups.
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

// The element (within its 32-block) at byte position p of a lookup register.
int elem_at(int p) {
  return p < 16 ? 2 * p : 2 * (p - 16) + 1;
}

// Activations quantized per block of 32: q[m * K + j * 32 + p] (byte positions in lookup order when
// `permuted`, else natural order) and d[m * (K / 32) + j].
struct Q8 {
  std::vector<int8_t> q;
  std::vector<float> d;
};

void quantize_activations(const float* x, int64_t M, int64_t K, bool permuted, Q8& out) {
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
      int8_t* qb = out.q.data() + m * K + j * kQB;
      for (int p = 0; p < kQB; ++p) {
        const float v = xb[permuted ? elem_at(p) : p] * id;
        qb[p] = static_cast<int8_t>(std::clamp(std::nearbyint(v), -127.0f, 127.0f));
      }
    }
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

// Rows [n0, n1) for tokens [m0, m0 + MT): each 32-weight block looked up once, met by every token. C = 64
// reads 32 packed bytes at a time (blocksize % 64 == 0), C = 32 reads 16.
template <int MT, int64_t C>
NB_AVX2 void avx2_rows(const Q4Weights& w, const Q8& xq, int64_t m0, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N, bs = w.blocksize, nbr = K / bs, nb = K / kQB;
  alignas(32) int8_t tb[32];
  int8_table(w.code, tb);
  std::copy(tb, tb + 16, tb + 16);
  const __m256i table = _mm256_load_si256(reinterpret_cast<const __m256i*>(tb));
  const int8_t* xq0 = xq.q.data() + m0 * K;
  const float* d0 = xq.d.data() + m0 * nb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 total[MT];
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) total[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      __m256 block[MT], block2[MT];  // the two halves of a 64-weight step: independent FMA chains
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) block[m] = block2[m] = _mm256_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += C) {
        const int64_t j = c / kQB;
        if constexpr (C == 64) {  // high and low nibbles regrouped by 128-bit lane into two blocks of 32
          __m256i hi, lo;
          avx2::nibble_indices64(row + c / 2, hi, lo);
          meet<MT>(_mm256_shuffle_epi8(table, _mm256_permute2x128_si256(hi, lo, 0x20)), xq0 + c, d0 + j, K,
                   nb, block);
          meet<MT>(_mm256_shuffle_epi8(table, _mm256_permute2x128_si256(hi, lo, 0x31)), xq0 + c + kQB,
                   d0 + j + 1, K, nb, block2);
        } else {
          meet<MT>(_mm256_shuffle_epi8(table, avx2::nibble_indices(row + c / 2)), xq0 + c, d0 + j, K, nb,
                   block);
        }
      }
      const __m256 s = _mm256_set1_ps(w.block_absmax(n * nbr + b) * kInv127);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m)
        total[m] = _mm256_fmadd_ps(_mm256_add_ps(block[m], block2[m]), s, total[m]);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) y[(m0 + m) * N + n] = avx2::hsum(total[m]);
  }
}

template <int64_t C>
void avx2_tokens(const Q4Weights& w, const Q8& xq, int64_t M, float* y, int64_t a, int64_t b) {
  // groups of up to 4 tokens share each lookup
  avx2::for_token_groups(M,
                         [&](auto mt, int64_t m0) { avx2_rows<decltype(mt)::value, C>(w, xq, m0, y, a, b); });
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
  quantize_activations(x, M, w.K, avx2, xq);
#pragma omp parallel
  {
    const auto [a, b] = thread_rows(w.N);
    if (!avx2)
      ref_rows(w, xq, M, y, a, b);
    else if (w.blocksize % 64 == 0)
      avx2_tokens<64>(w, xq, M, y, a, b);
    else
      avx2_tokens<32>(w, xq, M, y, a, b);
  }
}

}  // namespace nibble::kernels
