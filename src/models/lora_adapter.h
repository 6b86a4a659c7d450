// PEFT LoRA adapters on disk (adapter_config.json + adapter_model.safetensors, as peft's save_pretrained
// writes them) and attached to a llama-family model as unmerged LoraLinear layers (`--adapter DIR`).
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/llama.h"
#include "nibble/tensor.h"

namespace nibble::models {

struct LoraAdapter {
  struct Module {
    std::string name;  // the module in the model: "model.layers.0.self_attn.q_proj"
    int64_t r = 0;
    float scaling = 1.0f;  // lora_alpha / r (use_rslora: / sqrt(r))
    Tensor A, B;           // float32 [r, in], [out, r]
  };
  std::string dir;
  nlohmann::json config;        // adapter_config.json as read
  std::vector<Module> modules;  // by name
};

// peft's key of a module's LoRA weights in adapter_model.safetensors:
// "base_model.model.<module>.lora_A.weight".
std::string peft_lora_key(const std::string& module, char which);

// Reads and checks an adapter directory: a LORA adapter peft can save (no DoRA, bias "none", no
// modules_to_save, no alpha_pattern), each module with both lora_A and lora_B of consistent shapes. Errors
// name the file and the field or tensor at fault.
LoraAdapter read_lora_adapter(const std::string& dir);

// Wraps each adapted linear of `model` in a LoraLinear with the adapter's weights. Throws FormatError if a
// module is not a linear layer of the model or its shapes do not fit the layer.
void attach_lora_adapter(LlamaModel& model, const LoraAdapter& adapter);

// peft's merge_and_unload: each LoraLinear becomes its base with W + scaling * (B @ A), summed in float32
// over the dequantized weight; a 4-bit base is quantized again with its own settings (quant type, blocksize,
// double quant, storage, compute dtype), a dense one keeps its dtype. With `dtype`, merged layers and every
// other quantized linear become dense weights of that dtype instead. Throws NotSupportedError for an
// adapter over an 8-bit layer.
void merge_lora_adapters(LlamaModel& model, std::optional<DType> dtype);

}  // namespace nibble::models
