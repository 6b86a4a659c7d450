#include "tokenizer/bpe.h"

#include <limits>
#include <queue>

#include "nibble/error.h"

namespace nibble::tok {

int utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 6) return 2;
  if ((c >> 4) == 14) return 3;
  if ((c >> 3) == 30) return 4;
  return 1;
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t len = static_cast<size_t>(utf8_len(static_cast<unsigned char>(s[i])));
    if (i + len > s.size()) len = 1;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) {
        len = 1;
        break;
      }
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

Bpe::Bpe(const nlohmann::json& model, const jsonf::JsonPath& at) {
  jsonf::as_object(model, at);
  const std::string type = jsonf::get_string_or(model, "type", at, "BPE");
  if (type != "BPE") (at / "type").fail("is '" + type + "'; nibble supports only BPE");
  const nlohmann::json& vocab = jsonf::get_object(model, "vocab", at);
  // ids must run 0..n-1 over the n entries (checked below), so any id >= n is an error; bounding it first
  // keeps a hostile id (2^30) from sizing the id -> token table.
  const auto n = static_cast<int64_t>(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const jsonf::JsonPath vat = at / "vocab" / it.key();
    const int64_t id = jsonf::as_int(it.value(), vat, {0, std::numeric_limits<int32_t>::max()});
    if (id >= n)
      vat.fail("is " + std::to_string(id) + ", not below the number of vocab entries (" + std::to_string(n) +
               "); ids must run from 0 without gaps");
    add_token(it.key(), static_cast<int32_t>(id));
  }
  for (size_t i = 0; i < id_to_token_.size(); ++i)
    if (id_to_token_[i].empty() && vocab_.count("") == 0)
      (at / "vocab").fail("ids are not contiguous (no id " + std::to_string(i) + ")");
  if (const nlohmann::json* u = jsonf::find(model, "unk_token", at)) {
    if (auto id = token_to_id(jsonf::as_string(*u, at / "unk_token"))) unk_ = *id;
  }
  byte_fallback_ = jsonf::get_bool_or(model, "byte_fallback", at, false);
  fuse_unk_ = jsonf::get_bool_or(model, "fuse_unk", at, false);
  if (jsonf::find(model, "continuing_subword_prefix", at))
    (at / "continuing_subword_prefix").fail("is set; nibble does not support it");
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    auto id = token_to_id(buf);
    byte_ids_[b] = id ? *id : -1;
  }
  const nlohmann::json& merges = jsonf::get_array(model, "merges", at);
  for (size_t i = 0; i < merges.size(); ++i) {
    const jsonf::JsonPath mat = (at / "merges")[i];
    const nlohmann::json& m = merges[i];
    std::string a, b;
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      const auto sp = s.find(' ', 1);
      if (sp == std::string::npos) mat.fail("is '" + s + "', not 'left right'");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = jsonf::as_string(m[0], mat[0]);
      b = jsonf::as_string(m[1], mat[1]);
    } else {
      mat.fail("must be a string 'left right' or a pair of strings, found " + jsonf::describe(m));
    }
    auto ia = token_to_id(a), ib = token_to_id(b), im = token_to_id(a + b);
    if (!ia || !ib || !im) mat.fail("merges '" + a + " " + b + "', which uses tokens not in the vocab");
    const uint64_t key = (static_cast<uint64_t>(*ia) << 32) | static_cast<uint32_t>(*ib);
    merges_.emplace(key, Merge{static_cast<int32_t>(i), *im});
  }
}

void Bpe::add_token(const std::string& t, int32_t id) {
  vocab_[t] = id;
  if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(static_cast<size_t>(id) + 1);
  id_to_token_[static_cast<size_t>(id)] = t;
}

std::optional<int32_t> Bpe::token_to_id(const std::string& t) const {
  auto it = vocab_.find(t);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& Bpe::id_to_token(int32_t id) const {
  static const std::string empty;
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return empty;
  return id_to_token_[static_cast<size_t>(id)];
}

void Bpe::encode_word(const std::string& word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (auto whole = token_to_id(word); whole && merges_.empty()) {
    out.push_back(*whole);
    return;
  }
  // initial symbols: characters, or their bytes (byte fallback), or unk
  std::vector<int32_t> sym;
  bool last_unk = false;
  for (const std::string& ch : utf8_chars(word)) {
    if (auto id = token_to_id(ch)) {
      sym.push_back(*id);
      last_unk = false;
      continue;
    }
    bool all_bytes = byte_fallback_;
    for (unsigned char c : ch) all_bytes = all_bytes && byte_ids_[c] >= 0;
    if (all_bytes) {
      for (unsigned char c : ch) sym.push_back(byte_ids_[c]);
      last_unk = false;
    } else if (unk_) {
      if (!(fuse_unk_ && last_unk)) sym.push_back(*unk_);
      last_unk = true;
    }
    // neither: HF tokenizers' BPE drops the character (transformers 5's LlamaTokenizer builds its BPE without an
    // unk_token, so a character with no byte tokens vanishes there); ids must match, so it vanishes here too
  }
  // merge the lowest-ranked adjacent pair until none applies (a linked list plus a heap, as HF tokenizers)
  const size_t n = sym.size();
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int>(i + 1) : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int i) {
    if (i < 0 || next[static_cast<size_t>(i)] < 0) return;
    const int j = next[static_cast<size_t>(i)];
    const uint64_t key = (static_cast<uint64_t>(sym[static_cast<size_t>(i)]) << 32) |
                         static_cast<uint32_t>(sym[static_cast<size_t>(j)]);
    auto it = merges_.find(key);
    if (it != merges_.end())
      heap.push({it->second.rank, i, sym[static_cast<size_t>(i)], sym[static_cast<size_t>(j)]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int>(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const auto i = static_cast<size_t>(c.pos);
    if (!alive[i] || sym[i] != c.left || next[i] < 0) continue;
    const auto j = static_cast<size_t>(next[i]);
    if (sym[j] != c.right) continue;
    const uint64_t key = (static_cast<uint64_t>(c.left) << 32) | static_cast<uint32_t>(c.right);
    sym[i] = merges_.at(key).id;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[static_cast<size_t>(next[j])] = static_cast<int>(i);
    push(prev[i]);
    push(static_cast<int>(i));
  }
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) out.push_back(sym[i]);
}

}  // namespace nibble::tok
