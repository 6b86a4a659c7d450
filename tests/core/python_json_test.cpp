#include "core/python_json.h"

#include <gtest/gtest.h>

using namespace nibble;

TEST(PythonJson, FloatRepr) {
  // expected strings are Python 3's repr() of the same doubles
  EXPECT_EQ(python_float_repr(6.0), "6.0");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(1e-05), "1e-05");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(python_float_repr(static_cast<double>(0.012345679f)),
            "0.012345679104328156");  // repr(float(np.float32(0.012345679)))
  EXPECT_EQ(python_float_repr(1e20), "1e+20");
  EXPECT_EQ(python_float_repr(123.456), "123.456");
  EXPECT_EQ(python_float_repr(-0.0), "-0.0");
}

TEST(PythonJson, DumpsCompactAndIndented) {
  nlohmann::ordered_json j;
  j["b"] = 1;
  j["a"] = {1.5, nullptr, true};
  j["c"] = nlohmann::ordered_json::object();
  j["d"] = nlohmann::ordered_json::array();
  EXPECT_EQ(python_json_dumps(j), R"({"b": 1, "a": [1.5, null, true], "c": {}, "d": []})");
  EXPECT_EQ(python_json_dumps(j, 2, true),
            "{\n  \"a\": [\n    1.5,\n    null,\n    true\n  ],\n  \"b\": 1,\n  \"c\": {},\n  \"d\": []\n}");
  nlohmann::json s = "é模😀\"\n";
  EXPECT_EQ(python_json_dumps(s), R"("\u00e9\u6a21\ud83d\ude00\"\n")");
}
