// Fuzz entry points for the parsers of files nibble did not write. Each must either succeed or throw a
// nibble::Error; anything else (a crash, a sanitizer report, a hang, another exception type such as a raw
// nlohmann::json exception or std::bad_alloc) is a bug: the entry points catch only nibble::Error, so
// libFuzzer reports everything else. Shared by the libFuzzer binaries (fuzz/*.cpp, preset "fuzz", run in CI
// over fuzz/corpus/<target>/) and the mutation smoke test run by CTest (tests/fuzz_smoke_test.cpp).
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "chat/jinja.h"
#include "io/hf_config.h"
#include "io/json_field.h"
#include "models/llama.h"
#include "models/registry.h"
#include "nibble/bitsandbytes_config.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "server/request.h"

namespace nibble::fuzz {

namespace detail {
// A directory of this process for targets whose entry point reads files (removed at exit).
inline const std::string& scratch_dir() {
  struct Dir {
    std::string path;
    Dir() {
      path =
          (std::filesystem::temp_directory_path() / ("nibble-fuzz-" + std::to_string(::getpid()))).string();
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir d;
  return d.path;
}
inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}
inline void write_file(const std::string& path, const std::string& s) {
  write_file(path, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
// A small valid tokenizer.json: byte-level BPE with a template post-processor.
inline const char* kTinyTokenizer =
    R"({"model": {"type": "BPE", "vocab": {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "ab": 4,
  "Ġ": 5}, "merges": ["a b"]}, "added_tokens": [{"id": 0, "content": "<s>", "special": true},
  {"id": 1, "content": "</s>", "special": true}], "pre_tokenizer": {"type": "ByteLevel"},
  "decoder": {"type": "ByteLevel"}, "post_processor": {"type": "TemplateProcessing",
  "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
  "special_tokens": {"<s>": {"id": "<s>", "ids": [0]}}}})";
}  // namespace detail

// A safetensors file: header, then every byte of every tensor.
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

// tokenizer.json, then encode and decode a string that exercises every pipeline stage.
inline void tokenizer_json(const uint8_t* data, size_t size) {
  try {
    const Tokenizer t =
        Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    const auto ids = t.encode("Hello, world! Café 模型 😀 <|x|>  \t\n");
    (void)t.decode(ids);
  } catch (const Error&) {
  }
}

// tokenizer_config.json beside a small valid tokenizer.json, read by Tokenizer::from_pretrained.
inline void tokenizer_config_json(const uint8_t* data, size_t size) {
  const std::string& dir = detail::scratch_dir();
  static const bool once = (detail::write_file(dir + "/tokenizer.json", detail::kTinyTokenizer), true);
  (void)once;
  detail::write_file(dir + "/tokenizer_config.json", data, size);
  try {
    const Tokenizer t = Tokenizer::from_pretrained(dir);
    (void)t.decode(t.encode("ab a"));
  } catch (const Error&) {
  }
}

// The packed quant_state JSON of a bnb-4bit weight, in a state whose other tensors are valid.
inline void quant_state_json(const uint8_t* data, size_t size) {
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

// config.json as from_pretrained reads it before touching weights: model_type, the llama-family sizes,
// dtype, eos_token_id, architectures and the quantization_config (bitsandbytes' rules).
inline void config_json(const uint8_t* data, size_t size) {
  try {
    const auto j = jsonf::parse_json({reinterpret_cast<const char*>(data), size}, "config.json");
    check_model_type(j, "config.json");
    const auto c = models::LlamaConfig::from_json(j, "config.json");
    (void)checkpoint_dtype(j, "config.json");
    (void)eos_token_ids(j, "config.json", c.vocab);
    if (const auto* a = jsonf::find_array(j, "architectures", jsonf::JsonPath("config.json"));
        a && !a->empty())
      (void)jsonf::as_string((*a)[0], jsonf::JsonPath("config.json", "architectures[0]"));
    if (const auto* q = jsonf::find(j, "quantization_config", jsonf::JsonPath("config.json")))
      (void)AutoQuantizationConfig::from_dict(*q).to_json_string();
  } catch (const Error&) {
  }
}

// model.safetensors.index.json beside a small valid shard, read by Checkpoint::open.
inline void index_json(const uint8_t* data, size_t size) {
  const std::string& dir = detail::scratch_dir();
  static const bool once = [&] {
    save_safetensors(dir + "/model.safetensors",
                     {{"a", Tensor::from_vector(DType::Float32, {2}, std::vector<float>{1, 2})},
                      {"b", Tensor::from_vector(DType::UInt8, {3}, std::vector<uint8_t>{1, 2, 3})}});
    return true;
  }();
  (void)once;
  detail::write_file(dir + "/model.safetensors.index.json", data, size);
  try {
    const Checkpoint c = Checkpoint::open(dir);
    for (const auto& n : c.names()) (void)c.get(n);
  } catch (const Error&) {
  }
}

// A chat template (arbitrary text) parsed, then rendered over a fixed conversation with tools, under limits
// small enough that runaway loops, recursion and output end quickly.
inline void chat_template(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json vars = nlohmann::ordered_json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9 {{x}}"},
      {"role": "assistant", "content": "Hello", "reasoning_content": "think",
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
      {"role": "tool", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "documents": null, "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})");
  chat::jinja::Limits limits;
  limits.max_output = size_t{1} << 20;
  limits.max_steps = size_t{1} << 16;
  limits.max_call_depth = 64;
  try {
    const auto p = chat::jinja::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.jinja");
    (void)chat::jinja::render(*p, vars, limits);
  } catch (const Error&) {
  }
}

// An HTTP request body of the OpenAI API (arbitrary bytes), checked as /v1/chat/completions and as
// /v1/completions check it.
inline void openai_request(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {true, false}) {
    try {
      (void)server::parse_request(body, chat);
    } catch (const Error&) {
    }
  }
}

}  // namespace nibble::fuzz
