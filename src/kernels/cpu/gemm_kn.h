// y[M, N] = x[M, K] @ B[K, N] in float32 (B row-major with N contiguous): the many-row products of training —
// a linear layer's input gradient dy @ W over W as stored ([out, in]), its forward over the transposed
// dequantized weight. AVX2+FMA register-blocked kernel (6 x 16 outputs per step) where the CPU has it, else
// the scalar reference; threaded. Summation order differs from the reference (float32 sums of exact
// products).
#pragma once
#include <cstdint>
#include <string>

namespace nibble::kernels {

// accumulate: y += x @ B. ldx: x's row stride (0 = K), so that x may be a column range of a wider matrix: with
// accumulate, a product over K in chunks.
void gemm_kn(const float* x, int64_t M, int64_t K, const float* B, int64_t N, float* y,
             bool accumulate = false, int64_t ldx = 0);
std::string gemm_kn_path();  // "avx2" or "reference"

namespace ref {
void gemm_kn(const float* x, int64_t M, int64_t K, const float* B, int64_t N, float* y,
             bool accumulate = false, int64_t ldx = 0);
}

}  // namespace nibble::kernels
