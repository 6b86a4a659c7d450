// QLoRA against transformers + peft + bitsandbytes on CPU (tests/golden/qlora, made by make_qlora_golden.py):
// the example model in NF4 + double quant with float32 compute, LoRA r = 8 on all linears from a fixed start
// adapter. Losses, gradients, optimizer steps (AdamW + linear warmup, AdamW + cosine + accumulation +
// clipping), and inference with a trained adapter (perplexity, logits, greedy text).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/auto_model_impl.h"
#include "models/lora_adapter.h"
#include "nibble/error.h"
#include "nibble/finetune.h"
#include "nibble/safetensors.h"
#include "test_util.h"
#include "train/adapter_io.h"
#include "train/lora_model.h"

namespace nibble {
namespace {

std::string qdir() {
  return test::golden_dir() + "/qlora";
}

// The example model's base as transformers + bitsandbytes quantized it on the CPU (a bnb-4bit checkpoint as
// stored): bitsandbytes 0.50's CPU double quantization rounds a few absmax codes otherwise than the CUDA rule
// nibble's quantize-on-load follows (see make_qlora_golden.py), so the golden runs start from its weights.
std::string base_checkpoint() {
  static test::TempDir dir;
  static const std::string path = [] {
    const std::string src = test::example_model(), out = dir / "tinystories-nf4";
    std::filesystem::create_directories(out);
    for (const char* f :
         {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
      std::filesystem::copy_file(src + "/" + f, out + "/" + f);
    auto config = nlohmann::json::parse(test::read_bytes(src + "/config.json"));
    config["quantization_config"] =
        nlohmann::json::parse(test::read_bytes(qdir() + "/base_quantization_config.json"));
    test::write_bytes(out + "/config.json", config.dump(2));
    const auto full = SafetensorsFile::open(src + "/model.safetensors");
    const auto lin = SafetensorsFile::open(qdir() + "/base_linears.safetensors");
    NamedTensors t;
    for (const auto& i : full.tensors())
      if (i.name.find("_proj.") == std::string::npos) t.emplace_back(i.name, full.get(i.name));
    for (const auto& i : lin.tensors()) t.emplace_back(i.name, lin.get(i.name));
    save_safetensors(out + "/model.safetensors", t);
    return out;
  }();
  return path;
}

FromPretrainedOptions stored(const std::string& adapter = "") {
  FromPretrainedOptions o;
  o.quiet = true;
  o.adapter = adapter;
  return o;
}

FromPretrainedOptions nf4(const std::string& adapter = "") {
  BitsAndBytesConfig q;
  q.load_in_4bit = true;
  q.bnb_4bit_quant_type = "nf4";
  q.bnb_4bit_use_double_quant = true;
  q.bnb_4bit_compute_dtype = DType::Float32;
  FromPretrainedOptions o;
  o.quantization_config = q;
  o.quiet = true;
  o.adapter = adapter;
  return o;
}

nlohmann::json golden() {
  std::ifstream f(qdir() + "/golden.json");
  return nlohmann::json::parse(f);
}

std::vector<int32_t> ids_of(const SafetensorsFile& f, const std::string& name) {
  const Tensor t = f.get(name);
  std::vector<int32_t> v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(static_cast<int32_t>(t.data<int64_t>()[i]));
  return v;
}

double mean_nll(const AutoModelForCausalLM& m, const std::vector<int32_t>& ids) {
  const auto logits = m.forward(ids);
  const int64_t V = m.info().vocab_size;
  double total = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* z = logits.data() + static_cast<int64_t>(t) * V;
    double mx = z[0], sum = 0;
    for (int64_t j = 0; j < V; ++j) mx = std::max<double>(mx, z[j]);
    for (int64_t j = 0; j < V; ++j) sum += std::exp(z[j] - mx);
    total += std::log(sum) + mx - z[ids[t + 1]];
  }
  return total / static_cast<double>(ids.size() - 1);
}

TEST(QLoraGolden, TrainedAdapterInferenceMatchesPeft) {
  const auto g = golden()["evaluation"];
  const auto f = SafetensorsFile::open(qdir() + "/golden.safetensors");
  const auto eval = ids_of(f, "eval.input_ids");
  std::vector<int32_t> prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  for (const bool with : {true, false}) {
    SCOPED_TRACE(with ? "with adapter" : "without adapter");
    const auto m = AutoModelForCausalLM::from_pretrained(base_checkpoint(),
                                                         stored(with ? qdir() + "/adamw_adapter" : ""));
    const auto& ref = g[with ? "with_adapter" : "without_adapter"];
    EXPECT_NEAR(mean_nll(m, eval), ref["mean_nll"].get<double>(), 1e-4 * ref["mean_nll"].get<double>());
    // the last prompt position's logits
    const auto logits = m.forward(prompt);
    const int64_t V = m.info().vocab_size;
    const Tensor want = f.get(with ? "prompt_logits.with_adapter" : "prompt_logits.without_adapter");
    double maxdiff = 0;
    for (int64_t j = 0; j < V; ++j)
      maxdiff = std::max<double>(maxdiff, std::abs(logits[static_cast<size_t>((prompt.size() - 1) * V + j)] -
                                                   want.data<float>()[j]));
    EXPECT_LT(maxdiff, 1e-4);
    GenerationConfig gc;
    gc.max_new_tokens = 16;
    const auto out = m.generate(prompt, gc);
    EXPECT_EQ(std::vector<int32_t>(out.begin() + static_cast<long>(prompt.size()), out.end()),
              ref["greedy_new_ids"].get<std::vector<int32_t>>());
  }
  // the adapter changes the logits (peft's with and without differ by more than the tolerance above)
  const Tensor a = f.get("prompt_logits.with_adapter"), b = f.get("prompt_logits.without_adapter");
  double d = 0;
  for (int64_t j = 0; j < a.numel(); ++j)
    d = std::max<double>(d, std::abs(a.data<float>()[j] - b.data<float>()[j]));
  EXPECT_GT(d, 1e-2);
}

// The golden run's LoRA (make_qlora_golden.py's LoraConfig: r 8, alpha 16, no dropout, all linears).
train::LoraSpec golden_spec() {
  train::LoraSpec spec;
  spec.r = 8;
  spec.alpha = 16;
  spec.dropout = 0;
  spec.target_modules = {"all-linear"};
  return spec;
}

// Every LoRA gradient of `lm` against peft's (a safetensors file keyed as the saved adapter): 1e-4 relative
// (L2 over each tensor).
void expect_gradients(const train::LoraModel& lm, const std::string& file) {
  const auto grads = SafetensorsFile::open(file);
  for (const auto& m : lm.modules())
    for (auto [which, mine] : {std::pair{'A', &m.dA}, {'B', &m.dB}}) {
      const Tensor w = grads.get(models::peft_lora_key(m.name, which));
      ASSERT_EQ(w.numel(), static_cast<int64_t>(mine->size()));
      double diff = 0, norm = 0;
      for (size_t i = 0; i < mine->size(); ++i) {
        diff += std::pow((*mine)[i] - w.data<float>()[i], 2);
        norm += std::pow(w.data<float>()[i], 2);
      }
      EXPECT_LT(std::sqrt(diff / norm), 1e-4) << m.name << " lora_" << which;
    }
}

TEST(QLoraGolden, TokensQuantizationLossAndGradients) {
  const auto g = golden();
  const auto f = SafetensorsFile::open(qdir() + "/golden.safetensors");
  // the data as run_clm tokenizes it
  const auto ids = read_training_tokens(qdir() + "/train.txt", test::example_model());
  EXPECT_EQ(ids, ids_of(f, "train.input_ids"));
  {  // nibble's quantize-on-load gives layer 0's q_proj the 4-bit weights bitsandbytes gave it
    auto model = AutoModelForCausalLM::from_pretrained(test::example_model(), nf4());
    auto* llama = dynamic_cast<models::LlamaModel*>(ModelAccess::impl(model).model.get());
    ASSERT_NE(llama, nullptr);
    const auto& q = dynamic_cast<const nn::Linear4bit&>(*llama->layers()[0].attn.q_proj);
    const Tensor deq = q.dequantized_weight(), want = f.get("dequant.model.layers.0.self_attn.q_proj");
    ASSERT_EQ(deq.numel(), want.numel());
    EXPECT_EQ(std::memcmp(deq.raw(), want.raw(), deq.nbytes()), 0);
  }
  auto model = AutoModelForCausalLM::from_pretrained(base_checkpoint(), stored());
  auto* llama = dynamic_cast<models::LlamaModel*>(ModelAccess::impl(model).model.get());
  ASSERT_NE(llama, nullptr);
  train::LoraModel lm(*llama, golden_spec(), 0);
  EXPECT_EQ(lm.modules().size(), 14u);
  EXPECT_EQ(train::load_adapter_into(lm, models::read_lora_adapter(qdir() + "/init_adapter"), nullptr), 0);
  std::vector<int32_t> batch(ids.begin(), ids.begin() + 128);  // blocks 0 and 1
  lm.zero_grad();
  const double loss = lm.forward_backward(batch, 2, 64, 1.0, 0);
  const double want_loss = g["runs"]["sgd1"]["log"][0]["loss"].get<double>();
  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
  EXPECT_NEAR(lm.grad_norm(), g["runs"]["sgd1"]["log"][0]["grad_norm"].get<double>(), 1e-4);
  expect_gradients(lm, qdir() + "/sgd1_grads.safetensors");
}

// A run of finetune() against the golden run of the same name: per-step loss, learning rate and gradient
// norm, and the adapter it writes (as a change from the start adapter).
void check_run(const std::string& run, const TrainingArguments& base_args) {
  const auto g = golden()["runs"][run];
  test::TempDir tmp;
  TrainingArguments a = base_args;
  a.output_dir = tmp / "out";
  a.init_adapter = qdir() + "/init_adapter";
  a.seq_len = 64;
  a.shuffle = false;
  a.quiet = true;
  a.log_jsonl = tmp / "log.jsonl";
  LoraConfig lc;
  lc.lora_dropout = 0;
  const FinetuneReport rep = finetune(base_checkpoint(), qdir() + "/train.txt", stored(), lc, a);
  const auto& log = g["log"];
  ASSERT_EQ(rep.log.size(), log.size());
  for (size_t i = 0; i < log.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(rep.log[i].step, log[i]["step"].get<int64_t>());
    EXPECT_NEAR(rep.log[i].loss, log[i]["loss"].get<double>(), 1e-4 * log[i]["loss"].get<double>());
    EXPECT_NEAR(rep.log[i].learning_rate, log[i]["learning_rate"].get<double>(), 1e-12);
    EXPECT_NEAR(rep.log[i].grad_norm, log[i]["grad_norm"].get<double>(),
                1e-3 * log[i]["grad_norm"].get<double>());
  }
  // the log file: one JSON object per step with the logged fields
  std::ifstream lf(a.log_jsonl);
  std::string line;
  size_t n = 0;
  while (std::getline(lf, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["step"].get<int64_t>(), static_cast<int64_t>(n + 1));
    EXPECT_DOUBLE_EQ(j["grad_norm"].get<double>(), rep.log[n].grad_norm);
    ++n;
  }
  EXPECT_EQ(n, log.size());
  // the adapter: (ours - init) against (peft's - init)
  const auto init = models::read_lora_adapter(qdir() + "/init_adapter");
  const auto ours = models::read_lora_adapter(a.output_dir);
  const auto want = models::read_lora_adapter(qdir() + "/" + run + "_adapter");
  ASSERT_EQ(ours.modules.size(), want.modules.size());
  double diff = 0, norm = 0;
  for (size_t k = 0; k < want.modules.size(); ++k) {
    ASSERT_EQ(ours.modules[k].name, want.modules[k].name);
    for (auto [o, w, i] : {std::tuple{&ours.modules[k].A, &want.modules[k].A, &init.modules[k].A},
                           {&ours.modules[k].B, &want.modules[k].B, &init.modules[k].B}})
      for (int64_t e = 0; e < w->numel(); ++e) {
        const double dw = w->data<float>()[e] - i->data<float>()[e],
                     dO = o->data<float>()[e] - i->data<float>()[e];
        diff += (dO - dw) * (dO - dw);
        norm += dw * dw;
      }
  }
  EXPECT_GT(norm, 0.0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-2);
}

TEST(QLoraGolden, AdamWLinearWarmup) {
  TrainingArguments a;
  a.per_device_train_batch_size = 2;
  a.max_steps = 6;
  a.learning_rate = 1e-3;
  a.weight_decay = 0.01;
  a.lr_scheduler_type = "linear";
  a.warmup_steps = 2;
  a.max_grad_norm = 1.0;
  check_run("adamw", a);
}

TEST(QLoraGolden, AdamWCosineAccumulationClipping) {
  TrainingArguments a;
  a.per_device_train_batch_size = 1;
  a.gradient_accumulation_steps = 2;
  a.max_steps = 4;
  a.learning_rate = 5e-4;
  a.lr_scheduler_type = "cosine";
  a.warmup_steps = 1;
  a.max_grad_norm = 0.3;
  check_run("cosine_accum", a);
}

}  // namespace

// Labels partly -100 (chat data's non-assistant tokens): the loss is the mean over the targets and only they
// send gradients, as LlamaForCausalLM + peft (tests/golden/qlora/make_masked_loss_golden.py).
TEST(QLoraGolden, MaskedLabelsLossAndGradients) {
  const auto g = nlohmann::json::parse(std::ifstream(qdir() + "/masked_loss.json"));
  const auto ids = read_training_tokens(qdir() + "/train.txt", test::example_model());
  auto model = AutoModelForCausalLM::from_pretrained(base_checkpoint(), stored());
  auto* llama = dynamic_cast<models::LlamaModel*>(ModelAccess::impl(model).model.get());
  ASSERT_NE(llama, nullptr);
  train::LoraModel lm(*llama, golden_spec(), 0);
  train::load_adapter_into(lm, models::read_lora_adapter(qdir() + "/init_adapter"), nullptr);
  const int64_t L = g["seq_len"].get<int64_t>();
  std::vector<int32_t> batch(ids.begin(), ids.begin() + 2 * L);  // blocks 0 and 1
  std::vector<uint8_t> targets(batch.size());
  int64_t n = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < L; ++t) {
      targets[static_cast<size_t>(b * L + t)] = ((t / 5) + b) % 3 == 0;
      n += t > 0 && targets[static_cast<size_t>(b * L + t)];
    }
  ASSERT_EQ(n, g["n_targets"].get<int64_t>());
  lm.zero_grad();
  const double loss = lm.forward_backward(batch, 2, L, 1.0, 0, targets);
  EXPECT_NEAR(loss, g["loss"].get<double>(), 1e-5 * g["loss"].get<double>());
  EXPECT_NEAR(lm.grad_norm(), g["grad_norm"].get<double>(), 1e-4);
  expect_gradients(lm, qdir() + "/masked_grads.safetensors");
  // every token a target is the unmasked loss
  lm.zero_grad();
  const double all = lm.forward_backward(batch, 2, L, 1.0, 0, std::vector<uint8_t>(batch.size(), 1));
  lm.zero_grad();
  EXPECT_EQ(all, lm.forward_backward(batch, 2, L, 1.0, 0));
  // no target at all is an error, not a division by zero
  EXPECT_THROW(lm.forward_backward(batch, 2, L, 1.0, 0, std::vector<uint8_t>(batch.size(), 0)), ValueError);
}

}  // namespace nibble
