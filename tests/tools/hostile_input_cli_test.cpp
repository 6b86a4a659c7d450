// Corrupted-input corpus: a real checkpoint (the example model, or a bnb-4bit golden checkpoint) copied to a
// temporary directory with ONE corruption per case, run through the real CLI. Each case must exit non-zero
// (not by a signal), print one line naming the file and the field or tensor at fault, and keep the child's
// peak RSS small: a hostile file must not make nibble allocate far more than the model (2.6 MB) needs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Peak RSS bound for one run. The runs measure 7-12 MB in the release build; ASan's shadow memory and
// allocator add tens of MB. A hostile size or id (2^30 tokens, 2^40-element tensors) would need GBs.
#if defined(__SANITIZE_ADDRESS__)
constexpr long kMaxRssKb = 256 * 1024;
#else
constexpr long kMaxRssKb = 64 * 1024;
#endif

struct ChildRun {
  bool exited = false;  // false: killed by a signal (or by the watchdog)
  int code = -1, signal = 0;
  long max_rss_kb = 0;
  std::string err;
};

// Runs the CLI with `args` (no shell), stdout discarded, stderr captured; wait4 gives the child's peak RSS
// (Linux counts the forking test process's RSS at fork time too - a few MB - so the bound is conservative).
ChildRun run_cli(const std::vector<std::string>& args, const std::string& err_path) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open("/dev/null", O_WRONLY),
              err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    std::vector<char*> argv{const_cast<char*>(NIBBLE_CLI)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(NIBBLE_CLI, argv.data());
    _exit(127);
  }
  ChildRun r;
  int status = 0;
  struct rusage ru {};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (wait4(pid, &status, WNOHANG, &ru) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {  // a hang: kill it, and the case fails below
      kill(pid, SIGKILL);
      wait4(pid, &status, 0, &ru);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  r.exited = WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -1;
  r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  r.max_rss_kb = ru.ru_maxrss;
  r.err = test::read_bytes(err_path);
  return r;
}

json read_json(const std::string& path) {
  return json::parse(test::read_bytes(path));
}
void write_json(const std::string& path, const json& j) {
  fs::remove(path);  // copies of the shared model are read-only
  test::write_bytes(path, j.dump(1));
}
void edit_json(const std::string& path, const std::function<void(json&)>& f) {
  json j = read_json(path);
  f(j);
  write_json(path, j);
}
void write_text(const std::string& path, const std::string& s) {
  fs::remove(path);
  test::write_bytes(path, s);
}

// The safetensors file as (header JSON, data bytes).
std::pair<json, std::string> split_safetensors(const std::string& path) {
  const std::string b = test::read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  return {json::parse(b.substr(8, n)), b.substr(8 + n)};
}
std::string join_safetensors(const json& header, const std::string& data) {
  const std::string h = header.dump();
  const uint64_t n = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + h + data;
}
// Rewrites the header (data unchanged).
void edit_header(const std::string& path, const std::function<void(json&)>& f) {
  auto [h, data] = split_safetensors(path);
  f(h);
  write_text(path, join_safetensors(h, data));
}
// Rewrites the tensors (through nibble's own writer), e.g. to change one quant_state blob.
void edit_tensors(const std::string& path, const std::function<void(NamedTensors&)>& f) {
  NamedTensors ts;
  {
    const SafetensorsFile sf = SafetensorsFile::open(path);
    for (const auto& t : sf.tensors()) ts.emplace_back(t.name, sf.get(t.name).clone());
  }
  f(ts);
  fs::remove(path);
  save_safetensors(path, ts);
}
Tensor bytes_tensor(const std::string& s) {
  return Tensor::from_bytes(DType::UInt8, {static_cast<int64_t>(s.size())},
                            {reinterpret_cast<const uint8_t*>(s.data()), s.size()});
}
const std::string kQs = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4";
// Replaces one field of the packed quant_state JSON of kQs.
std::function<void(const std::string&)> quant_state_field(const std::string& key, const json& value) {
  return [key, value](const std::string& dir) {
    edit_tensors(dir + "/model.safetensors", [&](NamedTensors& ts) {
      for (auto& [n, t] : ts)
        if (n == kQs) {
          json j = json::parse(std::string(reinterpret_cast<const char*>(t.raw()), t.nbytes()));
          j[key] = value;
          t = bytes_tensor(j.dump());
        }
    });
  };
}

enum class Base { Example, Bnb, Int8 };
// The checkpoint each base copies.
std::string base_dir(Base b) {
  if (b == Base::Example) return test::example_model();
  return test::golden_dir() +
         (b == Base::Bnb ? "/checkpoints/tiny-llama-bnb-nf4-dq" : "/checkpoints/tiny-llama-bnb-int8");
}
enum class Cmd { Generate, Info, Quantize };

struct Case {
  std::string name;
  Base base;
  Cmd cmd;
  std::function<void(const std::string& dir)> corrupt;
  std::vector<std::string> expect;  // fragments of the one error line (the file first)
  std::string prompt = "Once upon a time";
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

std::function<void(const std::string&)> set_config(const std::string& file, const json::json_pointer& ptr,
                                                   const json& v) {
  return
      [file, ptr, v](const std::string& dir) { edit_json(dir + "/" + file, [&](json& j) { j[ptr] = v; }); };
}
std::function<void(const std::string&)> replace_file(const std::string& file, const std::string& text) {
  return [file, text](const std::string& dir) { write_text(dir + "/" + file, text); };
}

std::vector<Case> cases() {
  using P = json::json_pointer;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  std::vector<Case> c;
  auto add = [&](std::string name, Base b, Cmd cmd, std::function<void(const std::string&)> f,
                 std::vector<std::string> expect) {
    c.push_back({std::move(name), b, cmd, std::move(f), expect});
  };
  const Base E = Base::Example, B = Base::Bnb;
  const Cmd G = Cmd::Generate, I = Cmd::Info, Q = Cmd::Quantize;

  // ---- config.json
  add("config_not_json", E, G, replace_file("config.json", "{\"hidden_size\": "),
      {"config.json: invalid JSON"});
  add("config_empty", E, G, replace_file("config.json", ""), {"config.json: invalid JSON"});
  add("config_array", E, G, replace_file("config.json", "[1, 2]"), {"config.json must be an object"});
  add("config_deep", E, G, replace_file("config.json", deep), {"config.json", "nesting deeper than 128"});
  add("config_huge_file", E, G,  // checked before reading: the file is never loaded
      [](const std::string& d) { write_text(d + "/config.json", std::string((64 << 20) + 1, ' ')); },
      {"config.json", "64 MiB limit"});
  add("config_hidden_string", E, G, set_config("config.json", P("/hidden_size"), "128"),
      {"config.json: 'hidden_size' must be an integer", "found string \"128\""});
  add("config_hidden_huge", E, G, set_config("config.json", P("/hidden_size"), int64_t{1} << 40),
      {"config.json: 'hidden_size'", "in [1, 1048576]", "1099511627776"});
  add("config_vocab_x_hidden", E, G,
      [](const std::string& d) {
        edit_json(d + "/config.json", [](json& j) {
          j["vocab_size"] = 1 << 24;
          j["hidden_size"] = 1 << 20;
        });
      },
      {"config.json", "vocab_size * hidden_size", "exceeds 2147483648"});
  add("config_layers_negative", E, G, set_config("config.json", P("/num_hidden_layers"), -1),
      {"config.json: 'num_hidden_layers'", "found -1"});
  add("config_heads_zero", E, G, set_config("config.json", P("/num_attention_heads"), 0),
      {"config.json: 'num_attention_heads'", "found 0"});
  add("config_kv_heads_not_divisor", E, G, set_config("config.json", P("/num_key_value_heads"), 3),
      {"config.json: 'num_attention_heads'", "multiple of num_key_value_heads"});
  add("config_head_dim_odd", E, G, set_config("config.json", P("/head_dim"), 7),
      {"config.json: 'head_dim'", "even"});
  add("config_positions_huge", E, G,
      set_config("config.json", P("/max_position_embeddings"), int64_t{1} << 40),
      {"config.json: 'max_position_embeddings'"});
  add("config_rope_factor_string", E, G,
      set_config("config.json", P("/rope_scaling"), {{"type", "linear"}, {"factor", "2"}}),
      {"config.json: 'rope_scaling.factor' must be a number", "found string \"2\""});
  add("config_rope_type_unknown", E, G,
      set_config("config.json", P("/rope_scaling"), {{"rope_type", "bogus"}}),
      {"config.json", "rope_scaling type 'bogus'"});
  add("config_rope_scaling_list", E, G, set_config("config.json", P("/rope_scaling"), json::array({1})),
      {"config.json: 'rope_scaling' must be an object"});
  add("config_rms_eps_negative", E, G, set_config("config.json", P("/rms_norm_eps"), -1.0),
      {"config.json: 'rms_norm_eps'", "-1"});
  add("config_rope_theta_zero", E, G, set_config("config.json", P("/rope_theta"), 0),
      {"config.json: 'rope_theta'"});
  add("config_dtype_int8", E, G, set_config("config.json", P("/torch_dtype"), "int8"),
      {"config.json: 'torch_dtype' is 'int8'"});
  add("config_dtype_number", E, G, set_config("config.json", P("/torch_dtype"), 32),
      {"config.json: 'torch_dtype' must be a string"});
  add("config_model_type_missing", E, G,
      [](const std::string& d) { edit_json(d + "/config.json", [](json& j) { j.erase("model_type"); }); },
      {"config.json: 'model_type' is missing"});
  add("config_model_type_number", E, G, set_config("config.json", P("/model_type"), 7),
      {"config.json: 'model_type' must be a string"});
  add("config_tie_string", E, G, set_config("config.json", P("/tie_word_embeddings"), "yes"),
      {"config.json: 'tie_word_embeddings' must be true or false"});
  add("config_architectures_number", E, G, set_config("config.json", P("/architectures"), json::array({5})),
      {"config.json: 'architectures[0]' must be a string"});
  add("config_eos_out_of_vocab", E, G,
      [](const std::string& d) {
        fs::remove(d + "/generation_config.json");
        edit_json(d + "/config.json", [](json& j) { j["eos_token_id"] = 1 << 30; });
      },
      {"config.json: 'eos_token_id'", "in [0, 2047]"});
  auto qwen2_with = [](const char* key, json v) {
    return [key, v](const std::string& d) {
      edit_json(d + "/config.json", [&](json& j) {
        j["model_type"] = "qwen2";
        j["use_sliding_window"] = true;
        j["sliding_window"] = 8;
        j[key] = v;
      });
    };
  };
  add("config_layer_types_short", E, G, qwen2_with("layer_types", {"full_attention"}),
      {"config.json: 'layer_types' has 1 entries, expected num_hidden_layers (2)"});
  add("config_layer_types_bogus", E, G, qwen2_with("layer_types", {"full_attention", "banana"}),
      {"config.json: 'layer_types[1]' is 'banana'"});
  add("config_sliding_window_zero", E, G, qwen2_with("sliding_window", 0), {"config.json: 'sliding_window'"});
  add("config_partial_rotary_odd", E, G,
      [](const std::string& d) {
        edit_json(d + "/config.json", [](json& j) {
          j["model_type"] = "phi3";
          j["partial_rotary_factor"] = 0.05;
        });
      },
      {"config.json: 'partial_rotary_factor'", "rotary dims of head_dim 16"});
  add("config_gemma2_activation", E, G,
      [](const std::string& d) {
        edit_json(d + "/config.json", [](json& j) {
          j["model_type"] = "gemma2";
          j["hidden_activation"] = "relu";
        });
      },
      {"config.json: 'hidden_activation' is 'relu'"});
  add("generation_config_eos_string", E, G, set_config("generation_config.json", P("/eos_token_id"), "2"),
      {"generation_config.json: 'eos_token_id' must be an integer"});
  add("generation_config_eos_list", E, G, set_config("generation_config.json", P("/eos_token_id"), {1, -5}),
      {"generation_config.json: 'eos_token_id[1]'", "found -5"});
  add("generation_config_not_json", E, G, replace_file("generation_config.json", "{,}"),
      {"generation_config.json: invalid JSON"});
  add("config_hidden_vs_weights", E, G, set_config("config.json", P("/hidden_size"), 64),
      {"model.safetensors", "tensor 'lm_head.weight' has shape [2048, 128], expected [2048, 64]"});

  // ---- tokenizer.json
  add("tokenizer_truncated", E, G,
      [](const std::string& d) {
        const std::string t = test::read_bytes(d + "/tokenizer.json");
        write_text(d + "/tokenizer.json", t.substr(0, t.size() / 2));
      },
      {"tokenizer.json: invalid JSON"});
  add("tokenizer_deep", E, G, replace_file("tokenizer.json", deep),
      {"tokenizer.json", "nesting deeper than 128"});
  add("tokenizer_vocab_id_2p30", E, G, set_config("tokenizer.json", P("/model/vocab/!"), 1 << 30),
      {"tokenizer.json: 'model.vocab[\"!\"]'", "1073741824", "number of vocab entries"});
  add("tokenizer_vocab_id_string", E, G, set_config("tokenizer.json", P("/model/vocab/!"), "4"),
      {"tokenizer.json: 'model.vocab[\"!\"]' must be an integer"});
  add("tokenizer_added_id_2p30", E, G, set_config("tokenizer.json", P("/added_tokens/2/id"), 1 << 30),
      {"tokenizer.json: 'added_tokens[2].id'", "1073741824"});
  add("tokenizer_added_special_string", E, G,
      set_config("tokenizer.json", P("/added_tokens/0/special"), "yes"),
      {"tokenizer.json: 'added_tokens[0].special' must be true or false"});
  add("tokenizer_merge_number", E, G, set_config("tokenizer.json", P("/model/merges/0"), 5),
      {"tokenizer.json: 'model.merges[0]'"});
  add("tokenizer_model_unigram", E, G, set_config("tokenizer.json", P("/model/type"), "Unigram"),
      {"tokenizer.json: 'model.type' is 'Unigram'"});
  add("tokenizer_model_missing", E, G,
      [](const std::string& d) { edit_json(d + "/tokenizer.json", [](json& j) { j.erase("model"); }); },
      {"tokenizer.json: 'model' is missing"});
  add("tokenizer_normalizer_bogus", E, G,
      set_config("tokenizer.json", P("/normalizer/normalizers/1/type"), "Bogus"),
      {"tokenizer.json: 'normalizer.normalizers[1].type' is 'Bogus'"});
  add("tokenizer_bad_regex", E, G,
      set_config("tokenizer.json", P("/pre_tokenizer"),
                 {{"type", "Split"}, {"pattern", {{"Regex", "(["}}}, {"behavior", "Isolated"}}),
      {"tokenizer.json: 'pre_tokenizer.pattern' is an invalid regex"});
  add("tokenizer_strip_start_huge", E, G,
      set_config("tokenizer.json", P("/decoder/decoders/3/start"), int64_t{1} << 40),
      {"tokenizer.json: 'decoder.decoders[3].start'", "in [0, 1024]"});
  add("tokenizer_template_id_out_of_vocab", E, G,
      set_config("tokenizer.json", P("/post_processor/special_tokens/<|start_story|>/ids/0"), 99999),
      {"tokenizer.json: 'post_processor.special_tokens[\"<|start_story|>\"].ids[0]'", "99999"});

  // (a tokenizer class whose pipeline transformers takes from tokenizer.json: for LlamaTokenizer it builds
  // its own Metaspace pre-tokenizer and never runs this one)
  add("tokenizer_regex_backtracking", E, G,
      [split = set_config("tokenizer.json", P("/pre_tokenizer"),
                          {{"type", "Split"}, {"pattern", {{"Regex", "(a+)+$"}}}, {"behavior", "Isolated"}}),
       cls = set_config("tokenizer_config.json", P("/tokenizer_class"), "PreTrainedTokenizerFast")](
          const std::string& d) {
        split(d);
        cls(d);
      },
      {"tokenizer.json: 'pre_tokenizer.pattern'", "regex matching failed"});
  c.back().prompt = std::string(64, 'a') + "!";

  // ---- tokenizer_config.json
  add("tokenizer_config_bos_number", E, G, set_config("tokenizer_config.json", P("/bos_token"), 5),
      {"tokenizer_config.json: 'bos_token' must be a token string"});
  add("tokenizer_config_eos_content_number", E, G,
      set_config("tokenizer_config.json", P("/eos_token"), {{"content", 3}}),
      {"tokenizer_config.json: 'eos_token.content' must be a string"});
  add("tokenizer_config_not_json", E, G, replace_file("tokenizer_config.json", "{\"bos_token\": tru"),
      {"tokenizer_config.json: invalid JSON"});
  add("tokenizer_config_string", E, G, replace_file("tokenizer_config.json", "\"x\""),
      {"tokenizer_config.json must be an object"});

  // ---- safetensors header and data (example model)
  auto set_len = [](uint64_t n) {
    return [n](const std::string& d) {
      std::string b = test::read_bytes(d + "/model.safetensors");
      std::memcpy(b.data(), &n, 8);
      write_text(d + "/model.safetensors", b);
    };
  };
  auto set_byte = [](size_t at, char c) {  // one byte of the header text (it starts at offset 8)
    return [at, c](const std::string& d) {
      std::string b = test::read_bytes(d + "/model.safetensors");
      b[at] = c;
      write_text(d + "/model.safetensors", b);
    };
  };
  add("st_header_len_2p62", E, G, set_len(uint64_t{1} << 62),
      {"model.safetensors", "header length", "100 MB limit"});
  add("st_header_len_past_file", E, G, set_len(50'000'000), {"model.safetensors", "exceeds the file size"});
  add("st_header_not_json", E, G, set_byte(8, 'x'), {"model.safetensors", "header: invalid JSON"});
  add("st_truncated", E, G,
      [](const std::string& d) {
        const std::string b = test::read_bytes(d + "/model.safetensors");
        write_text(d + "/model.safetensors", b.substr(0, b.size() - 1000));
      },
      {"model.safetensors", "past the data section"});
  add("st_offsets_past_data", E, G,
      [](const std::string& d) {
        edit_header(d + "/model.safetensors",
                    [](json& h) { h["model.norm.weight"]["data_offsets"][1] = uint64_t{1} << 40; });
      },
      {"model.safetensors", "tensor 'model.norm.weight'", "past the data section"});
  add("st_shape_overflow", E, G,
      [](const std::string& d) {
        edit_header(d + "/model.safetensors", [](json& h) {
          h["model.norm.weight"]["shape"] = {uint64_t{1} << 32, uint64_t{1} << 32, 16};
        });
      },
      {"model.safetensors", "tensor 'model.norm.weight'", "overflows"});
  add("st_dtype_unknown", E, G,
      [](const std::string& d) {
        edit_header(d + "/model.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "F8"; });
      },
      {"model.safetensors", "tensor 'model.norm.weight'", "unknown dtype 'F8'"});
  add("st_shape_vs_config", E, G,
      [](const std::string& d) {
        edit_tensors(d + "/model.safetensors", [](NamedTensors& ts) {
          for (auto& [n, t] : ts)
            if (n == "model.norm.weight") t = Tensor::empty(DType::Float32, {3});
        });
      },
      {"model.safetensors", "tensor 'model.norm.weight' has shape [3]"});
  add("st_missing_tensor", E, G,
      [](const std::string& d) {
        edit_tensors(d + "/model.safetensors", [](NamedTensors& ts) {
          std::erase_if(ts, [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
        });
      },
      {"model.layers.1.mlp.up_proj.weight"});
  add("st_quantize_header_not_json", E, Q, set_byte(9, '{'), {"model.safetensors", "header: invalid JSON"});

  // ---- model.safetensors.index.json
  auto index = [](const json& j) {
    return [j](const std::string& d) { write_text(d + "/model.safetensors.index.json", j.dump()); };
  };
  add("index_not_json", E, G, replace_file("model.safetensors.index.json", "{\"weight_map\": {"),
      {"model.safetensors.index.json: invalid JSON"});
  add("index_no_weight_map", E, G, index({{"metadata", {{"total_size", 1}}}}),
      {"model.safetensors.index.json: 'weight_map' is missing"});
  add("index_shard_number", E, G, index({{"weight_map", {{"model.norm.weight", 5}}}}),
      {"model.safetensors.index.json: 'weight_map[\"model.norm.weight\"]' must be a string"});
  add("index_shard_escapes_dir", E, G,
      index({{"weight_map", {{"model.norm.weight", "../model.safetensors"}}}}),
      {"model.safetensors.index.json: 'weight_map[\"model.norm.weight\"]'", "same directory"});
  add("index_tensor_not_in_shard", E, G,
      index({{"weight_map", {{"model.norm.weight", "model.safetensors"}, {"ghost", "model.safetensors"}}}}),
      {"model.safetensors.index.json", "'ghost'", "not found"});
  add("index_quantize_deep", E, Q, replace_file("model.safetensors.index.json", deep),
      {"model.safetensors.index.json", "nesting deeper"});

  // ---- bnb-4bit checkpoint: quant_state blobs and quantization_config
  add("qs_not_json", B, I,
      [](const std::string& d) {
        edit_tensors(d + "/model.safetensors", [](NamedTensors& ts) {
          for (auto& [n, t] : ts)
            if (n == kQs) t = bytes_tensor("{\"quant_type\": ");
        });
      },
      {"model.safetensors", "model.layers.0.self_attn.q_proj",
       "quant_state.bitsandbytes__nf4: invalid JSON"});
  add("qs_deep", B, I,
      [](const std::string& d) {
        edit_tensors(d + "/model.safetensors", [](NamedTensors& ts) {
          for (auto& [n, t] : ts)
            if (n == kQs) t = bytes_tensor(std::string(5000, '[') + std::string(5000, ']'));
        });
      },
      {"model.safetensors", "quant_state.bitsandbytes__nf4", "nesting deeper"});
  add("qs_blocksize_48", B, I, quant_state_field("blocksize", 48),
      {"model.safetensors", "quant_state.bitsandbytes__nf4: 'blocksize' is 48"});
  add("qs_blocksize_string", B, I, quant_state_field("blocksize", "64"),
      {"quant_state.bitsandbytes__nf4: 'blocksize' must be an integer"});
  add("qs_shape_huge", B, I, quant_state_field("shape", {int64_t{1} << 40, int64_t{1} << 40}),
      {"quant_state.bitsandbytes__nf4: 'shape'"});
  add("qs_shape_mismatch", B, I, quant_state_field("shape", {128, 64}), {"model.layers.0.self_attn.q_proj"});
  add("qs_shape_1d", B, I, quant_state_field("shape", {4096}),
      {"model.safetensors", "model.layers.0.self_attn.q_proj", "2-D"});
  add("qs_packed_weight_short", B, I,
      [](const std::string& d) {
        edit_tensors(d + "/model.safetensors", [](NamedTensors& ts) {
          for (auto& [n, t] : ts)
            if (n == "model.layers.0.self_attn.q_proj.weight") t = Tensor::empty(DType::UInt8, {7, 1});
        });
      },
      {"model.safetensors", "model.layers.0.self_attn.q_proj", "packed 4-bit weight has 7 bytes"});
  add("qs_quant_type_nf5", B, I, quant_state_field("quant_type", "nf5"),
      {"quant_state.bitsandbytes__nf4: 'quant_type' is 'nf5'"});
  add("qs_dtype_int8", B, I, quant_state_field("dtype", "int8"),
      {"quant_state.bitsandbytes__nf4: 'dtype' is 'int8'"});
  add("qs_nested_offset_string", B, I, quant_state_field("nested_offset", "x"),
      {"quant_state.bitsandbytes__nf4: 'nested_offset' must be a number"});
  add("qcfg_quant_type_nf5", B, I,
      set_config("config.json", P("/quantization_config/bnb_4bit_quant_type"), "nf5"),
      {"config.json: 'quantization_config'", "nf5"});
  add("qcfg_load_in_4bit_string", B, I,
      set_config("config.json", P("/quantization_config/load_in_4bit"), "yes"),
      {"config.json: 'quantization_config'", "load_in_4bit"});
  add("qcfg_not_object", B, I, set_config("config.json", P("/quantization_config"), 4),
      {"config.json: 'quantization_config'", "JSON object"});

  // ---- bnb 8-bit checkpoint (LLM.int8, saved by transformers)
  const Base I8 = Base::Int8;
  const std::string q8 = "model.layers.0.self_attn.q_proj";
  auto drop = [](const std::string& name) {
    return [name](const std::string& d) {
      edit_tensors(d + "/model.safetensors", [&](NamedTensors& ts) {
        std::erase_if(ts, [&](const auto& t) { return t.first == name; });
      });
    };
  };
  auto replace = [](const std::string& name, Tensor v) {
    return [name, v](const std::string& d) {
      edit_tensors(d + "/model.safetensors", [&](NamedTensors& ts) {
        for (auto& [n, t] : ts)
          if (n == name) t = v;
      });
    };
  };
  add("int8_scb_missing", I8, I, drop(q8 + ".SCB"),
      {"model.safetensors", "tensor '" + q8 + ".weight' is an 8-bit weight but '" + q8 + ".SCB'", "missing"});
  add("int8_scb_wrong_shape", I8, I, replace(q8 + ".SCB", Tensor::empty(DType::Float32, {7})),
      {"model.safetensors", q8 + ".SCB' must be float32 or float16 of shape [64]", "[7]"});
  add("int8_scb_int", I8, I, replace(q8 + ".SCB", Tensor::empty(DType::Int32, {64})),
      {"model.safetensors", q8 + ".SCB' must be float32 or float16"});
  add("int8_weight_format_col32", I8, I,
      replace(q8 + ".weight_format", Tensor::from_vector<uint8_t>(DType::UInt8, {}, {1})),
      {"model.safetensors", q8 + ".weight_format' must be 0", "value 1"});
  add("int8_weight_float", I8, I, replace(q8 + ".weight", Tensor::empty(DType::Float32, {64, 64})),
      {"model.safetensors", q8 + ".weight' must be a 2-D int8 weight", "float32"});
  add("int8_weight_wrong_shape", I8, I, replace(q8 + ".weight", Tensor::empty(DType::Int8, {64, 32})),
      {"layer 0 has a linear weight of shape [64, 32], expected [64, 64]"});
  add("int8_config_4bit", I8, I,
      [](const std::string& d) {
        edit_json(d + "/config.json", [](json& j) {
          j["quantization_config"]["load_in_8bit"] = false;
          j["quantization_config"]["_load_in_8bit"] = false;
          j["quantization_config"]["load_in_4bit"] = true;
          j["quantization_config"]["_load_in_4bit"] = true;
        });
      },
      {"model.safetensors", ".SCB' is an 8-bit row scale", "not load_in_8bit"});
  add("int8_has_fp16_weight", I8, I,
      set_config("config.json", P("/quantization_config/llm_int8_has_fp16_weight"), true),
      {"config.json: 'quantization_config'", "llm_int8_has_fp16_weight=True"});
  add("int8_threshold_negative", I8, I,
      set_config("config.json", P("/quantization_config/llm_int8_threshold"), -1.0),
      {"config.json: 'quantization_config'", "llm_int8_threshold must be >= 0"});
  return c;
}

class HostileInput : public ::testing::TestWithParam<Case> {};

TEST_P(HostileInput, OneClearLineBoundedMemory) {
  const Case& k = GetParam();
  test::TempDir tmp;
  const std::string dir = tmp / "model";
  const std::string src = base_dir(k.base);
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(src))
    fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
  k.corrupt(dir);
  std::vector<std::string> args;
  switch (k.cmd) {
    case Cmd::Generate:
      args = {"generate", dir, "--prompt", k.prompt, "-n", "2", "-q"};
      break;
    case Cmd::Info:
      args = {"info", dir};
      break;
    case Cmd::Quantize:
      args = {"quantize", dir, tmp / "out", "-q"};
      break;
  }
  const ChildRun r = run_cli(args, tmp / "stderr");
  ASSERT_TRUE(r.exited) << "killed by signal " << r.signal << "; stderr: " << r.err;
  EXPECT_NE(r.code, 0) << r.err;
  // one line: "nibble: error: <file>...: <what>"
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_EQ(r.err.rfind("nibble: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(dir), std::string::npos) << "names no file of the model: " << r.err;
  for (const auto& f : k.expect) EXPECT_NE(r.err.find(f), std::string::npos) << r.err << "  lacks: " << f;
  EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << r.err;
  RecordProperty("max_rss_kb", std::to_string(r.max_rss_kb));
  EXPECT_LT(r.max_rss_kb, kMaxRssKb) << "peak RSS " << r.max_rss_kb << " KB";
  if (k.cmd == Cmd::Quantize) {
    EXPECT_FALSE(fs::exists(tmp / "out")) << "partial output left";
  }
}

INSTANTIATE_TEST_SUITE_P(Corpus, HostileInput, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(HostileInput, CorpusIsLargeAndCoversEveryFile) {
  const auto all = cases();
  EXPECT_GE(all.size(), 40u);
  for (const char* f :
       {"config_", "generation_config_", "tokenizer_", "tokenizer_config_", "st_", "index_", "qs_", "qcfg_"})
    EXPECT_TRUE(std::any_of(all.begin(), all.end(), [&](const Case& c) { return c.name.rfind(f, 0) == 0; }))
        << f;
}

// The uncorrupted copies run cleanly under the same harness (so the cases fail for their corruption only).
TEST(HostileInput, PristineCopiesSucceed) {
  for (Base b : {Base::Example, Base::Bnb, Base::Int8}) {
    test::TempDir tmp;
    const std::string dir = tmp / "model";
    const std::string src = base_dir(b);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(src))
      fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
    const ChildRun r = run_cli(
        b == Base::Example
            ? std::vector<std::string>{"generate", dir, "--prompt", "Once upon a time", "-n", "2", "-q"}
            : std::vector<std::string>{"info", dir},
        tmp / "stderr");
    EXPECT_TRUE(r.exited);
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_LT(r.max_rss_kb, kMaxRssKb);
  }
}

}  // namespace
