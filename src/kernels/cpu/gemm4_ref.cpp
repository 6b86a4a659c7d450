// Scalar reference of the fused 4-bit GEMM: exactly Linear4bit's dequantize-then-matmul in the compute dtype
// (weights and activations rounded to it, float32 accumulation, result rounded to it).
#include <vector>

#include "kernels/cpu/gemm4.h"

namespace nibble::kernels {

namespace ref {

void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, int64_t n0,
               int64_t n1) {
  const int64_t K = w.K, N = w.N;
  std::vector<float> row(static_cast<size_t>(K));
  std::vector<float> xc(static_cast<size_t>(M * K));
  for (size_t i = 0; i < xc.size(); ++i) xc[i] = round_to(compute, x[i]);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = n * K + k;
      const uint8_t byte = w.packed[e / 2];
      const uint8_t c = (e & 1) ? (byte & 0x0f) : (byte >> 4);
      row[static_cast<size_t>(k)] = round_to(compute, w.code[c] * w.block_absmax(e / w.blocksize));
    }
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.0f;
      const float* xm = xc.data() + m * K;
      for (int64_t k = 0; k < K; ++k) acc += xm[k] * row[static_cast<size_t>(k)];
      y[m * N + n] = round_to(compute, acc);
    }
  }
}

}  // namespace ref
}  // namespace nibble::kernels
