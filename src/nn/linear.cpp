#include "nn/linear.h"

#include "kernels/cpu/gemm4.h"
#include "nibble/error.h"

namespace nibble::nn {

float round_to(DType dt, float v) {
  switch (dt) {
    case DType::BFloat16:
      return bf16_to_float(float_to_bf16(v));
    case DType::Float16:
      return fp16_to_float(float_to_fp16(v));
    default:
      return v;
  }
}

namespace {
std::vector<float> bias_floats(const std::optional<Tensor>& b, int64_t out, const char* what) {
  if (!b) return {};
  if (b->numel() != out)
    throw FormatError(std::string(what) + ": bias has " + std::to_string(b->numel()) +
                      " elements, expected " + std::to_string(out));
  return b->to_float_vector();
}

}  // namespace

Linear::Linear(Tensor weight, std::optional<Tensor> bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (weight_.shape().size() != 2)
    throw FormatError("Linear weight must be 2-D, got " + shape_str(weight_.shape()));
  out_features = weight_.dim(0);
  in_features = weight_.dim(1);
  bias_f_ = bias_floats(bias_, out_features, "Linear");
}

void Linear::forward(const float* x, int64_t T, float* y) const {
  kernels::gemm_dense(weight_.raw(), weight_.dtype(), out_features, in_features, x, T, y);
  if (!bias_f_.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < out_features; ++n) y[t * out_features + n] += bias_f_[static_cast<size_t>(n)];
}

NamedTensors Linear::state_dict() const {
  NamedTensors d{{"weight", weight_}};
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

size_t Linear::parameter_bytes() const {
  return weight_.nbytes() + (bias_ ? bias_->nbytes() : 0);
}

Linear4bit::Linear4bit(Tensor packed, QuantState state, std::optional<Tensor> bias, DType compute_dtype)
    : packed_(std::move(packed)), state_(std::move(state)), bias_(std::move(bias)), compute_(compute_dtype) {
  if (state_.shape.size() != 2)
    throw FormatError("Linear4bit: quant_state shape must be 2-D, got " + shape_str(state_.shape));
  out_features = state_.shape[0];
  in_features = state_.shape[1];
  state_.check_packed(packed_, "Linear4bit");
  bias_f_ = bias_floats(bias_, out_features, "Linear4bit");
  view_.packed = packed_.data<uint8_t>();
  view_.N = out_features;
  view_.K = in_features;
  view_.blocksize = state_.blocksize;
  view_.code = state_.code.data<float>();
  if (state_.nested) {  // nested statistics stay compressed; the kernels decode them per block
    view_.absmax_q = state_.absmax.data<uint8_t>();
    view_.code2 = state_.nested_code.data<float>();
    view_.absmax2 = state_.nested_absmax.data<float>();
    view_.set_nested_blocksize(state_.nested_blocksize);
    view_.offset = state_.offset;
  } else {
    view_.absmax = state_.absmax.data<float>();
  }
}

std::unique_ptr<Linear4bit> Linear4bit::quantize(const Tensor& weight, std::optional<Tensor> bias,
                                                 int64_t blocksize, QuantType qt, bool double_quant,
                                                 DType quant_storage, DType compute_dtype) {
  Quantized4bit q = quantize_4bit(weight, blocksize, qt, double_quant, quant_storage);
  return std::make_unique<Linear4bit>(std::move(q.packed), std::move(q.state), std::move(bias),
                                      compute_dtype);
}

void Linear4bit::forward(const float* x, int64_t T, float* y) const {
  // bitsandbytes: x and the weight in the compute dtype, float32 accumulation; the fused kernel decodes the
  // weight on the fly (kernels/cpu/gemm4.h states the tolerance against dequantize-then-matmul)
  kernels::gemm_4bit(view_, x, T, y, compute_);
  if (!bias_f_.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < out_features; ++n)
        y[t * out_features + n] += round_to(compute_, bias_f_[static_cast<size_t>(n)]);
}

NamedTensors Linear4bit::state_dict() const {
  NamedTensors d{{"weight", packed_}};
  for (auto& [k, v] : state_.as_dict()) d.emplace_back("weight." + k, v);
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

}  // namespace nibble::nn
