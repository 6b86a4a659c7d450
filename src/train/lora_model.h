// LoRA fine-tuning over a (4-bit) llama-family model: peft's LoraModel wrapped around the model's own
// modules, with the forward pass that keeps what the backward pass needs and the backward pass itself. The
// base weights stay frozen (and quantized); only the adapters' A and B get gradients.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "models/llama.h"
#include "nn/lora.h"

namespace nibble::train {

// peft's LoraConfig (the fields nibble uses).
struct LoraSpec {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  // module names matched as peft matches a list: the full name or its last components ("q_proj" matches
  // "model.layers.0.self_attn.q_proj"); {"all-linear"}: every linear layer but the output layer
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  float scaling() const { return static_cast<float>(alpha / static_cast<double>(r)); }
};

// One adapted module: its name in the model ("model.layers.0.self_attn.q_proj"), the layer, and the
// gradients of its A and B (same shapes).
struct LoraModule {
  std::string name;
  nn::LoraLinear* lin = nullptr;
  std::vector<float> dA, dB;
};

// The names of the linear layers `spec.target_modules` selects in `model`, in module order (transformers'
// named_modules order). Throws ValueError if a target matches nothing (peft's "Target modules ... not
// found").
std::vector<std::string> resolve_target_modules(const models::LlamaModel& model,
                                                const std::vector<std::string>& targets);

// The L2 norm of all the modules' gradients as torch.nn.utils.clip_grad_norm_ computes it (the norm of the
// per-tensor float32 norms).
double grad_total_norm(const std::vector<LoraModule>& modules);

class LoraModel {
 public:
  // Wraps the target linear layers of `model` (which must outlive this) in LoraLinear. A is initialised as
  // peft's default (kaiming_uniform_ with a = sqrt(5): uniform in +-1/sqrt(in_features)) from `seed`, B to
  // zero. Throws NotSupportedError for families whose backward pass nibble does not have.
  LoraModel(models::LlamaModel& model, const LoraSpec& spec, uint64_t seed);

  std::vector<LoraModule>& modules() { return modules_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  const LoraSpec& spec() const { return spec_; }
  models::LlamaModel& model() { return model_; }
  int64_t num_trainable() const;

  // One micro-batch of `batch` sequences of `len` tokens each (tokens[b * len + t]), labels = the inputs:
  // forward and backward, adding loss_scale * d(loss)/d(parameter) to the gradients. Returns the loss, the
  // mean cross-entropy over the batch's batch * (len - 1) predicted tokens (LlamaForCausalLM(labels=...)),
  // or, with `targets` (one flag per token), over the predicted tokens whose flag is set (the others' labels
  // -100). dropout_seed picks the dropout masks (a recomputed layer draws the same ones).
  double forward_backward(std::span<const int32_t> tokens, int64_t batch, int64_t len, double loss_scale,
                          uint64_t dropout_seed, std::span<const uint8_t> targets = {});
  // The same loss without dropout or gradients (evaluation).
  double loss(std::span<const int32_t> tokens, int64_t batch, int64_t len);
  void zero_grad();
  double grad_norm() const;  // grad_total_norm(modules())

  // Recompute each layer's activations in the backward pass: activation memory is one layer's, not all
  // layers' (only each layer's input is kept).
  bool gradient_checkpointing = false;

  struct Saved;  // one layer's activations

 private:
  double run(std::span<const int32_t> tokens, int64_t batch, int64_t len, double loss_scale, bool backward,
             uint64_t dropout_seed, std::span<const uint8_t> targets = {});
  void layer_forward(int64_t l, const float* h_in, float* h_out, Saved& s, bool train, uint64_t seed);
  void layer_backward(int64_t l, const float* h_in, Saved& s, float* dh, uint64_t seed);
  models::LlamaModel& model_;
  LoraSpec spec_;
  std::vector<LoraModule> modules_;
  // per layer: the LoraModule index of each of its linears (-1: not adapted), in LlamaLayer::linears() order
  std::vector<std::vector<int>> module_of_;
  int64_t batch_ = 0, len_ = 0;
  std::vector<std::vector<float>> w_in_, w_post_;  // the frozen norms' weights in float32
  std::vector<float> w_final_;
  std::vector<float> cos_, sin_,
      nsin_;  // [batch * len, head_dim / 2]: each sequence at positions 0 .. len - 1
};

}  // namespace nibble::train
