// Loading one nn.Linear of any decoder family from a tensor source: a pre-quantized bnb-4bit module (packed
// weight + quant_state) or bnb 8-bit one (int8 weight + SCB), a dense weight quantized on load (4-bit or
// LLM.int8) when the config says so, or a dense Linear.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "models/tensor_source.h"
#include "nibble/bitsandbytes_config.h"
#include "nibble/quantize.h"
#include "nn/linear.h"

namespace nibble::models {

struct LinearLoader {
  const TensorSource& src;
  std::string model_type;
  DType dtype = DType::Float32;                 // of dense weights and biases
  std::optional<BitsAndBytesConfig> quantize;   // quantize-on-load (nullopt: keep dense)
  std::optional<Linear4bitSpec> spec;           // resolved from `quantize` once
  bool prequantized = false;                    // the checkpoint's config.json has quantization_config
  DType prequantized_compute = DType::Float32;  // its bnb_4bit_compute_dtype
  bool int8_prequantized = false;               // that quantization_config is load_in_8bit
  float int8_threshold = 6.0f;                  // llm_int8_threshold of 8-bit layers (either kind)
  bool int8_activations = false;                // 4-bit layers take the opt-in int8-activation kernels

  // The Linear at `prefix` ("model.layers.0.self_attn.q_proj"), with a bias if `bias`.
  std::unique_ptr<nn::LinearBase> load(const std::string& prefix, bool bias) const;
  // Quantizes `weight` as the module `prefix` if the config converts it, else nullptr.
  std::unique_ptr<nn::LinearBase> quantize_dense(const std::string& prefix, const Tensor& weight) const;

 private:
  std::unique_ptr<nn::LinearBase> with_activations(std::unique_ptr<nn::Linear4bit> lin) const;
  std::unique_ptr<nn::LinearBase> quantize_weight(const Tensor& weight, std::optional<Tensor> bias,
                                                  const std::string& where) const;
  std::unique_ptr<nn::LinearBase> load_8bit(const std::string& prefix, std::optional<Tensor> bias) const;
};

}  // namespace nibble::models
