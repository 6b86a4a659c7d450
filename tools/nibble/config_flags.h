// The BitsAndBytesConfig flags shared by quantize, config and generate. The config is always built by
// nibble::BitsAndBytesConfig (from_dict/update), so every error is the class's own message.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "nibble/bitsandbytes_config.h"
#include "nibble/model.h"

namespace nibble::cli {

struct QuantFlags {
  std::string config_file;
  bool load_in_4bit = false;
  bool load_in_8bit = false;
  std::string quant_type;
  bool double_quant = false;
  std::string compute_dtype;
  std::string quant_storage;
  std::string skip_modules;
  double int8_threshold = 6.0;
  std::string fast_activations = "none";  // --fast-activations (commands that load a model)
  std::string adapter;                    // --adapter (commands that run a model)
  CLI::Option* quant_type_opt = nullptr;
  CLI::Option* compute_opt = nullptr;
  CLI::Option* storage_opt = nullptr;
  CLI::Option* skip_opt = nullptr;
  CLI::Option* threshold_opt = nullptr;
  CLI::Option* double_opt = nullptr;
  CLI::Option* l4_opt = nullptr;
  CLI::Option* l8_opt = nullptr;
};

// with_load_flags: --load-in-4bit and --fast-activations (commands that load a model; quantize has
// --load-in-8bit only, 4-bit being its default).
void add_quant_flags(CLI::App* app, QuantFlags& f, bool with_load_flags);
// default_4bit: whether load_in_4bit is on without --load-in-4bit or --load-in-8bit (true for quantize).
// Prints transformers' "Unused kwargs" note to stderr for unknown keys in --config.
BitsAndBytesConfig build_config(const QuantFlags& f, bool default_4bit);
// True if any quantization flag or --config was given (--fast-activations is not one).
bool any_quant_flag(const QuantFlags& f);
// FromPretrainedOptions::activations from --fast-activations.
Activations activations(const QuantFlags& f);

// --adapter DIR: a PEFT LoRA adapter applied unmerged (generate, chat, serve, perplexity, bench, info).
void add_adapter_flag(CLI::App* app, QuantFlags& f);

// The load options the quantization flags, --adapter, --threads and --quiet make (generate, chat, serve).
FromPretrainedOptions load_options(const QuantFlags& q, int threads, bool quiet);

// --do-sample, --temperature, --top-k, --top-p, --seed into g (generate and chat).
void add_sampling_flags(CLI::App* app, GenerationConfig& g);

}  // namespace nibble::cli
