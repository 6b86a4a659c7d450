// HuggingFace config.json helpers.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "nibble/dtype.h"

namespace nibble {

// Parses a JSON file; IoError if unreadable, FormatError (naming the file) if malformed.
nlohmann::json read_json_file(const std::string& path);
// The checkpoint's dtype: "torch_dtype" (transformers 4) or "dtype" (transformers 5); float32 if absent.
DType checkpoint_dtype(const nlohmann::json& config, const std::string& config_path);

// Copies the tokenizer and generation files a checkpoint directory carries besides weights and config.json,
// as new files (umask permissions, not the source's). Nothing when from_dir is empty.
void copy_side_files(const std::string& from_dir, const std::string& to_dir);

}  // namespace nibble
