// JSON text exactly as Python's json module writes it, so files and strings nibble produces diff clean
// against transformers/bitsandbytes output: json.dumps(obj, indent=2, sort_keys=True) and the compact default
// json.dumps(obj) with separators ", " and ": " (ensure_ascii=True, floats in Python repr).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace nibble {

// Python's repr(float): shortest round-trip digits, "1e-05" / "0.0001" / "6.0" / "1e+16", "NaN", "Infinity".
std::string python_float_repr(double v);

// indent < 0: one line with ", " and ": " separators (json.dumps default). indent >= 0: pretty, as json.dumps
// with indent=N. sort_keys sorts object keys (by code point); otherwise ordered_json keeps insertion order.
std::string python_json_dumps(const nlohmann::ordered_json& j, int indent = -1, bool sort_keys = false);
std::string python_json_dumps(const nlohmann::json& j, int indent = -1, bool sort_keys = false);

}  // namespace nibble
