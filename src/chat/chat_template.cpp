#include "nibble/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "chat/jinja.h"
#include "io/json_field.h"
#include "nibble/files.h"

namespace nibble {

namespace {

namespace fs = std::filesystem;

const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

// A special token's string: "..." or the AddedToken form {"content": "..."}; empty optional if absent/null.
bool special_token_string(const nlohmann::json& v, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (v.is_object()) {
    const auto it = v.find("content");
    if (it != v.end() && it->is_string()) {
      *out = it->get<std::string>();
      return true;
    }
  }
  return false;
}

nlohmann::json read_json_file(const fs::path& p) {
  return jsonf::parse_json(read_text_file(p.string()), p.string());
}

}  // namespace

ChatTemplate ChatTemplate::from_string(const std::string& source, const nlohmann::json& special_tokens,
                                       const std::string& origin) {
  ChatTemplate t;
  t.source_ = source;
  t.special_tokens_ = nlohmann::ordered_json::object();
  if (!special_tokens.is_object()) throw ValueError("ChatTemplate: special_tokens must be a JSON object");
  for (const auto& [k, v] : special_tokens.items()) {
    std::string s;
    if (special_token_string(v, &s))
      t.special_tokens_[k] = s;
    else if (!v.is_null())
      throw ValueError("ChatTemplate: special token '" + k + "' must be a string or {\"content\": string}");
  }
  t.program_ = chat::jinja::parse(source, origin);
  return t;
}

ChatTemplate ChatTemplate::from_pretrained(const std::string& dir, const std::string& name) {
  const fs::path d(dir);
  // the templates, as transformers' tokenizer loads them: chat_template.jinja is "default", the files of
  // additional_chat_templates/ are named by their stem; without those files, tokenizer_config.json's
  std::map<std::string, std::pair<std::string, std::string>> templates;  // name -> (text, origin)
  std::vector<std::string> looked;
  const fs::path jinja_file = d / "chat_template.jinja";
  looked.push_back(jinja_file.string());
  std::error_code ec;
  if (fs::is_regular_file(jinja_file, ec))
    templates["default"] = {read_text_file(jinja_file.string()), jinja_file.string()};
  const fs::path extra_dir = d / "additional_chat_templates";
  looked.push_back(extra_dir.string() + "/*.jinja");
  if (fs::is_directory(extra_dir, ec)) {
    for (const auto& e : fs::directory_iterator(extra_dir, ec)) {
      if (e.path().extension() != ".jinja" || !e.is_regular_file()) continue;
      templates[e.path().stem().string()] = {read_text_file(e.path().string()), e.path().string()};
    }
  }
  const fs::path config_file = d / "tokenizer_config.json";
  nlohmann::json config = nlohmann::json::object();
  if (fs::is_regular_file(config_file, ec)) {
    config = read_json_file(config_file);
    if (!config.is_object()) throw FormatError(config_file.string() + ": expected a JSON object");
  }
  looked.push_back(config_file.string() + " \"chat_template\"");
  if (templates.empty()) {
    const auto it = config.find("chat_template");
    if (it != config.end() && !it->is_null()) {
      const std::string origin = config_file.string() + " chat_template";
      if (it->is_string()) {
        templates["default"] = {it->get<std::string>(), origin};
      } else if (it->is_array()) {
        for (size_t i = 0; i < it->size(); ++i) {
          const auto& e = (*it)[i];
          const auto n = e.is_object() ? e.find("name") : e.end();
          const auto tt = e.is_object() ? e.find("template") : e.end();
          if (!e.is_object() || n == e.end() || tt == e.end() || !n->is_string() || !tt->is_string())
            throw FormatError(config_file.string() + ": 'chat_template[" + std::to_string(i) +
                              "]' must be an object with string \"name\" and \"template\"");
          templates[n->get<std::string>()] = {tt->get<std::string>(),
                                              origin + "[" + n->get<std::string>() + "]"};
        }
      } else {
        throw FormatError(config_file.string() +
                          ": 'chat_template' must be a string or a list of {name, template}");
      }
    }
  }
  const fs::path legacy = d / "chat_template.json";
  looked.push_back(legacy.string());
  if (templates.empty() && fs::is_regular_file(legacy, ec)) {
    const nlohmann::json j = read_json_file(legacy);
    const auto it = j.is_object() ? j.find("chat_template") : j.end();
    if (it == j.end() || !it->is_string())
      throw FormatError(legacy.string() + ": expected an object with a string \"chat_template\"");
    templates["default"] = {it->get<std::string>(), legacy.string() + " chat_template"};
  }
  if (templates.empty()) {
    std::string files;
    for (const auto& l : looked) files += (files.empty() ? "" : ", ") + l;
    throw ValueError(dir + ": the model has no chat template (looked at " + files + ")");
  }
  const std::string want = name.empty() ? "default" : name;
  const auto sel = templates.find(want);
  if (sel == templates.end()) {
    std::string names;
    for (const auto& [k, v] : templates) names += (names.empty() ? "" : ", ") + k;
    if (name.empty())
      throw ValueError(
          dir +
          ": this model has multiple chat templates with no default specified; pass the name of the "
          "template to use. Available template names are " +
          names);
    throw ValueError(dir + ": no chat template named '" + name + "' (available: " + names + ")");
  }
  // special tokens: tokenizer_config.json, then the legacy special_tokens_map.json for the ones it lacks
  nlohmann::json specials = nlohmann::json::object();
  const fs::path map_file = d / "special_tokens_map.json";
  nlohmann::json legacy_map = nlohmann::json::object();
  if (fs::is_regular_file(map_file, ec)) {
    legacy_map = read_json_file(map_file);
    if (!legacy_map.is_object()) legacy_map = nlohmann::json::object();
  }
  for (const char* k : kSpecialTokens) {
    std::string s;
    const auto it = config.find(k);
    if (it != config.end() && special_token_string(*it, &s)) {
      specials[k] = s;
    } else if (it == config.end()) {
      const auto jt = legacy_map.find(k);
      if (jt != legacy_map.end() && special_token_string(*jt, &s)) specials[k] = s;
    }
  }
  return from_string(sel->second.first, specials, sel->second.second);
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render(nlohmann::ordered_json(messages), add_generation_prompt, nlohmann::ordered_json(extra));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  std::vector<std::pair<size_t, size_t>> unused;
  return render(messages, add_generation_prompt, extra, unused);
}

bool ChatTemplate::has_generation_blocks() const {
  return chat::jinja::has_generation(*program_);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra,
                                 std::vector<std::pair<size_t, size_t>>& generation) const {
  generation.clear();
  if (!messages.is_array()) throw ValueError("chat template: messages must be a list of message objects");
  if (messages.empty())
    throw ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.");
  if (!extra.is_object()) throw ValueError("chat template: extra variables must be a JSON object");
  // transformers: drop None-valued keys, then alias the reasoning fields
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    if (!m.is_object())
      throw ValueError("Chat messages should be dicts, dataclasses or pydantic models, but got " + m.dump() +
                       ".");
    nlohmann::ordered_json clean = nlohmann::ordered_json::object();
    for (const auto& [k, v] : m.items())
      if (!v.is_null()) clean[k] = v;
    const nlohmann::ordered_json* reasoning = nullptr;
    for (const char* f : {"reasoning_content", "thinking", "reasoning"}) {
      const auto it = clean.find(f);
      if (it != clean.end()) {
        reasoning = &*it;
        break;
      }
    }
    if (reasoning) {
      const nlohmann::ordered_json r = *reasoning;
      nlohmann::ordered_json aliased = nlohmann::ordered_json::object();
      aliased["thinking"] = r;
      for (const auto& [k, v] : clean.items()) aliased[k] = v;
      aliased["reasoning_content"] = r;
      clean = std::move(aliased);
    }
    msgs.push_back(std::move(clean));
  }
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  for (const auto& [k, v] : special_tokens_.items()) vars[k] = v;
  for (const auto& [k, v] : extra.items()) vars[k] = v;
  vars["messages"] = std::move(msgs);
  if (!vars.contains("tools")) vars["tools"] = nullptr;
  if (!vars.contains("documents")) vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  return chat::jinja::render(*program_, vars, {}, &generation);
}

}  // namespace nibble
