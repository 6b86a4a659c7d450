// nn.Linear, bitsandbytes' Linear4bit (Params4bit + QuantState) and Linear8bitLt (LLM.int8: Int8Params CB +
// SCB) for CPU inference.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/gemm4.h"
#include "nibble/quantize.h"
#include "nibble/tensor.h"

namespace nibble::nn {

class LinearBase {
 public:
  virtual ~LinearBase() = default;
  // y[T, out] = x[T, in] @ W^T + b (float32 activations; the compute dtype's rounding is emulated inside).
  virtual void forward(const float* x, int64_t T, float* y) const = 0;
  // The tensors save_pretrained writes for this module (suffixes after "<prefix>.").
  virtual NamedTensors state_dict() const = 0;
  // Parameter bytes as torch counts them (packed 4-bit data only for Linear4bit).
  virtual size_t parameter_bytes() const = 0;
  virtual bool quantized() const { return false; }
  virtual bool has_bias() const = 0;
  // The kernel path forward takes for T tokens on this CPU ("avx2", "avx512-bf16", "reference", ...).
  virtual std::string kernel_path(int64_t T) const = 0;
  // A quantized layer as a dense Linear of its dequantized weight (nullptr for a dense one).
  virtual std::unique_ptr<LinearBase> dequantized() const { return nullptr; }
  // Training with the weight frozen: dx[T, in] = dy[T, out] @ W (overwritten), W as forward uses it (a
  // quantized weight dequantized as bitsandbytes' backward does: whole, to the compute dtype, one layer at a
  // time into scratch that is reused).
  virtual void backward_input(const float* dy, int64_t T, float* dx) const = 0;
  int64_t in_features = 0, out_features = 0;
};

class Linear final : public LinearBase {
 public:
  // weight [out, in] in any float dtype (kept as given); bias [out] optional.
  Linear(Tensor weight, std::optional<Tensor> bias);
  void forward(const float* x, int64_t T, float* y) const override;
  void backward_input(const float* dy, int64_t T, float* dx) const override;
  NamedTensors state_dict() const override;
  size_t parameter_bytes() const override;
  std::string kernel_path(int64_t T) const override;
  bool has_bias() const override { return bias_.has_value(); }
  const Tensor& weight() const { return weight_; }
  const std::optional<Tensor>& bias() const { return bias_; }

 private:
  Tensor weight_;
  std::optional<Tensor> bias_;
  std::vector<float> bias_f_;
};

class Linear4bit final : public LinearBase {
 public:
  Linear4bit(Tensor packed, QuantState state, std::optional<Tensor> bias, DType compute_dtype);
  // Quantizes a dense weight (quantize-on-load) with nibble::quantize_linear_weight; `where` names it in
  // errors.
  static std::unique_ptr<Linear4bit> quantize(const Tensor& weight, std::optional<Tensor> bias,
                                              const Linear4bitSpec& spec, const std::string& where);
  void forward(const float* x, int64_t T, float* y) const override;
  void backward_input(const float* dy, int64_t T, float* dx) const override;
  NamedTensors state_dict() const override;
  size_t parameter_bytes() const override { return packed_.nbytes() + (bias_ ? bias_->nbytes() : 0); }
  bool quantized() const override { return true; }
  bool has_bias() const override { return bias_.has_value(); }
  std::string kernel_path(int64_t T) const override;
  Tensor dequantized_weight() const { return dequantize_4bit(packed_, state_); }
  std::unique_ptr<LinearBase> dequantized() const override;
  const std::optional<Tensor>& bias() const { return bias_; }
  const QuantState& state() const { return state_; }
  const Tensor& packed() const { return packed_; }
  DType compute_dtype() const { return compute_; }
  // Opt-in int8 activations (kernels/cpu/gemm4.h); ignored (the layer stays exact) for shapes the int8
  // kernels do not take.
  void set_int8_activations(bool on) { int8_ = on && kernels::int8_shape_ok(view_); }
  bool int8_activations() const { return int8_; }

 private:
  Tensor packed_;
  QuantState state_;
  std::optional<Tensor> bias_;
  std::vector<float> bias_f_;
  kernels::Q4Weights view_;  // what the fused kernels read: packed data and (possibly nested) absmax
  DType compute_;
  bool int8_ = false;
};

// bitsandbytes' Linear8bitLt in eval mode (spec/bnb-int8.md): int8 weights CB [out, in] with row scales SCB,
// activations quantized per row and per call (outlier columns at or above `threshold` taken in the model
// dtype against the dequantized weight columns; threshold 0 turns that off), results in the model dtype.
class Linear8bitLt final : public LinearBase {
 public:
  // CB: int8 [out, in]; SCB: float32 [out]; bias [out] optional; model_dtype: the activations' dtype.
  Linear8bitLt(Tensor CB, Tensor SCB, std::optional<Tensor> bias, float threshold, DType model_dtype);
  // Quantize-on-load (int8_vectorwise_quant of the weight as given); `where` names it in errors.
  static std::unique_ptr<Linear8bitLt> quantize(const Tensor& weight, std::optional<Tensor> bias,
                                                float threshold, DType model_dtype, const std::string& where);
  void forward(const float* x, int64_t T, float* y) const override;
  void backward_input(const float* dy, int64_t T, float* dx) const override;
  // weight (I8), SCB (F32) and weight_format (U8 scalar 0, "row"), as save_pretrained writes them.
  NamedTensors state_dict() const override;
  // int8 weights and bias; SCB is neither a parameter nor a buffer in torch.
  size_t parameter_bytes() const override { return cb_.nbytes() + (bias_ ? bias_->nbytes() : 0); }
  bool quantized() const override { return true; }
  bool has_bias() const override { return bias_.has_value(); }
  std::string kernel_path(int64_t T) const override;
  std::unique_ptr<LinearBase> dequantized() const override;
  const Tensor& CB() const { return cb_; }
  const Tensor& SCB() const { return scb_; }
  float threshold() const { return threshold_; }

 private:
  Tensor cb_, scb_;
  std::optional<Tensor> bias_;
  std::vector<float> bias_f_;
  float threshold_;
  DType dtype_;
};

// What the fused kernels read for a packed 4-bit weight and its state (nested statistics stay compressed).
// Points into `packed` and `state`, which must outlive it.
kernels::Q4Weights q4_weights(const Tensor& packed, const QuantState& state);

// Batched decode's row-invariant mode for the layers above the kernels (see kernels::RowInvariantScope).
using kernels::RowInvariantScope;

}  // namespace nibble::nn
