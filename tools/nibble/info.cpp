// nibble info MODEL: architecture, parameter count, quantization config, memory footprint (--load: peak RSS).
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.h"
#include "config_flags.h"
#include "nibble/device.h"
#include "nibble/model.h"

namespace nibble::cli {

void add_info(CLI::App& app) {
  struct Args {
    std::string model;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand("info", "architecture, parameters, quantization and memory of a model");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])")
      ->required();
  add_quant_flags(sub, a->q, true);
  add_adapter_flag(sub, a->q);
  sub->callback([a] {
    FromPretrainedOptions opt{.quiet = true, .activations = activations(a->q)};
    if (any_quant_flag(a->q)) opt.quantization_config = build_config(a->q, false);
    opt.adapter = a->q.adapter;
    const auto m = AutoModelForCausalLM::from_pretrained(a->model, opt);
    const ModelInfo& i = m.info();
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    std::printf("architecture: %s (model_type %s)\n", i.architecture.c_str(), i.model_type.c_str());
    std::printf("parameters: %lld\n", static_cast<long long>(i.num_parameters));
    std::printf("layers: %lld, hidden size: %lld, vocab: %lld\n", static_cast<long long>(i.num_layers),
                static_cast<long long>(i.hidden_size), static_cast<long long>(i.vocab_size));
    std::printf("dtype: %s\n", std::string(dtype_name(i.dtype)).c_str());
    std::printf("memory footprint: %zu bytes (%.2f MB)\n", m.memory_footprint(),
                static_cast<double>(m.memory_footprint()) / 1e6);
    std::printf("peak RSS after load: %.2f MB\n", static_cast<double>(ru.ru_maxrss) / 1e3);
    // one sequence's KV cache at a Session's default context and at the model's full one
    const int64_t full = m.max_position_embeddings(), dflt = std::min<int64_t>(full, 8192);
    std::printf(
        "kv cache per sequence: %zu bytes (%.2f MB) at %lld positions, %.2f MB at %lld "
        "(max_position_embeddings)\n",
        m.kv_cache_bytes(dflt), static_cast<double>(m.kv_cache_bytes(dflt)) / 1e6,
        static_cast<long long>(dflt), static_cast<double>(m.kv_cache_bytes(full)) / 1e6,
        static_cast<long long>(full));
    // the path each linear layer's kernel takes here ("reference" = the scalar fallback)
    std::printf("kernels (1 token): %s\n", describe_kernels(m.kernel_paths(1)).c_str());
    std::printf("kernels (512 tokens): %s\n", describe_kernels(m.kernel_paths(512)).c_str());
    // the experimental CUDA backend: whether this build has it and the devices it finds (the model runs on
    // the CPU)
    std::printf("cuda: %s\n", cuda_summary().c_str());
    if (i.quantization_config) {
      std::cout << "quantization_config: " << i.quantization_config->to_json_string(false);
    } else {
      std::printf("quantization_config: none\n");
    }
  });
}

}  // namespace nibble::cli
