// nibble chat MODEL: an interactive terminal chat with the model's chat template. The history stays in one
// Session: each turn renders the whole conversation, and only the tokens past what the cache already holds
// run (the previous turns are not prefilled again). /reset starts over, /exit (or end of input) quits.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "config_flags.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/hub.h"
#include "nibble/model.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

std::optional<ChatTemplate> load_chat_template(const std::string& dir, const std::string& name, bool quiet);

void add_chat(CLI::App& app) {
  struct Args {
    std::string model, system, template_name;
    int threads = 0;
    GenerationConfig g{.max_new_tokens = 512};
    int64_t ctx = 0;
    bool quiet = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub =
      app.add_subcommand("chat", "interactive chat in the terminal with the model's chat template");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])")
      ->required();
  sub->add_option("--system", a->system, "system message");
  sub->add_option("-n,--max-new-tokens", a->g.max_new_tokens, "most tokens per reply (default 512)");
  sub->add_option("--ctx", a->ctx, "context in tokens (default: the model's, at most 8192)");
  sub->add_option("--chat-template", a->template_name,
                  "which named chat template to use (default: \"default\")");
  add_quant_flags(sub, a->q, true);
  add_adapter_flag(sub, a->q);
  add_sampling_flags(sub, a->g);
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar, banner or prompt marks");
  sub->callback([a] {
    const FromPretrainedOptions opt = load_options(a->q, a->threads, a->quiet);
    const std::string dir = resolve_model_path(a->model);
    const auto model = AutoModelForCausalLM::from_pretrained(dir, opt);
    const Tokenizer tok = Tokenizer::from_pretrained(dir);
    const ChatTemplate tmpl = ChatTemplate::from_pretrained(dir, a->template_name);
    Session s(model, {.context_length = a->ctx});
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    auto start = [&] {
      messages = nlohmann::ordered_json::array();
      if (!a->system.empty()) messages.push_back({{"role", "system"}, {"content", a->system}});
    };
    start();
    const GenerationConfig& g = a->g;
    if (!a->quiet)
      std::fprintf(stderr, "nibble chat: %lld-token context; /reset starts over, /exit quits\n",
                   static_cast<long long>(s.context_length()));
    std::string line;
    for (;;) {
      if (!a->quiet) std::fputs("> ", stdout);
      std::fflush(stdout);
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        start();
        s.reset();
        if (!a->quiet) std::fputs("(history cleared)\n", stdout);
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      std::string reply;
      try {
        const auto ids = tok.encode(tmpl.render(messages, true), false);
        // keep the cached prefix the new rendering shares; run only the rest
        int64_t same = 0;
        const auto& have = s.tokens();
        while (same < s.length() && same < static_cast<int64_t>(ids.size()) &&
               have[static_cast<size_t>(same)] == ids[static_cast<size_t>(same)])
          ++same;
        if (same == static_cast<int64_t>(ids.size()))
          --same;  // at least one token runs: its logits are needed
        s.truncate(same);
        s.append(std::span(ids).subspan(static_cast<size_t>(same)));
        StreamDecoder stream(tok, ids);
        s.generate(g, [&](int32_t id) {
          const std::string t = stream.put(id);
          reply += t;
          std::fputs(t.c_str(), stdout);
          std::fflush(stdout);
        });
        const std::string rest = stream.flush();
        reply += rest;
        std::fputs(rest.c_str(), stdout);
        std::fputc('\n', stdout);
        if (s.finish_reason() == FinishReason::Length && s.length() >= s.context_length())
          std::fprintf(stderr, "nibble: the context is full; /reset to start over\n");
      } catch (const ChatTemplateError& e) {
        messages.erase(messages.size() - 1);
        std::fprintf(stderr, "nibble: the chat template rejected this turn: %s\n", e.what());
        continue;
      } catch (const ValueError& e) {
        messages.erase(messages.size() - 1);
        std::fprintf(stderr, "nibble: %s\n", e.what());
        continue;
      }
      messages.push_back({{"role", "assistant"}, {"content", reply}});
    }
  });
}

}  // namespace nibble::cli
