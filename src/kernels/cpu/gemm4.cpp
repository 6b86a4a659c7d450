// Dispatch and threading for the fused 4-bit GEMM and the dense GEMM.
#include "kernels/cpu/gemm4.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "nibble/error.h"
#include "nibble/tensor.h"

namespace nibble::kernels {

namespace avx512 {
bool supported(DType compute);
bool amx_supported();
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, bool amx,
               bool invariant);
void gemm_dense(const void* w, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y);
}  // namespace avx512

namespace avx2 {
bool supported(DType compute);
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, bool invariant);
void gemm_dense(const void* w, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y,
                bool invariant);
void gemm_4bit_input_grad(const Q4Weights& w, const float* dy, int64_t M, float* dx, DType compute);
}  // namespace avx2

namespace {
bool fast_shape(const Q4Weights& w) {
  return w.K % w.blocksize == 0 && w.K % 32 == 0;
}
// Below 8 tokens the AMX path's fixed cost (decoding every weight once per call) loses to the AVX-512
// kernels (measured at 4096x4096: equal at M = 8, AMX 1.4x at 12, 1.7x at 16).
constexpr int64_t kAmxMinTokens = 8;
thread_local bool tl_row_invariant = false;
}  // namespace

RowInvariantScope::RowInvariantScope(bool on) : prev_(tl_row_invariant) {
  tl_row_invariant = on;
}
RowInvariantScope::~RowInvariantScope() {
  tl_row_invariant = prev_;
}
bool row_invariant() {
  return tl_row_invariant;
}

bool gemm_path_available(GemmPath p, DType compute) {
  if (p == GemmPath::Reference || p == GemmPath::Auto) return true;
  if (p == GemmPath::Amx) return compute == DType::BFloat16 && avx512::amx_supported();
  if (p == GemmPath::Avx2) return avx2::supported(compute);
  return avx512::supported(compute);
}

std::string gemm_path_name(GemmPath p, DType compute) {
  if (p == GemmPath::Auto) {
    if (!avx512::supported(compute)) return avx2::supported(compute) ? "avx2" : "reference";
    return gemm_path_available(GemmPath::Amx, compute) ? "avx512-bf16+amx"
           : compute == DType::BFloat16                ? "avx512-bf16"
                                                       : "avx512";
  }
  if (p == GemmPath::Reference) return "reference";
  if (p == GemmPath::Amx) return "amx-bf16";
  if (p == GemmPath::Avx2) return "avx2";
  return compute == DType::BFloat16 ? "avx512-bf16" : "avx512";
}

GemmPath gemm_auto_path(const Q4Weights& w, int64_t M, DType compute) {
  if (!fast_shape(w)) return GemmPath::Reference;
  if (!avx512::supported(compute)) return avx2::supported(compute) ? GemmPath::Avx2 : GemmPath::Reference;
  if (M >= kAmxMinTokens && gemm_path_available(GemmPath::Amx, compute)) return GemmPath::Amx;
  return GemmPath::Avx512;
}

void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, GemmPath path) {
  const bool inv = tl_row_invariant;
  // row-invariant: the path a multi-token call below the AMX threshold takes, for every M
  if (path == GemmPath::Auto) path = gemm_auto_path(w, inv ? 2 : M, compute);
  if (path == GemmPath::Avx2) {
    if (!avx2::supported(compute) || !fast_shape(w))
      throw NotSupportedError(
          "gemm_4bit: the avx2 path needs AVX2, FMA and F16C, float32, bfloat16 or float16 compute, "
          "K % blocksize == 0 and K % 32 == 0");
    avx2::gemm_4bit(w, x, M, y, compute, inv);
    return;
  }
  if (path == GemmPath::Avx512 || path == GemmPath::Amx) {
    const bool amx = path == GemmPath::Amx;
    if (!gemm_path_available(path, compute) || !fast_shape(w))
      throw NotSupportedError(
          "gemm_4bit: the " + gemm_path_name(path, compute) +
          " path needs AVX-512 (BF16 for bfloat16, AMX-BF16 for amx), K % blocksize == 0 and K % 32 == 0");
    // a single token has no use for tiles
    avx512::gemm_4bit(w, x, M, y, compute, amx && M > 1, inv);
    return;
  }
#pragma omp parallel
  {
    const auto [a, b] = thread_rows(w.N);
    if (a < b) {
      // the reference writes y[m * N + n] for its rows only
      ref::gemm_4bit(w, x, M, y, compute, a, b);
    }
  }
}

std::pair<int64_t, int64_t> thread_rows(int64_t n) {
  const int nt = omp_get_num_threads(), id = omp_get_thread_num();
  const int64_t per = (n + nt - 1) / nt;
  const int64_t a = std::min(n, id * per);
  return {a, std::min(n, a + per)};
}

bool gemm_4bit_input_grad(const Q4Weights& w, const float* dy, int64_t M, float* dx, DType compute,
                          GemmPath path) {
  if (path == GemmPath::Auto)
    path = avx2::supported(compute) && fast_shape(w) ? GemmPath::Avx2 : GemmPath::Reference;
  if (path == GemmPath::Reference) return false;
  if (path != GemmPath::Avx2 || !avx2::supported(compute) || !fast_shape(w))
    throw NotSupportedError(
        "gemm_4bit_input_grad: only the avx2 path (AVX2, FMA, F16C; K % blocksize == 0, K % 32 "
        "== 0) is a kernel; the reference is dequantize_4bit_transposed + gemm_dense");
  avx2::gemm_4bit_input_grad(w, dy, M, dx, compute);
  return true;
}

namespace {
bool dense_avx512(DType wdt, int64_t K) {
  return (wdt == DType::Float32 || wdt == DType::BFloat16) && K % 32 == 0 && avx512::supported(wdt);
}
bool dense_avx2(DType wdt, int64_t K) {
  return K % 8 == 0 && avx2::supported(wdt);
}
}  // namespace

GemmPath gemm_dense_auto_path(DType wdt, int64_t K) {
  return dense_avx512(wdt, K) ? GemmPath::Avx512 : dense_avx2(wdt, K) ? GemmPath::Avx2 : GemmPath::Reference;
}

void gemm_dense(const void* w, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y,
                GemmPath path) {
  const bool avx512 = dense_avx512(wdt, K), avx2 = dense_avx2(wdt, K);
  if (path == GemmPath::Auto) path = gemm_dense_auto_path(wdt, K);
  if ((path == GemmPath::Avx512 && !avx512) || (path == GemmPath::Avx2 && !avx2) || path == GemmPath::Amx)
    throw NotSupportedError("gemm_dense: the " + gemm_path_name(path, wdt) + " path is not available for " +
                            std::string(dtype_name(wdt)) + " weights with K = " + std::to_string(K) +
                            " on this CPU");
  if (path == GemmPath::Avx512) {
    avx512::gemm_dense(w, wdt, N, K, x, M, y);
    return;
  }
  if (path == GemmPath::Avx2) {
    avx2::gemm_dense(w, wdt, N, K, x, M, y, tl_row_invariant);
    return;
  }
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      convert_floats(wdt, static_cast<const uint8_t*>(w) + static_cast<size_t>(n * K) * dtype_size(wdt),
                     DType::Float32, row.data(), static_cast<size_t>(K));
      for (int64_t m = 0; m < M; ++m) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const float* xm = x + m * K;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) {
          s0 += xm[k] * row[static_cast<size_t>(k)];
          s1 += xm[k + 1] * row[static_cast<size_t>(k + 1)];
          s2 += xm[k + 2] * row[static_cast<size_t>(k + 2)];
          s3 += xm[k + 3] * row[static_cast<size_t>(k + 3)];
        }
        for (; k < K; ++k) s0 += xm[k] * row[static_cast<size_t>(k)];
        y[m * N + n] = (s0 + s1) + (s2 + s3);
      }
    }
  }
}

}  // namespace nibble::kernels
