// The decoder families by model_type: builds the CausalLM a config.json describes.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>

#include "models/causal_lm.h"
#include "models/llama.h"
#include "models/tensor_source.h"

namespace nibble::models {

// NotSupportedError for a model_type nibble does not know (naming it and the supported ones).
std::unique_ptr<CausalLM> create_model(const nlohmann::json& config, const TensorSource& src,
                                       const LoadOptions& opt);

}  // namespace nibble::models
