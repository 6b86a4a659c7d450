#include "core/python_json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace nibble {

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form, then laid out with Python's float_repr_style 'r' rules:
  // scientific when the decimal exponent is < -4 or >= 16, fixed otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  const size_t e = s.find('e');
  const int exp10 = std::stoi(s.substr(e + 1));
  std::string digits = s.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int nd = static_cast<int>(digits.size());
  std::string out;
  if (exp10 < -4 || exp10 >= 16) {
    out = digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += eb;
  } else if (exp10 < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
  } else if (exp10 + 1 >= nd) {
    out = digits + std::string(static_cast<size_t>(exp10 + 1 - nd), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(exp10 + 1)) + "." +
          digits.substr(static_cast<size_t>(exp10 + 1));
  }
  return sign + out;
}

namespace {

void dump_string(const std::string& s, std::string& out) {
  out += '"';
  // decode UTF-8 to code points, escape as Python's ensure_ascii does
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    int len;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c >> 5) == 6) {
      cp = c & 0x1f, len = 2;
    } else if ((c >> 4) == 14) {
      cp = c & 0x0f, len = 3;
    } else {
      cp = c & 0x07, len = 4;
    }
    for (int k = 1; k < len && i + static_cast<size_t>(k) < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3f);
    i += static_cast<size_t>(len);
    char buf[16];
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (cp >= 0x20 && cp < 0x7f) {
          out += static_cast<char>(cp);
        } else if (cp < 0x10000) {
          std::snprintf(buf, sizeof buf, "\\u%04x", cp);
          out += buf;
        } else {
          const uint32_t v = cp - 0x10000;
          std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
          out += buf;
        }
    }
  }
  out += '"';
}

template <typename Json>
void dump(const Json& j, int indent, bool sort_keys, int level, std::string& out) {
  const bool pretty = indent >= 0;
  auto newline = [&](int lvl) {
    if (pretty) {
      out += '\n';
      out.append(static_cast<size_t>(indent * lvl), ' ');
    }
  };
  const char* item_sep = pretty ? "," : ", ";
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      out += "null";
      break;
    case nlohmann::json::value_t::boolean:
      out += j.template get<bool>() ? "true" : "false";
      break;
    case nlohmann::json::value_t::number_integer:
      out += std::to_string(j.template get<int64_t>());
      break;
    case nlohmann::json::value_t::number_unsigned:
      out += std::to_string(j.template get<uint64_t>());
      break;
    case nlohmann::json::value_t::number_float:
      out += python_float_repr(j.template get<double>());
      break;
    case nlohmann::json::value_t::string:
      dump_string(j.template get_ref<const std::string&>(), out);
      break;
    case nlohmann::json::value_t::array: {
      if (j.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      bool first = true;
      for (const auto& e : j) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        dump(e, indent, sort_keys, level + 1, out);
      }
      newline(level);
      out += ']';
      break;
    }
    case nlohmann::json::value_t::object: {
      if (j.empty()) {
        out += "{}";
        break;
      }
      std::vector<std::string> keys;
      for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
      if (sort_keys) std::sort(keys.begin(), keys.end());
      out += '{';
      bool first = true;
      for (const auto& k : keys) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        dump_string(k, out);
        out += ": ";
        dump(j.at(k), indent, sort_keys, level + 1, out);
      }
      newline(level);
      out += '}';
      break;
    }
    default:
      out += "null";
      break;
  }
}

}  // namespace

std::string python_json_dumps(const nlohmann::ordered_json& j, int indent, bool sort_keys) {
  std::string out;
  dump(j, indent, sort_keys, 0, out);
  return out;
}
std::string python_json_dumps(const nlohmann::json& j, int indent, bool sort_keys) {
  std::string out;
  dump(j, indent, sort_keys, 0, out);
  return out;
}

}  // namespace nibble
