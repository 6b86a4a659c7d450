// peft's LoRA over a Linear / Linear4bit / Linear8bitLt (unmerged, as peft's LoraLayer runs it):
//   y = base(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = lora_alpha / r
// A [r, in] and B [out, r] in float32 (peft keeps adapter weights in float32 over a 4-bit base). forward is
// inference (dropout is the identity there); training (src/train) reads and updates A and B in place.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/linear.h"

namespace nibble::nn {

class LoraLinear final : public LinearBase {
 public:
  // A: r x in, B: out x in the base's out_features x r (row-major float32); `where` names the module in
  // errors.
  LoraLinear(std::unique_ptr<LinearBase> base, int64_t r, std::vector<float> A, std::vector<float> B,
             float scaling, const std::string& where);
  void forward(const float* x, int64_t T, float* y) const override;
  void backward_input(const float* dy, int64_t T, float* dx) const override;
  // The base layer's tensors: a model saved with an adapter attached is the base model (the adapter is
  // written on its own, as peft's save_pretrained does).
  NamedTensors state_dict() const override { return base->state_dict(); }
  size_t parameter_bytes() const override { return base->parameter_bytes() + (A.size() + B.size()) * 4; }
  bool quantized() const override { return base->quantized(); }
  bool has_bias() const override { return base->has_bias(); }
  std::string kernel_path(int64_t T) const override { return base->kernel_path(T); }
  // The same adapter over the dequantized base (nullptr if the base is dense).
  std::unique_ptr<LinearBase> dequantized() const override;

  // u[T, r] = x @ A^T; y[T, out] += (u @ B^T) * scaling (peft's order: B(A(x)), then times scaling).
  void lora_forward(const float* x, int64_t T, float* u, float* y) const;
  // The LoRA branch's input gradient before scaling: g[T, r] = dy @ B, d[T, in] = g @ A (the caller applies
  // scaling and any dropout mask; training also needs g for A's gradient).
  void lora_input_grad(const float* dy, int64_t T, float* g, float* d) const;

  std::unique_ptr<LinearBase> base;
  int64_t r = 0;
  std::vector<float> A, B;
  float scaling = 1.0f;
};

}  // namespace nibble::nn
