// Element types, named exactly as transformers/torch write them, and float16/bfloat16 <-> float32 conversion
// with round-to-nearest-even (correct for subnormals, infinities and NaN).
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nibble {

enum class DType : uint8_t { Float32, Float16, BFloat16, Float64, UInt8, Int8, Int32, Int64, Bool };

// "float32", "float16", "bfloat16", "float64", "uint8", "int8", "int32", "int64", "bool".
std::string_view dtype_name(DType t);
// Inverse of dtype_name; also accepts torch's "torch.bfloat16" spelling. nullopt if unknown.
std::optional<DType> dtype_from_name(std::string_view name);
// Like dtype_from_name but throws ValueError naming `what` and the accepted names.
DType parse_dtype(std::string_view name, std::string_view what);
size_t dtype_size(DType t);
bool dtype_is_float(DType t);

// safetensors dtype codes: "F32", "F16", "BF16", "F64", "U8", "I8", "I32", "I64", "BOOL".
std::string_view safetensors_code(DType t);
std::optional<DType> dtype_from_safetensors_code(std::string_view code);

inline float bf16_to_float(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflows correctly into inf
  return static_cast<uint16_t>(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in float32
    const float v = static_cast<float>(man) * 0x1p-24f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_fp16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);  // NaN stays NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf (incl. inf)
  if (a < 0x38800000u) {
    // result is subnormal or zero: value / 2^-24, rounded to nearest even. Float arithmetic is exact here
    // because adding 0.5 (2^-1 in units of 2^-24) to a value below 2^-14 keeps the rounding in one step.
    const float v = std::bit_cast<float>(a);
    const float scaled = v * 0x1p24f;  // exact (power of two)
    uint32_t q = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  // normal: rebias exponent, round mantissa from 23 to 10 bits, nearest even
  uint32_t r = a - 0x38000000u;  // exponent - 112
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

}  // namespace nibble
