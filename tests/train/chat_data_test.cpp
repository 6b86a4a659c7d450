// Chat training data (`nibble finetune --data` .jsonl lines {"messages": [...]}): the ids and loss targets
// read_training_data gives, against transformers (tests/golden/make_chat_finetune_golden.py): a template with
// {% generation %} blocks as apply_chat_template(return_assistant_tokens_mask=True), others by TRL's
// prompt-completion rule per assistant turn; the cases where that rule's prompt is not a token prefix are
// refused with the line named. Then the loss: only targets count.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "nibble/error.h"
#include "nibble/finetune.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

namespace {

const nlohmann::ordered_json& golden() {
  static const auto g = nlohmann::ordered_json::parse(
      std::ifstream(std::string(NIBBLE_TEST_DATA) + "/chat_finetune/chat_finetune.json"));
  return g;
}

// The example model's tokenizer with the golden's added tokens and `tmpl` as its chat template.
std::string chat_model(const test::TempDir& d, const std::string& tmpl) {
  auto tj = nlohmann::json::parse(std::ifstream(test::example_model() + "/tokenizer.json"));
  for (const auto& a : golden()["added_tokens"])
    tj["added_tokens"].push_back(nlohmann::json::parse(a.dump()));
  test::write_chat_model(d.str(), tmpl);
  std::filesystem::remove(d / "tokenizer.json");
  test::write_bytes(d / "tokenizer.json", tj.dump());
  return d.str();
}

std::string jsonl_line(const nlohmann::ordered_json& j) {
  return j.dump() + "\n";
}

}  // namespace

TEST(ChatData, IdsAndTargetsAsTransformersAndTrl) {
  const auto& g = golden();
  ASSERT_GE(g["cases"].size(), 12u);
  int refused = 0, with_generation = 0;
  for (const auto& c : g["cases"]) {
    const std::string name = c["template"].get<std::string>();
    SCOPED_TRACE(name + ": " + c["messages"].dump());
    const test::TempDir d;
    const std::string model = chat_model(d, g["templates"][name].get<std::string>());
    const std::string data = d / "data.jsonl";
    // a text line before the conversation: its tokens all targets, then the conversation's
    test::write_bytes(data,
                      jsonl_line({{"text", "The cat sat."}}) + jsonl_line({{"messages", c["messages"]}}));
    if (c.contains("error")) {
      ++refused;
      try {
        read_training_data(data, model);
        ADD_FAILURE() << "expected the conversation to be refused";
      } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("data.jsonl:2"), std::string::npos) << e.what();
      }
      continue;
    }
    with_generation += name == "chatml-generation";
    TrainingData t;
    try {
      t = read_training_data(data, model);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what();
      continue;
    }
    const size_t head = Tokenizer::from_pretrained(model).encode("The cat sat.").size();
    ASSERT_EQ(t.ids.size(), head + c["ids"].size());
    ASSERT_EQ(t.targets.size(), t.ids.size());
    EXPECT_TRUE(std::all_of(t.targets.begin(), t.targets.begin() + static_cast<std::ptrdiff_t>(head),
                            [](uint8_t v) { return v == 1; }));
    EXPECT_EQ(std::vector<int32_t>(t.ids.begin() + static_cast<std::ptrdiff_t>(head), t.ids.end()),
              c["ids"].get<std::vector<int32_t>>());
    std::vector<int> got(t.targets.begin() + static_cast<std::ptrdiff_t>(head), t.targets.end());
    EXPECT_EQ(got, c["targets"].get<std::vector<int>>());
  }
  EXPECT_GE(refused, 2);
  EXPECT_GE(with_generation, 4);
}

TEST(ChatData, TemplateErrorsNameTheLine) {
  const test::TempDir d;
  const std::string model = chat_model(
      d,
      "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role here') }}"
      "{% endif %}{{ m['content'] }}{% endfor %}");
  const std::string data = d / "data.jsonl";
  test::write_bytes(
      data, jsonl_line({{"text", "A story."}}) +
                R"({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]})"
                "\n");
  try {
    read_training_data(data, model);
    ADD_FAILURE() << "expected an error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("data.jsonl:2: no system role here"), std::string::npos) << e.what();
  }
  // messages that are not a list, a message without a role
  for (const char* bad :
       {R"({"messages": "hi"})", R"({"messages": [{"content": "x"}, {"role": "assistant"}]})"}) {
    test::write_bytes(data, std::string(bad) + "\n");
    EXPECT_THROW(read_training_data(data, model), FormatError) << bad;
  }
}
