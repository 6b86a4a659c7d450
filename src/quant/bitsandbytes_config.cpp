#include "nibble/bitsandbytes_config.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>

#include "nibble/files.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "nibble/error.h"
#include "core/python_json.h"

namespace nibble {
using nlohmann::json;

namespace {

constexpr const char* kBothMsg =
    "load_in_4bit and load_in_8bit are both True, but only one can be used at the same time";
constexpr const char* kStorageMsg =
    "`bnb_4bit_quant_storage` must be a valid string (one of 'float16', 'float32', 'int8', 'uint8', "
    "'float64', 'bfloat16') ";
constexpr std::array<const char*, 6> kStorageNames{"float16", "float32", "int8",
                                                   "uint8",   "float64", "bfloat16"};

// Python-style list repr of strings: ['a', 'b'].
std::string py_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", '" : "'") + v[i] + "'";
  return s + "]";
}

DTypeArg resolve_compute(const DTypeArg& a) {
  if (a.is_none() || a.is_resolved()) return a;
  auto t = dtype_from_name(a.name());
  if (!t)
    throw ValueError("bnb_4bit_compute_dtype: unknown dtype '" + a.name() +
                     "' (use a torch dtype name such as 'float32', 'bfloat16' or 'float16')");
  return DTypeArg(*t);
}

DTypeArg resolve_storage(const DTypeArg& a) {
  if (a.is_none() || a.is_resolved()) return a;
  if (std::find_if(kStorageNames.begin(), kStorageNames.end(),
                   [&](const char* n) { return a.name() == n; }) == kStorageNames.end())
    throw ValueError(kStorageMsg);
  return DTypeArg(*dtype_from_name(a.name()));
}

// Python truthiness of a JSON value (for the mutual-exclusion check transformers runs before type checks).
bool truthy(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return false;
    case json::value_t::boolean:
      return v.get<bool>();
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return v.get<int64_t>() != 0;
    case json::value_t::number_float:
      return v.get<double>() != 0.0;
    case json::value_t::string:
    case json::value_t::array:
    case json::value_t::object:
      return !v.empty();
    default:
      return false;
  }
}

constexpr std::array<const char*, 10> kFields{"load_in_8bit",
                                              "load_in_4bit",
                                              "llm_int8_threshold",
                                              "llm_int8_skip_modules",
                                              "llm_int8_enable_fp32_cpu_offload",
                                              "llm_int8_has_fp16_weight",
                                              "bnb_4bit_compute_dtype",
                                              "bnb_4bit_quant_type",
                                              "bnb_4bit_use_double_quant",
                                              "bnb_4bit_quant_storage"};

bool is_field(const std::string& k) {
  return std::find_if(kFields.begin(), kFields.end(), [&](const char* f) { return k == f; }) != kFields.end();
}

// Applies the known keys of `d` onto `c` (no validation of cross-field rules; post_init does that), checking
// each JSON value's type in transformers' post_init order with its messages.
void apply_kwargs(BitsAndBytesConfig& c, const json& d) {
  auto get = [&](const char* k) -> const json* { return d.contains(k) ? &d.at(k) : nullptr; };
  const json* l4 = get("load_in_4bit");
  const json* l8 = get("load_in_8bit");
  const bool t4 = l4 ? truthy(*l4) : c.load_in_4bit;
  const bool t8 = l8 ? truthy(*l8) : c.load_in_8bit;
  if (t4 && t8) throw ValueError(kBothMsg);
  if (const json* v = get("bnb_4bit_compute_dtype")) {
    if (v->is_null())
      c.bnb_4bit_compute_dtype = {};
    else if (v->is_string())
      c.bnb_4bit_compute_dtype = resolve_compute(DTypeArg(v->get<std::string>()));
    else
      throw ValueError("bnb_4bit_compute_dtype must be a string or a torch.dtype");
  }
  if (const json* v = get("bnb_4bit_quant_storage")) {
    if (v->is_null())
      c.bnb_4bit_quant_storage = {};
    else if (v->is_string())
      c.bnb_4bit_quant_storage = resolve_storage(DTypeArg(v->get<std::string>()));
    else
      throw ValueError("bnb_4bit_quant_storage must be a string or a torch.dtype");
  }
  auto boolean = [&](const char* k, bool& field) {
    if (const json* v = get(k)) {
      if (!v->is_boolean()) throw TypeError(std::string(k) + " must be a boolean");
      field = v->get<bool>();
    }
  };
  boolean("load_in_4bit", c.load_in_4bit);
  boolean("load_in_8bit", c.load_in_8bit);
  if (const json* v = get("llm_int8_threshold")) {
    if (!v->is_number_float()) throw TypeError("llm_int8_threshold must be a float");
    c.llm_int8_threshold = v->get<double>();
  }
  if (const json* v = get("llm_int8_skip_modules")) {
    if (v->is_null()) {
      c.llm_int8_skip_modules.reset();
    } else {
      if (!v->is_array()) throw TypeError("llm_int8_skip_modules must be a list of strings");
      std::vector<std::string> mods;
      for (const auto& e : *v) {
        if (!e.is_string()) throw TypeError("llm_int8_skip_modules must be a list of strings");
        mods.push_back(e.get<std::string>());
      }
      c.llm_int8_skip_modules = std::move(mods);
    }
  }
  boolean("llm_int8_enable_fp32_cpu_offload", c.llm_int8_enable_fp32_cpu_offload);
  boolean("llm_int8_has_fp16_weight", c.llm_int8_has_fp16_weight);
  if (const json* v = get("bnb_4bit_quant_type")) {
    if (!v->is_string()) throw TypeError("bnb_4bit_quant_type must be a string");
    c.bnb_4bit_quant_type = v->get<std::string>();
  }
  boolean("bnb_4bit_use_double_quant", c.bnb_4bit_use_double_quant);
}

}  // namespace

detail::PostInit::PostInit(BitsAndBytesConfig* self) {
  self->post_init();
}

void BitsAndBytesConfig::post_init() {
  if (load_in_4bit && load_in_8bit) throw ValueError(kBothMsg);
  bnb_4bit_compute_dtype = resolve_compute(bnb_4bit_compute_dtype);
  bnb_4bit_quant_storage = resolve_storage(bnb_4bit_quant_storage);
  // transformers leaves the quant type unchecked until bitsandbytes fails; nibble rejects it here.
  if (bnb_4bit_quant_type != "fp4" && bnb_4bit_quant_type != "nf4")
    throw ValueError("bnb_4bit_quant_type must be 'fp4' or 'nf4', got '" + bnb_4bit_quant_type + "'");
}

void BitsAndBytesConfig::set_load_in_4bit(bool value) {
  if (load_in_8bit && value) throw ValueError(kBothMsg);
  load_in_4bit = value;
}

void BitsAndBytesConfig::set_load_in_8bit(bool value) {
  if (load_in_4bit && value) throw ValueError(kBothMsg);
  load_in_8bit = value;
}

std::optional<std::string> BitsAndBytesConfig::quantization_method() const {
  if (load_in_8bit) return "llm_int8";
  if (load_in_4bit && bnb_4bit_quant_type == "fp4") return "fp4";
  if (load_in_4bit && bnb_4bit_quant_type == "nf4") return "nf4";
  return std::nullopt;
}

json BitsAndBytesConfig::to_dict() const {
  json d;
  d["quant_method"] = quant_method;
  d["_load_in_8bit"] = load_in_8bit;
  d["_load_in_4bit"] = load_in_4bit;
  d["llm_int8_threshold"] = llm_int8_threshold;
  d["llm_int8_skip_modules"] = llm_int8_skip_modules ? json(*llm_int8_skip_modules) : json(nullptr);
  d["llm_int8_enable_fp32_cpu_offload"] = llm_int8_enable_fp32_cpu_offload;
  d["llm_int8_has_fp16_weight"] = llm_int8_has_fp16_weight;
  d["bnb_4bit_quant_type"] = bnb_4bit_quant_type;
  d["bnb_4bit_use_double_quant"] = bnb_4bit_use_double_quant;
  d["bnb_4bit_compute_dtype"] = std::string(dtype_name(compute_dtype()));
  d["bnb_4bit_quant_storage"] = std::string(dtype_name(quant_storage()));
  d["load_in_4bit"] = load_in_4bit;
  d["load_in_8bit"] = load_in_8bit;
  return d;
}

json BitsAndBytesConfig::to_diff_dict() const {
  const json full = to_dict();
  const json def = BitsAndBytesConfig{}.to_dict();
  json diff = json::object();
  for (auto it = full.begin(); it != full.end(); ++it)
    if (it.value() != def.at(it.key())) diff[it.key()] = it.value();
  return diff;
}

std::string BitsAndBytesConfig::to_json_string(bool use_diff) const {
  return python_json_dumps(use_diff ? to_diff_dict() : to_dict(), 2, true) + "\n";
}

void BitsAndBytesConfig::to_json_file(const std::string& path) const {
  write_text_file(path, to_json_string(false));
}

std::string BitsAndBytesConfig::repr() const {
  return "BitsAndBytesConfig " + python_json_dumps(to_dict(), 2, true) + "\n";
}

std::vector<std::pair<std::string, json>> BitsAndBytesConfig::items() const {
  std::vector<std::pair<std::string, json>> out;
  const json d = to_dict();
  for (auto it = d.begin(); it != d.end(); ++it) out.emplace_back(it.key(), it.value());
  return out;
}

BitsAndBytesConfig BitsAndBytesConfig::from_dict(const json& d, std::vector<std::string>* unused) {
  if (!d.is_object()) throw TypeError("BitsAndBytesConfig.from_dict expects a JSON object");
  BitsAndBytesConfig c;
  apply_kwargs(c, d);
  c.post_init();
  if (unused) {
    unused->clear();
    for (auto it = d.begin(); it != d.end(); ++it)
      if (!is_field(it.key()) && it.key() != "_load_in_4bit" && it.key() != "_load_in_8bit" &&
          it.key() != "quant_method")
        unused->push_back(it.key());
  }
  return c;
}

BitsAndBytesConfig BitsAndBytesConfig::from_json_file(const std::string& path,
                                                      std::vector<std::string>* unused) {
  const json d = read_json_file(path);
  try {
    return from_dict(d, unused);
  } catch (const Error& e) {
    throw ValueError(path + ": " + e.what());
  }
}

json BitsAndBytesConfig::update(const json& kwargs) {
  if (!kwargs.is_object()) throw TypeError("update expects a JSON object");
  BitsAndBytesConfig next = *this;
  json known = json::object(), rest = json::object();
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it)
    (is_field(it.key()) ? known : rest)[it.key()] = it.value();
  // setattr semantics: a key set to the other flag's value is checked against the current state
  apply_kwargs(next, known);
  next.post_init();
  *this = next;
  return rest;
}

std::ostream& operator<<(std::ostream& os, const BitsAndBytesConfig& c) {
  return os << c.repr();
}

std::string unused_kwargs_message(const std::vector<std::string>& unused) {
  return "Unused kwargs: " + py_list(unused) + ". These kwargs are not used in " + kBitsAndBytesConfigClass +
         ".";
}

BitsAndBytesConfig AutoQuantizationConfig::from_dict(const json& d, std::vector<std::string>* unused) {
  if (!d.is_object()) throw FormatError("quantization_config must be a JSON object");
  if (!d.contains("quant_method"))
    throw FormatError(
        "quantization_config has no 'quant_method'; the checkpoint was not saved by a quantizer");
  const json& m = d["quant_method"];
  const std::string method = m.is_string() ? m.get<std::string>() : m.dump();
  if (method != "bitsandbytes")
    throw NotSupportedError("quantization method '" + method +
                            "' is not supported by nibble (supported: bitsandbytes 4-bit and 8-bit)");
  return BitsAndBytesConfig::from_dict(d, unused);
}

}  // namespace nibble
