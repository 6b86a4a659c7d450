// nibble finetune / merge and --adapter end to end on the example model: the adapter directory peft's layout,
// a checkpoint resumed to the same adapter as an uninterrupted run, the adapter used by generate/perplexity,
// merged (re-quantized or dense), and bad input refused with nothing written.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
using Out = test::CliResult;
Out nibble_cli(const std::string& args) {
  return test::run_cli(args);
}
std::string model() {
  return test::example_model();
}
std::string data() {
  return std::string(NIBBLE_SOURCE_DIR) + "/tests/golden/qlora/train.txt";
}
const std::string kQuant = " --load-in-4bit --quant-type nf4 --double-quant --compute-dtype float32";
std::string train_args(const std::string& out, const std::string& targets = "q_proj,v_proj,down_proj",
                       int seq_len = 32) {
  return "finetune " + model() + " --data " + data() + " -o " + out + kQuant + " --seq-len " +
         std::to_string(seq_len) + " --batch-size 2 --lora-r 4 --lora-alpha 8 --target-modules " + targets +
         " --lr 1e-3 --warmup-steps 1 --max-steps 4 --seed 3 -q";
}
}  // namespace

TEST(FinetuneCli, WritesAPeftAdapterAndLogs) {
  test::TempDir d;
  const Out r = nibble_cli(train_args(d / "ad") + " --log-jsonl " + (d / "log.jsonl"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(d / "ad/adapter_model.safetensors"));
  const auto cfg = nlohmann::json::parse(test::read_bytes(d / "ad/adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 8);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"q_proj", "v_proj", "down_proj"}));
  EXPECT_EQ(cfg["bias"], "none");
  const auto f = SafetensorsFile::open(d / "ad/adapter_model.safetensors");
  EXPECT_EQ(f.tensors().size(), 2u * 3 * 2);  // A and B of 3 modules in 2 layers
  const auto& A = f.info("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(A.shape, (Shape{4, 384}));
  EXPECT_EQ(A.dtype, DType::Float32);
  EXPECT_EQ(f.info("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight").shape, (Shape{64, 4}));
  // B moved away from its zero init
  double b = 0;
  for (float v : f.get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").to_float_vector())
    b += std::abs(v);
  EXPECT_GT(b, 0.0);
  const std::string log = test::read_bytes(d / "log.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 4);
  const auto first = nlohmann::json::parse(log.substr(0, log.find('\n')));
  EXPECT_EQ(first["step"], 1);
  EXPECT_EQ(first["learning_rate"], 0.0);  // warmup: the first step runs at learning rate 0
  EXPECT_GT(first["grad_norm"].get<double>(), 0.0);
  // the adapter runs in generate and perplexity and changes the model's output
  const std::string story = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/eval_story.txt";
  const Out p0 = nibble_cli("perplexity " + model() + " -f " + story + kQuant);
  const Out p1 = nibble_cli("perplexity " + model() + " -f " + story + kQuant + " --adapter " + (d / "ad"));
  ASSERT_EQ(p0.code, 0) << p0.err;
  ASSERT_EQ(p1.code, 0) << p1.err;
  EXPECT_NE(p0.out, p1.out);
  const Out g = nibble_cli("generate " + model() + " -p 'Once upon a time' -n 8 -q" + kQuant + " --adapter " +
                           (d / "ad"));
  EXPECT_EQ(g.code, 0) << g.err;
}

TEST(FinetuneCli, ResumedCheckpointEqualsUninterruptedRun) {
  test::TempDir d;
  ASSERT_EQ(nibble_cli(train_args(d / "full")).code, 0);
  // 4 steps with a checkpoint at 2, then 4 steps resumed from that checkpoint: same adapter, bit for bit
  const Out r = nibble_cli(train_args(d / "ck") + " --save-steps 2");
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(fs::exists(d / "ck/checkpoint-2/optimizer.safetensors"));
  EXPECT_EQ(test::read_bytes(d / "ck/adapter_model.safetensors"),
            test::read_bytes(d / "full/adapter_model.safetensors"));
  const Out r2 = nibble_cli(train_args(d / "resumed") + " --init-adapter " + (d / "ck/checkpoint-2"));
  ASSERT_EQ(r2.code, 0) << r2.err;
  EXPECT_EQ(test::read_bytes(d / "resumed/adapter_model.safetensors"),
            test::read_bytes(d / "full/adapter_model.safetensors"));
}

// --optim adamw_8bit: r 64 makes A and B 4096 elements, so both take bitsandbytes' 8-bit blockwise state
// (uint8 codes in the checkpoint); resuming gives the uninterrupted run's adapter bit for bit, the result is
// not adamw_torch's, and an adamw_torch checkpoint is refused by adamw_8bit with a clear line.
TEST(FinetuneCli, Adamw8bitResumesBitForBitAndIsNotAdamwTorch) {
  test::TempDir d;
  const auto r64 = [](const std::string& out) {
    std::string a = train_args(out, "q_proj");
    const std::string small = " --lora-r 4 --lora-alpha 8 ";
    return a.replace(a.find(small), small.size(), " --lora-r 64 --lora-alpha 128 ");
  };
  const std::string opt8 = " --optim adamw_8bit";
  ASSERT_EQ(nibble_cli(r64(d / "full") + opt8).code, 0);
  const Out r = nibble_cli(r64(d / "ck") + opt8 + " --save-steps 2");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto st = SafetensorsFile::open(d / "ck/checkpoint-2/optimizer.safetensors");
  ASSERT_TRUE(st.contains("model.layers.0.self_attn.q_proj.A.state1"));
  EXPECT_EQ(st.info("model.layers.0.self_attn.q_proj.A.state1").dtype, DType::UInt8);
  const Out r2 = nibble_cli(r64(d / "resumed") + opt8 + " --init-adapter " + (d / "ck/checkpoint-2"));
  ASSERT_EQ(r2.code, 0) << r2.err;
  EXPECT_EQ(test::read_bytes(d / "resumed/adapter_model.safetensors"),
            test::read_bytes(d / "full/adapter_model.safetensors"));
  ASSERT_EQ(nibble_cli(r64(d / "torch") + " --save-steps 2").code, 0);
  EXPECT_NE(test::read_bytes(d / "torch/adapter_model.safetensors"),
            test::read_bytes(d / "full/adapter_model.safetensors"));
  const Out bad = nibble_cli(r64(d / "mixed") + opt8 + " --init-adapter " + (d / "torch/checkpoint-2"));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("adamw_8bit"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(d / "mixed"));
}

TEST(FinetuneCli, BadInputIsRefusedAndWritesNothing) {
  test::TempDir d;
  Out r = nibble_cli(train_args(d / "a", "q_proj,nonexistent_proj"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("nonexistent_proj"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "a"));
  r = nibble_cli(train_args(d / "b", "q_proj", 100000));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("fewer than one block"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "b"));
  // an existing output directory is refused, untouched, unless --overwrite
  fs::create_directories(d / "c");
  test::write_bytes(d / "c/mine.txt", "keep me");
  r = nibble_cli(train_args(d / "c"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(test::read_bytes(d / "c/mine.txt"), "keep me");
  // so is an existing log file
  test::write_bytes(d / "log.jsonl", "mine\n");
  r = nibble_cli(train_args(d / "d") + " --log-jsonl " + (d / "log.jsonl"));
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(test::read_bytes(d / "log.jsonl"), "mine\n");
  EXPECT_FALSE(fs::exists(d / "d"));
  // an adapter whose shapes do not fit the model
  ASSERT_EQ(nibble_cli(train_args(d / "ok")).code, 0);
  fs::create_directories(d / "bad");
  fs::copy_file(d / "ok/adapter_config.json", d / "bad/adapter_config.json");
  const auto src = SafetensorsFile::open(d / "ok/adapter_model.safetensors");
  NamedTensors t;
  for (const auto& i : src.tensors()) t.emplace_back(i.name, src.get(i.name));
  t[0].second = Tensor::from_vector(DType::Float32, {4, 100}, std::vector<float>(400, 0.0f));
  t[1].second = Tensor::from_vector(DType::Float32, {t[1].second.dim(0), 4},
                                    std::vector<float>(static_cast<size_t>(t[1].second.dim(0) * 4), 0.0f));
  save_safetensors(d / "bad/adapter_model.safetensors", t);
  r = nibble_cli("generate " + model() + " -p hi -n 2 -q --adapter " + (d / "bad"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("do not fit"), std::string::npos) << r.err;
  r = nibble_cli("generate " + model() + " -p hi -n 2 -q --adapter " + (d / "nothing-here"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("adapter_config.json"), std::string::npos) << r.err;
}

TEST(FinetuneCli, MergeDenseEqualsUnmergedAndRequantizedLoads) {
  test::TempDir d;
  ASSERT_EQ(nibble_cli(train_args(d / "ad")).code, 0);
  // dense float32 merge of the 4-bit base: the same function as base + adapter unmerged
  Out r = nibble_cli("merge " + model() + " " + (d / "ad") + " " + (d / "dense") + kQuant +
                     " --dtype float32 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  BitsAndBytesConfig q;
  q.load_in_4bit = true;
  q.bnb_4bit_quant_type = "nf4";
  q.bnb_4bit_use_double_quant = true;
  FromPretrainedOptions o;
  o.quantization_config = q;
  o.quiet = true;
  o.adapter = d / "ad";
  const auto unmerged = AutoModelForCausalLM::from_pretrained(model(), o);
  const auto dense = AutoModelForCausalLM::from_pretrained(d / "dense", {.quiet = true});
  EXPECT_FALSE(dense.info().quantization_config.has_value());
  const std::vector<int32_t> ids{1, 80, 147, 201, 282, 57, 313, 598};
  const auto a = unmerged.forward(ids), b = dense.forward(ids);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max<double>(diff, std::abs(a[i] - b[i]));
  EXPECT_LT(diff, 1e-4);
  // re-quantized merge: a bnb-4bit checkpoint with the base's config, close to the unmerged model
  r = nibble_cli("merge " + model() + " " + (d / "ad") + " " + (d / "q4") + kQuant + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto q4 = AutoModelForCausalLM::from_pretrained(d / "q4", {.quiet = true});
  ASSERT_TRUE(q4.info().quantization_config.has_value());
  EXPECT_EQ(q4.info().quantization_config->bnb_4bit_quant_type, "nf4");
  const auto c = q4.forward(ids);
  double err = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += std::pow(a[i] - c[i], 2);
    norm += std::pow(a[i], 2);
  }
  EXPECT_LT(std::sqrt(err / norm), 0.05);
  EXPECT_GT(std::sqrt(err / norm), 0.0);  // quantized again: not the same weights
  // saving a model with an unmerged adapter is refused (it would silently drop the adapter)
  try {
    unmerged.save_pretrained(d / "unmerged");
    ADD_FAILURE() << "save_pretrained with an adapter attached";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(d / "unmerged"));
}

// Chat data: {"messages": [...]} lines rendered with the model's chat template, trained on the assistant
// turns; blocks with no assistant token are left out (and said so); a model without a chat template, or a
// chat line the template cannot split into turns, is a clear error naming the line, with nothing written.
TEST(FinetuneCli, ChatDataTrainsOnTheAssistantTurns) {
  test::TempDir d;
  fs::create_directory(d / "m");
  // Llama-2's layout: with this tokenizer each answer starts at a token boundary (" The" after "]"); with
  // test::kSimpleChatTemplate "assistant: The" would merge ": " into one token across the turn boundary
  const std::string chat = test::write_chat_model(
      d / "m",
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }} "
      "[/INST]{% else %} {{ m['content'] | trim }}{{ eos_token }}{% endif %}{% endfor %}");
  std::string lines;
  for (int i = 0; i < 12; ++i)
    lines +=
        nlohmann::json{{"messages",
                        {{{"role", "user"}, {"content", "Tell me about the cat number " + std::to_string(i)}},
                         {{"role", "assistant"}, {"content", "The cat played in the sun all day."}}}}}
            .dump() +
        "\n";
  // a long question: blocks of it alone have nothing to learn and are left out
  std::string question;
  for (int i = 0; i < 40; ++i) question += "Why is the sky so blue today? ";
  lines += nlohmann::json{{"messages",
                           {{{"role", "user"}, {"content", question}},
                            {{"role", "assistant"}, {"content", "Sun."}}}}}
               .dump() +
           "\n";
  test::write_bytes(d / "chat.jsonl", lines);
  const std::string args = " --data " + (d / "chat.jsonl") + kQuant +
                           " --seq-len 16 --lora-r 4 --max-steps 3 --no-shuffle --log-jsonl ";
  const Out r = nibble_cli("finetune " + chat + args + (d / "log.jsonl") + " -o " + (d / "ad"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(d / "ad/adapter_model.safetensors"));
  const std::string log = test::read_bytes(d / "log.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 3);
  EXPECT_NE(r.err.find("left out"), std::string::npos) << r.err;
  // the example model has no chat template: refused before training, naming the files looked at
  const Out n = nibble_cli("finetune " + model() + args + (d / "log2.jsonl") + " -o " + (d / "ad2"));
  EXPECT_NE(n.code, 0);
  EXPECT_NE(n.err.find("chat template"), std::string::npos) << n.err;
  EXPECT_FALSE(fs::exists(d / "ad2"));
  // a conversation that opens with the assistant: line 2 named
  test::write_bytes(
      d / "bad.jsonl",
      lines.substr(0, lines.find('\n') + 1) +
          R"({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}]})" +
          "\n");
  const Out b = nibble_cli("finetune " + chat + " --data " + (d / "bad.jsonl") + kQuant +
                           " --seq-len 16 -o " + (d / "ad3"));
  EXPECT_NE(b.code, 0);
  EXPECT_NE(b.err.find("bad.jsonl:2"), std::string::npos) << b.err;
  EXPECT_FALSE(fs::exists(d / "ad3"));
}
