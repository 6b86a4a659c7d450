// BitsAndBytesConfig: transformers' 4-bit/8-bit quantization configuration, same fields, defaults, validation
// messages and dictionary/JSON forms (spec/bitsandbytes-config.md), with C++20 designated initializers:
//
//   nibble::BitsAndBytesConfig q{.load_in_4bit = true, .bnb_4bit_quant_type = "nf4",
//                                .bnb_4bit_compute_dtype = nibble::DType::BFloat16,
//                                .bnb_4bit_use_double_quant = true};
//
// Validation runs when the object is constructed (a trailing member runs post_init()), on update(), and in
// the load_in_4bit / load_in_8bit setters; errors are nibble::ValueError / nibble::TypeError carrying
// transformers' own messages.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/quant_type.h"

namespace nibble {

// A dtype given either as a DType or by name ("bfloat16", "torch.float16"); empty means None.
class DTypeArg {
 public:
  DTypeArg() = default;
  DTypeArg(std::nullopt_t) {}
  DTypeArg(DType t) : value_(t) {}
  DTypeArg(const char* name) : name_(name), named_(true) {}
  DTypeArg(std::string name) : name_(std::move(name)), named_(true) {}
  bool is_none() const { return !value_ && !named_; }
  bool is_resolved() const { return value_.has_value(); }
  const std::optional<DType>& value() const { return value_; }
  const std::string& name() const { return name_; }
  bool operator==(const DTypeArg&) const = default;

 private:
  std::optional<DType> value_;
  std::string name_;
  bool named_ = false;
};

struct BitsAndBytesConfig;
namespace detail {
// Runs post_init() on the config it is a member of, after all earlier members are initialized.
struct PostInit {
  explicit PostInit(BitsAndBytesConfig* self);
  PostInit(const PostInit&) {}
  PostInit& operator=(const PostInit&) { return *this; }
  bool operator==(const PostInit&) const { return true; }
};
}  // namespace detail

inline constexpr const char* kBitsAndBytesConfigClass =
    "<class 'transformers.utils.quantization_config.BitsAndBytesConfig'>";

struct BitsAndBytesConfig {
  bool load_in_8bit = false;
  bool load_in_4bit = false;
  double llm_int8_threshold = 6.0;
  std::optional<std::vector<std::string>> llm_int8_skip_modules = std::nullopt;
  bool llm_int8_enable_fp32_cpu_offload = false;
  bool llm_int8_has_fp16_weight = false;
  DTypeArg bnb_4bit_compute_dtype = {};  // None -> float32
  std::string bnb_4bit_quant_type = "fp4";
  bool bnb_4bit_use_double_quant = false;
  DTypeArg bnb_4bit_quant_storage = {};     // None -> uint8
  detail::PostInit post_init_guard_{this};  // keep last

  // Validates and resolves dtype names (transformers' __init__ checks + post_init). Throws.
  void post_init();
  // Property setters with transformers' checks.
  void set_load_in_4bit(bool value);
  void set_load_in_8bit(bool value);

  DType compute_dtype() const { return bnb_4bit_compute_dtype.value().value_or(DType::Float32); }
  DType quant_storage() const { return bnb_4bit_quant_storage.value().value_or(DType::UInt8); }
  // bnb_4bit_quant_type as the enum (post_init has validated the name).
  QuantType quant_type() const { return parse_quant_type(bnb_4bit_quant_type); }
  static constexpr const char* quant_method = "bitsandbytes";

  bool is_quantizable() const { return load_in_8bit || load_in_4bit; }
  // "llm_int8", "fp4", "nf4" or nullopt.
  std::optional<std::string> quantization_method() const;

  // The 13-key dictionary transformers' to_dict() returns.
  nlohmann::json to_dict() const;
  // Only the keys whose value differs from BitsAndBytesConfig{}.to_dict().
  nlohmann::json to_diff_dict() const;
  // json.dumps(d, indent=2, sort_keys=True) + "\n" of the diff (use_diff) or full dict.
  std::string to_json_string(bool use_diff = true) const;
  void to_json_file(const std::string& path) const;
  // "BitsAndBytesConfig " + the full dict as indented JSON + "\n" (transformers' repr).
  std::string repr() const;
  // The (name, value) pairs of to_dict(), in sorted order (the mixin's __iter__).
  std::vector<std::pair<std::string, nlohmann::json>> items() const;

  // Builds a config from a dict as transformers' from_dict does; JSON values are type-checked with
  // transformers' messages. Keys the class does not have go to *unused (the saved-form keys
  // _load_in_4bit, _load_in_8bit and quant_method are accepted silently).
  static BitsAndBytesConfig from_dict(const nlohmann::json& d, std::vector<std::string>* unused = nullptr);
  static BitsAndBytesConfig from_json_file(const std::string& path,
                                           std::vector<std::string>* unused = nullptr);
  // Sets the known keys, re-validates (leaving *this unchanged on error), returns the unknown ones.
  nlohmann::json update(const nlohmann::json& kwargs);

  bool operator==(const BitsAndBytesConfig& o) const { return to_dict() == o.to_dict(); }
};

std::ostream& operator<<(std::ostream& os, const BitsAndBytesConfig& c);

// "Unused kwargs: ['a', 'b']. These kwargs are not used in <class '...BitsAndBytesConfig'>."
std::string unused_kwargs_message(const std::vector<std::string>& unused);

// Reads the quantization_config block of any config.json. bitsandbytes (4-bit and 8-bit) is built; any other
// quant_method is a NotSupportedError naming it and the supported methods.
struct AutoQuantizationConfig {
  static BitsAndBytesConfig from_dict(const nlohmann::json& d, std::vector<std::string>* unused = nullptr);
};

}  // namespace nibble
