#include "chat/jinja_text.h"

#include <unicode/uchar.h>

#include <cstdio>

namespace nibble::chat::jinja {

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(len) > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp < 0xE000))
      return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {
// one code point at s[i] (valid UTF-8 or a lone byte taken as itself); advances i
uint32_t next_cp(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
  if (i + static_cast<size_t>(len) > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
  for (int k = 1; k < len; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3Fu);
  i += static_cast<size_t>(len);
  return cp;
}
}  // namespace

std::vector<uint32_t> decode_utf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) out.push_back(next_cp(s, i));
  return out;
}

std::string encode_utf8(const std::vector<uint32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (uint32_t c : cps) append_utf8(out, c);
  return out;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (char c : s)
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  return n;
}

bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

size_t ws_len(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  size_t i = pos;
  const uint32_t cp = next_cp(s, i);
  return is_py_space(cp) ? i - pos : 0;
}

bool all_ws(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  while (i < s.size())
    if (!is_py_space(next_cp(s, i))) return false;
  return true;
}

std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right) {
  const std::vector<uint32_t> cps = decode_utf8(s);
  std::vector<uint32_t> set;
  if (chars) set = decode_utf8(*chars);
  auto strip_it = [&](uint32_t c) {
    if (!chars) return is_py_space(c);
    for (uint32_t x : set)
      if (x == c) return true;
    return false;
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return encode_utf8(std::vector<uint32_t>(cps.begin() + static_cast<std::ptrdiff_t>(b),
                                           cps.begin() + static_cast<std::ptrdiff_t>(e)));
}

std::string rstrip_ws(std::string_view s) {
  return py_strip(s, nullptr, false, true);
}

namespace {
uint32_t upper1(uint32_t c) {
  return c < 0x80 ? (c >= 'a' && c <= 'z' ? c - 32 : c)
                  : static_cast<uint32_t>(u_toupper(static_cast<UChar32>(c)));
}
uint32_t lower1(uint32_t c) {
  return c < 0x80 ? (c >= 'A' && c <= 'Z' ? c + 32 : c)
                  : static_cast<uint32_t>(u_tolower(static_cast<UChar32>(c)));
}
uint32_t title1(uint32_t c) {
  return c < 0x80 ? upper1(c) : static_cast<uint32_t>(u_totitle(static_cast<UChar32>(c)));
}
bool cased(uint32_t c) {
  const auto u = static_cast<UChar32>(c);
  return u_isUUppercase(u) || u_isULowercase(u) || u_istitle(u);
}
}  // namespace

std::string py_upper(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) append_utf8(out, upper1(next_cp(s, i)));
  return out;
}
std::string py_lower(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) append_utf8(out, lower1(next_cp(s, i)));
  return out;
}
std::string py_capitalize(std::string_view s) {
  std::string out;
  size_t i = 0;
  bool first = true;
  while (i < s.size()) {
    const uint32_t c = next_cp(s, i);
    append_utf8(out, first ? title1(c) : lower1(c));
    first = false;
  }
  return out;
}
std::string py_title(std::string_view s) {
  std::string out;
  size_t i = 0;
  bool prev_cased = false;
  while (i < s.size()) {
    uint32_t c = next_cp(s, i);
    c = prev_cased ? lower1(c) : title1(c);
    prev_cased = cased(c);
    append_utf8(out, c);
  }
  return out;
}

std::string py_repr(std::string_view s) {
  const bool has_sq = s.find('\'') != std::string_view::npos;
  const bool has_dq = s.find('"') != std::string_view::npos;
  const char q = has_sq && !has_dq ? '"' : '\'';
  std::string out(1, q);
  size_t i = 0;
  while (i < s.size()) {
    const uint32_t c = next_cp(s, i);
    char buf[16];
    if (c == static_cast<uint32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const int8_t type = u_charType(static_cast<UChar32>(c));
      const bool printable =
          !(type == U_CONTROL_CHAR || type == U_FORMAT_CHAR || type == U_SURROGATE ||
            type == U_PRIVATE_USE_CHAR || type == U_UNASSIGNED || type == U_LINE_SEPARATOR ||
            type == U_PARAGRAPH_SEPARATOR || type == U_SPACE_SEPARATOR);
      if (printable) {
        append_utf8(out, c);
      } else {
        if (c < 0x100)
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
        else if (c < 0x10000)
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
        else
          std::snprintf(buf, sizeof buf, "\\U%08x", c);
        out += buf;
      }
    }
  }
  out += q;
  return out;
}

std::vector<std::string> py_splitlines(std::string_view s) {
  std::vector<std::string> out;
  std::string curr;
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    const uint32_t c = next_cp(s, i);
    if (c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
        c == 0x85 || c == 0x2028 || c == 0x2029) {
      if (c == '\r' && i < s.size() && s[i] == '\n') ++i;
      out.push_back(std::move(curr));
      curr.clear();
    } else {
      curr.append(s.substr(start, i - start));
    }
  }
  if (!curr.empty()) out.push_back(std::move(curr));
  return out;
}

namespace {
template <typename F>
bool all_of_cps(std::string_view s, F f) {
  if (s.empty()) return false;
  size_t i = 0;
  while (i < s.size())
    if (!f(static_cast<UChar32>(next_cp(s, i)))) return false;
  return true;
}
}  // namespace

bool py_isalpha(std::string_view s) {
  return all_of_cps(s, [](UChar32 c) { return u_isalpha(c) != 0; });
}
bool py_isdigit(std::string_view s) {
  return all_of_cps(s, [](UChar32 c) { return u_isdigit(c) != 0; });
}
bool py_isalnum(std::string_view s) {
  return all_of_cps(s, [](UChar32 c) {
    return u_isalpha(c) || u_isdigit(c) || (u_isdefined(c) && u_charType(c) == U_OTHER_NUMBER);
  });
}
bool py_isupper(std::string_view s) {
  bool any = false;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<UChar32>(next_cp(s, i));
    if (u_isULowercase(c) || u_istitle(c)) return false;
    if (u_isUUppercase(c)) any = true;
  }
  return any;
}
bool py_islower(std::string_view s) {
  bool any = false;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<UChar32>(next_cp(s, i));
    if (u_isUUppercase(c) || u_istitle(c)) return false;
    if (u_isULowercase(c)) any = true;
  }
  return any;
}

}  // namespace nibble::chat::jinja
