// LLM.int8 (bitsandbytes' load_in_8bit, spec/bnb-int8.md): row-wise int8 quantization of weights and
// activations, and the int8 x int8 -> int32 matmul with bitsandbytes' CPU dequantization
//   y[m, n] = float32(int32 sum_k a[m, k] * b[n, k]) * (rs[m] * scb[n]) * 6.200124e-05f.
// The integer sums are exact on every path, so every path gives the same bits: the scalar reference and AVX2
// (vpmaddubsw; AVX-512 CPUs take it too).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/gemm4.h"

namespace nibble::kernels {

// bitsandbytes' constants: int8_mm_dequant's (not 1/127^2 = 6.2000124e-05) and int8_vectorwise_dequant's
// 1/127.
inline constexpr float kInt8MmDequant = 6.200124e-05f;
inline constexpr float kInt8Dequant = 7.874015718698502e-3f;

// One row already rounded to float16 (values as float32): returns its absmax and writes
// q[j] = round_half_even(v[j] * (127 / absmax)) (0 for an all-zero row).
float int8_quantize_row(const float* v, int64_t K, int8_t* q);

// bitsandbytes' int8_vectorwise_quant(x.to(float16), threshold) for x [M, K]: outliers are elements with
// |fp16(x)| >= threshold (threshold > 0); they are zeroed before each row's absmax rs[m] and quantization,
// and when M > 1 every element of a column holding one (listed ascending in outlier_cols) is zeroed in q.
// q values lie in [-127, 127].
void int8_quantize_activations(const float* x, int64_t M, int64_t K, float threshold, int8_t* q, float* rs,
                               std::vector<int32_t>& outlier_cols);

struct I8Weights {
  const int8_t* cb = nullptr;  // [N, K] row-major
  const float* scb = nullptr;  // [N]
  int64_t N = 0, K = 0;
};

// What Linear8bitLt adds to the int8 product, row by row while the weights are in cache:
//   y = dt(product + bias); with outlier columns: y = dt(y + dt(sum_c xo[m, c] * dt(cb[n, cols[c]] * scb[n] *
//   (1/127)))),
// dt = rounding to the model dtype (bitsandbytes' int8_mixed_scaled_mm: the dequantized int8 weight columns
// against x's own values there, in the model dtype).
struct Int8Epilogue {
  DType dtype = DType::Float32;
  const float* bias = nullptr;    // [N], values of the model dtype
  const int32_t* cols = nullptr;  // outlier columns, ascending
  int64_t C = 0;
  const float* xo = nullptr;  // [M, C]: x at those columns, in the model dtype
};

// The path int8_mm_dequant's Auto takes on this CPU.
GemmPath int8_mm_auto_path();
std::string int8_mm_path_name(GemmPath p);  // "avx2-int8mm", "reference-int8mm"
// y[M, N] as above; a (activations, [M, K]) must hold values in [-127, 127] (int8_quantize_activations'
// output); the weights may hold any int8. Without outlier columns every path gives the same bits; the
// outlier sums may differ in order (AVX2 sums 8 columns at a time).
void int8_mm_dequant(const I8Weights& w, const int8_t* a, const float* rs, int64_t M, float* y,
                     const Int8Epilogue& e = {}, GemmPath path = GemmPath::Auto);

}  // namespace nibble::kernels
