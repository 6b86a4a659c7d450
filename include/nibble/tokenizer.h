// Tokenizer from a HuggingFace tokenizer.json: BPE (sentencepiece-style with byte fallback, and GPT-2-style
// byte-level with its regex pre-tokenizer), added/special tokens, TemplateProcessing, decoders, and
// incremental decoding that never splits a UTF-8 character.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace nibble {

class Tokenizer {
 public:
  // Reads <dir>/tokenizer.json (and tokenizer_config.json if present). `dir` may be a model id in the
  // HuggingFace cache ("ORG/NAME[@REVISION]", see resolve_model_path in nibble/hub.h).
  static Tokenizer from_pretrained(const std::string& dir);
  // Parses tokenizer.json text; `label` names it in errors.
  static Tokenizer from_json(const std::string& json_text, const std::string& label);

  // add_special_tokens: apply the post-processor (e.g. prepend BOS).
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;

  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int32_t id) const;
  std::optional<int32_t> bos_token_id() const;
  std::optional<int32_t> eos_token_id() const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  struct Impl;

 private:
  Tokenizer();
  std::unique_ptr<Impl> impl_;
};

// Streams text as ids arrive, holding back bytes of an incomplete UTF-8 character.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, std::vector<int32_t> prompt_ids, bool skip_special_tokens = true);
  // The new text since the last call ("" if the new id completes no character yet).
  std::string put(int32_t id);
  // Whatever is left (replacement characters for a truncated sequence).
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // ids before this index are already fully emitted
  std::string emitted_;
  bool skip_;
};

}  // namespace nibble
