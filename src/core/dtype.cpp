#include "nibble/dtype.h"

#include <array>
#include <string>

#include "nibble/error.h"

namespace nibble {
namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  std::string_view st_code;
  size_t size;
  bool is_float;
};
constexpr std::array<DTypeInfo, 9> kInfo{{
    {DType::Float32, "float32", "F32", 4, true},
    {DType::Float16, "float16", "F16", 2, true},
    {DType::BFloat16, "bfloat16", "BF16", 2, true},
    {DType::Float64, "float64", "F64", 8, true},
    {DType::UInt8, "uint8", "U8", 1, false},
    {DType::Int8, "int8", "I8", 1, false},
    {DType::Int32, "int32", "I32", 4, false},
    {DType::Int64, "int64", "I64", 8, false},
    {DType::Bool, "bool", "BOOL", 1, false},
}};
const DTypeInfo& info(DType t) {
  return kInfo.at(static_cast<size_t>(t));
}
}  // namespace

std::string_view dtype_name(DType t) {
  return info(t).name;
}
size_t dtype_size(DType t) {
  return info(t).size;
}
bool dtype_is_float(DType t) {
  return info(t).is_float;
}
std::string_view safetensors_code(DType t) {
  return info(t).st_code;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  for (const auto& i : kInfo)
    if (i.name == name) return i.type;
  // torch aliases
  if (name == "float") return DType::Float32;
  if (name == "half") return DType::Float16;
  if (name == "double") return DType::Float64;
  return std::nullopt;
}

DType parse_dtype(std::string_view name, std::string_view what) {
  if (auto t = dtype_from_name(name)) return *t;
  throw ValueError(std::string(what) + ": unknown dtype '" + std::string(name) +
                   "' (expected one of float32, float16, bfloat16, float64, uint8, int8, int32, int64)");
}

std::optional<DType> dtype_from_safetensors_code(std::string_view code) {
  for (const auto& i : kInfo)
    if (i.st_code == code) return i.type;
  return std::nullopt;
}

}  // namespace nibble
