// nibble finetune MODEL --data FILE --output DIR: QLoRA, LoRA adapters trained over the frozen (4-bit) base,
// written as a PEFT adapter directory.
#include "nibble/finetune.h"

#include <sys/resource.h>

#include <cstdio>
#include <memory>
#include <sstream>

#include "commands.h"
#include "config_flags.h"
#include "nibble/error.h"
#include "synthetic.h"

namespace nibble::cli {

void add_finetune(CLI::App& app) {
  struct Args {
    std::string model, data, targets = "q_proj,v_proj", synthetic, tokenizer;
    int threads = 0;
    int64_t layers = 0;
    bool no_shuffle = false;
    LoraConfig lora;
    TrainingArguments t;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "finetune", "train LoRA adapters over a (4-bit) base model (QLoRA) and write a PEFT adapter directory");
  sub->add_option("MODEL", a->model,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])");
  sub->add_option("--synthetic", a->synthetic,
                  std::string(kSyntheticHelp) + " (random weights, for benchmarks; needs --tokenizer)");
  sub->add_option("--layers", a->layers, "override num_hidden_layers (synthetic)");
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer directory for --data (synthetic)");
  sub->add_option(
         "--data", a->data,
         "training data: .txt (one document) or .jsonl (one {\"text\": ...} per line, or a conversation "
         "{\"messages\": [...]} rendered with the chat template, trained on the assistant turns)")
      ->required();
  sub->add_option("-o,--output", a->t.output_dir, "adapter directory to write")->required();
  add_quant_flags(sub, a->q, true);
  sub->add_option("--lora-r", a->lora.r, "LoRA rank r (default 8)");
  sub->add_option("--lora-alpha", a->lora.lora_alpha,
                  "lora_alpha: the update is scaled by alpha / r (default 16)");
  sub->add_option("--lora-dropout", a->lora.lora_dropout, "dropout on the LoRA input (default 0.05)");
  sub->add_option("--target-modules", a->targets,
                  "comma-separated module names (q_proj,v_proj default) or all-linear");
  sub->add_option("--seq-len", a->t.seq_len, "tokens per training block (default 512)");
  sub->add_option("--batch-size", a->t.per_device_train_batch_size, "blocks per micro-batch (default 1)");
  sub->add_option("--grad-accum", a->t.gradient_accumulation_steps,
                  "micro-batches per optimizer step (default 1)");
  sub->add_option("--lr", a->t.learning_rate, "peak learning rate (default 2e-4)");
  sub->add_option("--lr-scheduler", a->t.lr_scheduler_type,
                  "linear (default), cosine, constant, constant_with_warmup")
      ->check(CLI::IsMember({"linear", "cosine", "constant", "constant_with_warmup"}));
  sub->add_option("--warmup-steps", a->t.warmup_steps, "linear warmup steps (default 0)");
  sub->add_option("--weight-decay", a->t.weight_decay, "AdamW weight decay (default 0)");
  sub->add_option("--max-grad-norm", a->t.max_grad_norm, "gradient clipping norm (default 1.0; 0 = off)");
  sub->add_option(
         "--optim", a->t.optim,
         "adamw_torch (default), sgd, or adamw_8bit / paged_adamw_8bit (bitsandbytes' AdamW with 8-bit "
         "blockwise state; paging is a CUDA matter)")
      ->check(CLI::IsMember({"adamw_torch", "sgd", "adamw_8bit", "paged_adamw_8bit"}));
  auto* steps = sub->add_option("--max-steps", a->t.max_steps, "optimizer steps (overrides --epochs)");
  sub->add_option("--epochs", a->t.num_train_epochs, "passes over the data (default 3)")->excludes(steps);
  sub->add_option("--seed", a->t.seed, "seed of the adapter init, shuffling and dropout (default 0)");
  sub->add_flag("--no-shuffle", a->no_shuffle, "keep the blocks in file order");
  sub->add_option("--init-adapter", a->t.init_adapter,
                  "start from this adapter (a checkpoint-N directory also restores the optimizer and step)");
  sub->add_flag("--gradient-checkpointing", a->t.gradient_checkpointing,
                "recompute each layer's activations in the backward pass (activation memory of one layer)");
  sub->add_option("--log-jsonl", a->t.log_jsonl,
                  "append one {step, loss, learning_rate, grad_norm} line per optimizer step to this file");
  sub->add_option(
      "--save-steps", a->t.save_steps,
      "write a resumable checkpoint (adapter + optimizer state) to OUTPUT/checkpoint-N every N steps");
  sub->add_flag("--overwrite", a->t.overwrite_output_dir, "replace an existing output directory");
  sub->add_option("-t,--threads", a->threads, "CPU threads (default: all)");
  sub->add_flag("-q,--quiet", a->t.quiet, "no progress bar or summary");
  sub->callback([a] {
    FromPretrainedOptions opt = load_options(a->q, a->threads, a->t.quiet);
    opt.quiet = true;  // the training bar is the one that matters
    a->t.shuffle = !a->no_shuffle;
    a->lora.target_modules.clear();
    std::stringstream ss(a->targets);
    for (std::string m; std::getline(ss, m, ',');)
      if (!m.empty()) a->lora.target_modules.push_back(m);
    if (a->model.empty() == a->synthetic.empty())
      throw ValueError("finetune: give a MODEL directory or --synthetic SHAPE");
    FinetuneReport r;
    if (!a->synthetic.empty()) {
      if (a->tokenizer.empty()) throw ValueError("finetune: --synthetic needs --tokenizer DIR");
      const TrainingData data = read_training_data(a->data, a->tokenizer);
      if (!opt.quantization_config) opt.quantization_config = default_synthetic_quantization();
      opt.dtype = DType::BFloat16;
      auto model = AutoModelForCausalLM::from_config(synthetic_config(a->synthetic, a->layers), opt, 1);
      r = finetune(model, data, a->lora, a->t, "synthetic:" + a->synthetic);
    } else {
      r = finetune(a->model, a->data, opt, a->lora, a->t);
    }
    if (!a->t.quiet) {
      const double tps = r.seconds > 0 ? static_cast<double>(r.train_tokens) / r.seconds : 0;
      std::fprintf(
          stderr,
          "trained %zu steps over %lld blocks: %lld trainable parameters in %zu modules, %lld tokens in "
          "%.1f s (%.1f tokens/s); final loss %.4f\nadapter written to %s\n",
          r.log.size(), static_cast<long long>(r.blocks), static_cast<long long>(r.trainable_parameters),
          r.target_modules.size(), static_cast<long long>(r.train_tokens), r.seconds, tps,
          r.log.empty() ? 0.0 : r.log.back().loss, a->t.output_dir.c_str());
      if (r.blocks_without_targets > 0)
        std::fprintf(stderr, "left out %lld blocks with no target token (no assistant text)\n",
                     static_cast<long long>(r.blocks_without_targets));
      struct rusage ru {};
      getrusage(RUSAGE_SELF, &ru);
      std::fprintf(stderr,
                   "memory: base model %.2f MB, adapter %.2f MB, optimizer state %.2f MB, peak RSS %.2f MB\n",
                   static_cast<double>(r.model_bytes) / 1e6, static_cast<double>(r.adapter_bytes) / 1e6,
                   static_cast<double>(r.optimizer_bytes) / 1e6, static_cast<double>(ru.ru_maxrss) / 1e3);
    }
  });
}

}  // namespace nibble::cli
