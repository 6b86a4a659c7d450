// QLoRA fine-tuning (`nibble finetune`): LoRA adapters trained over a frozen (4-bit) base model, written as a
// PEFT adapter directory that peft's PeftModel.from_pretrained loads unchanged. The semantics are peft's
// LoraConfig + get_peft_model and transformers' Trainer (TrainingArguments' names and defaults).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nibble/model.h"

namespace nibble {

// peft's LoraConfig.
struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  // module names as peft matches a list (the full name or its trailing components: "q_proj"), or
  // {"all-linear"}: every linear layer but the output layer
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
};

struct TrainingArguments {
  std::string output_dir;
  bool overwrite_output_dir = false;
  int64_t seq_len = 512;  // run_clm's block_size
  int64_t per_device_train_batch_size = 1;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 2e-4;
  std::string lr_scheduler_type = "linear";  // linear, cosine, constant, constant_with_warmup
  int64_t warmup_steps = 0;
  double weight_decay = 0;
  double max_grad_norm = 1.0;         // 0: no clipping
  std::string optim = "adamw_torch";  // adamw_torch, sgd
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  double num_train_epochs = 3.0;
  uint64_t seed = 0;         // adapter init, shuffling, dropout
  bool shuffle = true;       // false: blocks in file order
  std::string init_adapter;  // start from this adapter (and its optimizer state, if saved with it)
  bool gradient_checkpointing = false;
  // one {"step", "loss", "learning_rate", "grad_norm"} line per optimizer step; an existing file is refused
  // unless overwrite_output_dir, a resumed run appends
  std::string log_jsonl;
  int64_t save_steps = 0;  // > 0: a resumable checkpoint in output_dir/checkpoint-N every N steps
  bool quiet = false;
};

struct TrainLogEntry {
  int64_t step = 0;
  double loss = 0, learning_rate = 0, grad_norm = 0;
};

struct FinetuneReport {
  std::vector<TrainLogEntry> log;
  int64_t trainable_parameters = 0, train_tokens = 0, blocks = 0;
  // blocks left out because none of their predicted tokens is a target (chat data: no assistant text)
  int64_t blocks_without_targets = 0;
  double seconds = 0;                             // training only (not loading)
  std::vector<std::string> target_modules;        // the modules adapted
  size_t adapter_bytes = 0, optimizer_bytes = 0;  // float32 A and B; the optimizer's state
  size_t model_bytes = 0;                         // the base model's memory_footprint()
};

// Token ids of training data and which of them the loss is taken on: targets[i] != 0 when ids[i] is predicted
// (from the ids before it) in the loss.
struct TrainingData {
  std::vector<int32_t> ids;
  std::vector<uint8_t> targets;
};

// A training file as `nibble finetune --data` reads it: a .txt file is one document encoded whole
// (tokenizer(text), BOS as the tokenizer adds it); a .jsonl file has one object per line, each encoded alone:
// {"text": ...} as a .txt file's text, or a conversation {"messages": [{"role", "content"}, ...]} (TRL's
// conversational format) rendered with the model's chat template (add_generation_prompt false) and encoded as
// apply_chat_template(tokenize=True) encodes it (the template writes BOS). Every token of text is a target;
// of a conversation, the assistant's: with {% generation %} blocks in the template, the tokens those blocks
// wrote (transformers' return_assistant_tokens_mask); otherwise each assistant message's tokens by TRL's
// prompt-completion rule: what render(messages through it) encodes to beyond render(messages before it,
// add_generation_prompt=True), end-of-turn tokens included. The ids are concatenated in order. Errors name
// the file and line: a conversation whose turn boundary falls inside a token, or whose template renders
// earlier turns differently once later ones follow, a model without a chat template for chat lines.
TrainingData read_training_data(const std::string& data_file, const std::string& model_dir);
// read_training_data's ids.
std::vector<int32_t> read_training_tokens(const std::string& data_file, const std::string& tokenizer_dir);

// Trains and writes the adapter to args.output_dir (all-or-nothing). `model` is loaded with `load` (its
// quantization_config is the base's 4-bit config; a bnb-4bit checkpoint is used as stored); on_step is called
// after each optimizer step.
FinetuneReport finetune(const std::string& model, const std::string& data_file,
                        const FromPretrainedOptions& load, const LoraConfig& lora,
                        const TrainingArguments& args,
                        const std::function<void(const TrainLogEntry&)>& on_step = {});
// The same over a model already loaded (without an adapter; from_pretrained or from_config) and token ids;
// `base_model_name` goes into adapter_config.json's base_model_name_or_path. The model's linear layers are
// wrapped in place: afterwards it runs with the trained adapter attached.
FinetuneReport finetune(AutoModelForCausalLM& model, const std::vector<int32_t>& ids, const LoraConfig& lora,
                        const TrainingArguments& args, const std::string& base_model_name,
                        const std::function<void(const TrainLogEntry&)>& on_step = {});
// The same over token ids with targets (read_training_data): the data is cut into blocks of seq_len as the
// ids are, each micro-batch's loss is the mean over its targets (blocks without one are left out).
FinetuneReport finetune(AutoModelForCausalLM& model, const TrainingData& data, const LoraConfig& lora,
                        const TrainingArguments& args, const std::string& base_model_name,
                        const std::function<void(const TrainLogEntry&)>& on_step = {});

}  // namespace nibble
