// The two 4-bit data types of bitsandbytes and their code tables.
#pragma once
#include <array>
#include <string_view>

namespace nibble {

enum class QuantType { FP4, NF4 };

std::string_view quant_type_name(QuantType t);  // "fp4" / "nf4"
// Throws ValueError naming the allowed values.
QuantType parse_quant_type(std::string_view name);

// bitsandbytes' get_4bit_type: index = 4-bit code.
const std::array<float, 16>& nf4_code();
const std::array<float, 16>& fp4_code();
inline const std::array<float, 16>& code_table(QuantType t) {
  return t == QuantType::NF4 ? nf4_code() : fp4_code();
}

}  // namespace nibble
