// LLM.int8 against bitsandbytes 0.50.2 + transformers 5.24 on CPU (tests/golden/make_int8_golden.py made the
// data, int8_golden.json describes it):
// - weight quantization (float32, bfloat16, float16 weights; zero rows, float16 ties and overflow): CB and
// SCB
//   byte for byte, for the example model too (FNV-1a of each tensor nibble saves);
// - activation quantization (thresholds 0, 0.5, 6; one and five rows): CA, row scales, outlier columns exact;
// - Linear8bitLt's forward: bit for bit without outlier columns, within float32 summation order with them;
// - whole models: the example model (thresholds 6 and 0.5) and a tiny random llama saved by transformers
//   (loaded as saved, and quantized on load at thresholds 6, 2, 0.5): logits, greedy ids, perplexity,
//   memory footprint; nibble's save of the tiny model holds transformers' tensors byte for byte.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/cpu/int8_mm.h"
#include "nibble/model.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "nn/linear.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
const std::string kGolden = test::golden_dir();
const std::string kTiny8 = kGolden + "/checkpoints/tiny-llama-bnb-int8";
const std::string kTiny32 = kGolden + "/checkpoints/tiny-llama-fp32";

json golden_json() {
  return json::parse(test::read_bytes(kGolden + "/int8_golden.json"));
}
const SafetensorsFile& kernels_file() {
  static const SafetensorsFile f = SafetensorsFile::open(kGolden + "/int8_quant.safetensors");
  return f;
}
Tensor gt(const std::string& name) {
  return kernels_file().get(name);
}
std::vector<float> floats(const Tensor& t) {
  return t.to_float_vector();
}
bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}
std::string fnv1a64(const Tensor& t) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const uint8_t b : t.bytes()) h = (h ^ b) * 0x100000001b3ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
FromPretrainedOptions int8_options(double threshold) {
  BitsAndBytesConfig q;
  q.update({{"load_in_8bit", true}, {"llm_int8_threshold", threshold}});
  return {.quantization_config = q, .quiet = true};
}
}  // namespace

TEST(Int8Golden, WeightQuantizationIsBitsandbytesByteForByte) {
  for (const char* dt : {"f32", "bf16", "f16"}) {
    SCOPED_TRACE(dt);
    const QuantizedInt8 q = int8_vectorwise_quant(gt(std::string("w_") + dt));
    EXPECT_TRUE(same_bytes(q.CB, gt(std::string("cb_") + dt)));
    EXPECT_TRUE(same_bytes(q.SCB, gt(std::string("scb_") + dt)));
  }
  // 70000 overflows float16 to inf: SCB inf and the row all zero; 65519 rounds to 65504 and quantizes
  const QuantizedInt8 o = int8_vectorwise_quant(gt("w_overflow_f32"));
  EXPECT_TRUE(same_bytes(o.CB, gt("cb_overflow")));
  EXPECT_TRUE(same_bytes(o.SCB, gt("scb_overflow")));
  EXPECT_TRUE(std::isinf(o.SCB.data<float>()[0]));
}

TEST(Int8Golden, ActivationQuantizationIsBitsandbytes) {
  for (const char* a : {"a1", "a5"})
    for (const auto& [tag, thr] :
         std::vector<std::pair<std::string, float>>{{"t0", 0.0f}, {"t05", 0.5f}, {"t6", 6.0f}}) {
      SCOPED_TRACE(std::string(a) + " " + tag);
      const Tensor x = gt(a);
      const int64_t M = x.dim(0), K = x.dim(1);
      std::vector<int8_t> q(static_cast<size_t>(M * K));
      std::vector<float> rs(static_cast<size_t>(M));
      std::vector<int32_t> cols;
      kernels::int8_quantize_activations(x.data<float>(), M, K, thr, q.data(), rs.data(), cols);
      const std::string sfx = std::string(a) + "_" + tag;
      EXPECT_TRUE(same_bytes(Tensor::from_vector(DType::Int8, {M, K}, q), gt("ca_" + sfx)));
      EXPECT_EQ(rs, floats(gt("sca_" + sfx)));
      const Tensor gc = gt("outlier_cols_" + sfx);
      std::vector<int32_t> want(gc.data<int64_t>(), gc.data<int64_t>() + gc.numel());
      EXPECT_EQ(cols, want);
    }
}

TEST(Int8Golden, Linear8bitLtForwardIsBitsandbytes) {
  const QuantizedInt8 q = int8_vectorwise_quant(gt("lin_weight"));
  ASSERT_TRUE(same_bytes(q.CB, gt("lin_cb")));
  for (const char* x : {"x1", "x7"})
    for (const auto& [tag, thr] :
         std::vector<std::pair<std::string, float>>{{"t0", 0.0f}, {"t05", 0.5f}, {"t6", 6.0f}}) {
      SCOPED_TRACE(std::string(x) + " " + tag);
      const nn::Linear8bitLt lin(q.CB, q.SCB, gt("lin_bias"), thr, DType::Float32);
      const Tensor xt = gt(x);
      std::vector<float> y(static_cast<size_t>(xt.dim(0) * 48));
      lin.forward(xt.data<float>(), xt.dim(0), y.data());
      const auto want = floats(gt(std::string("out_") + x + "_" + tag));
      if (thr == 0.0f) {  // exact integer sums, bitsandbytes' dequantization expression: the same bits
        EXPECT_EQ(y, want);
      } else {  // + the outlier columns' float32 sums, in another order than torch's addmm
        EXPECT_LT(test::max_abs_diff(y, want), 2e-5);
      }
    }
}

namespace {
// Perplexity as `nibble perplexity` (and the golden script) computes it: one window, BOS + the text.
double perplexity(const AutoModelForCausalLM& m, const std::vector<int32_t>& ids) {
  const auto logits = m.forward(ids);
  const int64_t V = m.info().vocab_size;
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * static_cast<size_t>(V);
    const double mx = *std::max_element(row, row + V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    nll -= row[ids[t + 1]] - mx - std::log(s);
  }
  return std::exp(nll / static_cast<double>(ids.size() - 1));
}
}  // namespace

TEST(Int8Golden, ExampleModelMatchesTransformers) {
  const json g = golden_json()["tinystories_656k"];
  const auto logits_file = SafetensorsFile::open(kGolden + "/int8_tinystories_logits.safetensors");
  const Tensor pid = logits_file.get("input_ids");
  const std::vector<int32_t> prompt(pid.data<int32_t>(), pid.data<int32_t>() + pid.numel());
  const Tokenizer tok = Tokenizer::from_pretrained(test::example_model());
  std::vector<int32_t> text{*tok.bos_token_id()};
  for (int32_t id :
       tok.encode(test::read_bytes(std::string(NIBBLE_SOURCE_DIR) + "/tests/data/eval_story.txt"), false))
    text.push_back(id);
  for (const auto& [tag, thr] : std::vector<std::pair<std::string, double>>{{"t6", 6.0}, {"t05", 0.5}}) {
    SCOPED_TRACE(tag);
    const json& gt_ = g["threshold_" + tag];
    const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(), int8_options(thr));
    EXPECT_EQ(m.memory_footprint(), gt_["memory_footprint"].get<size_t>());
    // CB and SCB of every converted linear, byte for byte (as nibble saves them)
    test::TempDir tmp;
    m.save_pretrained(tmp / "out");
    const auto saved = SafetensorsFile::open(tmp / "out/model.safetensors");
    const json& hashes = g["threshold_t6"].at("fnv1a64");  // the same weights at every threshold
    ASSERT_EQ(hashes.size(), 28u);
    for (auto it = hashes.begin(); it != hashes.end(); ++it)
      EXPECT_EQ(fnv1a64(saved.get(it.key())), it.value().get<std::string>()) << it.key();
    for (const auto& mod : gt_["converted_modules"]) {
      const Tensor f = saved.get(mod.get<std::string>() + ".weight_format");
      EXPECT_TRUE(f.dtype() == DType::UInt8 && f.shape().empty() && f.data<uint8_t>()[0] == 0);
    }
    EXPECT_FALSE(saved.contains("lm_head.SCB"));  // the tied output embedding stays float32
    // logits of one forward: the integer part exact; outlier columns and float32 order leave ~1e-5
    const auto logits = m.forward(prompt);
    EXPECT_LT(test::max_abs_diff(logits, floats(logits_file.get("logits_" + tag))), 2e-4);
    // greedy continuations: the prompt in one call, then one row per step, as transformers' generate
    for (const auto& c : gt_["greedy_24"]) {
      const auto in = c["input_ids"].get<std::vector<int32_t>>();
      auto out = m.generate(in, {.max_new_tokens = 24});
      auto want = c["new_ids"].get<std::vector<int32_t>>();
      if (c["ended_with_eos"].get<bool>())
        want.pop_back();  // transformers returns the EOS, nibble stops before
      EXPECT_EQ(std::vector<int32_t>(out.begin() + static_cast<long>(in.size()), out.end()), want);
    }
    ASSERT_EQ(static_cast<int64_t>(text.size()) - 1, gt_["perplexity_tokens_scored"].get<int64_t>());
    // One forward of 201 rows. A one-ulp change of the attention output moves transformers' own perplexity by
    // up to 7.8e-4 (threshold 6) and 1.0e-4 (0.5) relative (tests/golden/int8_attention_noise.py: an outlier
    // column flips for every row); nibble lands on one of those outcomes.
    const double ppl = perplexity(m, text), want = gt_["perplexity"].get<double>();
    EXPECT_LT(std::fabs(ppl - want) / want, thr == 6.0 ? 1e-3 : 2e-4) << ppl << " vs " << want;
  }
}

TEST(Int8Golden, TinyCheckpointSavedByTransformers) {
  const json info = json::parse(test::read_bytes(kTiny8 + "/info.json"));
  const auto lf = SafetensorsFile::open(kTiny8 + "/logits.safetensors");
  const Tensor idt = lf.get("input_ids");
  const std::vector<int32_t> ids(idt.data<int32_t>(), idt.data<int32_t>() + idt.numel());
  // as saved: int8 weights + SCB + weight_format, threshold 6 from its quantization_config
  const auto m = AutoModelForCausalLM::from_pretrained(kTiny8, {.quiet = true});
  ASSERT_TRUE(m.info().quantization_config && m.info().quantization_config->load_in_8bit);
  EXPECT_EQ(m.memory_footprint(), info["memory_footprint"].get<size_t>());
  EXPECT_EQ(m.info().num_parameters, info["num_parameters"].get<int64_t>());
  EXPECT_LT(test::max_abs_diff(m.forward(ids), floats(lf.get("logits"))), 1e-4);
  // nibble's save_pretrained writes the same tensors, byte for byte
  test::TempDir tmp;
  m.save_pretrained(tmp / "out");
  const auto mine = SafetensorsFile::open(tmp / "out/model.safetensors");
  const auto theirs = SafetensorsFile::open(kTiny8 + "/model.safetensors");
  ASSERT_EQ(mine.tensors().size(), theirs.tensors().size());
  for (const auto& t : theirs.tensors())
    EXPECT_TRUE(same_bytes(mine.get(t.name), theirs.get(t.name))) << t.name;
  const json cfg = json::parse(test::read_bytes(tmp / "out/config.json"));
  const json want = json::parse(test::read_bytes(kTiny8 + "/config.json"));
  EXPECT_EQ(cfg["quantization_config"], want["quantization_config"]);
  // quantize-on-load from the float32 original at thresholds 6, 2 (some outlier columns) and 0.5 (most)
  // (greedy: 16 new tokens, EOS off)
  for (const auto& [key, thr, name] :
       std::vector<std::tuple<std::string, double, std::string>>{{"logits", 6.0, "threshold_6.0"},
                                                                 {"logits_t2", 2.0, "threshold_2.0"},
                                                                 {"logits_t05", 0.5, "threshold_0.5"}}) {
    SCOPED_TRACE(key);
    const auto q = AutoModelForCausalLM::from_pretrained(kTiny32, int8_options(thr));
    EXPECT_LT(test::max_abs_diff(q.forward(ids), floats(lf.get(key))), 1e-4);
    const auto out = q.generate(ids, {.max_new_tokens = 16, .eos_token_id = {-1}});
    EXPECT_EQ(std::vector<int32_t>(out.begin() + static_cast<long>(ids.size()), out.end()),
              info["thresholds"][name]["greedy_new_ids_16_no_eos"].get<std::vector<int32_t>>());
  }
}
