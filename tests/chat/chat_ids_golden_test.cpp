// Chat prompts as token ids, against transformers' apply_chat_template(tokenize=True) on the example model's
// tokenizer with two added special tokens (tests/golden/make_chat_ids_golden.py): the rendered text matches,
// and encoding it without the post-processor (the template writes BOS itself) gives the same ids - special
// tokens written by the template, and a user typing one, encode as that one token.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "nibble/chat_template.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

TEST(ChatIds, RenderedPromptsEncodeAsTransformersEncodesThem) {
  const auto g =
      nlohmann::json::parse(std::ifstream(std::string(NIBBLE_TEST_DATA) + "/chat_ids/chat_ids.json"));
  auto tj = nlohmann::json::parse(std::ifstream(test::example_model() + "/tokenizer.json"));
  for (const auto& a : g["added_tokens"]) tj["added_tokens"].push_back(a);
  const auto cfg = nlohmann::json::parse(std::ifstream(test::example_model() + "/tokenizer_config.json"));
  // as a model directory: tokenizer_config.json's tokenizer_class (LlamaTokenizer) decides the pipeline
  const test::TempDir dir;
  test::write_bytes(dir / "tokenizer.json", tj.dump());
  test::write_bytes(dir / "tokenizer_config.json", cfg.dump());
  const Tokenizer tok = Tokenizer::from_pretrained(dir.str());
  const nlohmann::json special{{"bos_token", cfg["bos_token"]},
                               {"eos_token", cfg["eos_token"]},
                               {"unk_token", cfg["unk_token"]},
                               {"pad_token", cfg["pad_token"]}};
  ASSERT_GE(g["cases"].size(), 7u);
  for (const auto& c : g["cases"]) {
    SCOPED_TRACE(c["template"].get<std::string>() + ": " + c["messages"].dump());
    const auto tmpl = ChatTemplate::from_string(g["templates"][c["template"].get<std::string>()], special);
    const std::string text = tmpl.render(c["messages"], true);
    EXPECT_EQ(text, c["text"].get<std::string>());
    EXPECT_EQ(tok.encode(text, false), c["ids"].get<std::vector<int32_t>>());
  }
}
