// HuggingFace config.json helpers.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/json_field.h"
#include "nibble/dtype.h"

namespace nibble {

// The text of a JSON file nibble did not write; IoError if unreadable, FormatError if larger than max_bytes
// (checked before reading).
std::string read_json_text(const std::string& path, size_t max_bytes);
// Parses a JSON file; IoError if unreadable, FormatError (naming the file) if malformed, too large or too
// deeply nested (see jsonf::parse_json).
nlohmann::json read_json_file(const std::string& path, const jsonf::ParseLimits& limits = {});
// The checkpoint's dtype: "torch_dtype" (transformers 4) or "dtype" (transformers 5); float32 if absent.
DType checkpoint_dtype(const nlohmann::json& config, const std::string& config_path);

// eos_token_id of config.json or generation_config.json: absent/null (empty), an id, or a list of ids; each
// must be in [0, vocab_size).
std::vector<int32_t> eos_token_ids(const nlohmann::json& config, const std::string& path, int64_t vocab_size);

// Copies the tokenizer and generation files a checkpoint directory carries besides weights and config.json,
// as new files (umask permissions, not the source's). Nothing when from_dir is empty.
void copy_side_files(const std::string& from_dir, const std::string& to_dir);

}  // namespace nibble
