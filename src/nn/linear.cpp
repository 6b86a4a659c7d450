#include "nn/linear.h"

#include <omp.h>

#include <cstring>

#include "kernels/cpu/reference.h"
#include "nibble/error.h"

namespace nibble::nn {

float round_to(DType dt, float v) {
  switch (dt) {
    case DType::BFloat16: return bf16_to_float(float_to_bf16(v));
    case DType::Float16: return fp16_to_float(float_to_fp16(v));
    default: return v;
  }
}

namespace {
std::vector<float> bias_floats(const std::optional<Tensor>& b, int64_t out, const char* what) {
  if (!b) return {};
  if (b->numel() != out) throw FormatError(std::string(what) + ": bias has " + std::to_string(b->numel()) +
                                           " elements, expected " + std::to_string(out));
  return b->to_float_vector();
}

float dot(const float* a, const float* b, int64_t n) {
  // four partial sums: lets the compiler vectorize without -ffast-math
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}
}  // namespace

Linear::Linear(Tensor weight, std::optional<Tensor> bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (weight_.shape().size() != 2) throw FormatError("Linear weight must be 2-D, got " + shape_str(weight_.shape()));
  out_features = weight_.dim(0);
  in_features = weight_.dim(1);
  bias_f_ = bias_floats(bias_, out_features, "Linear");
}

void Linear::forward(const float* x, int64_t T, float* y) const {
  const int64_t K = in_features, N = out_features;
  const bool f32 = weight_.dtype() == DType::Float32;
#pragma omp parallel
  {
    std::vector<float> row(f32 ? 0 : static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* w;
      if (f32) {
        w = weight_.data<float>() + n * K;
      } else {
        convert_floats(weight_.dtype(), weight_.raw() + static_cast<size_t>(n * K) * dtype_size(weight_.dtype()),
                       DType::Float32, row.data(), static_cast<size_t>(K));
        w = row.data();
      }
      const float b = bias_f_.empty() ? 0.0f : bias_f_[static_cast<size_t>(n)];
      for (int64_t t = 0; t < T; ++t) y[t * N + n] = dot(x + t * K, w, K) + b;
    }
  }
}

NamedTensors Linear::state_dict() const {
  NamedTensors d{{"weight", weight_}};
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

size_t Linear::parameter_bytes() const { return weight_.nbytes() + (bias_ ? bias_->nbytes() : 0); }

Linear4bit::Linear4bit(Tensor packed, QuantState state, std::optional<Tensor> bias, DType compute_dtype)
    : packed_(std::move(packed)), state_(std::move(state)), bias_(std::move(bias)), compute_(compute_dtype) {
  if (state_.shape.size() != 2) throw FormatError("Linear4bit: quant_state shape must be 2-D, got " + shape_str(state_.shape));
  out_features = state_.shape[0];
  in_features = state_.shape[1];
  state_.check_packed(packed_, "Linear4bit");
  bias_f_ = bias_floats(bias_, out_features, "Linear4bit");
  absmax_ = state_.float_absmax();
}

std::unique_ptr<Linear4bit> Linear4bit::quantize(const Tensor& weight, std::optional<Tensor> bias, int64_t blocksize,
                                                 QuantType qt, bool double_quant, DType quant_storage,
                                                 DType compute_dtype) {
  Quantized4bit q = quantize_4bit(weight, blocksize, qt, double_quant, quant_storage);
  return std::make_unique<Linear4bit>(std::move(q.packed), std::move(q.state), std::move(bias), compute_dtype);
}

void Linear4bit::forward(const float* x, int64_t T, float* y) const {
  const int64_t K = in_features, N = out_features;
  // bitsandbytes: x and the dequantized weight in the compute dtype, float32 accumulation, result rounded to
  // the compute dtype, bias added in the compute dtype, cast back to the input dtype (float32 here).
  std::vector<float> xc(static_cast<size_t>(T * K));
  for (size_t i = 0; i < xc.size(); ++i) xc[i] = round_to(compute_, x[i]);
  const float* code = state_.code.data<float>();
  const uint8_t* packed = packed_.data<uint8_t>();
  const int64_t bs = state_.blocksize;
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      // dequantize row n: elements [n*K, (n+1)*K) of the flattened weight
      const int64_t e0 = n * K;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = e0 + k;
        const uint8_t byte = packed[e / 2];
        const uint8_t c = (e & 1) ? (byte & 0x0f) : (byte >> 4);
        row[static_cast<size_t>(k)] = round_to(compute_, code[c] * absmax_[static_cast<size_t>(e / bs)]);
      }
      const float b = bias_f_.empty() ? 0.0f : round_to(compute_, bias_f_[static_cast<size_t>(n)]);
      for (int64_t t = 0; t < T; ++t) {
        const float acc = round_to(compute_, dot(xc.data() + t * K, row.data(), K));
        y[t * N + n] = bias_f_.empty() ? acc : round_to(compute_, acc + b);
      }
    }
  }
}

NamedTensors Linear4bit::state_dict() const {
  NamedTensors d{{"weight", packed_}};
  for (auto& [k, v] : state_.as_dict()) d.emplace_back("weight." + k, v);
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

}  // namespace nibble::nn
