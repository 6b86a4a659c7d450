// nibble perplexity MODEL --file TEXT [--reference MODEL2]: perplexity, and against a reference model the
// mean KL divergence and top-1 agreement of next-token distributions.
#include <cmath>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "config_flags.h"
#include "nibble/error.h"
#include "nibble/files.h"
#include "nibble/model.h"
#include "nibble/sampling.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, file, reference;
    int threads = 0;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub =
      app.add_subcommand("perplexity", "perplexity of a text; KL divergence against a reference model");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])")
      ->required();
  sub->add_option("-f,--file", a->file, "text file")->required();
  sub->add_option("--reference", a->reference, "reference model (e.g. the float checkpoint) for KL / top-1");
  add_quant_flags(sub, a->q, true);
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->callback([a] {
    FromPretrainedOptions opt{.threads = a->threads, .quiet = true, .activations = activations(a->q)};
    if (any_quant_flag(a->q)) opt.quantization_config = build_config(a->q, false);
    const auto model = AutoModelForCausalLM::from_pretrained(a->model, opt);
    const Tokenizer tok = Tokenizer::from_pretrained(a->model);
    std::vector<int32_t> text_ids = tok.encode(read_text_file(a->file), false);
    if (text_ids.empty()) throw ValueError(a->file + ": no tokens");
    std::optional<AutoModelForCausalLM> ref;
    if (!a->reference.empty())
      ref = AutoModelForCausalLM::from_pretrained(a->reference, {.threads = a->threads, .quiet = true});
    // Windows of the context length, each starting with BOS and scoring every following token (a text that
    // fits is one sequence, as transformers' standard evaluation).
    const int64_t ctx = model.max_position_embeddings();
    const auto bos = tok.bos_token_id();
    const int64_t per_window = ctx - (bos ? 1 : 0);
    const int64_t V = model.info().vocab_size;
    double nll = 0, kl = 0;
    int64_t scored = 0, agree = 0;
    for (size_t start = 0; start < text_ids.size(); start += static_cast<size_t>(per_window)) {
      std::vector<int32_t> w;
      if (bos) w.push_back(*bos);
      const size_t end = std::min(text_ids.size(), start + static_cast<size_t>(per_window));
      for (size_t i = start; i < end; ++i) w.push_back(text_ids[i]);
      if (w.size() < 2) continue;
      const auto logits = model.forward(w);
      std::vector<float> rlogits;
      if (ref) rlogits = ref->forward(w);
      for (size_t t = 0; t + 1 < w.size(); ++t) {
        const float* row = logits.data() + t * static_cast<size_t>(V);
        nll -= log_prob(row, V, w[t + 1]);
        if (ref) {
          const float* rrow = rlogits.data() + t * static_cast<size_t>(V);
          kl += kl_divergence(rrow, row, V);
          agree += argmax(rrow, V) == argmax(row, V);
        }
        ++scored;
      }
    }
    if (scored == 0) throw ValueError(a->file + ": too short to score (needs at least one token after BOS)");
    std::printf("tokens: %lld\n", static_cast<long long>(scored));
    std::printf("perplexity: %.4f\n", std::exp(nll / static_cast<double>(scored)));
    if (ref) {
      std::printf("mean KL divergence: %.6f\n", kl / static_cast<double>(scored));
      std::printf("top-1 agreement: %.4f\n", static_cast<double>(agree) / static_cast<double>(scored));
    }
  });
}

}  // namespace nibble::cli
