// nibble bench MODEL | --synthetic SHAPE: prefill and decode tokens/s like llama-bench's pp512 / tg128, the
// load/quantize speed, and the machine's read bandwidth measured in the same run.
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>

#include "commands.h"
#include "config_flags.h"
#include "nibble/cpu.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "synthetic.h"

namespace nibble::cli {

namespace {
// The kernel path most linear layers take.
std::string most_used(const std::vector<std::pair<std::string, int64_t>>& paths) {
  std::string best;
  int64_t n = -1;
  for (const auto& [name, count] : paths)
    if (count > n) {
      best = name;
      n = count;
    }
  return best;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

void add_bench(CLI::App& app) {
  struct Args {
    std::string model, synthetic;
    int64_t layers = 0;
    int p = 512, n = 128, threads = 0, reps = 1;
    bool json = false, no_bandwidth = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand("bench", "prefill (pp) and decode (tg) tokens/s, llama-bench style");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])");
  sub->add_option("--synthetic", a->synthetic, kSyntheticHelp);
  sub->add_option("--layers", a->layers, "override num_hidden_layers (synthetic)");
  sub->add_option("-p", a->p, "prompt tokens for the prefill test (default 512, 0 = skip)");
  sub->add_option("-n", a->n, "tokens for the decode test (default 128, 0 = skip)");
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_option("-r,--repetitions", a->reps, "repetitions (default 1)");
  sub->add_flag("--json", a->json, "machine-readable output");
  sub->add_flag("--no-bandwidth", a->no_bandwidth, "skip the memory read-bandwidth probe");
  add_quant_flags(sub, a->q, true);
  add_adapter_flag(sub, a->q);
  sub->callback([a] {
    if (a->model.empty() == a->synthetic.empty())
      throw ValueError("bench: give a MODEL directory or --synthetic SHAPE");
    // default for bench: the seed's NF4 + double quant + bfloat16 compute
    BitsAndBytesConfig cfg =
        any_quant_flag(a->q) ? build_config(a->q, false) : default_synthetic_quantization();
    FromPretrainedOptions opt{
        .quantization_config = cfg, .threads = a->threads, .quiet = true, .activations = activations(a->q)};
    opt.adapter = a->q.adapter;
    auto t0 = std::chrono::steady_clock::now();
    std::optional<AutoModelForCausalLM> model;
    if (!a->synthetic.empty()) {
      const nlohmann::json c = synthetic_config(a->synthetic, a->layers);
      opt.dtype = DType::BFloat16;
      model = AutoModelForCausalLM::from_config(c, opt, 1);
    } else {
      model = AutoModelForCausalLM::from_pretrained(a->model, opt);
    }
    const double load_s = seconds_since(t0);
    const ModelInfo& info = model->info();
    const int64_t V = info.vocab_size;
    std::mt19937 rng(0);
    std::vector<int32_t> prompt(static_cast<size_t>(a->p));
    for (auto& id : prompt) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(V));
    double pp = 0, tg = 0;
    for (int r = 0; r < a->reps; ++r) {
      if (a->p > 0) {
        t0 = std::chrono::steady_clock::now();
        // prefill as llama-bench's pp: the prompt through the model, logits for the last position only
        (void)model->generate(prompt, {.max_new_tokens = 0});
        pp += a->p / seconds_since(t0);
      }
      if (a->n > 0) {
        // llama-bench tg: n tokens generated one at a time from a 1-token context
        GenerationConfig g{.max_new_tokens = a->n, .eos_token_id = {-1}};
        t0 = std::chrono::steady_clock::now();
        const auto out = model->generate({prompt.empty() ? 1 : prompt[0]}, g);
        tg += static_cast<double>(out.size() - 1) / seconds_since(t0);
      }
    }
    pp /= a->reps;
    tg /= a->reps;
    const double bw = a->no_bandwidth ? 0 : measure_read_bandwidth();
    const size_t decode_bytes = model->decode_bytes_per_token();
    const double weight_bytes = static_cast<double>(decode_bytes);
    const std::string path = kernel_path(cfg.compute_dtype());
    nlohmann::ordered_json j;
    j["model"] = a->synthetic.empty() ? a->model : "synthetic:" + a->synthetic;
    j["layers"] = info.num_layers;
    j["parameters"] = info.num_parameters;
    if (cfg.load_in_8bit) {
      j["quantization"] = "llm_int8";
      j["llm_int8_threshold"] = cfg.llm_int8_threshold;
    } else {
      j["quantization"] =
          cfg.load_in_4bit ? cfg.bnb_4bit_quant_type + (cfg.bnb_4bit_use_double_quant ? "+dq" : "") : "none";
      j["compute_dtype"] = std::string(dtype_name(cfg.compute_dtype()));
    }
    j["kernel"] = cfg.load_in_8bit ? most_used(model->kernel_paths(1)) : path;
    // what each linear layer actually runs (a "reference" entry is a scalar fallback)
    for (const auto& [key, tokens] :
         {std::pair<const char*, int64_t>{"kernels_decode", 1}, {"kernels_prefill", a->p}})
      for (const auto& [name, n] : model->kernel_paths(std::max<int64_t>(tokens, 1))) j[key][name] = n;
    j["threads"] = a->threads;  // 0: all cores
    j["load_seconds"] = load_s;
    j["weights_bytes"] = model->memory_footprint();
    j["decode_bytes_per_token"] = decode_bytes;
    j["pp" + std::to_string(a->p) + "_tok_s"] = pp;
    j["tg" + std::to_string(a->n) + "_tok_s"] = tg;
    if (bw > 0) {
      j["read_bandwidth_gb_s"] = bw / 1e9;
      // decode reads its weights once per token: the bandwidth bound on tokens/s and our fraction of it
      j["tg_bandwidth_bound_tok_s"] = bw / weight_bytes;
      j["tg_fraction_of_bound"] = tg / (bw / weight_bytes);
    }
    if (a->json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      for (auto it = j.begin(); it != j.end(); ++it)
        std::printf(
            "%-26s %s\n", it.key().c_str(),
            it.value().is_string() ? it.value().get<std::string>().c_str() : it.value().dump().c_str());
    }
  });
}

}  // namespace nibble::cli
