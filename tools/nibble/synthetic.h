// Random-weight models of well-known shapes (nibble bench and nibble serve --synthetic): benchmarks of real
// shapes without their files.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "nibble/bitsandbytes_config.h"

namespace nibble::cli {

// The --synthetic option's help text (the known shapes).
extern const char* const kSyntheticHelp;
// HF config.json of a named shape (llama-7b, llama-3-8b, mistral-7b, tinyllama-1.1b, ...), for
// AutoModelForCausalLM::from_config; layers > 0 overrides num_hidden_layers. ValueError for an unknown name.
nlohmann::json synthetic_config(const std::string& shape, int64_t layers = 0);
// What bench and finetune quantize to by default: the seed's NF4 + double quant + bfloat16 compute.
BitsAndBytesConfig default_synthetic_quantization();

}  // namespace nibble::cli
