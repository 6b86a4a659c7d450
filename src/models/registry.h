// The decoder families by model_type: builds the CausalLM a config.json describes, and which of a family's
// weights are nn.Linear layers that bitsandbytes converts.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/causal_lm.h"
#include "models/llama.h"
#include "models/tensor_source.h"
#include "nibble/bitsandbytes_config.h"

namespace nibble {

// Throws NotSupportedError naming the type and the supported ones.
void check_model_type(const nlohmann::json& config, const std::string& config_path);

// True if `tensor_name` is the weight of an nn.Linear of this decoder family (q/k/v/o, gate/up/down,
// lm_head).
bool is_linear_weight(const std::string& model_type, const std::string& tensor_name);

// transformers' should_convert_module rule (5.x): `entry` matches `module` as a regex from the start ending
// at a module boundary ("model.layers.1" skips model.layers.1.mlp but not model.layers.11.mlp;
// "model.layers.*.mlp" skips every MLP), or as a plain suffix ("down_proj"). ValueError for an invalid regex.
bool module_matches(const std::string& module, const std::string& entry);
// The modules left unquantized: the user's llm_int8_skip_modules, or by default the output embedding
// (lm_head) and weights tied to it.
std::vector<std::string> modules_to_not_convert(const BitsAndBytesConfig& cfg);
bool should_quantize(const std::string& model_type, const std::string& tensor_name,
                     const BitsAndBytesConfig& cfg);

}  // namespace nibble

namespace nibble::models {

// NotSupportedError for a model_type nibble does not know (naming it and the supported ones).
std::unique_ptr<CausalLM> create_model(const nlohmann::json& config, const TensorSource& src,
                                       const LoadOptions& opt);

}  // namespace nibble::models
