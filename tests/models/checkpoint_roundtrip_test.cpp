// bnb-4bit checkpoints both ways: ones transformers + bitsandbytes wrote load and give the dequantized
// reference's logits; quantize-on-load -> save_pretrained -> reload gives identical logits; malformed
// checkpoints are clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
std::string ckpt(const std::string& name) {
  return test::golden_dir() + "/checkpoints/" + name;
}

double max_abs_diff(const std::vector<float>& a, const Tensor& b) {
  return test::max_abs_diff(a, std::span(b.data<float>(), static_cast<size_t>(b.numel())));
}

std::vector<int32_t> ids_of(const SafetensorsFile& f) {
  const Tensor t = f.get("input_ids");
  return {t.data<int32_t>(), t.data<int32_t>() + t.numel()};
}
}  // namespace

TEST(Checkpoints, TransformersWrittenBnb4bitLoads) {
  for (const char* name : {"tiny-llama-bnb-nf4-dq", "tiny-llama-bnb-fp4-bf16storage"}) {
    SCOPED_TRACE(name);
    const auto m = AutoModelForCausalLM::from_pretrained(ckpt(name), {.quiet = true});
    ASSERT_TRUE(m.info().quantization_config.has_value());
    const auto f = SafetensorsFile::open(ckpt(name) + "/logits.safetensors");
    const double err = max_abs_diff(m.forward(ids_of(f)), f.get("logits"));
    EXPECT_LT(err, 1e-4) << "vs transformers' dequantized reference";
    RecordProperty(std::string(name) + "_max_abs_logit_error", std::to_string(err));
  }
}

TEST(Checkpoints, FloatTinyModelMatchesTransformers) {
  const auto m = AutoModelForCausalLM::from_pretrained(ckpt("tiny-llama-fp32"), {.quiet = true});
  const auto f = SafetensorsFile::open(ckpt("tiny-llama-fp32") + "/logits.safetensors");
  EXPECT_LT(max_abs_diff(m.forward(ids_of(f)), f.get("logits")), 1e-4);
}

TEST(Checkpoints, QuantizeOnLoadSaveReloadIdentical) {
  test::TempDir d;
  for (bool dq : {false, true}) {
    const std::string out = d / (dq ? "dq" : "nodq");
    const BitsAndBytesConfig q{
        .load_in_4bit = true, .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = dq};
    const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(),
                                                         {.quantization_config = q, .quiet = true});
    const std::vector<int32_t> ids{1, 80, 147, 201, 282, 57, 313, 598};
    const auto before = m.forward(ids);
    m.save_pretrained(out);
    const auto re = AutoModelForCausalLM::from_pretrained(out, {.quiet = true});
    ASSERT_TRUE(re.info().quantization_config.has_value());
    EXPECT_EQ(re.info().quantization_config->to_dict(), q.to_dict());
    EXPECT_EQ(re.forward(ids), before);  // bit-identical
    EXPECT_EQ(re.memory_footprint(), m.memory_footprint());
    // the same file `nibble quantize` would write loads the same way
    EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  }
}

TEST(Checkpoints, DequantizeGivesFloatModel) {
  test::TempDir d;
  auto m = AutoModelForCausalLM::from_pretrained(ckpt("tiny-llama-bnb-nf4-dq"), {.quiet = true});
  const auto f = SafetensorsFile::open(ckpt("tiny-llama-bnb-nf4-dq") + "/logits.safetensors");
  const auto info = read_json_file(ckpt("tiny-llama-bnb-nf4-dq") + "/info.json");
  const size_t q_bytes = m.memory_footprint();
  EXPECT_EQ(q_bytes, info["memory_footprint"].get<size_t>()) << "transformers' get_memory_footprint()";
  EXPECT_EQ(m.info().num_parameters, info["num_parameters"].get<int64_t>());
  m.dequantize();
  EXPECT_FALSE(m.info().quantization_config.has_value());
  EXPECT_EQ(m.memory_footprint(),
            read_json_file(ckpt("tiny-llama-fp32") + "/info.json")["memory_footprint"].get<size_t>());
  EXPECT_LT(max_abs_diff(m.forward(ids_of(f)), f.get("logits")), 1e-4);
  m.save_pretrained(d / "deq");
  const auto cfg = read_json_file(d / "deq/config.json");
  EXPECT_FALSE(cfg.contains("quantization_config"));
}

// nibble bench's bandwidth bound: decode reads one embedding row, not the table, when the lm_head is its own
// weight (the golden tiny Llama: untied, vocab 256 x hidden 64 float32); a tied embedding is read whole.
TEST(Checkpoints, DecodeBytesPerToken) {
  const auto untied = AutoModelForCausalLM::from_pretrained(ckpt("tiny-llama-bnb-nf4-dq"), {.quiet = true});
  EXPECT_EQ(untied.memory_footprint() - untied.decode_bytes_per_token(), size_t{(256 - 1) * 64 * 4});
  const auto tied = AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  EXPECT_EQ(tied.decode_bytes_per_token(), tied.memory_footprint());
}

TEST(Checkpoints, PrequantizedConfigWinsOverUsers) {
  const BitsAndBytesConfig mine{.load_in_4bit = true, .bnb_4bit_quant_type = "fp4"};
  const auto m = AutoModelForCausalLM::from_pretrained(ckpt("tiny-llama-bnb-nf4-dq"),
                                                       {.quantization_config = mine, .quiet = true});
  EXPECT_EQ(m.info().quantization_config->bnb_4bit_quant_type, "nf4");
}

namespace {
// Copies a golden checkpoint, lets `edit` change its tensors, and expects from_pretrained to fail naming
// `what`.
void expect_load_error(const std::function<void(NamedTensors&)>& edit, const std::string& what) {
  test::TempDir d;
  const std::string src = ckpt("tiny-llama-bnb-nf4-dq"), dst = d / "m";
  fs::create_directories(dst);
  fs::copy_file(src + "/config.json", dst + "/config.json");
  const Checkpoint ck = Checkpoint::open(src);
  NamedTensors ts;
  for (const auto& n : ck.names()) ts.emplace_back(n, ck.get(n).clone());
  edit(ts);
  save_safetensors(dst + "/model.safetensors", ts);
  try {
    AutoModelForCausalLM::from_pretrained(dst, {.quiet = true});
    ADD_FAILURE() << "no error, wanted " << what;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}
void drop(NamedTensors& ts, const std::string& name) {
  std::erase_if(ts, [&](const auto& p) { return p.first == name; });
}
}  // namespace

TEST(Checkpoints, MalformedAreClearErrors) {
  const std::string p = "model.layers.1.self_attn.q_proj.weight";
  expect_load_error([](NamedTensors& ts) { drop(ts, "model.norm.weight"); }, "model.norm.weight");
  expect_load_error([&](NamedTensors& ts) { drop(ts, p + ".absmax"); }, "model.layers.1.self_attn.q_proj");
  expect_load_error([&](NamedTensors& ts) { drop(ts, p + ".nested_quant_map"); }, "nested_quant_map");
  expect_load_error(
      [](NamedTensors& ts) {
        for (auto& [n, t] : ts)
          if (n == "model.norm.weight") t = Tensor::empty(DType::Float32, {3});
      },
      "model.norm.weight' has shape [3]");
  expect_load_error(
      [&](NamedTensors& ts) {
        for (auto& [n, t] : ts)
          if (n == p + ".quant_state.bitsandbytes__nf4")
            t = Tensor::from_vector(DType::UInt8, {3}, std::vector<uint8_t>{'{', '"', 'x'});
      },
      "valid JSON");
  expect_load_error(
      [&](NamedTensors& ts) {
        for (auto& [n, t] : ts)
          if (n == p) t = Tensor::empty(DType::UInt8, {7, 1});
      },
      "packed 4-bit weight has 7 bytes");
  // several linears missing: the first in checkpoint order is named, whatever the compiler
  expect_load_error(
      [](NamedTensors& ts) {
        std::erase_if(ts, [](const auto& nt) {
          const std::string& n = nt.first;
          return n.starts_with("model.layers.0.self_attn.") || n.starts_with("model.layers.0.mlp.");
        });
      },
      "model.layers.0.self_attn.q_proj");
  expect_load_error(
      [](NamedTensors& ts) {
        std::erase_if(ts, [](const auto& nt) { return nt.first.starts_with("model.layers.0.mlp."); });
      },
      "model.layers.0.mlp.gate_proj");
}

TEST(Checkpoints, UnsupportedQuantMethodIsError) {
  test::TempDir d;
  fs::create_directories(d / "m");
  auto cfg = read_json_file(ckpt("tiny-llama-fp32") + "/config.json");
  cfg["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  test::write_bytes(d / "m/config.json", cfg.dump());
  fs::copy_file(ckpt("tiny-llama-fp32") + "/model.safetensors", d / "m/model.safetensors");
  try {
    AutoModelForCausalLM::from_pretrained(d / "m", {.quiet = true});
    FAIL();
  } catch (const NotSupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("gptq"), std::string::npos);
  }
}
