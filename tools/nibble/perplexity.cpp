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
#include "nibble/session.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, file, reference;
    int threads = 0;
    int64_t ctx = 0, stride = 0;
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
  add_adapter_flag(sub, a->q);
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_option("--ctx", a->ctx, "positions per window, BOS included (default: max_position_embeddings)");
  sub->add_option(
      "--stride", a->stride,
      "text tokens between window starts (default: the window's text length, no overlap); a "
      "smaller stride gives each scored token more context (transformers' sliding-window recipe)");
  sub->callback([a] {
    FromPretrainedOptions opt{.threads = a->threads, .quiet = true, .activations = activations(a->q)};
    if (any_quant_flag(a->q)) opt.quantization_config = build_config(a->q, false);
    opt.adapter = a->q.adapter;
    const auto model = AutoModelForCausalLM::from_pretrained(a->model, opt);
    const Tokenizer tok = Tokenizer::from_pretrained(a->model);
    std::vector<int32_t> text_ids = tok.encode(read_text_file(a->file), false);
    if (text_ids.empty()) throw ValueError(a->file + ": no tokens");
    std::optional<AutoModelForCausalLM> ref;
    if (!a->reference.empty())
      ref = AutoModelForCausalLM::from_pretrained(a->reference, {.threads = a->threads, .quiet = true});
    // Windows as the transformers perplexity guide slides them: each window holds up to --ctx positions
    // (BOS, when the tokenizer has one, then text), starts --stride text tokens after the previous one, and
    // scores only the tokens no earlier window scored, from its own context. The default stride is the
    // window's text length: consecutive windows (a text that fits is one sequence, as transformers'
    // standard evaluation). Each window is one forward (as transformers runs it; LLM.int8 decides outlier
    // columns per call) with logits computed for the scored positions only, so memory is bounded by --ctx,
    // whatever the file's length.
    const int64_t ctx = a->ctx > 0 ? a->ctx : model.max_position_embeddings();
    if (ctx > model.max_position_embeddings())
      throw ValueError("--ctx " + std::to_string(ctx) + " exceeds the model's max_position_embeddings (" +
                       std::to_string(model.max_position_embeddings()) + ")");
    const auto bos = tok.bos_token_id();
    const int64_t per_window = ctx - (bos ? 1 : 0);
    if (per_window < 1) throw ValueError("--ctx " + std::to_string(ctx) + " leaves no room for text");
    const int64_t stride = a->stride > 0 ? a->stride : per_window;
    if (stride > per_window)
      throw ValueError("--stride " + std::to_string(stride) + " exceeds the window's text length (" +
                       std::to_string(per_window) + "): tokens between windows would not be scored");
    const int64_t V = model.info().vocab_size, N = static_cast<int64_t>(text_ids.size());
    double nll = 0, kl = 0;
    int64_t scored = 0, agree = 0, prev_end = 0;
    for (int64_t begin = 0;; begin += stride) {
      const int64_t end = std::min(N, begin + per_window);
      std::vector<int32_t> w;
      if (bos) w.push_back(*bos);
      w.insert(w.end(), text_ids.begin() + begin, text_ids.begin() + end);
      // the first text position this window scores, and the window row that predicts it
      const int64_t first_text = std::max(prev_end, begin + (bos ? 0 : 1));
      const int64_t off = bos ? 1 : 0, first_row = off + (first_text - begin) - 1;
      if (first_text < end) {
        Session s(model, {.context_length = static_cast<int64_t>(w.size())});
        const auto logits = s.append_all_logits(w, first_row);
        std::vector<float> rlogits;
        if (ref) {
          Session rs(*ref, {.context_length = static_cast<int64_t>(w.size())});
          rlogits = rs.append_all_logits(w, first_row);
        }
        for (int64_t i = first_text; i < end; ++i) {
          const size_t r = static_cast<size_t>(i - first_text) * static_cast<size_t>(V);
          const int32_t target = text_ids[static_cast<size_t>(i)];
          nll -= log_prob(logits.data() + r, V, target);
          if (ref) {
            kl += kl_divergence(rlogits.data() + r, logits.data() + r, V);
            agree += argmax(rlogits.data() + r, V) == argmax(logits.data() + r, V);
          }
          ++scored;
        }
      }
      prev_end = end;
      if (end == N) break;
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
