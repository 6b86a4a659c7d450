// Reading whole files (configs, tokenizer files, text to score).
#pragma once
#include <string>

namespace nibble {

// The file's bytes; IoError naming the path (and saying whether it is missing) if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace nibble
