#include "nn/linear.h"

#include "kernels/cpu/gemm4.h"
#include "nibble/error.h"

namespace nibble::nn {

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

std::string Linear::kernel_path(int64_t) const {
  const DType dt = weight_.dtype();
  return kernels::gemm_path_name(kernels::gemm_dense_auto_path(dt, in_features), dt);
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
  view_ = q4_weights(packed_, state_);
}

std::unique_ptr<Linear4bit> Linear4bit::quantize(const Tensor& weight, std::optional<Tensor> bias,
                                                 const Linear4bitSpec& spec, const std::string& where) {
  Quantized4bit q = quantize_linear_weight(weight, spec, where);
  return std::make_unique<Linear4bit>(std::move(q.packed), std::move(q.state), std::move(bias),
                                      spec.compute_dtype);
}

void Linear4bit::forward(const float* x, int64_t T, float* y) const {
  // bitsandbytes: x and the weight in the compute dtype, float32 accumulation; the fused kernel decodes the
  // weight on the fly (kernels/cpu/gemm4.h states the tolerance against dequantize-then-matmul)
  if (int8_)
    kernels::gemm_4bit_int8(view_, x, T, y);
  else
    kernels::gemm_4bit(view_, x, T, y, compute_);
  if (!bias_f_.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < out_features; ++n)
        y[t * out_features + n] += kernels::round_to(compute_, bias_f_[static_cast<size_t>(n)]);
}

std::string Linear4bit::kernel_path(int64_t T) const {
  if (int8_) return kernels::gemm_int8_path_name(kernels::gemm_int8_auto_path(view_));
  return kernels::gemm_path_name(kernels::gemm_auto_path(view_, T, compute_), compute_);
}

kernels::Q4Weights q4_weights(const Tensor& packed, const QuantState& state) {
  kernels::Q4Weights w;
  w.packed = packed.data<uint8_t>();
  w.N = state.shape.at(0);
  w.K = state.shape.at(1);
  w.blocksize = state.blocksize;
  w.code = state.code.data<float>();
  if (state.nested) {
    w.absmax_q = state.absmax.data<uint8_t>();
    w.code2 = state.nested_code.data<float>();
    w.absmax2 = state.nested_absmax.data<float>();
    w.set_nested_blocksize(state.nested_blocksize);
    w.offset = state.offset;
  } else {
    w.absmax = state.absmax.data<float>();
  }
  return w;
}

NamedTensors Linear4bit::state_dict() const {
  NamedTensors d{{"weight", packed_}};
  for (auto& [k, v] : state_.as_dict()) d.emplace_back("weight." + k, v);
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

}  // namespace nibble::nn
