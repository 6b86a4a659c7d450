#include "models/registry.h"

#include <unicode/regex.h>

#include <algorithm>
#include <memory>

#include "io/json_field.h"
#include "nibble/error.h"
#include "nibble/model.h"

namespace nibble {

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> k{"llama", "mistral", "qwen2",  "qwen3",      "qwen3_moe",
                                          "phi3",  "gemma",   "gemma2", "gemma3_text"};
  return k;
}

void check_model_type(const nlohmann::json& config, const std::string& config_path) {
  const std::string& t = jsonf::get_string(config, "model_type", jsonf::JsonPath(config_path));
  const auto& ok = supported_model_types();
  if (std::find(ok.begin(), ok.end(), t) == ok.end()) {
    std::string list;
    for (const auto& m : ok) list += (list.empty() ? "" : ", ") + m;
    throw NotSupportedError(config_path + ": model_type '" + t + "' is not supported (supported: " + list +
                            ")");
  }
}

bool is_linear_weight(const std::string& model_type, const std::string& name) {
  (void)model_type;  // one layout; phi3 fuses q/k/v and gate/up into one Linear each (quantized as one)
  static const char* kSuffixes[] = {
      ".self_attn.q_proj.weight", ".self_attn.k_proj.weight",   ".self_attn.v_proj.weight",
      ".self_attn.o_proj.weight", ".mlp.gate_proj.weight",      ".mlp.up_proj.weight",
      ".mlp.down_proj.weight",    ".self_attn.qkv_proj.weight", ".mlp.gate_up_proj.weight"};
  if (name == "lm_head.weight") return true;
  if (name.rfind("model.layers.", 0) != 0) return false;
  // qwen3_moe's experts: model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight (the router, mlp.gate, is
  // not a Linear in transformers 5 and stays dense)
  if (name.find(".mlp.experts.") != std::string::npos)
    return name.ends_with(".gate_proj.weight") || name.ends_with(".up_proj.weight") ||
           name.ends_with(".down_proj.weight");
  return std::any_of(std::begin(kSuffixes), std::end(kSuffixes),
                     [&](const char* s) { return name.ends_with(s); });
}

bool module_matches(const std::string& module, const std::string& entry) {
  if (module.ends_with(entry)) return true;
  // re.match(rf"(?:{entry})(?:(?<=\.)|(?=\.|$))", module): the entry as a regex from the start, ending at a
  // module boundary (just after a '.', before one, or at the end). ICU's regex syntax is Python's for what
  // module patterns use (and has the lookbehind std::regex lacks).
  UErrorCode st = U_ZERO_ERROR;
  UParseError pe;
  const std::unique_ptr<icu::RegexPattern> p(icu::RegexPattern::compile(
      icu::UnicodeString::fromUTF8("(?:" + entry + ")(?:(?<=\\.)|(?=\\.|$))"), pe, st));
  if (U_FAILURE(st))
    throw ValueError("llm_int8_skip_modules entry '" + entry + "' is not a valid regular expression (" +
                     u_errorName(st) + ")");
  const icu::UnicodeString u = icu::UnicodeString::fromUTF8(module);
  const std::unique_ptr<icu::RegexMatcher> m(p->matcher(u, st));
  const bool hit = U_SUCCESS(st) && m->lookingAt(st);
  return hit && U_SUCCESS(st);
}

std::vector<std::string> modules_to_not_convert(const BitsAndBytesConfig& cfg) {
  if (cfg.llm_int8_skip_modules) return *cfg.llm_int8_skip_modules;
  return {"lm_head"};
}

bool should_quantize(const std::string& model_type, const std::string& name, const BitsAndBytesConfig& cfg) {
  if (!is_linear_weight(model_type, name)) return false;
  const std::string module = name.substr(0, name.size() - std::string(".weight").size());
  for (const auto& e : modules_to_not_convert(cfg))
    if (module_matches(module, e)) return false;
  return true;
}

}  // namespace nibble

namespace nibble::models {

std::unique_ptr<CausalLM> create_model(const nlohmann::json& config, const TensorSource& src,
                                       const LoadOptions& opt) {
  check_model_type(config, src.label() + "/config.json");
  // llama, mistral and qwen2 share one decoder (their differences are config fields)
  return std::make_unique<LlamaModel>(config, src, opt);
}

}  // namespace nibble::models
