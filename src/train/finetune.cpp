#include "nibble/finetune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>

#include "core/progress.h"
#include "core/python_json.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/json_field.h"
#include "models/auto_model_impl.h"
#include "models/lora_adapter.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/files.h"
#include "nibble/hub.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "train/adapter_io.h"
#include "train/optim.h"

namespace nibble {
namespace fs = std::filesystem;

namespace {

// Appends a conversation (one .jsonl line's "messages") to `out`: its ids, and targets on the assistant text
// (read_training_data states the rules). `where` is "file:line".
void add_conversation(const ChatTemplate& tmpl, const Tokenizer& tok, const nlohmann::ordered_json& msgs,
                      const std::string& where, TrainingData& out) {
  if (!msgs.is_array() || msgs.empty())
    throw FormatError(where + ": \"messages\" must be a non-empty list of {\"role\", \"content\"} objects");
  // the template's own errors (raise_exception, a message it cannot print) name the data line too
  auto render = [&](const nlohmann::ordered_json& m, bool generation_prompt,
                    std::vector<std::pair<size_t, size_t>>& spans) {
    try {
      return tmpl.render(m, generation_prompt, nlohmann::ordered_json::object(), spans);
    } catch (const ValueError& e) {
      throw FormatError(where + ": " + e.what());
    }
  };
  std::vector<std::pair<size_t, size_t>> spans, unused;
  const std::string text = render(msgs, false, spans);
  if (!tmpl.has_generation_blocks()) {
    // TRL's prompt-completion rule, turn by turn: the assistant message i is what the conversation through it
    // renders beyond the conversation before it with the generation prompt
    spans.clear();
    for (size_t i = 0; i < msgs.size(); ++i) {
      const auto& m = msgs[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw FormatError(where + ": message " + std::to_string(i) + " has no \"role\" string");
      if (m["role"] != "assistant") continue;
      if (i == 0)
        throw FormatError(where + ": the conversation starts with an assistant message (nothing to answer)");
      const nlohmann::ordered_json before(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(i));
      const nlohmann::ordered_json through(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(i + 1));
      const std::string prompt = render(before, true, unused), upto = render(through, false, unused);
      if (upto.compare(0, prompt.size(), prompt) != 0 || text.compare(0, upto.size(), upto) != 0)
        throw FormatError(where + ": the chat template renders the turns before assistant message " +
                          std::to_string(i) +
                          " differently once later messages follow, so its tokens cannot be told apart");
      spans.emplace_back(prompt.size(), upto.size());
    }
  }
  const std::vector<int32_t> ids = tok.encode(text, false);
  // a span boundary's token index: the text before it must encode to a prefix of the whole (no token across
  // it)
  auto token_at = [&](size_t byte) -> size_t {
    const std::vector<int32_t> head = tok.encode(text.substr(0, byte), false);
    if (head.size() > ids.size() || !std::equal(head.begin(), head.end(), ids.begin()))
      throw FormatError(where +
                        ": an assistant turn of the rendered conversation starts or ends inside a token (at "
                        "byte " +
                        std::to_string(byte) + "), so its tokens cannot be told apart");
    return head.size();
  };
  const size_t base = out.ids.size();
  out.ids.insert(out.ids.end(), ids.begin(), ids.end());
  out.targets.resize(out.ids.size(), 0);
  for (const auto& [b, e] : spans) {
    if (e <= b) continue;
    const size_t tb = token_at(b), te = token_at(e);
    std::fill(out.targets.begin() + static_cast<std::ptrdiff_t>(base + tb),
              out.targets.begin() + static_cast<std::ptrdiff_t>(base + te), uint8_t{1});
  }
}

}  // namespace

TrainingData read_training_data(const std::string& data_file, const std::string& model_dir) {
  const Tokenizer tok = Tokenizer::from_pretrained(model_dir);
  const std::string text = read_text_file(data_file);
  TrainingData out;
  auto add_text = [&](const std::string& t) {
    const auto v = tok.encode(t);
    out.ids.insert(out.ids.end(), v.begin(), v.end());
    out.targets.resize(out.ids.size(), 1);
  };
  const bool jsonl = data_file.size() >= 6 && data_file.compare(data_file.size() - 6, 6, ".jsonl") == 0;
  if (!jsonl) {
    add_text(text);
    return out;
  }
  std::optional<ChatTemplate> tmpl;  // read at the first conversation
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = data_file + ":" + std::to_string(line_no);
    const auto j = jsonf::parse_json(line, where);
    if (j.is_object() && j.contains("messages")) {
      if (!tmpl) tmpl = ChatTemplate::from_pretrained(model_dir);
      // again with its key order kept (templates may print messages with tojson); parse_json bounded it
      const auto ordered = nlohmann::ordered_json::parse(line);
      add_conversation(*tmpl, tok, ordered["messages"], where, out);
      continue;
    }
    const jsonf::JsonPath p(where);
    add_text(jsonf::get_string(j, "text", p));
  }
  return out;
}

std::vector<int32_t> read_training_tokens(const std::string& data_file, const std::string& tokenizer_dir) {
  return read_training_data(data_file, tokenizer_dir).ids;
}

namespace {

void check_args(const LoraConfig& lora, const TrainingArguments& a) {
  auto positive = [](int64_t v, const char* what) {
    if (v <= 0) throw ValueError(std::string(what) + " must be positive, got " + std::to_string(v));
  };
  positive(lora.r, "lora r");
  positive(a.seq_len, "seq_len");
  positive(a.per_device_train_batch_size, "batch size");
  positive(a.gradient_accumulation_steps, "gradient accumulation steps");
  if (a.seq_len < 2) throw ValueError("seq_len must be at least 2");
  if (!(lora.lora_alpha > 0)) throw ValueError("lora_alpha must be positive");
  if (!(a.learning_rate >= 0)) throw ValueError("learning rate must be >= 0");
  if (a.warmup_steps < 0) throw ValueError("warmup steps must be >= 0");
  if (!(a.max_grad_norm >= 0)) throw ValueError("max_grad_norm must be >= 0 (0 = no clipping)");
  if (!(a.weight_decay >= 0)) throw ValueError("weight decay must be >= 0");
  if (a.max_steps <= 0 && !(a.num_train_epochs > 0))
    throw ValueError("give a positive max_steps or num_train_epochs");
  if (a.save_steps < 0) throw ValueError("save_steps must be >= 0");
  if (a.output_dir.empty()) throw ValueError("an output directory is required");
  train::check_scheduler_name(a.lr_scheduler_type);
}

// The output directory is refused before any work, unless it may be replaced.
void check_output(const TrainingArguments& a) {
  std::error_code ec;
  if (!fs::exists(a.output_dir, ec)) return;
  if (!fs::is_directory(a.output_dir)) throw IoError(a.output_dir + ": exists and is not a directory");
  if (!fs::is_empty(a.output_dir) && !a.overwrite_output_dir)
    throw IoError(a.output_dir +
                  ": output directory exists and is not empty (pass --overwrite to replace it)");
}

}  // namespace

FinetuneReport finetune(const std::string& model_name, const std::string& data_file,
                        const FromPretrainedOptions& load, const LoraConfig& lora,
                        const TrainingArguments& args,
                        const std::function<void(const TrainLogEntry&)>& on_step) {
  check_args(lora, args);
  check_output(args);
  if (!load.adapter.empty())
    throw ValueError(
        "finetune trains a new adapter: start from an existing one with init_adapter (--init-adapter)");
  const std::string dir = resolve_model_path(model_name);
  // data first: a file too short fails before the model loads
  const TrainingData data = read_training_data(data_file, dir);
  if (static_cast<int64_t>(data.ids.size()) < args.seq_len)
    throw ValueError(data_file + ": " + std::to_string(data.ids.size()) +
                     " tokens, fewer than one block of seq_len " + std::to_string(args.seq_len));
  AutoModelForCausalLM model = AutoModelForCausalLM::from_pretrained(dir, load);
  return finetune(model, data, lora, args, model_name, on_step);
}

FinetuneReport finetune(AutoModelForCausalLM& model, const std::vector<int32_t>& ids, const LoraConfig& lora,
                        const TrainingArguments& args, const std::string& base_name,
                        const std::function<void(const TrainLogEntry&)>& on_step) {
  return finetune(model, TrainingData{ids, std::vector<uint8_t>(ids.size(), 1)}, lora, args, base_name,
                  on_step);
}

FinetuneReport finetune(AutoModelForCausalLM& model, const TrainingData& data, const LoraConfig& lora,
                        const TrainingArguments& args, const std::string& base_name,
                        const std::function<void(const TrainLogEntry&)>& on_step) {
  check_args(lora, args);
  check_output(args);
  const std::vector<int32_t>& ids = data.ids;
  if (data.targets.size() != ids.size())
    throw ValueError("training data: " + std::to_string(data.targets.size()) + " target flags for " +
                     std::to_string(ids.size()) + " tokens");
  const int64_t L = args.seq_len;
  if (static_cast<int64_t>(ids.size()) < L)
    throw ValueError("the training data has " + std::to_string(ids.size()) +
                     " tokens, fewer than one block of seq_len " + std::to_string(L));
  // the blocks with a target among their predicted tokens (positions 1 .. L - 1)
  std::vector<int64_t> blocks;
  for (int64_t b = 0; b < static_cast<int64_t>(ids.size()) / L; ++b)
    if (std::any_of(data.targets.begin() + b * L + 1, data.targets.begin() + (b + 1) * L,
                    [](uint8_t t) { return t != 0; }))
      blocks.push_back(b);
  const int64_t nblocks = static_cast<int64_t>(blocks.size());
  if (nblocks == 0)
    throw ValueError("the training data has no block of seq_len " + std::to_string(L) +
                     " with a token to learn (chat data: no assistant text)");
  auto& im = ModelAccess::impl(model);
  const ThreadScope threads(im.threads);  // the model's --threads for the whole run
  if (!im.info.adapter.empty())
    throw ValueError(
        "finetune trains a new adapter: start from an existing one with init_adapter (--init-adapter)");
  auto* llama = dynamic_cast<models::LlamaModel*>(im.model.get());
  if (!llama) throw NotSupportedError("fine-tuning supports the llama-family models only");
  train::LoraSpec spec;
  spec.r = lora.r;
  spec.alpha = lora.lora_alpha;
  spec.dropout = lora.lora_dropout;
  spec.target_modules = lora.target_modules;
  std::optional<models::LoraAdapter> init;
  if (!args.init_adapter.empty()) {  // its modules, rank and alpha replace the LoRA options
    init = models::read_lora_adapter(args.init_adapter);
    spec.r = init->modules.front().r;
    spec.alpha = jsonf::get_number(init->config, "lora_alpha", jsonf::JsonPath(args.init_adapter));
    spec.target_modules.clear();
    for (const auto& m : init->modules) spec.target_modules.push_back(m.name);
  }
  train::LoraModel lm(*llama, spec, args.seed);
  im.info.adapter = args.output_dir;  // the layers are wrapped now: save_pretrained must not drop the adapter
  lm.gradient_checkpointing = args.gradient_checkpointing;

  // batches of blocks; an epoch's order is shuffled with (seed, epoch) unless shuffle is off
  const int64_t B = args.per_device_train_batch_size, G = args.gradient_accumulation_steps;
  const int64_t batches_per_epoch = (nblocks + B - 1) / B;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (batches_per_epoch + G - 1) / G);
  const int64_t total =
      args.max_steps > 0
          ? args.max_steps
          : static_cast<int64_t>(std::ceil(args.num_train_epochs * static_cast<double>(steps_per_epoch)));
  train::OptimizerOptions oo{args.optim, args.weight_decay, args.adam_beta1, args.adam_beta2,
                             args.adam_epsilon};
  auto opt = train::make_optimizer(oo, lm.modules());
  int64_t start_step = 0;
  if (init) start_step = train::load_adapter_into(lm, *init, opt.get());
  if (start_step >= total && args.max_steps > 0)
    throw ValueError(args.init_adapter + ": the checkpoint is at step " + std::to_string(start_step) +
                     ", max_steps is " + std::to_string(args.max_steps));

  FILE* log = nullptr;
  if (!args.log_jsonl.empty() && start_step == 0 && !args.overwrite_output_dir) {
    std::error_code ec;
    if (fs::exists(args.log_jsonl, ec) && fs::file_size(args.log_jsonl, ec) > 0)
      throw IoError(args.log_jsonl + ": the log file exists (pass --overwrite to replace it)");
  }
  if (!args.log_jsonl.empty()) {
    log = std::fopen(args.log_jsonl.c_str(), start_step > 0 ? "a" : "w");
    if (!log) throw IoError(args.log_jsonl + ": cannot open for writing");
  }
  struct Closer {
    FILE* f;
    ~Closer() {
      if (f) std::fclose(f);
    }
  } closer{log};

  FinetuneReport rep;
  rep.trainable_parameters = lm.num_trainable();
  rep.blocks = nblocks;
  rep.blocks_without_targets = static_cast<int64_t>(ids.size()) / L - nblocks;
  for (const auto& m : lm.modules()) rep.target_modules.push_back(m.name);
  rep.adapter_bytes = static_cast<size_t>(rep.trainable_parameters) * sizeof(float);
  rep.model_bytes = model.memory_footprint() - lm.num_trainable() * sizeof(float);
  for (const auto& [name, t] : opt->state()) rep.optimizer_bytes += t.nbytes();
  std::vector<int64_t> order(static_cast<size_t>(nblocks));
  int64_t epoch = -1, cursor = nblocks;  // next block of `order`
  std::vector<int32_t> batch;
  std::vector<uint8_t> batch_targets;
  const bool all_targets =
      std::all_of(data.targets.begin(), data.targets.end(), [](uint8_t t) { return t != 0; });
  Progress bar("training", total - start_step, args.quiet);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t micro = 0;
  for (int64_t step = 0; step < total; ++step) {
    // the blocks of this step's micro-batches (skipped, without computing, when resuming)
    std::vector<std::vector<int64_t>> micros;
    for (int64_t g = 0; g < G; ++g) {
      if (cursor >= nblocks) {
        if (g > 0) break;  // an epoch's last, partial accumulation
        ++epoch;
        std::iota(order.begin(), order.end(), 0);
        if (args.shuffle) {
          std::mt19937_64 rng(args.seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(epoch));
          std::shuffle(order.begin(), order.end(), rng);
        }
        cursor = 0;
      }
      std::vector<int64_t> mb;
      for (int64_t b = 0; b < B && cursor < nblocks; ++b) mb.push_back(order[static_cast<size_t>(cursor++)]);
      micros.push_back(std::move(mb));
    }
    if (step < start_step) {
      micro += micros.size();
      continue;
    }
    lm.zero_grad();
    double loss = 0;
    const double scale = micros.size() > 1 ? 1.0 / static_cast<double>(micros.size()) : 1.0;
    for (const auto& mb : micros) {
      batch.clear();
      batch_targets.clear();
      for (int64_t i : mb) {
        const int64_t blk = blocks[static_cast<size_t>(i)];
        batch.insert(batch.end(), ids.begin() + blk * L, ids.begin() + (blk + 1) * L);
        if (!all_targets)
          batch_targets.insert(batch_targets.end(), data.targets.begin() + blk * L,
                               data.targets.begin() + (blk + 1) * L);
      }
      loss += lm.forward_backward(batch, static_cast<int64_t>(mb.size()), L, scale,
                                  args.seed ^ (micro++ << 20), batch_targets);
      rep.train_tokens += static_cast<int64_t>(batch.size());
    }
    loss /= static_cast<double>(micros.size());
    const double norm = train::clip_grad_norm(lm.modules(), args.max_grad_norm);
    const double lr =
        args.learning_rate * train::schedule_factor(args.lr_scheduler_type, step, args.warmup_steps, total);
    opt->step(lm.modules(), lr);
    const TrainLogEntry e{step + 1, loss, lr, norm};
    rep.log.push_back(e);
    if (log) {
      nlohmann::ordered_json j;
      j["step"] = e.step;
      j["loss"] = e.loss;
      j["learning_rate"] = e.learning_rate;
      j["grad_norm"] = e.grad_norm;
      const std::string line = python_json_dumps(j) + "\n";
      std::fwrite(line.data(), 1, line.size(), log);
      std::fflush(log);
    }
    if (on_step) on_step(e);
    char item[96];
    std::snprintf(item, sizeof item, "loss %.4f", loss);
    bar.advance(1, item);
    if (args.save_steps > 0 && (step + 1) % args.save_steps == 0 && step + 1 < total)
      train::save_adapter(lm,
                          (fs::path(args.output_dir) / ("checkpoint-" + std::to_string(step + 1))).string(),
                          base_name, {.overwrite = true, .optimizer = opt.get(), .step = step + 1});
  }
  bar.finish();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // with checkpoints the directory exists already and holds them: the adapter's files go in beside them
  train::save_adapter(lm, args.output_dir, base_name,
                      {.overwrite = args.overwrite_output_dir,
                       .into_existing = args.save_steps > 0 && fs::exists(args.output_dir)});
  return rep;
}

}  // namespace nibble
