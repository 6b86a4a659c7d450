// nibble serve MODEL | --synthetic SHAPE --tokenizer DIR: the OpenAI-compatible server (nibble/server.h)
// until SIGINT or SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "commands.h"
#include "config_flags.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/hub.h"
#include "nibble/model.h"
#include "nibble/server.h"
#include "nibble/tokenizer.h"
#include "synthetic.h"

namespace nibble::cli {

// The model's chat template, or none (with a warning) when it has none or it does not parse: completions
// still work.
std::optional<ChatTemplate> load_chat_template(const std::string& dir, const std::string& name, bool quiet) {
  try {
    return ChatTemplate::from_pretrained(dir, name);
  } catch (const Error& e) {
    if (!quiet) std::fprintf(stderr, "nibble: warning: no chat template: %s\n", e.what());
    return std::nullopt;
  }
}

void add_serve(CLI::App& app) {
  struct Args {
    std::string model, synthetic, tokenizer, host = "127.0.0.1", alias, template_name;
    int64_t layers = 0;
    int port = 8080, max_batch = 8, threads = 0;
    int64_t ctx = 0;
    bool quiet = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server (chat and text completions, streaming, continuous batching)");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])");
  sub->add_option("--synthetic", a->synthetic, std::string(kSyntheticHelp) + " (needs --tokenizer)");
  sub->add_option("--layers", a->layers, "override num_hidden_layers (synthetic)");
  sub->add_option("--tokenizer", a->tokenizer,
                  "directory (or HF cache id) of the tokenizer and chat template (default: MODEL's)");
  sub->add_option("--host", a->host, "address to bind (default 127.0.0.1: this machine only)");
  sub->add_option("--port", a->port, "port (default 8080; 0 = any free port)");
  sub->add_option("--alias", a->alias,
                  "model id in /v1/models and responses (default: the directory's name)");
  sub->add_option("--max-batch", a->max_batch, "sequences decoded together (default 8)");
  sub->add_option("--ctx", a->ctx, "context per sequence in tokens (default: the model's, at most 4096)");
  sub->add_option("--chat-template", a->template_name,
                  "which named chat template to use (default: \"default\")");
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  add_quant_flags(sub, a->q, true);
  add_adapter_flag(sub, a->q);
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar");
  sub->callback([a] {
    if (a->model.empty() == a->synthetic.empty())
      throw ValueError("serve: give a MODEL directory or --synthetic SHAPE");
    if (!a->synthetic.empty() && a->tokenizer.empty())
      throw ValueError("serve: --synthetic needs --tokenizer DIR (a synthetic model has no tokenizer)");
    // SIGINT/SIGTERM go to one watcher thread (blocked here before any other thread starts)
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    FromPretrainedOptions opt = load_options(a->q, a->threads, a->quiet);
    std::optional<AutoModelForCausalLM> loaded;
    std::string tok_dir;
    if (!a->synthetic.empty()) {
      opt.dtype = DType::BFloat16;
      loaded = AutoModelForCausalLM::from_config(synthetic_config(a->synthetic, a->layers), opt, 1);
    } else {
      tok_dir = resolve_model_path(a->model);
      loaded = AutoModelForCausalLM::from_pretrained(tok_dir, opt);
    }
    const AutoModelForCausalLM& model = *loaded;
    if (!a->tokenizer.empty()) tok_dir = resolve_model_path(a->tokenizer);
    const Tokenizer tok = Tokenizer::from_pretrained(tok_dir);
    // a tokenizer from elsewhere: prompt ids must have embedding rows (generated ids past the tokenizer's
    // vocab decode as U+FFFD)
    if (!a->tokenizer.empty() && tok.vocab_size() > model.info().vocab_size)
      throw ValueError("serve: the tokenizer's vocabulary (" + std::to_string(tok.vocab_size()) +
                       " ids) is larger than the model's (" + std::to_string(model.info().vocab_size) + ")");
    const auto tmpl = load_chat_template(tok_dir, a->template_name, a->quiet);
    std::string id = a->alias;
    if (id.empty() && !a->synthetic.empty()) id = "synthetic-" + a->synthetic;
    if (id.empty()) id = std::filesystem::path(a->model).filename().string();
    if (id.empty()) id = std::filesystem::path(a->model).parent_path().filename().string();
    Server srv(model, tok, tmpl ? &*tmpl : nullptr,
               {.host = a->host,
                .port = a->port,
                .model_id = id,
                .max_batch = a->max_batch,
                .context_length = a->ctx});
    srv.listen();
    std::thread watcher([&srv, sigs] {
      int sig = 0;
      sigwait(&sigs, &sig);
      srv.stop();
    });
    std::printf("nibble: serving %s (%s) - listening on http://%s:%d\n", id.c_str(),
                tmpl ? "chat and completions" : "completions only", a->host.c_str(), srv.port());
    std::fflush(stdout);
    srv.run();
    // run() returned: a signal arrived (the watcher called stop) - or the server failed; wake the watcher
    pthread_kill(watcher.native_handle(), SIGTERM);
    watcher.join();
    if (!a->quiet) std::fprintf(stderr, "nibble: server stopped\n");
  });
}

}  // namespace nibble::cli
