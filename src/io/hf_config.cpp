#include "io/hf_config.h"

#include <filesystem>

#include "io/atomic_file.h"
#include "nibble/error.h"
#include "nibble/files.h"

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
      throw FormatError(config_path + ": '" + key + "' is '" + name +
                        "', expected float32, float16 or bfloat16");
    return *t;
  }
  return DType::Float32;
}

void copy_side_files(const std::string& from_dir, const std::string& to_dir) {
  namespace fs = std::filesystem;
  if (from_dir.empty()) return;  // a model built in memory (from_config): no files beside it
  for (const char* f :
       {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"}) {
    const fs::path src = fs::path(from_dir) / f;
    // written fresh rather than fs::copy_file: a read-only source (a cache) must not give a read-only output
    if (fs::exists(src)) copy_file_contents(src.string(), (fs::path(to_dir) / f).string());
  }
}

}  // namespace nibble
