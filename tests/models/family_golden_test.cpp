// Model families against transformers 5.24 (tests/golden/make_family_golden.py made the tiny seeded models
// under tests/golden/checkpoints/families/, README.md there lists what each one tests): every checkpoint of a
// model_type nibble supports gives transformers' float32 logits (one forward of a 24-token prompt, longer
// than every sliding window) to 1e-4 and its greedy continuation exactly (the prompt in one call, then one
// token per step, EOS off); the bnb-4bit NF4 ones load as saved and give transformers' 4-bit logits.
// A checkpoint nibble does not run yet must fail with the clear error naming what it lacks.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
const std::string kDir = test::golden_dir() + "/checkpoints/families";

std::vector<std::string> family_dirs() {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(kDir))
    if (fs::exists(e.path() / "golden.json")) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

bool supported(const json& config) {
  const auto& ok = supported_model_types();
  if (std::find(ok.begin(), ok.end(), config["model_type"].get<std::string>()) == ok.end()) return false;
  // a rope type nibble does not implement would be refused at load: checked below
  const json* rp = config.contains("rope_parameters") ? &config["rope_parameters"]
                   : config.contains("rope_scaling")  ? &config["rope_scaling"]
                                                      : nullptr;
  if (rp && rp->is_object()) {
    const std::string t = rp->value("rope_type", rp->value("type", std::string("default")));
    return t == "default" || t == "linear" || t == "llama3" || t == "yarn" || t == "dynamic" ||
           t == "longrope";
  }
  return true;
}
}  // namespace

TEST(FamilyGolden, LogitsAndGreedyTextAsTransformers) {
  const auto dirs = family_dirs();
  ASSERT_GE(dirs.size(), 8u);
  int ran = 0;
  for (const auto& name : dirs) {
    SCOPED_TRACE(name);
    const std::string d = kDir + "/" + name;
    const json config = json::parse(test::read_bytes(d + "/config.json"));
    if (!supported(config)) {  // a clear error naming what is missing, never garbage
      try {
        (void)AutoModelForCausalLM::from_pretrained(d, {.quiet = true});
        ADD_FAILURE() << "loaded a checkpoint nibble does not support";
      } catch (const NotSupportedError& e) {
        EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
      }
      continue;
    }
    const auto g = SafetensorsFile::open(d + "/golden.safetensors");
    const Tensor idt = g.get("input_ids");
    const std::vector<int32_t> ids(idt.data<int32_t>(), idt.data<int32_t>() + idt.numel());
    const auto m = AutoModelForCausalLM::from_pretrained(d, {.quiet = true});
    const Tensor want = g.get("logits");
    EXPECT_LT(test::max_abs_diff(m.forward(ids), want.to_float_vector()), 1e-4);
    const auto out = m.generate(ids, {.max_new_tokens = 12, .eos_token_id = {-1}});
    EXPECT_EQ(
        std::vector<int32_t>(out.begin() + static_cast<long>(ids.size()), out.end()),
        json::parse(test::read_bytes(d + "/golden.json"))["greedy_new_ids"].get<std::vector<int32_t>>());
    ++ran;
  }
  // every directory: mistral, qwen2 (window on / off), qwen3, phi3 (longrope too), gemma 1/2/3, llama
  // variants (dynamic rope included), NF4 ones
  EXPECT_EQ(ran, static_cast<int>(dirs.size()));
}

// Gemma 3 as Hub configs spell it (rope_theta + rope_local_base_freq, sliding_window_pattern, no layer_types
// or rope_parameters): transformers gives the same logits bit for bit (golden.json's extra check), so must
// nibble.
TEST(FamilyGolden, Gemma3HubFormConfig) {
  const std::string src = kDir + "/gemma3-text";
  const json g = json::parse(test::read_bytes(src + "/golden.json"));
  ASSERT_TRUE(g["extra_checks"]["hub_form_logits_bit_identical"].get<bool>());
  test::TempDir d;
  for (const char* f : {"model.safetensors", "generation_config.json"}) fs::copy_file(src + "/" + f, d / f);
  test::write_bytes(d / "config.json", g["extra_checks"]["hub_form_config_json"].dump());
  const auto gs = SafetensorsFile::open(src + "/golden.safetensors");
  const Tensor idt = gs.get("input_ids");
  const std::vector<int32_t> ids(idt.data<int32_t>(), idt.data<int32_t>() + idt.numel());
  const auto hub = AutoModelForCausalLM::from_pretrained(d.str(), {.quiet = true});
  const auto saved = AutoModelForCausalLM::from_pretrained(src, {.quiet = true});
  EXPECT_EQ(hub.forward(ids), saved.forward(ids));
  EXPECT_LT(test::max_abs_diff(hub.forward(ids), gs.get("logits").to_float_vector()), 1e-4);
}

// Phi-3 longrope: a 10-token prompt grows past original_max_position_embeddings (16) while generating;
// transformers' generate then recomputes its cache with the long factors, and so does the session (the greedy
// ids equal transformers' cached and cache-free runs).
TEST(FamilyGolden, Phi3LongropeCrossingTheOriginalLength) {
  const std::string d = kDir + "/phi3-longrope";
  const json x = json::parse(test::read_bytes(d + "/golden.json"))["extra_checks"];
  ASSERT_TRUE(x["short_prompt_no_cache_agrees"].get<bool>());
  const auto prompt = x["short_prompt"].get<std::vector<int32_t>>();
  const auto want = x["short_prompt_generate_14_new_ids"].get<std::vector<int32_t>>();
  const auto m = AutoModelForCausalLM::from_pretrained(d, {.quiet = true});
  const auto out = m.generate(prompt, {.max_new_tokens = 14, .eos_token_id = {-1}});
  EXPECT_EQ(std::vector<int32_t>(out.begin() + static_cast<long>(prompt.size()), out.end()), want);
}
