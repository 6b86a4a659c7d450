// Fuzz entry points for the parsers of files nibble did not write. Each must either succeed or throw a
// nibble::Error; anything else (a crash, a sanitizer report, another exception type) is a bug. Shared by the
// libFuzzer binaries (fuzz/*.cpp, preset "fuzz") and the mutation smoke test run by CTest.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "nibble/bitsandbytes_config.h"
#include "nibble/error.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"

namespace nibble::fuzz {

inline void safetensors(const uint8_t* data, size_t size) {
  auto st = Storage::allocate(size);
  if (size) std::memcpy(st->mutable_data(), data, size);
  try {
    const SafetensorsFile f = SafetensorsFile::parse(st, "fuzz.safetensors");
    for (const auto& t : f.tensors()) {
      const Tensor x = f.get(t.name);
      volatile uint8_t sink = 0;
      if (x.nbytes()) sink = x.raw()[x.nbytes() - 1];  // every byte of every tensor is in bounds
      (void)sink;
    }
  } catch (const Error&) {
  }
}

inline void tokenizer_json(const uint8_t* data, size_t size) {
  try {
    const Tokenizer t =
        Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    const auto ids = t.encode("Hello, world! Café 模型 😀 <|x|>  \t\n");
    (void)t.decode(ids);
  } catch (const Error&) {
  }
}

inline void quant_state_json(const uint8_t* data, size_t size) {
  // a valid state whose packed JSON is replaced by the fuzz input
  static const Quantized4bit q = [] {
    std::vector<float> w(64 * 8);
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 17) - 8.0f;
    return quantize_4bit(Tensor::from_vector(DType::Float32, {8, 64}, w), 64, QuantType::NF4, true);
  }();
  std::map<std::string, Tensor> d;
  for (const auto& [k, v] : q.state.as_dict()) d[k] = v;
  d["quant_state.bitsandbytes__nf4"] =
      Tensor::from_bytes(DType::UInt8, {static_cast<int64_t>(size)}, {data, size});
  try {
    const QuantState s = QuantState::from_dict(d, "fuzz");
    (void)dequantize_4bit(q.packed, s);
  } catch (const Error&) {
  }
}

inline void config_json(const uint8_t* data, size_t size) {
  try {
    const auto j = nlohmann::json::parse(data, data + size);
    (void)AutoQuantizationConfig::from_dict(j).to_json_string();
  } catch (const Error&) {
  } catch (const nlohmann::json::exception&) {  // the JSON text itself is malformed: parse's own error
  }
}

}  // namespace nibble::fuzz
