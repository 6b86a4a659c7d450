#include "tokenizer/pipeline.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <unordered_map>

#include "nibble/error.h"
#include "tokenizer/bpe.h"

namespace nibble::tok {
using nlohmann::json;

namespace {

using jsonf::JsonPath;

// The "pattern" of Replace/Split: {"String": s} or {"Regex": r}. Returns (is_regex, text).
std::pair<bool, std::string> pattern_of(const json& j, const JsonPath& at) {
  const json& p = jsonf::get_object(j, "pattern", at);
  if (jsonf::find(p, "String", at / "pattern"))
    return {false, jsonf::get_string(p, "String", at / "pattern")};
  if (jsonf::find(p, "Regex", at / "pattern")) return {true, jsonf::get_string(p, "Regex", at / "pattern")};
  (at / "pattern").fail("must be {\"String\": ...} or {\"Regex\": ...}");
}

// An optional array member ("normalizers" of a Sequence, ...): absent or null is empty.
const json& array_or_empty(const json& j, const char* key, const JsonPath& at) {
  static const json empty = json::array();
  const json* a = jsonf::find_array(j, key, at);
  return a ? *a : empty;
}

// ICU's match-time limit, in its "steps" (about a millisecond each): real tokenizer patterns take far less
// per match; a pathological one (catastrophic backtracking) fails instead of hanging.
constexpr int32_t kRegexTimeLimit = 2000;

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

// A compiled ICU regex; ICU supports \p{L}, \p{N}, (?i:...) and lookahead, which tokenizer.json patterns use.
std::shared_ptr<icu::RegexPattern> compile(const std::string& re, const JsonPath& at) {
  UErrorCode st = U_ZERO_ERROR;
  UParseError pe;
  std::shared_ptr<icu::RegexPattern> p(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(re), pe, st));
  if (U_FAILURE(st) || !p) at.fail("is an invalid regex '" + re + "': " + u_errorName(st));
  return p;
}

// Regex matches of `s` as (begin, end) byte offsets. `where` names the pattern in errors.
std::vector<std::pair<size_t, size_t>> matches(const icu::RegexPattern& p, const std::string& s,
                                               const std::string& where) {
  const icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
  UErrorCode st = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> m(p.matcher(u, st));
  if (U_SUCCESS(st) && m) m->setTimeLimit(kRegexTimeLimit, st);
  if (U_FAILURE(st) || !m) throw FormatError(where + ": cannot run regex: " + u_errorName(st));
  std::vector<std::pair<size_t, size_t>> out;
  // map UTF-16 indices back to UTF-8 byte offsets
  std::vector<size_t> byte_at(static_cast<size_t>(u.length()) + 1, s.size());
  {
    size_t b = 0;
    int32_t i = 0;
    while (i < u.length()) {
      byte_at[static_cast<size_t>(i)] = b;
      const UChar32 c = u.char32At(i);
      const int32_t n16 = U16_LENGTH(c);
      if (n16 == 2) byte_at[static_cast<size_t>(i) + 1] = b;
      b += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
      i += n16;
    }
  }
  while (m->find(st) && U_SUCCESS(st)) {
    const auto a = static_cast<size_t>(m->start(st)), e = static_cast<size_t>(m->end(st));
    if (e > a) out.emplace_back(byte_at[a], byte_at[e]);
  }
  if (U_FAILURE(st))
    throw FormatError(where + ": regex matching failed (" + u_errorName(st) +
                      "; a pattern that backtracks without bound?)");
  return out;
}

// Split with behavior Isolated/Removed/MergedWithPrevious/MergedWithNext/Contiguous (invert=false).
std::vector<std::string> split_words(const std::string& s, const std::vector<std::pair<size_t, size_t>>& ms,
                                     const std::string& behavior, bool invert) {
  // pieces alternate between gaps (non-matches) and matches
  struct Piece {
    std::string text;
    bool match;
  };
  std::vector<Piece> pieces;
  size_t pos = 0;
  for (auto [a, e] : ms) {
    if (a > pos) pieces.push_back({s.substr(pos, a - pos), false});
    pieces.push_back({s.substr(a, e - a), true});
    pos = e;
  }
  if (pos < s.size()) pieces.push_back({s.substr(pos), false});
  if (invert)
    for (auto& p : pieces) p.match = !p.match;
  std::vector<std::string> out;
  if (behavior == "Isolated") {
    for (auto& p : pieces) out.push_back(p.text);
  } else if (behavior == "Removed") {
    for (auto& p : pieces)
      if (!p.match) out.push_back(p.text);
  } else if (behavior == "MergedWithPrevious") {
    for (auto& p : pieces) {
      if (p.match && !out.empty())
        out.back() += p.text;
      else
        out.push_back(p.text);
    }
  } else if (behavior == "MergedWithNext") {
    std::string carry;
    for (auto& p : pieces) {
      if (p.match) {
        carry += p.text;
      } else {
        out.push_back(carry + p.text);
        carry.clear();
      }
    }
    if (!carry.empty()) out.push_back(carry);
  } else {  // Contiguous
    for (auto& p : pieces) {
      if (!out.empty() && p.match && pieces.size() > 1)
        out.back() += p.text;
      else
        out.push_back(p.text);
    }
  }
  return out;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Metaspace's "replacement" (one character, default U+2581) and "prepend_scheme" (older files: the boolean
// "add_prefix_space").
std::string metaspace_replacement(const json& j, const JsonPath& at) {
  const std::string rep = jsonf::get_string_or(j, "replacement", at, "\xe2\x96\x81");
  if (rep.empty()) (at / "replacement").fail("must not be empty");
  return rep;
}
std::string metaspace_scheme(const json& j, const JsonPath& at) {
  const std::string s = jsonf::get_string_or(
      j, "prepend_scheme", at, jsonf::get_bool_or(j, "add_prefix_space", at, true) ? "always" : "never");
  if (s != "always" && s != "first" && s != "never")
    (at / "prepend_scheme").fail("must be \"always\", \"first\" or \"never\", found '" + s + "'");
  return s;
}

std::string to_byte_level(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += byte_to_unicode()[c];
  return out;
}

}  // namespace

const std::vector<std::string>& byte_to_unicode() {
  static const std::vector<std::string> m = [] {
    std::vector<std::string> t(256);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      const int cp = printable ? b : 256 + extra++;
      icu::UnicodeString u(static_cast<UChar32>(cp));
      std::string s;
      u.toUTF8String(s);
      t[static_cast<size_t>(b)] = s;
    }
    return t;
  }();
  return m;
}

Normalizer make_normalizer(const json& j, const JsonPath& at) {
  if (j.is_null()) return [](const std::string& s) { return s; };
  const std::string type = jsonf::get_string(j, "type", at);
  if (type == "Sequence") {
    std::vector<Normalizer> parts;
    const json& list = array_or_empty(j, "normalizers", at);
    for (size_t i = 0; i < list.size(); ++i)
      parts.push_back(make_normalizer(list[i], (at / "normalizers")[i]));
    return [parts](const std::string& s) {
      std::string r = s;
      for (const auto& p : parts) r = p(r);
      return r;
    };
  }
  if (type == "Prepend") {
    const std::string pre = jsonf::get_string(j, "prepend", at);
    return [pre](const std::string& s) { return s.empty() ? s : pre + s; };
  }
  if (type == "Replace") {
    const auto [is_re, pat_ref] = pattern_of(j, at);
    const std::string pat = pat_ref;  // a named copy: clang 14 cannot capture structured bindings
    const std::string content = jsonf::get_string(j, "content", at);
    if (!is_re) return [pat, content](const std::string& s) { return replace_all(s, pat, content); };
    auto re = compile(pat, at / "pattern");
    const std::string where = (at / "pattern").str();
    return [re, content, where](const std::string& s) {
      std::string out;
      size_t pos = 0;
      for (auto [a, e] : matches(*re, s, where)) {
        out += s.substr(pos, a - pos) + content;
        pos = e;
      }
      return out + s.substr(pos);
    };
  }
  if (type == "NFC" || type == "NFKC" || type == "NFD" || type == "NFKD") {
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(st)
                                : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(st)
                                : type == "NFD"  ? icu::Normalizer2::getNFDInstance(st)
                                                 : icu::Normalizer2::getNFKDInstance(st);
    if (U_FAILURE(st)) (at / "type").fail("names ICU normalizer " + type + ", which cannot be loaded");
    return [n](const std::string& s) {
      UErrorCode e = U_ZERO_ERROR;
      std::string out;
      n->normalize(icu::UnicodeString::fromUTF8(s), e).toUTF8String(out);
      return out;
    };
  }
  if (type == "Lowercase") {
    return [](const std::string& s) {
      std::string out;
      icu::UnicodeString::fromUTF8(s).toLower().toUTF8String(out);
      return out;
    };
  }
  (at / "type").fail("is '" + type + "', a normalizer type nibble does not support");
}

PreTokenizer make_pre_tokenizer(const json& j, const JsonPath& at) {
  if (j.is_null()) return [](const std::vector<std::string>& w, bool) { return w; };
  const std::string type = jsonf::get_string(j, "type", at);
  if (type == "Sequence") {
    std::vector<PreTokenizer> parts;
    const json& list = array_or_empty(j, "pretokenizers", at);
    for (size_t i = 0; i < list.size(); ++i)
      parts.push_back(make_pre_tokenizer(list[i], (at / "pretokenizers")[i]));
    return [parts](const std::vector<std::string>& w, bool at_start) {
      std::vector<std::string> r = w;
      for (const auto& p : parts) r = p(r, at_start);
      return r;
    };
  }
  if (type == "Split") {
    const auto [is_re, pat_ref] = pattern_of(j, at);
    const std::string pat = pat_ref;  // a named copy: clang 14 cannot capture structured bindings
    auto re = compile(is_re ? pat : std::string("\\Q") + pat + "\\E", at / "pattern");
    const std::string where = (at / "pattern").str();
    const std::string behavior = jsonf::get_string_or(j, "behavior", at, "Isolated");
    if (behavior != "Isolated" && behavior != "Removed" && behavior != "MergedWithPrevious" &&
        behavior != "MergedWithNext" && behavior != "Contiguous")
      (at / "behavior").fail("'" + behavior + "' is not a split behavior");
    const bool invert = jsonf::get_bool_or(j, "invert", at, false);
    return [re, behavior, invert, where](const std::vector<std::string>& words, bool) {
      std::vector<std::string> out;
      for (const auto& w : words)
        for (auto& p : split_words(w, matches(*re, w, where), behavior, invert))
          if (!p.empty()) out.push_back(std::move(p));
      return out;
    };
  }
  if (type == "ByteLevel") {
    const bool prefix = jsonf::get_bool_or(j, "add_prefix_space", at, false);
    const bool use_regex = jsonf::get_bool_or(j, "use_regex", at, true);
    auto re = compile(kGpt2Pattern, at);
    const std::string where = at.str();
    return [re, prefix, use_regex, where](const std::vector<std::string>& words, bool) {
      std::vector<std::string> out;
      for (size_t i = 0; i < words.size(); ++i) {
        std::string w = words[i];
        if (prefix && i == 0 && !w.empty() && w[0] != ' ') w = " " + w;
        if (!use_regex) {
          out.push_back(to_byte_level(w));
          continue;
        }
        for (auto [a, e] : matches(*re, w, where)) out.push_back(to_byte_level(w.substr(a, e - a)));
      }
      return out;
    };
  }
  if (type == "Metaspace") {
    const std::string rep = metaspace_replacement(j, at);
    const std::string scheme = metaspace_scheme(j, at);
    const bool split = jsonf::get_bool_or(j, "split", at, true);
    return [rep, scheme, split](const std::vector<std::string>& words, bool at_start) {
      std::vector<std::string> out;
      for (size_t i = 0; i < words.size(); ++i) {
        std::string w = replace_all(words[i], " ", rep);
        // "first": only the word at offset 0 of the text (HF: offsets_original().0 == 0), not one after an
        // added token
        if ((scheme == "always" || (scheme == "first" && at_start && i == 0)) && w.rfind(rep, 0) != 0)
          w = rep + w;
        if (!split) {
          out.push_back(w);
          continue;
        }
        size_t pos = 0;
        while (pos < w.size()) {  // split before each replacement char (MergedWithNext)
          size_t nx = w.find(rep, pos + 1);
          if (nx == std::string::npos) nx = w.size();
          out.push_back(w.substr(pos, nx - pos));
          pos = nx;
        }
      }
      return out;
    };
  }
  if (type == "Digits") {
    const bool individual = jsonf::get_bool_or(j, "individual_digits", at, false);
    auto re = compile(individual ? "\\p{Nd}" : "\\p{Nd}+", at);
    const std::string where = at.str();
    return [re, where](const std::vector<std::string>& words, bool) {
      std::vector<std::string> out;
      for (const auto& w : words)
        for (auto& p : split_words(w, matches(*re, w, where), "Isolated", false))
          if (!p.empty()) out.push_back(std::move(p));
      return out;
    };
  }
  (at / "type").fail("is '" + type + "', a pre_tokenizer type nibble does not support");
}

Decoder make_decoder(const json& j, const JsonPath& at) {
  if (j.is_null()) return [](std::vector<std::string> t) { return t; };
  const std::string type = jsonf::get_string(j, "type", at);
  if (type == "Sequence") {
    std::vector<Decoder> parts;
    const json& list = array_or_empty(j, "decoders", at);
    for (size_t i = 0; i < list.size(); ++i) parts.push_back(make_decoder(list[i], (at / "decoders")[i]));
    return [parts](std::vector<std::string> t) {
      for (const auto& p : parts) t = p(std::move(t));
      return t;
    };
  }
  if (type == "Replace") {
    const auto [is_re, pat_ref] = pattern_of(j, at);
    const std::string pat = pat_ref;  // a named copy: clang 14 cannot capture structured bindings
    if (is_re) (at / "pattern").fail("is a regex; a Replace decoder with a regex pattern is not supported");
    const std::string content = jsonf::get_string(j, "content", at);
    return [pat, content](std::vector<std::string> t) {
      for (auto& s : t) s = replace_all(s, pat, content);
      return t;
    };
  }
  if (type == "ByteFallback") {
    return [](std::vector<std::string> t) {
      std::vector<std::string> out;
      std::string bytes;
      auto flush = [&] {
        if (bytes.empty()) return;
        // valid UTF-8 stays; each invalid piece becomes U+FFFD (HF: one replacement per byte token)
        const auto chars = utf8_chars(bytes);
        if (std::all_of(chars.begin(), chars.end(), whole_utf8_char)) {
          out.push_back(bytes);
        } else {
          for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xef\xbf\xbd");
        }
        bytes.clear();
      };
      for (auto& s : t) {
        unsigned v;
        if (s.size() == 6 && s.rfind("<0x", 0) == 0 && s[5] == '>' &&
            std::sscanf(s.c_str() + 3, "%2X", &v) == 1) {
          bytes.push_back(static_cast<char>(v));
        } else {
          flush();
          out.push_back(std::move(s));
        }
      }
      flush();
      return out;
    };
  }
  if (type == "Fuse") {
    return [](std::vector<std::string> t) {
      std::string all;
      for (auto& s : t) all += s;
      return std::vector<std::string>{all};
    };
  }
  if (type == "Strip") {
    const std::string content = jsonf::get_string(j, "content", at);
    const auto start = static_cast<int>(jsonf::get_int_or(j, "start", at, 0, {0, 1024}));
    const auto stop = static_cast<int>(jsonf::get_int_or(j, "stop", at, 0, {0, 1024}));
    return [content, start, stop](std::vector<std::string> t) {
      for (auto& s : t) {
        for (int i = 0; i < start && s.rfind(content, 0) == 0; ++i) s.erase(0, content.size());
        for (int i = 0; i < stop && s.size() >= content.size() && s.ends_with(content); ++i)
          s.erase(s.size() - content.size());
      }
      return t;
    };
  }
  if (type == "ByteLevel") {
    static const std::unordered_map<std::string, char> inv = [] {
      std::unordered_map<std::string, char> m;
      for (int b = 0; b < 256; ++b) m[byte_to_unicode()[static_cast<size_t>(b)]] = static_cast<char>(b);
      return m;
    }();
    return [](std::vector<std::string> t) {
      std::string bytes;
      for (const auto& s : t)
        for (const auto& c : utf8_chars(s)) {
          auto it = inv.find(c);
          if (it != inv.end())
            bytes.push_back(it->second);
          else
            bytes += c;
        }
      // invalid UTF-8 from a cut sequence becomes U+FFFD per broken character (from_utf8_lossy)
      std::string out;
      for (const auto& c : utf8_chars(bytes)) out += whole_utf8_char(c) ? c : "\xef\xbf\xbd";
      return std::vector<std::string>{out};
    };
  }
  if (type == "Metaspace") {
    const std::string rep = metaspace_replacement(j, at);
    const std::string scheme = metaspace_scheme(j, at);
    return [rep, scheme](std::vector<std::string> t) {
      for (size_t i = 0; i < t.size(); ++i) {
        t[i] = replace_all(t[i], rep, " ");
        if (i == 0 && scheme != "never" && !t[i].empty() && t[i][0] == ' ') t[i].erase(0, 1);
      }
      return t;
    };
  }
  (at / "type").fail("is '" + type + "', a decoder type nibble does not support");
}

}  // namespace nibble::tok
