#include "io/json_field.h"

#include <cctype>
#include <cmath>

#include "nibble/error.h"

namespace nibble::jsonf {

namespace {

bool is_identifier(std::string_view k) {
  if (k.empty()) return false;
  for (char c : k)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

// nlohmann's what() starts with "[json.exception.parse_error.101] "; the rest is the useful part.
std::string strip_prefix(const char* what) {
  std::string s = what;
  if (s.rfind("[json.exception.", 0) == 0) {
    const auto e = s.find("] ");
    if (e != std::string::npos) s.erase(0, e + 2);
  }
  return s;
}

// The deepest nesting of [ and { outside strings, stopping as soon as it passes `max`.
void check_depth(std::string_view text, int max, const std::string& file) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max)
        throw FormatError(file + ": invalid JSON: nesting deeper than " + std::to_string(max) +
                          " levels at byte " + std::to_string(i));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

std::string range_text(IntRange r) {
  constexpr auto lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
  if (r.min == lo && r.max == hi) return "an integer";
  if (r.max == hi) return "an integer >= " + std::to_string(r.min);
  if (r.min == lo) return "an integer <= " + std::to_string(r.max);
  return "an integer in [" + std::to_string(r.min) + ", " + std::to_string(r.max) + "]";
}

std::string num(double d) {
  nlohmann::json j = d;
  return j.dump();
}

std::string range_text(NumberRange r) {
  const bool lo = r.min == -std::numeric_limits<double>::max(),
             hi = r.max == std::numeric_limits<double>::max();
  if (lo && hi) return "a number";
  if (hi) return "a number >= " + num(r.min);
  if (lo) return "a number <= " + num(r.max);
  return "a number in [" + num(r.min) + ", " + num(r.max) + "]";
}

}  // namespace

JsonPath JsonPath::operator/(std::string_view key) const {
  std::string p = path_;
  if (is_identifier(key)) {
    if (!p.empty()) p += '.';
    p += key;
  } else {
    p += '[' + json(std::string(key)).dump(-1, ' ', false, json::error_handler_t::replace) + ']';
  }
  return JsonPath(file_, std::move(p));
}

JsonPath JsonPath::operator[](size_t index) const {
  return JsonPath(file_, path_ + "[" + std::to_string(index) + "]");
}

std::string JsonPath::str() const {
  return path_.empty() ? file_ : file_ + ": '" + path_ + "'";
}

void JsonPath::fail(const std::string& what) const {
  throw FormatError(str() + " " + what);
}

json parse_json(std::string_view text, const std::string& file, const ParseLimits& limits,
                const json::parser_callback_t& cb) {
  if (text.size() > limits.max_bytes)
    throw FormatError(file + ": " + std::to_string(text.size()) + " bytes of JSON exceed the " +
                      std::to_string(limits.max_bytes >> 20) + " MiB limit for this file");
  check_depth(text, limits.max_depth, file);
  try {
    return json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    throw FormatError(file + ": invalid JSON: " + strip_prefix(e.what()));
  }
}

std::string describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return std::string("boolean ") + (v.get<bool>() ? "true" : "false");
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return v.dump();
    case json::value_t::string: {
      const auto& s = v.get_ref<const std::string&>();
      const bool cut = s.size() > 40;
      return "string " + json(s.substr(0, 40)).dump(-1, ' ', false, json::error_handler_t::replace) +
             (cut ? "..." : "");
    }
    case json::value_t::array:
      return "an array of " + std::to_string(v.size()) + " elements";
    case json::value_t::object:
      return "an object with " + std::to_string(v.size()) + " members";
    default:
      return "a binary value";
  }
}

int64_t as_int(const json& v, const JsonPath& p, IntRange r) {
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      p.fail("must be " + range_text(r) + ", found " + v.dump());
    x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else {
    p.fail("must be " + range_text(r) + ", found " + describe(v));
  }
  if (x < r.min || x > r.max) p.fail("must be " + range_text(r) + ", found " + std::to_string(x));
  return x;
}

double as_number(const json& v, const JsonPath& p, NumberRange r) {
  if (!v.is_number()) p.fail("must be " + range_text(r) + ", found " + describe(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < r.min || x > r.max) p.fail("must be " + range_text(r) + ", found " + v.dump());
  return x;
}

bool as_bool(const json& v, const JsonPath& p) {
  if (!v.is_boolean()) p.fail("must be true or false, found " + describe(v));
  return v.get<bool>();
}

const std::string& as_string(const json& v, const JsonPath& p) {
  if (!v.is_string()) p.fail("must be a string, found " + describe(v));
  return v.get_ref<const std::string&>();
}

const json& as_object(const json& v, const JsonPath& p) {
  if (!v.is_object()) p.fail("must be an object, found " + describe(v));
  return v;
}

const json& as_array(const json& v, const JsonPath& p) {
  if (!v.is_array()) p.fail("must be an array, found " + describe(v));
  return v;
}

const json* find(const json& j, std::string_view key, const JsonPath& p) {
  as_object(j, p);
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

namespace {
const json& require(const json& j, std::string_view key, const JsonPath& p, const std::string& expected) {
  const json* v = find(j, key, p);
  if (!v) (p / key).fail("is missing (expected " + expected + ")");
  return *v;
}
}  // namespace

int64_t get_int(const json& j, std::string_view key, const JsonPath& p, IntRange r) {
  return as_int(require(j, key, p, range_text(r)), p / key, r);
}
int64_t get_int_or(const json& j, std::string_view key, const JsonPath& p, int64_t def, IntRange r) {
  const json* v = find(j, key, p);
  return v ? as_int(*v, p / key, r) : def;
}
double get_number(const json& j, std::string_view key, const JsonPath& p, NumberRange r) {
  return as_number(require(j, key, p, range_text(r)), p / key, r);
}
double get_number_or(const json& j, std::string_view key, const JsonPath& p, double def, NumberRange r) {
  const json* v = find(j, key, p);
  return v ? as_number(*v, p / key, r) : def;
}
bool get_bool(const json& j, std::string_view key, const JsonPath& p) {
  return as_bool(require(j, key, p, "true or false"), p / key);
}
bool get_bool_or(const json& j, std::string_view key, const JsonPath& p, bool def) {
  const json* v = find(j, key, p);
  return v ? as_bool(*v, p / key) : def;
}
const std::string& get_string(const json& j, std::string_view key, const JsonPath& p) {
  return as_string(require(j, key, p, "a string"), p / key);
}
std::string get_string_or(const json& j, std::string_view key, const JsonPath& p, const std::string& def) {
  const json* v = find(j, key, p);
  return v ? as_string(*v, p / key) : def;
}
const json& get_object(const json& j, std::string_view key, const JsonPath& p) {
  return as_object(require(j, key, p, "an object"), p / key);
}
const json& get_array(const json& j, std::string_view key, const JsonPath& p) {
  return as_array(require(j, key, p, "an array"), p / key);
}
const json* find_object(const json& j, std::string_view key, const JsonPath& p) {
  const json* v = find(j, key, p);
  return v ? &as_object(*v, p / key) : nullptr;
}
const json* find_array(const json& j, std::string_view key, const JsonPath& p) {
  const json* v = find(j, key, p);
  return v ? &as_array(*v, p / key) : nullptr;
}

int64_t checked_product(std::initializer_list<int64_t> dims, const JsonPath& p, const std::string& what,
                        int64_t max) {
  int64_t prod = 1;
  for (int64_t d : dims) {
    if (d < 0) p.fail(what + " has a negative size");
    if (d != 0 && prod > max / d)
      p.fail(what + " exceeds " + std::to_string(max) + " elements (the declared sizes are not plausible)");
    prod *= d;
  }
  return prod;
}

}  // namespace nibble::jsonf
