#include "nibble/quant_type.h"

#include <string>

#include "nibble/error.h"

namespace nibble {

std::string_view quant_type_name(QuantType t) {
  return t == QuantType::NF4 ? "nf4" : "fp4";
}

QuantType parse_quant_type(std::string_view name) {
  if (name == "nf4") return QuantType::NF4;
  if (name == "fp4") return QuantType::FP4;
  throw ValueError("bnb_4bit_quant_type must be 'fp4' or 'nf4', got '" + std::string(name) + "'");
}

const std::array<float, 16>& nf4_code() {
  static constexpr std::array<float, 16> k{-1.0f,
                                           -0.6961928009986877f,
                                           -0.5250730514526367f,
                                           -0.39491748809814453f,
                                           -0.28444138169288635f,
                                           -0.18477343022823334f,
                                           -0.09105003625154495f,
                                           0.0f,
                                           0.07958029955625534f,
                                           0.16093020141124725f,
                                           0.24611230194568634f,
                                           0.33791524171829224f,
                                           0.44070982933044434f,
                                           0.5626170039176941f,
                                           0.7229568362236023f,
                                           1.0f};
  return k;
}

const std::array<float, 16>& fp4_code() {
  // bits 2..0 -> 0, 0.0625, 8, 12, 4, 6, 2, 3 (divided by 12); bit 3 is the sign. bnb saves index 8 as +0.
  static const std::array<float, 16> k = [] {
    const float mag[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    std::array<float, 16> t{};
    for (int i = 0; i < 8; ++i) {
      t[i] = mag[i] / 12.0f;
      t[i + 8] = i == 0 ? 0.0f : -mag[i] / 12.0f;
    }
    return t;
  }();
  return k;
}

}  // namespace nibble
