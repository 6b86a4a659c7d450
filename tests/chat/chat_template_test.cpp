// Chat templates against transformers' own rendering (tests/golden/make_chat_template_golden.py): real
// models' templates over many conversations byte for byte, raise_exception messages verbatim, and the
// engine's pieces against jinja2 with transformers' environment.
#include "nibble/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "chat/jinja.h"
#include "test_util.h"

namespace {

using nlohmann::ordered_json;
namespace fs = std::filesystem;

std::string templates_dir() {
  return nibble::test::golden_dir() + "/chat_templates";
}

const ordered_json& golden() {
  static const ordered_json j =
      ordered_json::parse(nibble::test::read_bytes(templates_dir() + "/expected.json"));
  return j;
}

const std::map<std::string, nibble::ChatTemplate>& templates() {
  static const std::map<std::string, nibble::ChatTemplate> m = [] {
    std::map<std::string, nibble::ChatTemplate> out;
    const auto sources = nlohmann::json::parse(nibble::test::read_bytes(templates_dir() + "/sources.json"));
    for (const auto& s : sources) {
      const std::string file = s["file"];
      out.emplace(file,
                  nibble::ChatTemplate::from_string(nibble::test::read_bytes(templates_dir() + "/" + file),
                                                    s["special_tokens"], file));
    }
    return out;
  }();
  return m;
}

std::string first_difference(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = i > 40 ? i - 40 : 0;
  return "first difference at byte " + std::to_string(i) +
         ":\n  want: " + ordered_json(want.substr(from, 100)).dump() +
         "\n  got:  " + ordered_json(got.substr(from, 100)).dump();
}

}  // namespace

TEST(ChatTemplate, GoldenCasesRenderAsTransformers) {
  const auto& g = golden();
  const auto& conversations = g["conversations"];
  size_t rendered = 0, raised = 0, errors = 0, failures = 0;
  for (const auto& c : g["cases"]) {
    const std::string file = c["template"];
    const std::string what =
        file + " / " + c["conversation"].get<std::string>() +
        " / add_generation_prompt=" + (c["add_generation_prompt"].get<bool>() ? "true" : "false");
    const auto it = templates().find(file);
    ASSERT_NE(it, templates().end()) << file;
    const ordered_json& messages = conversations[c["conversation"].get<std::string>()];
    const bool agp = c["add_generation_prompt"];
    std::string got, err_kind, err_msg;
    try {
      got = it->second.render(messages, agp, c["extra"]);
    } catch (const nibble::ChatTemplateError& e) {
      err_kind = "raise";
      err_msg = e.what();
    } catch (const nibble::ValueError& e) {
      err_kind = "error";
      err_msg = e.what();
    }
    bool ok;
    if (c.contains("expected")) {
      ok = err_kind.empty() && got == c["expected"].get<std::string>();
      if (!ok)
        ADD_FAILURE() << what << ": "
                      << (err_kind.empty() ? first_difference(c["expected"], got) : "threw " + err_msg);
      ++rendered;
    } else if (c.contains("raise")) {
      ok = err_kind == "raise" && err_msg == c["raise"].get<std::string>();
      if (!ok)
        ADD_FAILURE() << what << ": want raise_exception(" << c["raise"] << "), got " << err_kind << " "
                      << err_msg;
      ++raised;
    } else {
      // jinja2 raised another error (UndefinedError, TypeError): a ValueError naming the template line
      ok = err_kind == "error" && err_msg.find(file + " line ") != std::string::npos;
      if (!ok)
        ADD_FAILURE() << what << ": want a ValueError like " << c["message"] << ", got '" << err_kind << "' "
                      << err_msg;
      ++errors;
    }
    if (!ok && ++failures > 30) FAIL() << "too many failures";
  }
  EXPECT_GT(rendered, 600u);
  EXPECT_GT(raised, 40u);
  EXPECT_GT(errors, 5u);
}

TEST(ChatTemplate, EngineMatchesJinja2) {
  size_t n = 0, failures = 0;
  for (const auto& e : golden()["engine"]) {
    const std::string src = e["source"];
    std::string got, kind, msg;
    try {
      const auto prog = nibble::chat::jinja::parse(src, "snippet");
      got = nibble::chat::jinja::render(*prog, e["vars"]);
    } catch (const nibble::FormatError& x) {
      kind = "syntax";
      msg = x.what();
    } catch (const nibble::ChatTemplateError& x) {
      kind = "raise";
      msg = x.what();
    } catch (const nibble::ValueError& x) {
      kind = "error";
      msg = x.what();
    }
    bool ok;
    if (e.contains("expected")) {
      ok = kind.empty() && got == e["expected"].get<std::string>();
      if (!ok)
        ADD_FAILURE() << src << "\n"
                      << (kind.empty() ? first_difference(e["expected"], got) : kind + ": " + msg);
    } else if (e.contains("syntax_error")) {
      const std::string at = "snippet:" + std::to_string(e["line"].get<int>()) + ":";
      ok = kind == "syntax" && msg.rfind(at, 0) == 0;
      if (!ok)
        ADD_FAILURE() << src << "\nwant a FormatError at " << at << " (" << e["syntax_error"] << "), got "
                      << kind << " " << msg;
    } else if (e.contains("raise")) {
      ok = kind == "raise" && msg == e["raise"].get<std::string>();
      if (!ok) ADD_FAILURE() << src << "\nwant raise " << e["raise"] << ", got " << kind << " " << msg;
    } else {
      ok = kind == "error" && msg.find("snippet line ") == 0;
      if (!ok)
        ADD_FAILURE() << src << "\nwant a ValueError like " << e["message"] << ", got " << kind << " " << msg;
    }
    if (!ok) ++failures;
    ++n;
  }
  EXPECT_GT(n, 60u);
}

// ---------------------------------------------------------------- from_pretrained

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("nibble-chat-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& name, const std::string& text) const {
    fs::create_directories((path / name).parent_path());
    nibble::test::write_bytes((path / name).string(), text);
  }
};
const nlohmann::json kUser = nlohmann::json::array({{{"role", "user"}, {"content", "Hi"}}});
}  // namespace

TEST(ChatTemplate, FromPretrainedStringFormWithAddedTokenSpecials) {
  TempDir d;
  d.write(
      "tokenizer_config.json",
      R"({"chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}{{ pad_token }}",
              "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null})");
  const auto t = nibble::ChatTemplate::from_pretrained(d.path.string());
  EXPECT_EQ(t.render(kUser), "<s>[Hi]</s>");
  EXPECT_EQ(t.special_tokens().size(), 2u);
}

TEST(ChatTemplate, FromPretrainedListFormPicksDefaultOrName) {
  TempDir d;
  d.write("tokenizer_config.json",
          R"({"chat_template": [{"name": "default", "template": "D{{ messages[0].content }}"},
                                {"name": "tool_use", "template": "T{{ messages[0].content }}"}]})");
  EXPECT_EQ(nibble::ChatTemplate::from_pretrained(d.path.string()).render(kUser), "DHi");
  EXPECT_EQ(nibble::ChatTemplate::from_pretrained(d.path.string(), "tool_use").render(kUser), "THi");
  EXPECT_THROW(nibble::ChatTemplate::from_pretrained(d.path.string(), "rag"), nibble::ValueError);
}

TEST(ChatTemplate, FromPretrainedListWithoutDefaultNeedsName) {
  TempDir d;
  d.write("tokenizer_config.json",
          R"({"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]})");
  try {
    (void)nibble::ChatTemplate::from_pretrained(d.path.string());
    FAIL() << "expected a ValueError";
  } catch (const nibble::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("a, b"), std::string::npos) << e.what();
  }
  EXPECT_EQ(nibble::ChatTemplate::from_pretrained(d.path.string(), "b").render(kUser), "B");
}

TEST(ChatTemplate, FromPretrainedJinjaFileWinsOverConfig) {
  TempDir d;
  d.write("tokenizer_config.json", R"({"chat_template": "config", "eos_token": "<|end|>"})");
  d.write("chat_template.jinja", "file {{ eos_token }}\n");
  d.write("additional_chat_templates/rag.jinja", "rag");
  const auto t = nibble::ChatTemplate::from_pretrained(d.path.string());
  EXPECT_EQ(t.render(kUser), "file <|end|>");  // jinja2 drops the single trailing newline
  EXPECT_EQ(nibble::ChatTemplate::from_pretrained(d.path.string(), "rag").render(kUser), "rag");
}

TEST(ChatTemplate, FromPretrainedLegacyChatTemplateJson) {
  TempDir d;
  d.write("chat_template.json", R"({"chat_template": "legacy {{ messages | length }}"})");
  EXPECT_EQ(nibble::ChatTemplate::from_pretrained(d.path.string()).render(kUser), "legacy 1");
}

TEST(ChatTemplate, FromPretrainedMissingTemplateNamesTheFiles) {
  TempDir d;
  d.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  try {
    (void)nibble::ChatTemplate::from_pretrained(d.path.string());
    FAIL() << "expected a ValueError";
  } catch (const nibble::ValueError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("no chat template"), std::string::npos) << m;
    EXPECT_NE(m.find("tokenizer_config.json"), std::string::npos) << m;
    EXPECT_NE(m.find("chat_template.jinja"), std::string::npos) << m;
  }
}

TEST(ChatTemplate, FromPretrainedParseErrorNamesFileLineColumn) {
  TempDir d;
  d.write("chat_template.jinja", "line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}");
  try {
    (void)nibble::ChatTemplate::from_pretrained(d.path.string());
    FAIL() << "expected a FormatError";
  } catch (const nibble::FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("chat_template.jinja:3:"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------- API behaviour

TEST(ChatTemplate, NormalizesMessagesAsTransformers) {
  const auto t = nibble::ChatTemplate::from_string(
      "{% for m in messages %}{{ m.keys() | list }}{{ m.thinking }}|{% endfor %}{{ tools is none }}");
  const auto msgs = nlohmann::ordered_json::parse(
      R"([{"role": "assistant", "content": "x", "reasoning": "r", "tool_calls": null}])");
  EXPECT_EQ(t.render(msgs, false), "['thinking', 'role', 'content', 'reasoning', 'reasoning_content']r|True");
  EXPECT_THROW(t.render(nlohmann::json::array(), true), nibble::ValueError);
  EXPECT_THROW(t.render(nlohmann::json::array({1}), true), nibble::ValueError);
}

TEST(ChatTemplate, ExtraOverridesSpecialTokensAndKeepsKeyOrder) {
  const auto t =
      nibble::ChatTemplate::from_string("{{ bos_token }}{{ tools | tojson }}", {{"bos_token", "<s>"}});
  const auto extra = nlohmann::ordered_json::parse(R"({"bos_token": "B", "tools": [{"z": 1, "a": 2}]})");
  EXPECT_EQ(t.render(nlohmann::ordered_json(kUser), true, extra), R"(B[{"z": 1, "a": 2}])");
}

TEST(ChatTemplate, RaiseExceptionIsChatTemplateError) {
  const auto t = nibble::ChatTemplate::from_string(
      "{{ raise_exception('Only user and assistant roles are supported!') }}");
  try {
    (void)t.render(kUser);
    FAIL();
  } catch (const nibble::ChatTemplateError& e) {
    EXPECT_STREQ(e.what(), "Only user and assistant roles are supported!");
  }
}

TEST(ChatTemplate, StrftimeNowFormatsToday) {
  const auto t = nibble::ChatTemplate::from_string("{{ strftime_now('%Y') }}");
  const std::string y = t.render(kUser);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_GE(std::stoi(y), 2024);
}

// Hostile templates end with a nibble::Error: deep nesting, runaway loops and recursion, huge output.
TEST(ChatTemplate, HostileTemplatesFailCleanly) {
  const std::string deep_parens = std::string(5000, '(') + "1" + std::string(5000, ')');
  const std::vector<std::string> hostile = {
      "{{ " + deep_parens + " }}",
      "{{ " + std::string(3000, '[') + std::string(3000, ']') + " }}",
      "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
      "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
      "{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
      "{{ 'ab' * 100000000000 }}",
      "{% set ns = namespace(x=none) %}{% set ns.x = ns %}{{ ns }}",
      "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
      "{{ 9223372036854775807 + 1 }}",
      "{{ 1" +
          [] {
            std::string s;
            for (int i = 0; i < 100000; ++i) s += "+1";
            return s;
          }() +
          " }}",
      "{{ x" + std::string(100000, '|') + " }}",
      "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}",
      "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = ns.x | batch(1) | list %}{% "
      "endfor %}",
      "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = {'k': ns.x} %}{% endfor %}",
      "{{ 3 ** 100 }}",
      "{% if %}",
      "{{ }}",
      "\xff\xfe{{ 1 }}",
  };
  nibble::chat::jinja::Limits small;
  small.max_output = 1 << 20;
  small.max_steps = 1 << 16;
  for (const auto& src : hostile) {
    try {
      const auto p = nibble::chat::jinja::parse(src, "hostile");
      (void)nibble::chat::jinja::render(*p, nlohmann::ordered_json::object(), small);
      ADD_FAILURE() << "rendered without an error: " << src.substr(0, 80);
    } catch (const nibble::Error&) {
    }
  }
}
