// nibble merge MODEL ADAPTER OUT: peft's merge_and_unload(), written as a checkpoint transformers loads
// (4-bit as the base was, or dense with --dtype).
#include <cstdio>
#include <memory>
#include <optional>

#include "commands.h"
#include "config_flags.h"
#include "nibble/error.h"
#include "nibble/model.h"

namespace nibble::cli {

void add_merge(CLI::App& app) {
  struct Args {
    std::string model, adapter, out, dtype;
    int threads = 0;
    bool quiet = false, overwrite = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "merge", "merge a LoRA adapter into its base model (peft's merge_and_unload) and save the result");
  sub->add_option("MODEL", a->model, "the base model directory (or HF cache id)")->required();
  sub->add_option("ADAPTER", a->adapter, "PEFT adapter directory")->required();
  sub->add_option("OUT", a->out, "output model directory")->required();
  add_quant_flags(sub, a->q, true);
  sub->add_option(
         "--dtype", a->dtype,
         "write a dense checkpoint of this dtype (bfloat16, float16, float32) instead of re-quantizing")
      ->check(CLI::IsMember({"bfloat16", "float16", "float32"}));
  sub->add_flag("--overwrite", a->overwrite,
                "replace an existing OUT (a model directory) once the new one is complete");
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar");
  sub->callback([a] {
    FromPretrainedOptions opt = load_options(a->q, a->threads, a->quiet);
    opt.adapter = a->adapter;
    std::optional<DType> dt;
    if (!a->dtype.empty()) opt.dtype = dt = parse_dtype(a->dtype, "--dtype");
    auto model = AutoModelForCausalLM::from_pretrained(a->model, opt);
    model.merge_and_unload(dt);
    model.save_pretrained(a->out, {.overwrite = a->overwrite});
    if (!a->quiet) std::fprintf(stderr, "merged model written to %s\n", a->out.c_str());
  });
}

}  // namespace nibble::cli
