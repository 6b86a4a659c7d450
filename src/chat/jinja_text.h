// Python str semantics on UTF-8 text: code points, str.isspace() whitespace, case mapping, repr().
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nibble::chat::jinja {

bool valid_utf8(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);
std::vector<uint32_t> decode_utf8(std::string_view s);  // s must be valid UTF-8
std::string encode_utf8(const std::vector<uint32_t>& cps);
size_t count_code_points(std::string_view s);

bool is_py_space(uint32_t cp);                  // str.isspace()
size_t ws_len(std::string_view s, size_t pos);  // bytes of the whitespace code point at pos, 0 if none
bool all_ws(std::string_view s);                // non-empty and all whitespace
std::string rstrip_ws(std::string_view s);
// str.strip / lstrip / rstrip: `chars` null means whitespace
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right);

std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_capitalize(std::string_view s);  // str.capitalize()
std::string py_title(std::string_view s);       // str.title()
std::string py_repr(std::string_view s);        // repr(str)
std::vector<std::string> py_splitlines(std::string_view s);
bool py_isalpha(std::string_view s);
bool py_isdigit(std::string_view s);
bool py_isalnum(std::string_view s);
bool py_isupper(std::string_view s);
bool py_islower(std::string_view s);

}  // namespace nibble::chat::jinja
