// The BPE model of tokenizer.json: vocab, ranked merges, byte fallback, unk.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/json_field.h"

namespace nibble::tok {

class Bpe {
 public:
  // `model` is tokenizer.json's "model" object, at path `at` (which names the file in errors).
  Bpe(const nlohmann::json& model, const jsonf::JsonPath& at);
  // Tokenizes one pre-tokenized word (already normalized / byte-level mapped).
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(const std::string& t) const;
  const std::string& id_to_token(int32_t id) const;
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }
  void add_token(const std::string& t, int32_t id);

 private:
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  std::optional<int32_t> unk_;
  bool byte_fallback_ = false, fuse_unk_ = false;
  int32_t byte_ids_[256];
};

// UTF-8 helpers
// Splits into code-point-sized substrings (invalid bytes become one-byte pieces).
std::vector<std::string> utf8_chars(const std::string& s);
// Length of the UTF-8 sequence starting with lead byte c (1 for invalid lead bytes).
int utf8_len(unsigned char c);
// True if a piece from utf8_chars is a complete character (not a cut or invalid sequence).
inline bool whole_utf8_char(const std::string& c) {
  return !c.empty() && c.size() == static_cast<size_t>(utf8_len(static_cast<unsigned char>(c[0])));
}

}  // namespace nibble::tok
