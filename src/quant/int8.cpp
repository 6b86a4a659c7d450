// LLM.int8 row-wise weight quantization (include/nibble/quantize.h, spec/bnb-int8.md).
#include <cmath>

#include "kernels/cpu/int8_mm.h"
#include "nibble/error.h"
#include "nibble/quantize.h"

namespace nibble {

QuantizedInt8 int8_vectorwise_quant(const Tensor& weight, const std::string& where) {
  if (weight.shape().size() != 2 || !dtype_is_float(weight.dtype()))
    throw FormatError(where + " is a Linear weight and must be a 2-D float tensor, got " +
                      std::string(dtype_name(weight.dtype())) + " " + shape_str(weight.shape()));
  const int64_t N = weight.dim(0), K = weight.dim(1);
  const Tensor w16 = weight.dtype() == DType::Float16 ? weight : weight.to(DType::Float16);
  QuantizedInt8 q{Tensor::empty(DType::Int8, {N, K}), Tensor::empty(DType::Float32, {N})};
  const uint16_t* src = w16.data<uint16_t>();
  int8_t* cb = q.CB.mutable_data<int8_t>();
  float* scb = q.SCB.mutable_data<float>();
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
  for (int64_t r = 0; r < N; ++r) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t j = 0; j < K; ++j) row[static_cast<size_t>(j)] = fp16_to_float(src[r * K + j]);
    scb[r] = kernels::int8_quantize_row(row.data(), K, cb + r * K);
  }
  return q;
}

Tensor int8_vectorwise_dequant(const Tensor& CB, const Tensor& SCB, DType out_dtype) {
  if (CB.dtype() != DType::Int8 || CB.shape().size() != 2)
    throw ValueError("int8_vectorwise_dequant: CB must be a 2-D int8 tensor, got " +
                     std::string(dtype_name(CB.dtype())) + " " + shape_str(CB.shape()));
  const int64_t N = CB.dim(0), K = CB.dim(1);
  if (SCB.dtype() != DType::Float32 || SCB.numel() != N)
    throw ValueError("int8_vectorwise_dequant: SCB must be float32 [" + std::to_string(N) + "], got " +
                     std::string(dtype_name(SCB.dtype())) + " " + shape_str(SCB.shape()));
  Tensor out = Tensor::empty(DType::Float32, {N, K});
  const int8_t* cb = CB.data<int8_t>();
  const float* scb = SCB.data<float>();
  float* o = out.mutable_data<float>();
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < K; ++j)
      o[r * K + j] = static_cast<float>(cb[r * K + j]) * scb[r] * kernels::kInt8Dequant;
  return out_dtype == DType::Float32 ? out : out.to(out_dtype);
}

}  // namespace nibble
