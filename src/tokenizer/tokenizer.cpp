#include "nibble/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "nibble/files.h"
#include "io/hf_config.h"
#include "nibble/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pipeline.h"

namespace nibble {
using nlohmann::json;

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
  bool normalized;    // matched in the normalized text, against the normalized content (HF tokenizers)
  std::string match;  // the string searched for: content, or normalizer(content)
};

struct Tokenizer::Impl {
  std::unique_ptr<tok::Bpe> bpe;
  std::vector<AddedToken> added;  // longest content first (leftmost-longest matching)
  tok::Normalizer normalizer;
  tok::PreTokenizer pre;
  tok::Decoder decoder;
  std::vector<int32_t> prefix_ids, suffix_ids;  // TemplateProcessing "single"
  std::optional<int32_t> bos, eos;
  std::vector<bool> is_special;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

// TemplateProcessing "single": special-token ids before and after the sequence $A.
void parse_template(const json& pp, const std::string& label, Tokenizer::Impl& im) {
  if (pp.is_null()) return;
  const std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : pp.value("processors", json::array())) parse_template(p, label, im);
    return;
  }
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type != "TemplateProcessing")
    throw FormatError(label + ": post_processor type '" + type + "' is not supported");
  if (!pp.contains("single") || !pp["single"].is_array())
    throw FormatError(label + ": TemplateProcessing needs 'single'");
  const json& specials = pp.value("special_tokens", json::object());
  bool seen_seq = false;
  for (const auto& piece : pp["single"]) {
    if (piece.contains("Sequence")) {
      seen_seq = true;
      continue;
    }
    if (!piece.contains("SpecialToken") || !piece["SpecialToken"].contains("id"))
      throw FormatError(label + ": TemplateProcessing piece is neither Sequence nor SpecialToken");
    const std::string name = piece["SpecialToken"]["id"].get<std::string>();
    if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
      throw FormatError(label + ": TemplateProcessing special token '" + name + "' has no ids");
    for (const auto& id : specials[name]["ids"])
      (seen_seq ? im.suffix_ids : im.prefix_ids).push_back(id.get<int32_t>());
  }
}

std::optional<int32_t> special_from_config(const json& cfg, const char* key, const Tokenizer& t) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return t.token_to_id(v.get<std::string>());
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return t.token_to_id(v["content"].get<std::string>());
  return std::nullopt;
}

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& label) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(label + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw FormatError(label + ": not a JSON object");
  Tokenizer t;
  Impl& im = *t.impl_;
  if (!j.contains("model")) throw FormatError(label + ": missing 'model'");
  im.bpe = std::make_unique<tok::Bpe>(j["model"], label);
  for (const auto& a : j.value("added_tokens", json::array())) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      throw FormatError(label + ": added_tokens entries need integer 'id' and string 'content'");
    const int32_t id = a["id"].get<int32_t>();
    if (id < 0 || id > (1 << 30))
      throw FormatError(label + ": added token id " + std::to_string(id) + " out of range");
    AddedToken at{a["content"].get<std::string>(), id, a.value("special", false),
                  a.value("normalized", !a.value("special", false)), ""};
    if (at.content.empty())
      throw FormatError(label + ": added token " + std::to_string(id) + " has empty content");
    im.added.push_back(at);
  }
  im.normalizer = tok::make_normalizer(j.value("normalizer", json()), label);
  // HF tokenizers stores a normalized added token under its normalized content (and decodes it as that)
  for (auto& a : im.added) {
    a.match = a.normalized ? im.normalizer(a.content) : a.content;
    im.bpe->add_token(a.match, a.id);
  }
  std::stable_sort(im.added.begin(), im.added.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.match.size() > b.match.size(); });
  im.is_special.assign(static_cast<size_t>(im.bpe->size()), false);
  for (const auto& a : im.added)
    if (a.special) im.is_special[static_cast<size_t>(a.id)] = true;
  im.pre = tok::make_pre_tokenizer(j.value("pre_tokenizer", json()), label);
  im.decoder = tok::make_decoder(j.value("decoder", json()), label);
  parse_template(j.value("post_processor", json()), label, im);
  return t;
}

Tokenizer Tokenizer::from_pretrained(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "tokenizer.json").string();
  if (!std::filesystem::exists(path)) throw IoError(path + ": not found (nibble reads HF tokenizer.json)");
  Tokenizer t = from_json(read_text_file(path), path);
  const std::string cfg_path = (std::filesystem::path(dir) / "tokenizer_config.json").string();
  if (std::filesystem::exists(cfg_path)) {
    const json cfg = read_json_file(cfg_path);
    t.impl_->bos = special_from_config(cfg, "bos_token", t);
    t.impl_->eos = special_from_config(cfg, "eos_token", t);
  }
  return t;
}

namespace {
// Splits `text` on the added tokens with the given `normalized` flag (leftmost, longest first): calls
// piece(text) for the stretches between them and token(id) for each match.
template <typename Piece, typename Token>
void split_added(const std::vector<AddedToken>& added, bool normalized, const std::string& text, Piece piece,
                 Token token) {
  size_t pos = 0, seg = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (const auto& a : added)
      if (a.normalized == normalized && text.compare(pos, a.match.size(), a.match) == 0) {
        hit = &a;
        break;
      }
    if (!hit) {
      ++pos;
      continue;
    }
    if (pos > seg) piece(text.substr(seg, pos - seg));
    token(hit->id);
    pos += hit->match.size();
    seg = pos;
  }
  if (text.size() > seg) piece(text.substr(seg));
}
}  // namespace

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = im.prefix_ids;
  auto emit = [&](int32_t id) { ids.push_back(id); };
  // HF order: split the raw text on non-normalized added tokens; normalize each stretch; split that on the
  // normalized added tokens; pre-tokenize and BPE what remains.
  split_added(
      im.added, false, text,
      [&](const std::string& raw) {
        split_added(
            im.added, true, im.normalizer(raw),
            [&](const std::string& norm) {
              for (const auto& w : im.pre({norm})) im.bpe->encode_word(w, ids);
            },
            emit);
      },
      emit);
  if (add_special_tokens) ids.insert(ids.end(), im.suffix_ids.begin(), im.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> toks;
  for (int32_t id : ids) {
    if (id < 0 || id >= im.bpe->size())
      throw ValueError("decode: token id " + std::to_string(id) + " out of range");
    if (skip_special_tokens && im.is_special[static_cast<size_t>(id)]) continue;
    toks.push_back(im.bpe->id_to_token(id));
  }
  std::string out;
  for (const auto& s : im.decoder(std::move(toks))) out += s;
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return impl_->bpe->size();
}
std::optional<int32_t> Tokenizer::token_to_id(const std::string& t) const {
  return impl_->bpe->token_to_id(t);
}
std::string Tokenizer::id_to_token(int32_t id) const {
  return impl_->bpe->id_to_token(id);
}
std::optional<int32_t> Tokenizer::bos_token_id() const {
  return impl_->bos;
}
std::optional<int32_t> Tokenizer::eos_token_id() const {
  return impl_->eos;
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, std::vector<int32_t> prompt_ids, bool skip)
    : tok_(tok), ids_(std::move(prompt_ids)), skip_(skip) {
  emitted_ = tok_.decode(ids_, skip_);
}

std::string StreamDecoder::put(int32_t id) {
  ids_.push_back(id);
  const std::string full = tok_.decode(ids_, skip_);
  // hold back while the text ends in a replacement character (an incomplete UTF-8 sequence so far)
  if (full.size() >= 3 && full.compare(full.size() - 3, 3, "\xef\xbf\xbd") == 0) return "";
  if (full.size() < emitted_.size() || full.compare(0, emitted_.size(), emitted_) != 0) {
    // a decoder changed earlier text (e.g. a stripped space): emit only what extends it
    emitted_ = full;
    return "";
  }
  std::string out = full.substr(emitted_.size());
  emitted_ = full;
  return out;
}

std::string StreamDecoder::flush() {
  const std::string full = tok_.decode(ids_, skip_);
  std::string out = full.size() > emitted_.size() ? full.substr(emitted_.size()) : "";
  emitted_ = full;
  return out;
}

}  // namespace nibble
