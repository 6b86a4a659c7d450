#include "nibble/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "io/hf_config.h"
#include "io/json_field.h"
#include "nibble/error.h"
#include "nibble/files.h"
#include "nibble/hub.h"
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

using jsonf::JsonPath;

// A pipeline stage of tokenizer.json ("normalizer", ...): null when absent.
const json& member_or_null(const json& j, const char* key) {
  static const json null;
  const auto it = j.find(key);
  return it == j.end() ? null : *it;
}

// TemplateProcessing "single": special-token ids before and after the sequence $A, each a token id of the
// vocabulary.
void parse_template(const json& pp, const JsonPath& at, Tokenizer::Impl& im) {
  if (pp.is_null()) return;
  const std::string type = jsonf::get_string_or(pp, "type", at, "");
  if (type == "Sequence") {
    if (const json* list = jsonf::find_array(pp, "processors", at))
      for (size_t i = 0; i < list->size(); ++i) parse_template((*list)[i], (at / "processors")[i], im);
    return;
  }
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type != "TemplateProcessing")
    (at / "type").fail("is '" + type + "', a post_processor nibble does not support");
  const json& single = jsonf::get_array(pp, "single", at);
  static const json no_specials = json::object();
  const json* found = jsonf::find_object(pp, "special_tokens", at);
  const json& specials = found ? *found : no_specials;
  const jsonf::IntRange id_range{0, im.bpe->size() - 1};
  bool seen_seq = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const JsonPath pat = (at / "single")[i];
    const json& piece = jsonf::as_object(single[i], pat);
    if (jsonf::find(piece, "Sequence", pat)) {
      seen_seq = true;
      continue;
    }
    if (!jsonf::find(piece, "SpecialToken", pat)) pat.fail("is neither a Sequence nor a SpecialToken");
    const std::string& name =
        jsonf::get_string(jsonf::get_object(piece, "SpecialToken", pat), "id", pat / "SpecialToken");
    const JsonPath sat = at / "special_tokens" / name;
    const json* special = jsonf::find(specials, name, at / "special_tokens");
    if (!special) sat.fail("is missing (the special token of " + pat.path() + ")");
    const json& ids = jsonf::get_array(*special, "ids", sat);
    for (size_t k = 0; k < ids.size(); ++k)
      (seen_seq ? im.suffix_ids : im.prefix_ids)
          .push_back(static_cast<int32_t>(jsonf::as_int(ids[k], (sat / "ids")[k], id_range)));
  }
}

// bos_token / eos_token of tokenizer_config.json: a token string, {"content": token, ...} or null.
std::optional<int32_t> special_from_config(const json& cfg, const char* key, const JsonPath& root,
                                           const Tokenizer& t) {
  const json* v = jsonf::find(cfg, key, root);
  if (!v) return std::nullopt;
  if (v->is_object()) return t.token_to_id(jsonf::get_string(*v, "content", root / key));
  if (!v->is_string())
    (root / key).fail("must be a token string or an object with \"content\", found " + jsonf::describe(*v));
  return t.token_to_id(v->get_ref<const std::string&>());
}

// tokenizer.json is the one large JSON file a checkpoint carries (a few MB; the largest published ones ~30
// MB).
constexpr jsonf::ParseLimits kTokenizerJsonLimits{.max_bytes = size_t{1} << 30};

}  // namespace

// transformers 5 builds some tokenizer classes' pipelines itself instead of taking tokenizer.json's: the
// class named by tokenizer_config.json's tokenizer_class decides how text is split (and AutoTokenizer is what
// apply_chat_template and the model cards use). LlamaTokenizer (Llama 2, Mistral, TinyLlama, ...): no
// normalizer, Metaspace with prepend_scheme "first" (or "always" with legacy: true, "never" without
// add_prefix_space), split off, and the matching decoder - so text after an added token (a chat template's
// "<s>[INST]") gets no "\u2581" prefix, where tokenizer.json's Prepend normalizer would add one.
static std::string as_transformers_builds_it(const std::string& text, const std::string& path,
                                             const json& cfg, const JsonPath& at) {
  const std::string cls = jsonf::get_string_or(cfg, "tokenizer_class", at, "");
  if (cls != "LlamaTokenizer" && cls != "LlamaTokenizerFast") return text;
  json j = jsonf::parse_json(text, path, kTokenizerJsonLimits);
  const JsonPath root(path);
  jsonf::as_object(j, root);
  if (jsonf::get_string(jsonf::get_object(j, "model", root), "type", root / "model") != "BPE") return text;
  const bool prefix = jsonf::get_bool_or(cfg, "add_prefix_space", at, true);
  const bool legacy = jsonf::get_bool_or(cfg, "legacy", at, false);
  // BPE(vocab, merges, fuse_unk=True, byte_fallback=True) - no unk_token
  json& model = j["model"];
  model["fuse_unk"] = true;
  model["byte_fallback"] = true;
  model.erase("unk_token");
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"},
                        {"replacement", "\u2581"},
                        {"prepend_scheme", !prefix  ? "never"
                                           : legacy ? "always"
                                                    : "first"},
                        {"split", false}};
  json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                               {{"type", "ByteFallback"}},
                               {{"type", "Fuse"}}});
  if (prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  j["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  return j.dump();
}

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& label) {
  const json j = jsonf::parse_json(text, label, kTokenizerJsonLimits);
  const JsonPath root(label);
  jsonf::as_object(j, root);
  Tokenizer t;
  Impl& im = *t.impl_;
  im.bpe = std::make_unique<tok::Bpe>(jsonf::get_object(j, "model", root), root / "model");
  static const json none = json::array();
  const json* found = jsonf::find_array(j, "added_tokens", root);
  const json& added = found ? *found : none;
  // Added tokens may extend the vocabulary past the model's ids, but only so far: an id sizes the id -> token
  // table, so a bound keeps a hostile id (2^30) from allocating gigabytes.
  const int64_t n_ids = int64_t{im.bpe->size()} + static_cast<int64_t>(added.size());
  const int64_t max_id = 2 * n_ids + 1024;
  for (size_t i = 0; i < added.size(); ++i) {
    const JsonPath at = (root / "added_tokens")[i];
    const json& a = jsonf::as_object(added[i], at);
    const int64_t id = jsonf::get_int(a, "id", at, {0, std::numeric_limits<int32_t>::max()});
    if (id > max_id)
      (at / "id").fail("is " + std::to_string(id) + ", beyond 2 x (vocab + added_tokens entries) + 1024 = " +
                       std::to_string(max_id) + "; nibble rejects such sparse ids");
    const bool special = jsonf::get_bool_or(a, "special", at, false);
    AddedToken tok{jsonf::get_string(a, "content", at), static_cast<int32_t>(id), special,
                   jsonf::get_bool_or(a, "normalized", at, !special), ""};
    if (tok.content.empty()) (at / "content").fail("is empty");
    im.added.push_back(tok);
  }
  im.normalizer = tok::make_normalizer(member_or_null(j, "normalizer"), root / "normalizer");
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
  im.pre = tok::make_pre_tokenizer(member_or_null(j, "pre_tokenizer"), root / "pre_tokenizer");
  im.decoder = tok::make_decoder(member_or_null(j, "decoder"), root / "decoder");
  parse_template(member_or_null(j, "post_processor"), root / "post_processor", im);
  return t;
}

Tokenizer Tokenizer::from_pretrained(const std::string& name_or_path) {
  const std::string dir = resolve_model_path(name_or_path);  // a directory, or a model id in the HF cache
  const std::string path = (std::filesystem::path(dir) / "tokenizer.json").string();
  if (!std::filesystem::exists(path)) throw IoError(path + ": not found (nibble reads HF tokenizer.json)");
  const std::string text = read_json_text(path, kTokenizerJsonLimits.max_bytes);
  // the file as written is checked whole (a malformed stage is an error even where transformers replaces it)
  Tokenizer t = from_json(text, path);
  const std::string cfg_path = (std::filesystem::path(dir) / "tokenizer_config.json").string();
  json cfg;
  if (std::filesystem::exists(cfg_path)) {
    cfg = read_json_file(cfg_path);
    jsonf::as_object(cfg, JsonPath(cfg_path));
    std::string built = as_transformers_builds_it(text, path, cfg, JsonPath(cfg_path));
    if (built != text) t = from_json(built, path);
  }
  if (!cfg.is_null()) {
    const JsonPath root(cfg_path);
    t.impl_->bos = special_from_config(cfg, "bos_token", root, t);
    t.impl_->eos = special_from_config(cfg, "eos_token", root, t);
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
  bool at_start = true;  // nothing of the text consumed yet
  auto emit = [&](int32_t id) {
    ids.push_back(id);
    at_start = false;
  };
  // HF order: split the raw text on non-normalized added tokens; normalize each stretch; split that on the
  // normalized added tokens; pre-tokenize and BPE what remains.
  split_added(
      im.added, false, text,
      [&](const std::string& raw) {
        split_added(
            im.added, true, im.normalizer(raw),
            [&](const std::string& norm) {
              for (const auto& w : im.pre({norm}, at_start)) im.bpe->encode_word(w, ids);
              at_start = false;
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
