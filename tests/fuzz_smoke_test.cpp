// The fuzz targets (fuzz/targets.h) over deterministic random mutations of valid inputs, so every CTest run
// (and the ASan+UBSan preset in CI) exercises the parsers' error paths. Coverage-guided fuzzing with
// libFuzzer is the "fuzz" preset.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>

#include "../fuzz/targets.h"
#include "io/atomic_file.h"
#include "test_util.h"

namespace {
template <typename F>
void mutate_and_run(const std::string& seed, int rounds, F target) {
  std::mt19937 rng(42);
  for (int r = 0; r < rounds; ++r) {
    std::string s = seed;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t pos = rng() % s.size();
      switch (rng() % 4) {
        case 0:
          s[pos] = static_cast<char>(rng());
          break;  // flip a byte
        case 1:
          s.erase(pos, 1 + rng() % 16);
          break;  // delete a run
        case 2:
          s.insert(pos, 1 + rng() % 4, static_cast<char>(rng()));
          break;  // insert bytes
        default:
          s.resize(pos);
          break;  // truncate
      }
    }
    target(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
}
}  // namespace

TEST(FuzzSmoke, Safetensors) {
  const std::string seed = nibble::test::read_bytes(nibble::test::golden_dir() +
                                                    "/checkpoints/tiny-llama-bnb-nf4-dq/model.safetensors");
  mutate_and_run(seed.substr(0, 4096), 3000, nibble::fuzz::safetensors);
  // also mutate only the header region of the full file, so data offsets stay meaningful
  mutate_and_run(seed, 300, nibble::fuzz::safetensors);
}

TEST(FuzzSmoke, TokenizerJson) {
  const std::string seed =
      nibble::test::read_bytes(nibble::test::golden_dir() + "/bytelevel_gpt2_tokenizer.json");
  mutate_and_run(seed, 400, nibble::fuzz::tokenizer_json);
}

TEST(FuzzSmoke, QuantStateJson) {
  mutate_and_run(
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})",
      5000, nibble::fuzz::quant_state_json);
}

TEST(FuzzSmoke, ConfigJson) {
  // the example model's config.json and a bnb-4bit checkpoint's (with quantization_config)
  for (const std::string& path :
       {nibble::test::example_model() + "/config.json",
        nibble::test::golden_dir() + "/checkpoints/tiny-llama-bnb-nf4-dq/config.json"})
    mutate_and_run(nibble::test::read_bytes(path), 3000, nibble::fuzz::config_json);
  mutate_and_run(nibble::BitsAndBytesConfig{.load_in_4bit = true}.to_json_string(false), 2000,
                 nibble::fuzz::config_json);
}

TEST(FuzzSmoke, TokenizerConfigJson) {
  mutate_and_run(nibble::test::read_bytes(nibble::test::example_model() + "/tokenizer_config.json"), 300,
                 nibble::fuzz::tokenizer_config_json);
  mutate_and_run(R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})", 300,
                 nibble::fuzz::tokenizer_config_json);
}

TEST(FuzzSmoke, IndexJson) {
  mutate_and_run(
      R"({"metadata": {"total_size": 11}, "weight_map": {"a": "model.safetensors", "b": "model.safetensors"}})",
      600, nibble::fuzz::index_json);
}

TEST(FuzzSmoke, ChatTemplate) {
  for (const char* f : {"/chat_templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
                        "/chat_templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
                        "/chat_templates/inline-bofenghuang-vigogne-2-70b-chat.jinja"})
    mutate_and_run(nibble::test::read_bytes(nibble::test::golden_dir() + f), 300,
                   nibble::fuzz::chat_template);
}

TEST(FuzzSmoke, OpenAIRequest) {
  // the hand-written seeds (the campaign's inputs run once each in CommittedCorpus)
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(NIBBLE_SOURCE_DIR) + "/fuzz/corpus/openai_request"))
    if (e.path().filename().string().rfind("seed-", 0) == 0)
      mutate_and_run(nibble::test::read_bytes(e.path().string()), 300, nibble::fuzz::openai_request);
}

// The committed libFuzzer corpus (fuzz/corpus/<target>/, minimized by -merge=1) runs through the same entry
// points, so every input the campaigns kept is replayed by CTest and under ASan+UBSan.
TEST(FuzzSmoke, CommittedCorpus) {
  namespace fs = std::filesystem;
  const std::map<std::string, void (*)(const uint8_t*, size_t)> targets{
      {"safetensors", nibble::fuzz::safetensors},
      {"tokenizer_json", nibble::fuzz::tokenizer_json},
      {"tokenizer_config_json", nibble::fuzz::tokenizer_config_json},
      {"quant_state_json", nibble::fuzz::quant_state_json},
      {"config_json", nibble::fuzz::config_json},
      {"index_json", nibble::fuzz::index_json},
      {"chat_template", nibble::fuzz::chat_template},
      {"openai_request", nibble::fuzz::openai_request}};
  const fs::path root = fs::path(NIBBLE_SOURCE_DIR) / "fuzz" / "corpus";
  size_t inputs = 0;
  for (const auto& [name, target] : targets) {
    ASSERT_TRUE(fs::is_directory(root / name)) << root / name;
    for (const auto& e : fs::directory_iterator(root / name)) {
      const std::string s = nibble::test::read_bytes(e.path().string());
      target(reinterpret_cast<const uint8_t*>(s.data()), s.size());
      ++inputs;
    }
  }
  EXPECT_GT(inputs, targets.size());
}
