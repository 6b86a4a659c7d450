#include <nlohmann/json.hpp>

#include "io/json_field.h"
#include "nibble/error.h"
#include "core/python_json.h"
#include "nibble/quantize.h"

namespace nibble {

std::vector<float> QuantState::float_absmax() const {
  const int64_t nb = num_blocks();
  std::vector<float> out(static_cast<size_t>(nb));
  if (!nested) {
    const float* a = absmax.data<float>();
    std::copy(a, a + nb, out.begin());
    return out;
  }
  const uint8_t* q = absmax.data<uint8_t>();
  const float* code2 = nested_code.data<float>();
  const float* am2 = nested_absmax.data<float>();
  for (int64_t i = 0; i < nb; ++i) {
    const float v = code2[q[i]] * am2[i / nested_blocksize];  // two roundings, as CUDA: no FMA
    out[static_cast<size_t>(i)] = v + offset;
  }
  return out;
}

std::string QuantState::packed_json() const {
  nlohmann::ordered_json j;
  j["quant_type"] = std::string(quant_type_name(quant_type));
  j["blocksize"] = blocksize;
  j["dtype"] = std::string(dtype_name(dtype));
  j["shape"] = shape;
  if (nested) {
    j["nested_blocksize"] = nested_blocksize;
    j["nested_dtype"] = std::string(dtype_name(nested_dtype));
    j["nested_offset"] = static_cast<double>(offset);
  }
  return python_json_dumps(j);
}

NamedTensors QuantState::as_dict() const {
  NamedTensors d;
  d.emplace_back("absmax", absmax);
  d.emplace_back("quant_map", code);
  if (nested) {
    d.emplace_back("nested_absmax", nested_absmax);
    d.emplace_back("nested_quant_map", nested_code);
  }
  const std::string js = packed_json();
  d.emplace_back("quant_state.bitsandbytes__" + std::string(quant_type_name(quant_type)),
                 Tensor::from_bytes(DType::UInt8, {static_cast<int64_t>(js.size())},
                                    {reinterpret_cast<const uint8_t*>(js.data()), js.size()}));
  return d;
}

namespace {

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw FormatError(where + ": invalid quant_state: " + what);
}

void expect_tensor(const Tensor& t, DType dt, const Shape& shape, const std::string& where,
                   const std::string& key) {
  if (t.dtype() != dt || t.shape() != shape)
    bad(where, key + " must be " + std::string(dtype_name(dt)) + " " + shape_str(shape) + ", got " +
                   std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()));
}

}  // namespace

QuantState QuantState::from_dict(const std::map<std::string, Tensor>& full, const std::string& where) {
  // bnb strips everything up to the last '.'-separated component, except for the packed quant_state key.
  std::map<std::string, Tensor> d;
  std::string qs_key;
  Tensor qs;
  for (const auto& [k, v] : full) {
    const auto pos = k.find("quant_state.");
    if (pos != std::string::npos) {
      if (!qs_key.empty()) bad(where, "more than one quant_state tensor ('" + qs_key + "', '" + k + "')");
      qs_key = k.substr(pos);
      qs = v;
      continue;
    }
    const auto dot = k.rfind('.');
    d[dot == std::string::npos ? k : k.substr(dot + 1)] = v;
  }
  if (qs_key.empty()) bad(where, "missing quant_state.bitsandbytes__nf4 / __fp4 tensor");
  const std::string prefix = "quant_state.bitsandbytes__";
  if (qs_key.rfind(prefix, 0) != 0) bad(where, "unexpected quant_state key '" + qs_key + "'");
  const std::string key_type = qs_key.substr(prefix.size());
  if (qs.dtype() != DType::UInt8 || qs.shape().size() != 1)
    bad(where, qs_key + " must be a 1-D uint8 tensor");
  // the packed JSON: a small object bitsandbytes wrote (python json.dumps), read with the checked accessors
  const jsonf::JsonPath root(where + ": " + qs_key);
  const auto* p = reinterpret_cast<const char*>(qs.raw());
  const nlohmann::json j =
      jsonf::parse_json({p, qs.nbytes()}, root.file(), {.max_bytes = 1 << 20, .max_depth = 8});
  jsonf::as_object(j, root);

  QuantState s;
  const std::string qt = jsonf::get_string(j, "quant_type", root);
  if (qt != "nf4" && qt != "fp4") (root / "quant_type").fail("is '" + qt + "', not nf4 or fp4");
  if (qt != key_type) (root / "quant_type").fail("is '" + qt + "', which does not match the key " + qs_key);
  s.quant_type = parse_quant_type(qt);
  s.blocksize = jsonf::get_int(j, "blocksize", root, {32, 4096});
  if (!valid_4bit_blocksize(s.blocksize))
    (root / "blocksize").fail("is " + std::to_string(s.blocksize) + ", not a power of two in 32..4096");
  const std::string dts = jsonf::get_string(j, "dtype", root);
  auto dt = dtype_from_name(dts);
  if (!dt || !dtype_is_float(*dt)) (root / "dtype").fail("is '" + dts + "', not a float dtype");
  s.dtype = *dt;
  const nlohmann::json& shape = jsonf::get_array(j, "shape", root);
  if (shape.empty() || shape.size() > 8)
    (root / "shape").fail("has " + std::to_string(shape.size()) + " dimensions (expected 1 to 8)");
  constexpr int64_t kMaxElements = int64_t{1} << 48;  // far past any weight; keeps numel() from overflowing
  int64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t d = jsonf::as_int(shape[i], (root / "shape")[i], {0, kMaxElements});
    if (d != 0 && numel > kMaxElements / d) (root / "shape").fail("holds more than 2^48 elements");
    numel *= d;
    s.shape.push_back(d);
  }
  const int64_t nb = s.num_blocks();
  s.nested = d.count("nested_absmax") != 0;
  for (const char* k : {"absmax", "quant_map"})
    if (!d.count(k)) bad(where, std::string("missing ") + k);
  s.absmax = d["absmax"];
  s.code = d["quant_map"];
  expect_tensor(s.code, DType::Float32, {16}, where, "quant_map");
  if (s.nested) {
    if (!d.count("nested_quant_map")) bad(where, "missing nested_quant_map");
    s.nested_blocksize = jsonf::get_int(j, "nested_blocksize", root, {1, int64_t{1} << 20});
    const std::string ndt = jsonf::get_string(j, "nested_dtype", root);
    if (ndt != "float32") (root / "nested_dtype").fail("is '" + ndt + "', not float32");
    s.offset = static_cast<float>(jsonf::get_number(j, "nested_offset", root, {-3.4e38, 3.4e38}));
    s.nested_absmax = d["nested_absmax"];
    s.nested_code = d["nested_quant_map"];
    expect_tensor(s.absmax, DType::UInt8, {nb}, where, "absmax");
    expect_tensor(s.nested_absmax, DType::Float32, {(nb + s.nested_blocksize - 1) / s.nested_blocksize},
                  where, "nested_absmax");
    expect_tensor(s.nested_code, DType::Float32, {256}, where, "nested_quant_map");
  } else {
    if (d.count("nested_quant_map")) bad(where, "nested_quant_map without nested_absmax");
    expect_tensor(s.absmax, DType::Float32, {nb}, where, "absmax");
  }
  return s;
}

void QuantState::check_packed(const Tensor& packed, const std::string& where) const {
  const auto expect = static_cast<size_t>((numel() + 1) / 2);
  if (packed.nbytes() != expect)
    throw FormatError(where + ": packed 4-bit weight has " + std::to_string(packed.nbytes()) +
                      " bytes but its quant_state shape " + shape_str(shape) + " needs " +
                      std::to_string(expect));
}

}  // namespace nibble
