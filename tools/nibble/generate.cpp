// nibble generate MODEL --prompt TEXT: stream a continuation to stdout; load time and tokens/s to stderr.
#include <chrono>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "config_flags.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_generate(CLI::App& app) {
  struct Args {
    std::string model, prompt;
    int threads = 0;
    GenerationConfig g{.max_new_tokens = 50};
    bool quiet = false, verbose = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub =
      app.add_subcommand("generate", "generate text from a prompt (optionally quantizing to 4-bit on load)");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])")
      ->required();
  sub->add_option("-p,--prompt", a->prompt, "prompt text")->required();
  sub->add_option("-n,--max-new-tokens", a->g.max_new_tokens, "tokens to generate (default 50)");
  add_quant_flags(sub, a->q, true);
  add_adapter_flag(sub, a->q);
  add_sampling_flags(sub, a->g);
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar or stats");
  sub->add_flag("-v,--verbose", a->verbose, "also print the kernel path each linear layer takes");
  sub->callback([a] {
    const FromPretrainedOptions opt = load_options(a->q, a->threads, a->quiet);
    const auto t0 = std::chrono::steady_clock::now();
    const auto model = AutoModelForCausalLM::from_pretrained(a->model, opt);
    const Tokenizer tok = Tokenizer::from_pretrained(a->model);
    const auto t1 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(a->prompt);
    if (a->verbose)
      std::fprintf(stderr, "kernels: prompt (%zu tokens) %s | decode %s\n", ids.size(),
                   describe_kernels(model.kernel_paths(static_cast<int64_t>(ids.size()))).c_str(),
                   describe_kernels(model.kernel_paths(1)).c_str());
    std::fputs(tok.decode(ids).c_str(), stdout);
    std::fflush(stdout);
    StreamDecoder stream(tok, ids);
    const GenerationConfig& g = a->g;
    int64_t n = 0;
    auto first = std::chrono::steady_clock::now();
    const auto out = model.generate(ids, g, [&](int32_t id) {
      if (n++ == 0) first = std::chrono::steady_clock::now();
      std::fputs(stream.put(id).c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs(stream.flush().c_str(), stdout);
    std::fputc('\n', stdout);  // the text ends its line before the stats line on stderr
    std::fflush(stdout);
    const auto t2 = std::chrono::steady_clock::now();
    if (!a->quiet) {
      const double load = std::chrono::duration<double>(t1 - t0).count();
      const double prefill = std::chrono::duration<double>(first - t1).count();
      const double decode = std::chrono::duration<double>(t2 - first).count();
      std::fprintf(
          stderr, "load %.2fs | prompt %zu tokens %.1f tok/s | generated %lld tokens, decode %.1f tok/s\n",
          load, ids.size(), prefill > 0 ? static_cast<double>(ids.size()) / prefill : 0.0,
          static_cast<long long>(n), n > 1 && decode > 0 ? static_cast<double>(n - 1) / decode : 0.0);
    }
  });
}

}  // namespace nibble::cli
