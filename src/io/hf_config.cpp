#include "io/hf_config.h"

#include "io/atomic_file.h"
#include "nibble/error.h"

namespace nibble {

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": invalid JSON: " + e.what());
  }
}

DType checkpoint_dtype(const nlohmann::json& config, const std::string& config_path) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (!config.contains(key) || config[key].is_null()) continue;
    if (!config[key].is_string()) throw FormatError(config_path + ": '" + key + "' must be a string");
    const auto name = config[key].get<std::string>();
    auto t = dtype_from_name(name);
    if (!t || !dtype_is_float(*t))
      throw FormatError(config_path + ": '" + key + "' is '" + name + "', expected float32, float16 or bfloat16");
    return *t;
  }
  return DType::Float32;
}

}  // namespace nibble
