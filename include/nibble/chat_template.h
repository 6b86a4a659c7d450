// Hugging Face chat templates: the Jinja template of a model's tokenizer_config.json (or
// chat_template.jinja), rendered byte for byte as transformers' tokenizer.apply_chat_template(messages,
// tokenize=False, ...) renders it.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "nibble/error.h"

namespace nibble {

namespace chat::jinja {
struct Program;
}

// A template rejected the messages: raise_exception(message) was called; what() is that message verbatim.
class ChatTemplateError : public ValueError {
 public:
  using ValueError::ValueError;
};

class ChatTemplate {
 public:
  // The model's chat template, found as transformers' AutoTokenizer finds it: <dir>/chat_template.jinja, then
  // additional_chat_templates/<name>.jinja, then tokenizer_config.json's "chat_template" (a string, or the
  // list of {"name", "template"}); then the processor's chat_template.json. With several templates, the one
  // named `name`, or "default" when `name` is empty. The special tokens (bos_token, eos_token, unk_token,
  // sep_token, pad_token, cls_token, mask_token; strings or {"content": ...}) come from tokenizer_config.json
  // (and special_tokens_map.json where tokenizer_config.json lacks them). Throws ValueError if the model has
  // no chat template (naming the files looked at) or no template `name`, FormatError (file, line and column)
  // if the template does not parse.
  static ChatTemplate from_pretrained(const std::string& dir, const std::string& name = "");

  // The template text and the special-token variables ({"bos_token": "<s>", ...}; strings or {"content":
  // ...}). `origin` names the template in error messages.
  static ChatTemplate from_string(const std::string& source,
                                  const nlohmann::json& special_tokens = nlohmann::json::object(),
                                  const std::string& origin = "chat_template");

  // apply_chat_template(messages, add_generation_prompt=..., tokenize=False, **extra): messages is a list of
  // message objects (keys whose value is null are dropped, as transformers does; "reasoning_content" /
  // "thinking" / "reasoning" are aliased as transformers aliases them). `extra` adds or overrides template
  // variables: tools, documents, date strings, enable_thinking, ...
  // Throws ChatTemplateError with raise_exception's message when the template rejects the messages,
  // ValueError for other runtime errors (naming the template line) and for messages that are not a list of
  // objects.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt = true,
                     const nlohmann::json& extra = nlohmann::json::object()) const;
  // The same with objects whose key order is kept (tojson of tools prints keys in the caller's order, as
  // Python dicts do; nlohmann::json sorts them).
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt = true,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  // The same, and the [begin, end) byte ranges of the text written by the template's {% generation %} blocks,
  // in order (transformers' return_assistant_tokens_mask spans; none if the template has no such block).
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra,
                     std::vector<std::pair<size_t, size_t>>& generation) const;
  // Whether the template marks assistant text with {% generation %} ... {% endgeneration %}.
  bool has_generation_blocks() const;

  const std::string& source() const { return source_; }
  // The special-token variables passed to the template ({"bos_token": "<s>", ...}, strings only).
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  std::string source_;
  nlohmann::ordered_json special_tokens_;
  std::shared_ptr<const chat::jinja::Program> program_;
};

}  // namespace nibble
