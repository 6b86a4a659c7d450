#include "io/hf_config.h"

#include <filesystem>

#include "io/atomic_file.h"
#include "nibble/error.h"
#include "nibble/files.h"

namespace nibble {

std::string read_json_text(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > max_bytes)
    throw FormatError(path + ": " + std::to_string(size) + " bytes exceed the " +
                      std::to_string(max_bytes >> 20) + " MiB limit for this JSON file");
  return read_text_file(path);
}

nlohmann::json read_json_file(const std::string& path, const jsonf::ParseLimits& limits) {
  return jsonf::parse_json(read_json_text(path, limits.max_bytes), path, limits);
}

DType checkpoint_dtype(const nlohmann::json& config, const std::string& config_path) {
  const jsonf::JsonPath root(config_path);
  for (const char* key : {"torch_dtype", "dtype"}) {
    const nlohmann::json* v = jsonf::find(config, key, root);
    if (!v) continue;
    const std::string& name = jsonf::as_string(*v, root / key);
    auto t = dtype_from_name(name);
    if (!t || !dtype_is_float(*t))
      (root / key).fail("is '" + name + "', expected float32, float16 or bfloat16");
    return *t;
  }
  return DType::Float32;
}

std::vector<int32_t> eos_token_ids(const nlohmann::json& config, const std::string& path,
                                   int64_t vocab_size) {
  const jsonf::JsonPath root(path), at = root / "eos_token_id";
  const nlohmann::json* e = jsonf::find(config, "eos_token_id", root);
  std::vector<int32_t> eos;
  if (!e) return eos;
  const jsonf::IntRange r{0, vocab_size - 1};
  if (!e->is_array()) {
    eos.push_back(static_cast<int32_t>(jsonf::as_int(*e, at, r)));
    return eos;
  }
  for (size_t i = 0; i < e->size(); ++i)
    eos.push_back(static_cast<int32_t>(jsonf::as_int((*e)[i], at[i], r)));
  return eos;
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
