#include "nn/linear.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm4.h"
#include "kernels/cpu/int8_mm.h"
#include "kernels/cpu/transpose.h"
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

// Scratch for a transposed weight (backward_input): one per thread, grown to the largest layer, reused.
thread_local std::vector<uint8_t> tl_transposed;

// w [N, K] (elements of `size` bytes: 2 or 4) transposed into scratch [K, N].
const void* transposed(const void* w, size_t size, int64_t N, int64_t K) {
  tl_transposed.resize(static_cast<size_t>(N * K) * size);
  uint8_t* dst = tl_transposed.data();
  if (size == 2)
    kernels::transpose(static_cast<const uint16_t*>(w), N, K, reinterpret_cast<uint16_t*>(dst));
  else
    kernels::transpose(static_cast<const uint32_t*>(w), N, K, reinterpret_cast<uint32_t*>(dst));
  return dst;
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

void Linear::backward_input(const float* dy, int64_t T, float* dx) const {
  const DType dt = weight_.dtype();
  kernels::gemm_dense(transposed(weight_.raw(), dtype_size(dt), out_features, in_features), dt, in_features,
                      out_features, dy, T, dx);
}

NamedTensors Linear::state_dict() const {
  NamedTensors d{{"weight", weight_}};
  if (bias_) d.emplace_back("bias", *bias_);
  return d;
}

std::string Linear::kernel_path(int64_t T) const {
  const DType dt = weight_.dtype();
  const kernels::GemmPath p = kernels::gemm_dense_auto_path(dt, in_features);
  if (p == kernels::GemmPath::Avx2 && T >= kernels::kAvx2PanelMinTokens) return "avx2-panel";
  return kernels::gemm_path_name(p, dt);
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

void Linear4bit::backward_input(const float* dy, int64_t T, float* dx) const {
  // bitsandbytes' MatMul4Bit.backward: grad_A = grad_output @ dequantize_4bit(W).to(grad_output.dtype)
  const DType dt = compute_;
  if (kernels::gemm_4bit_input_grad(view_, dy, T, dx, dt)) return;  // no transposed copy
  tl_transposed.resize(static_cast<size_t>(out_features * in_features) * dtype_size(dt));
  kernels::dequantize_4bit_transposed(view_, dt, tl_transposed.data());
  kernels::gemm_dense(tl_transposed.data(), dt, in_features, out_features, dy, T, dx);
}

std::string Linear4bit::kernel_path(int64_t T) const {
  if (int8_) return kernels::gemm_int8_path_name(kernels::gemm_int8_auto_path(view_));
  const kernels::GemmPath p = kernels::gemm_auto_path(view_, T, compute_);
  // a prompt on the AVX2 path takes its panel GEMM (gemm4.h)
  if (p == kernels::GemmPath::Avx2 && T >= kernels::kAvx2PanelMinTokens) return "avx2-panel";
  return kernels::gemm_path_name(p, compute_);
}

std::unique_ptr<LinearBase> Linear4bit::dequantized() const {
  return std::make_unique<Linear>(dequantized_weight(), bias_);
}

Linear8bitLt::Linear8bitLt(Tensor CB, Tensor SCB, std::optional<Tensor> bias, float threshold,
                           DType model_dtype)
    : cb_(std::move(CB)),
      scb_(std::move(SCB)),
      bias_(std::move(bias)),
      threshold_(threshold),
      dtype_(model_dtype) {
  if (cb_.dtype() != DType::Int8 || cb_.shape().size() != 2)
    throw FormatError("Linear8bitLt: weight must be a 2-D int8 tensor, got " +
                      std::string(dtype_name(cb_.dtype())) + " " + shape_str(cb_.shape()));
  out_features = cb_.dim(0);
  in_features = cb_.dim(1);
  if (scb_.dtype() == DType::Float16) scb_ = scb_.to(DType::Float32);  // transformers accepts an F16 SCB
  if (scb_.dtype() != DType::Float32 || scb_.shape() != Shape{out_features})
    throw FormatError("Linear8bitLt: SCB must be float32 or float16 of shape [" +
                      std::to_string(out_features) + "], got " + std::string(dtype_name(scb_.dtype())) + " " +
                      shape_str(scb_.shape()));
  if (!(threshold_ >= 0.0f))
    throw ValueError("llm_int8_threshold must be >= 0, got " + std::to_string(threshold_));
  bias_f_ = bias_floats(bias_, out_features, "Linear8bitLt");
}

std::unique_ptr<Linear8bitLt> Linear8bitLt::quantize(const Tensor& weight, std::optional<Tensor> bias,
                                                     float threshold, DType model_dtype,
                                                     const std::string& where) {
  QuantizedInt8 q = int8_vectorwise_quant(weight, where);
  return std::make_unique<Linear8bitLt>(std::move(q.CB), std::move(q.SCB), std::move(bias), threshold,
                                        model_dtype);
}

namespace {
// Scratch of one forward: int8 activations, row scales, outlier columns and x's values there.
struct Int8Scratch {
  std::vector<int8_t> q;
  std::vector<float> rs, xo;
  std::vector<int32_t> cols;
};
thread_local Int8Scratch tl_int8;
}  // namespace

void Linear8bitLt::forward(const float* x, int64_t T, float* y) const {
  const int64_t K = in_features;
  Int8Scratch& s = tl_int8;
  s.q.resize(static_cast<size_t>(T * K));
  s.rs.resize(static_cast<size_t>(T));
  // x to float16, the outlier columns of this call, per-row int8 (bitsandbytes' int8_vectorwise_quant)
  kernels::int8_quantize_activations(x, T, K, threshold_, s.q.data(), s.rs.data(), s.cols);
  // x's own values at the outlier columns, in the model dtype
  const auto C = static_cast<int64_t>(s.cols.size());
  s.xo.reserve(static_cast<size_t>(T * K));  // the outlier count varies per call: no regrowth
  s.xo.resize(static_cast<size_t>(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c)
      s.xo[static_cast<size_t>(t * C + c)] =
          kernels::round_to(dtype_, x[t * K + s.cols[static_cast<size_t>(c)]]);
  // exact int32 products dequantized with bitsandbytes' constant, + bias, to the model dtype, + the outlier
  // columns against the dequantized weights (kernels/cpu/int8_mm.h)
  kernels::int8_mm_dequant({cb_.data<int8_t>(), scb_.data<float>(), out_features, K}, s.q.data(), s.rs.data(),
                           T, y,
                           {.dtype = dtype_,
                            .bias = bias_f_.empty() ? nullptr : bias_f_.data(),
                            .cols = s.cols.data(),
                            .C = C,
                            .xo = s.xo.data()});
}

NamedTensors Linear8bitLt::state_dict() const {
  NamedTensors d{{"weight", cb_}};
  if (bias_) d.emplace_back("bias", *bias_);
  d.emplace_back("SCB", scb_);
  d.emplace_back("weight_format", Tensor::from_vector<uint8_t>(DType::UInt8, {}, {0}));
  return d;
}

void Linear8bitLt::backward_input(const float* dy, int64_t T, float* dx) const {
  // bitsandbytes' MatMul8bitLt.backward (frozen int8 weight): grad_A = grad_output @ (CB * SCB / 127)
  const Tensor w = int8_vectorwise_dequant(cb_, scb_, dtype_);
  kernels::gemm_dense(transposed(w.raw(), dtype_size(dtype_), out_features, in_features), dtype_, in_features,
                      out_features, dy, T, dx);
}

std::string Linear8bitLt::kernel_path(int64_t) const {
  return kernels::int8_mm_path_name(kernels::int8_mm_auto_path());
}

std::unique_ptr<LinearBase> Linear8bitLt::dequantized() const {
  return std::make_unique<Linear>(int8_vectorwise_dequant(cb_, scb_, dtype_), bias_);
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
