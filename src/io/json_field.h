// Checked reads of JSON that nibble did not write (config.json, generation_config.json, tokenizer.json,
// tokenizer_config.json, model.safetensors.index.json, safetensors headers, packed quant_state blobs).
//
// parse_json() bounds the text's size and nesting depth and turns every parse failure into a FormatError
// naming the file. The accessors check one field's presence, type and range and throw a FormatError naming
// the file, the key path and what was expected, e.g.
//   config.json: 'rope_scaling.factor' must be a number, found string "2"
// so no nlohmann::json exception (type_error, out_of_range, parse_error) reaches a caller.
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace nibble::jsonf {
using nlohmann::json;

// Where a JSON value sits: the file (or another label) and its key path from the document root.
class JsonPath {
 public:
  explicit JsonPath(std::string file, std::string path = {})
      : file_(std::move(file)), path_(std::move(path)) {}
  // A member: "a.b"; keys that are not identifiers are quoted: a["x y"].
  JsonPath operator/(std::string_view key) const;
  // An array element: "a[3]".
  JsonPath operator[](size_t index) const;
  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }
  // "file: 'path'" (or "file" at the root): the start of every error message.
  std::string str() const;
  // Throws FormatError(str() + " " + what).
  [[noreturn]] void fail(const std::string& what) const;

 private:
  std::string file_, path_;
};

struct ParseLimits {
  size_t max_bytes = size_t{64} << 20;  // config files are a few KB; tokenizer.json passes its own limit
  int max_depth = 128;                  // deepest real file: tokenizer.json, depth 5
};

// Parses `text`; FormatError("<file>: invalid JSON: ...") when it is not JSON, is larger than
// limits.max_bytes or nests deeper than limits.max_depth. `cb` as in nlohmann::json::parse.
json parse_json(std::string_view text, const std::string& file, const ParseLimits& limits = {},
                const json::parser_callback_t& cb = nullptr);

// A short rendering of a value for error messages: its type and (truncated) text.
std::string describe(const json& v);

struct IntRange {
  int64_t min = std::numeric_limits<int64_t>::min();
  int64_t max = std::numeric_limits<int64_t>::max();
};
struct NumberRange {  // finite numbers only
  double min = -std::numeric_limits<double>::max();
  double max = std::numeric_limits<double>::max();
};

// A value at path `p`, which must have the type asked for (and lie in range).
int64_t as_int(const json& v, const JsonPath& p, IntRange r = {});
double as_number(const json& v, const JsonPath& p, NumberRange r = {});  // an integer or a float
bool as_bool(const json& v, const JsonPath& p);
const std::string& as_string(const json& v, const JsonPath& p);
const json& as_object(const json& v, const JsonPath& p);
const json& as_array(const json& v, const JsonPath& p);

// Members of the object `j` (at path `p`; FormatError if `j` is not an object). find(): the member, or
// nullptr when absent or null (HF writes null for "unset"). get_*: required, so absent or null is an error.
// get_*_or: absent or null gives `def`.
const json* find(const json& j, std::string_view key, const JsonPath& p);
int64_t get_int(const json& j, std::string_view key, const JsonPath& p, IntRange r = {});
int64_t get_int_or(const json& j, std::string_view key, const JsonPath& p, int64_t def, IntRange r = {});
double get_number(const json& j, std::string_view key, const JsonPath& p, NumberRange r = {});
double get_number_or(const json& j, std::string_view key, const JsonPath& p, double def, NumberRange r = {});
bool get_bool(const json& j, std::string_view key, const JsonPath& p);
bool get_bool_or(const json& j, std::string_view key, const JsonPath& p, bool def);
const std::string& get_string(const json& j, std::string_view key, const JsonPath& p);
std::string get_string_or(const json& j, std::string_view key, const JsonPath& p, const std::string& def);
const json& get_object(const json& j, std::string_view key, const JsonPath& p);
const json& get_array(const json& j, std::string_view key, const JsonPath& p);
// An optional object/array member: nullptr when absent or null.
const json* find_object(const json& j, std::string_view key, const JsonPath& p);
const json* find_array(const json& j, std::string_view key, const JsonPath& p);

// The product of `dims` (each >= 0), or a FormatError at `p` naming `what` when it exceeds `max`
// (default 2^31 elements: the largest tensor nibble accepts from a config's declared sizes).
int64_t checked_product(std::initializer_list<int64_t> dims, const JsonPath& p, const std::string& what,
                        int64_t max = int64_t{1} << 31);

}  // namespace nibble::jsonf
