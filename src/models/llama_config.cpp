// config.json of the llama family (llama, mistral, qwen2) -> LlamaConfig.
#include "models/llama.h"
#include "nibble/error.h"

namespace nibble::models {
using nlohmann::json;

namespace {

int64_t get_int(const json& j, const char* key, const std::string& path, std::optional<int64_t> def = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    throw FormatError(path + ": missing integer '" + key + "'");
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0)
    throw FormatError(path + ": '" + key + "' must be a non-negative integer");
  return j[key].get<int64_t>();
}

double get_num(const json& j, const char* key, double def, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) throw FormatError(path + ": '" + key + "' must be a number");
  return j[key].get<double>();
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& path) {
  LlamaConfig c;
  c.model_type = j.value("model_type", "");
  c.hidden = get_int(j, "hidden_size", path);
  c.intermediate = get_int(j, "intermediate_size", path);
  c.layers = get_int(j, "num_hidden_layers", path);
  c.heads = get_int(j, "num_attention_heads", path);
  c.kv_heads = get_int(j, "num_key_value_heads", path, c.heads);
  c.vocab = get_int(j, "vocab_size", path);
  c.max_positions = get_int(j, "max_position_embeddings", path, 2048);
  if (c.heads == 0 || c.kv_heads == 0 || c.heads % c.kv_heads != 0)
    throw FormatError(path + ": num_attention_heads must be a positive multiple of num_key_value_heads");
  c.head_dim = get_int(j, "head_dim", path, c.hidden / c.heads);
  if (c.head_dim == 0 || c.head_dim % 2 != 0)
    throw FormatError(path + ": head_dim must be a positive even number");
  c.rms_eps = get_num(j, "rms_norm_eps", 1e-6, path);
  c.rope_theta = get_num(j, "rope_theta", 10000.0, path);
  // transformers 5 writes rope_parameters {rope_theta, rope_type, factor, ...}; 4.x writes rope_theta +
  // rope_scaling
  const json rp =
      j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"] : json();
  if (rp.is_object()) c.rope_theta = get_num(rp, "rope_theta", c.rope_theta, path);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.attention_bias = c.model_type == "qwen2" || j.value("attention_bias", false);
  c.mlp_bias = j.value("mlp_bias", false);
  const json rs = rp.is_object() ? rp : j.contains("rope_scaling") ? j["rope_scaling"] : json();
  if (rs.is_object()) {
    c.rope_type = rs.value("rope_type", rs.value("type", "default"));
    c.rope_factor = get_num(rs, "factor", 1.0, path);
    c.low_freq_factor = get_num(rs, "low_freq_factor", 1.0, path);
    c.high_freq_factor = get_num(rs, "high_freq_factor", 4.0, path);
    c.original_max_positions = get_int(rs, "original_max_position_embeddings", path, 8192);
    if (c.rope_type != "default" && c.rope_type != "linear" && c.rope_type != "llama3")
      throw NotSupportedError(path + ": rope_scaling type '" + c.rope_type +
                              "' is not supported (default, linear, llama3)");
  }
  return c;
}

}  // namespace nibble::models
