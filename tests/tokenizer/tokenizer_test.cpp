#include "nibble/tokenizer.h"

#include <gtest/gtest.h>

#include "nibble/files.h"
#include "io/hf_config.h"
#include "nibble/error.h"
#include "test_util.h"

using namespace nibble;
using nlohmann::json;

namespace {
const Tokenizer& example() {
  static const Tokenizer t = Tokenizer::from_pretrained(test::example_model());
  return t;
}
}  // namespace

TEST(Tokenizer, SharedGoldenInputIds) {
  const json g = read_json_file(test::shared_dir() + "/golden/tinystories-656k.json");
  ASSERT_GT(g["cases"].size(), 0u);
  for (const auto& c : g["cases"]) {
    const auto ids = example().encode(c["prompt"].get<std::string>());
    EXPECT_EQ(ids, c["input_ids"].get<std::vector<int32_t>>()) << c["prompt"];
    std::vector<int32_t> all = c["input_ids"].get<std::vector<int32_t>>();
    for (int32_t id : c["greedy_new_ids"].get<std::vector<int32_t>>()) all.push_back(id);
    EXPECT_EQ(example().decode(all), c["greedy_text"].get<std::string>());
  }
}

// Ids from HF `tokenizers` itself over a corpus with ASCII, accents, CJK, emoji and odd whitespace, for the
// example tokenizer (sentencepiece-style BPE, byte fallback) and a byte-level BPE tokenizer (GPT-2 regex).
TEST(Tokenizer, MatchesHfTokenizersGolden) {
  const json g = read_json_file(test::golden_dir() + "/tokenizer_golden.json");
  for (const auto& tk : g["tokenizers"]) {
    const std::string path = test::golden_dir() + "/" + tk["file"].get<std::string>();
    const std::string src =
        tk["file"].get<std::string>() == "example" ? test::example_model() + "/tokenizer.json" : path;
    const Tokenizer t = Tokenizer::from_json(read_text_file(src), src);
    int n = 0;
    for (const auto& c : tk["cases"]) {
      SCOPED_TRACE(tk["file"].get<std::string>() + ": " + c["text"].get<std::string>());
      EXPECT_EQ(t.encode(c["text"].get<std::string>(), true), c["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(t.encode(c["text"].get<std::string>(), false),
                c["ids_no_special"].get<std::vector<int32_t>>());
      EXPECT_EQ(t.decode(c["ids"].get<std::vector<int32_t>>(), true), c["decoded"].get<std::string>());
      EXPECT_EQ(t.decode(c["ids"].get<std::vector<int32_t>>(), false),
                c["decoded_with_special"].get<std::string>());
      ++n;
    }
    EXPECT_GE(n, 20);
  }
}

TEST(Tokenizer, StreamingNeverSplitsUtf8) {
  const std::string text = "Le café 😀 est très bon — 模型";
  const auto ids = example().encode(text, false);
  StreamDecoder sd(example(), {});
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = sd.put(id);
    // every piece is whole UTF-8: no replacement characters and no cut sequences
    EXPECT_EQ(piece.find("\xef\xbf\xbd"), std::string::npos);
    out += piece;
  }
  out += sd.flush();
  EXPECT_EQ(out, example().decode(ids));
}

TEST(Tokenizer, SpecialTokens) {
  EXPECT_EQ(example().bos_token_id(), 1);
  EXPECT_EQ(example().eos_token_id(), 2);
  EXPECT_EQ(example().encode("<|end_story|>", false), std::vector<int32_t>{2});
  EXPECT_EQ(example().decode({1, 2}, true), "");
  EXPECT_EQ(example().decode({1}, false), "<|start_story|>");
  EXPECT_THROW(example().decode({99999}), ValueError);
}

TEST(Tokenizer, MalformedJsonIsClearError) {
  for (const char* bad :
       {"{", "[]", R"({"model": {"type": "WordPiece", "vocab": {}}})",
        R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Bogus"}})"}) {
    try {
      Tokenizer::from_json(bad, "my/tokenizer.json");
      ADD_FAILURE() << bad;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("my/tokenizer.json"), std::string::npos) << e.what();
    }
  }
}
