// The checked JSON accessors (src/io/json_field.h): every wrong type, range or shape is a FormatError naming
// the file, the key path and what was expected; nothing nlohmann throws escapes.
#include "io/json_field.h"

#include <gtest/gtest.h>

#include "nibble/error.h"

using namespace nibble;
using namespace nibble::jsonf;

namespace {
// Runs f, expecting a FormatError whose message contains every fragment.
template <typename F>
void expect_format_error(F f, std::initializer_list<std::string> fragments) {
  try {
    f();
    ADD_FAILURE() << "no error; wanted " << *fragments.begin();
  } catch (const FormatError& e) {
    const std::string m = e.what();
    for (const auto& s : fragments) EXPECT_NE(m.find(s), std::string::npos) << m << "\n  lacks: " << s;
    EXPECT_EQ(m.find("json.exception"), std::string::npos) << m;
  }
}
}  // namespace

TEST(JsonField, PathsNameFileAndKeys) {
  const JsonPath root("config.json");
  EXPECT_EQ(root.str(), "config.json");
  EXPECT_EQ((root / "rope_scaling" / "factor").str(), "config.json: 'rope_scaling.factor'");
  EXPECT_EQ((root / "eos_token_id")[2].str(), "config.json: 'eos_token_id[2]'");
  EXPECT_EQ((root / "weight_map" / "model.norm.weight").str(),
            "config.json: 'weight_map[\"model.norm.weight\"]'");
}

TEST(JsonField, TypedAccessorsReportKeyPathAndFoundValue) {
  const json j = json::parse(R"({"h": 128, "s": "x", "f": 2.5, "b": true, "n": null, "o": {"factor": "2"},
                                 "big": 18446744073709551615, "neg": -3, "arr": [1, "x"]})");
  const JsonPath root("config.json");
  EXPECT_EQ(get_int(j, "h", root, {1, 1024}), 128);
  EXPECT_EQ(get_int_or(j, "n", root, 7), 7);  // null is "unset"
  EXPECT_EQ(get_int_or(j, "absent", root, 9), 9);
  EXPECT_EQ(get_string(j, "s", root), "x");
  EXPECT_DOUBLE_EQ(get_number(j, "f", root), 2.5);
  EXPECT_DOUBLE_EQ(get_number(j, "h", root), 128.0);  // an integer is a number
  EXPECT_TRUE(get_bool(j, "b", root));
  EXPECT_EQ(find(j, "n", root), nullptr);
  expect_format_error([&] { get_number(get_object(j, "o", root), "factor", root / "o"); },
                      {"config.json: 'o.factor'", "must be a number", "found string \"2\""});
  expect_format_error([&] { get_int(j, "h", root, {1, 64}); }, {"'h'", "in [1, 64]", "found 128"});
  expect_format_error([&] { get_int(j, "big", root); }, {"'big'", "18446744073709551615"});
  expect_format_error([&] { get_int(j, "neg", root, {0, 10}); }, {"'neg'", "found -3"});
  expect_format_error([&] { get_int(j, "f", root); }, {"'f'", "must be an integer", "found 2.5"});
  expect_format_error([&] { get_int(j, "missing", root); }, {"'missing' is missing", "an integer"});
  expect_format_error([&] { get_int(j, "n", root); }, {"'n' is missing"});
  expect_format_error([&] { get_string(j, "h", root); }, {"'h' must be a string, found 128"});
  expect_format_error([&] { get_bool(j, "s", root); }, {"'s' must be true or false"});
  expect_format_error([&] { get_object(j, "arr", root); }, {"'arr' must be an object", "array of 2"});
  expect_format_error([&] { as_string(get_array(j, "arr", root)[0], (root / "arr")[0]); },
                      {"config.json: 'arr[0]' must be a string"});
  expect_format_error([&] { get_int(json::array(), "x", root); }, {"config.json must be an object"});
}

TEST(JsonField, NumbersMustBeFiniteAndInRange) {
  const json j = {{"x", 1e300}, {"y", -1.0}};
  const JsonPath root("c.json");
  EXPECT_DOUBLE_EQ(get_number(j, "x", root), 1e300);
  expect_format_error([&] { get_number(j, "x", root, {0.0, 1e30}); }, {"'x'", "in [0"});
  expect_format_error([&] { get_number(j, "y", root, {0.0, 1.0}); }, {"'y'", "-1"});
}

TEST(JsonField, ParseRejectsMalformedDeepAndLargeText) {
  EXPECT_EQ(parse_json(R"({"a": [1, {"b": "]]]["}]})", "f.json")["a"][1]["b"], "]]][");
  expect_format_error([] { parse_json("{\"a\": ", "f.json"); }, {"f.json: invalid JSON"});
  expect_format_error([] { parse_json("", "f.json"); }, {"f.json: invalid JSON"});
  expect_format_error([] { parse_json("\xff", "f.json"); }, {"f.json: invalid JSON"});
  expect_format_error([] { parse_json("1e999", "f.json"); }, {"f.json: invalid JSON"});
  // depth: 128 levels parse, 129 do not (checked before nlohmann builds anything)
  EXPECT_NO_THROW(parse_json(std::string(128, '[') + std::string(128, ']'), "f.json"));
  expect_format_error([] { parse_json(std::string(129, '[') + std::string(129, ']'), "f.json"); },
                      {"f.json", "nesting deeper than 128"});
  expect_format_error([] { parse_json(std::string(1 << 20, '['), "f.json"); }, {"nesting deeper"});
  // brackets inside strings (with escaped quotes) do not count
  EXPECT_NO_THROW(parse_json("[\"\\\"" + std::string(200, '[') + "\"]", "f.json"));
  expect_format_error([] { parse_json(std::string(100, ' '), "f.json", {.max_bytes = 10}); },
                      {"f.json", "100 bytes", "limit"});
}

TEST(JsonField, CheckedProductCatchesOverflow) {
  const JsonPath root("config.json");
  EXPECT_EQ(checked_product({1024, 1024}, root, "a"), 1 << 20);
  EXPECT_EQ(checked_product({0, int64_t{1} << 62}, root, "a"), 0);
  expect_format_error(
      [&] {
        checked_product({int64_t{1} << 20, int64_t{1} << 20}, root, "vocab x hidden");
      },
      {"config.json", "vocab x hidden", "exceeds 2147483648"});
  expect_format_error(
      [&] {
        checked_product({int64_t{1} << 40, int64_t{1} << 40, int64_t{1} << 40}, root, "q", INT64_MAX);
      },
      {"q exceeds"});
}
