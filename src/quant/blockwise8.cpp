#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/reference.h"
#include "nibble/error.h"
#include "nibble/quantize.h"

namespace nibble {

std::vector<float> create_dynamic_map(bool is_signed, int max_exponent_bits, int total_bits) {
  // torch.linspace(0.1, 1, steps, dtype=float32): from the start for the first half and from the end for the
  // second, each point one fused multiply-add (how torch's compiled CPU kernel and nvcc's default contraction
  // evaluate `start + step * i`; matches torch 2.x CPU output bit for bit, see quantize_golden_test).
  auto linspace = [](int steps) {
    std::vector<float> v(static_cast<size_t>(steps));
    const float start = 0.1f, end = 1.0f;
    const float step = (end - start) / static_cast<float>(steps - 1);
    const int half = steps / 2;
    for (int i = 0; i < steps; ++i)
      v[static_cast<size_t>(i)] = i < half ? std::fma(step, static_cast<float>(i), start)
                                           : std::fma(-step, static_cast<float>(steps - i - 1), end);
    return v;
  };
  std::vector<float> data;
  const int non_sign_bits = total_bits - 1;
  const int additional_items = (1 << (non_sign_bits - max_exponent_bits)) - 1;
  auto add = [&](int items, int i) {
    const std::vector<float> b = linspace(items);
    const float scale = static_cast<float>(std::pow(10.0, -(max_exponent_bits - 1) + i));
    for (size_t k = 0; k + 1 < b.size(); ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
    }
    if (is_signed)
      for (size_t k = 0; k + 1 < b.size(); ++k) data.push_back(-scale * ((b[k] + b[k + 1]) / 2.0f));
  };
  int i = 0;
  for (; i < max_exponent_bits; ++i) {
    const int items = is_signed ? (1 << (i + non_sign_bits - max_exponent_bits)) + 1
                                : (1 << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    add(items, i);
  }
  if (additional_items > 0) add(additional_items + 1, i - 1);
  data.push_back(0.0f);
  data.push_back(1.0f);
  if (data.size() > static_cast<size_t>(1 << total_bits))
    throw ValueError("create_dynamic_map: too many values");
  data.resize(static_cast<size_t>(1 << total_bits), 0.0f);
  std::sort(data.begin(), data.end());
  return data;
}

Quantized8bit quantize_blockwise(const Tensor& A, int64_t blocksize, const std::vector<float>& code) {
  if (A.dtype() != DType::Float32)
    throw ValueError("quantize_blockwise: input must be float32, got " + std::string(dtype_name(A.dtype())));
  if (blocksize < 64 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0)
    throw ValueError("quantize_blockwise: blocksize must be one of 64, 128, ..., 4096; got " +
                     std::to_string(blocksize));
  const std::vector<float> map = code.empty() ? create_dynamic_map() : code;
  if (map.size() != 256) throw ValueError("quantize_blockwise: code must have 256 entries");
  const int64_t n = A.numel();
  const int64_t nb = (n + blocksize - 1) / blocksize;
  Quantized8bit q;
  q.blocksize = blocksize;
  q.codes = Tensor::empty(DType::UInt8, A.shape());
  q.absmax = Tensor::empty(DType::Float32, {nb});
  q.code = Tensor::from_vector(DType::Float32, {256}, map);
  const float* src = A.data<float>();
  float* am = q.absmax.mutable_data<float>();
  uint8_t* out = q.codes.mutable_data<uint8_t>();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t b = 0; b < nb; ++b)
    kernels::ref::quantize_blockwise(src, n, blocksize, map.data(), am, out, b, b + 1);
  return q;
}

Tensor dequantize_blockwise(const Quantized8bit& q, DType out_dtype) {
  const int64_t n = q.codes.numel();
  if (q.absmax.numel() != (n + q.blocksize - 1) / q.blocksize || q.code.numel() != 256)
    throw ValueError("dequantize_blockwise: absmax/code sizes do not match the codes");
  Tensor f = Tensor::empty(DType::Float32, q.codes.shape());
  const uint8_t* c = q.codes.data<uint8_t>();
  const float* am = q.absmax.data<float>();
  const float* code = q.code.data<float>();
  float* o = f.mutable_data<float>();
  for (int64_t i = 0; i < n; ++i) o[i] = code[c[i]] * am[i / q.blocksize];
  return out_dtype == DType::Float32 ? f : f.to(out_dtype);
}

}  // namespace nibble
