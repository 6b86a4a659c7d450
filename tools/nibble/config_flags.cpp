#include "config_flags.h"

#include <cstdio>
#include <sstream>

namespace nibble::cli {

void add_quant_flags(CLI::App* app, QuantFlags& f, bool with_load_flags) {
  app->add_option("--config", f.config_file, "BitsAndBytesConfig as a JSON file (transformers' dict form)");
  f.l8_opt = app->add_flag("--load-in-8bit", f.load_in_8bit,
                           "LLM.int8: int8 weights with row scales, outlier columns in full precision");
  f.threshold_opt =
      app->add_option("--llm-int8-threshold", f.int8_threshold,
                      "llm_int8_threshold: |x| at or above it is an outlier (default 6.0; 0 = off)");
  if (with_load_flags) {
    f.l4_opt = app->add_flag("--load-in-4bit", f.load_in_4bit, "quantize linear layers to 4-bit on load");
    app->add_option(
           "--fast-activations", f.fast_activations,
           "int8: 4-bit layers quantize their input to int8 per block of 32 (llama.cpp's way; faster, "
           "not bitsandbytes' numerics); none (default): exact")
        ->check(CLI::IsMember({"none", "int8"}));
  }
  f.quant_type_opt =
      app->add_option("--quant-type", f.quant_type, "bnb_4bit_quant_type: fp4 (default) or nf4");
  f.double_opt = app->add_flag("--double-quant", f.double_quant, "bnb_4bit_use_double_quant");
  f.compute_opt = app->add_option("--compute-dtype", f.compute_dtype,
                                  "bnb_4bit_compute_dtype (float32, bfloat16, float16)");
  f.storage_opt =
      app->add_option("--quant-storage", f.quant_storage, "bnb_4bit_quant_storage (uint8 default)");
  f.skip_opt = app->add_option("--skip-modules", f.skip_modules,
                               "llm_int8_skip_modules, comma-separated (replaces the default: lm_head)");
}

bool any_quant_flag(const QuantFlags& f) {
  return !f.config_file.empty() || f.load_in_4bit || f.load_in_8bit || f.double_quant ||
         (f.quant_type_opt && f.quant_type_opt->count()) || (f.compute_opt && f.compute_opt->count()) ||
         (f.storage_opt && f.storage_opt->count()) || (f.skip_opt && f.skip_opt->count()) ||
         (f.threshold_opt && f.threshold_opt->count());
}

Activations activations(const QuantFlags& f) {
  return f.fast_activations == "int8" ? Activations::Int8 : Activations::Exact;
}

BitsAndBytesConfig build_config(const QuantFlags& f, bool default_4bit) {
  BitsAndBytesConfig cfg;
  if (!f.config_file.empty()) {
    std::vector<std::string> unused;
    cfg = BitsAndBytesConfig::from_json_file(f.config_file, &unused);
    if (!unused.empty()) std::fprintf(stderr, "nibble: %s\n", unused_kwargs_message(unused).c_str());
  } else if (default_4bit && !f.load_in_8bit) {
    cfg.set_load_in_4bit(true);
  }
  nlohmann::json kw = nlohmann::json::object();
  if (f.load_in_4bit) kw["load_in_4bit"] = true;
  if (f.load_in_8bit) kw["load_in_8bit"] = true;
  if (f.threshold_opt && f.threshold_opt->count()) kw["llm_int8_threshold"] = f.int8_threshold;
  if (f.quant_type_opt && f.quant_type_opt->count()) kw["bnb_4bit_quant_type"] = f.quant_type;
  if (f.double_quant) kw["bnb_4bit_use_double_quant"] = true;
  if (f.compute_opt && f.compute_opt->count()) kw["bnb_4bit_compute_dtype"] = f.compute_dtype;
  if (f.storage_opt && f.storage_opt->count()) kw["bnb_4bit_quant_storage"] = f.quant_storage;
  if (f.skip_opt && f.skip_opt->count()) {
    std::vector<std::string> mods;
    std::stringstream ss(f.skip_modules);
    std::string m;
    while (std::getline(ss, m, ','))
      if (!m.empty()) mods.push_back(m);
    kw["llm_int8_skip_modules"] = mods;
  }
  cfg.update(kw);
  return cfg;
}

FromPretrainedOptions load_options(const QuantFlags& q, int threads, bool quiet) {
  FromPretrainedOptions opt;
  if (any_quant_flag(q)) opt.quantization_config = build_config(q, false);
  opt.threads = threads;
  opt.quiet = quiet;
  opt.activations = activations(q);
  opt.adapter = q.adapter;
  return opt;
}

void add_adapter_flag(CLI::App* app, QuantFlags& f) {
  app->add_option(
      "--adapter", f.adapter,
      "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), applied unmerged");
}

void add_sampling_flags(CLI::App* app, GenerationConfig& g) {
  app->add_flag("--do-sample", g.do_sample, "sample instead of greedy decoding");
  app->add_option("--temperature", g.temperature, "sampling temperature (default 1.0)");
  app->add_option("--top-k", g.top_k, "top-k filtering (default 50, 0 = off)");
  app->add_option("--top-p", g.top_p, "nucleus filtering (default 1.0 = off)");
  app->add_option("--seed", g.seed, "random seed for sampling");
}

}  // namespace nibble::cli
