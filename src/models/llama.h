// The llama-family decoder (llama, mistral, qwen2): HF config.json fields, weights, and a float32 forward
// with a KV cache. RMSNorm, RoPE (rotate_half; default, linear and llama3 scaling), grouped-query attention,
// SiLU-gated MLP, tied embeddings.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/tensor_source.h"
#include "nibble/bitsandbytes_config.h"
#include "nibble/safetensors.h"
#include "nn/linear.h"

namespace nibble::models {

struct LlamaConfig {
  std::string model_type;
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0,
          max_positions = 2048;
  double rms_eps = 1e-6, rope_theta = 10000.0;
  std::string rope_type = "default";
  double rope_factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
  bool tie_word_embeddings = false, attention_bias = false, mlp_bias = false;

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& path);
};

struct LlamaLayer {
  Tensor input_norm, post_norm;                  // stored tensors (for save) ...
  std::vector<float> input_norm_f, post_norm_f;  // ... and as float32 for compute
  std::unique_ptr<nn::LinearBase> q, k, v, o, gate, up, down;
};

struct KVCache {
  std::vector<std::vector<float>> k, v;  // per layer: [pos, kv_heads * head_dim]
  int64_t length = 0;
};

class LlamaModel {
 public:
  struct LoadOptions {
    std::optional<BitsAndBytesConfig> quant;  // quantize-on-load (ignored for pre-quantized checkpoints)
    DType dtype = DType::Float32;
    bool quiet = false;
  };
  LlamaModel(const nlohmann::json& config, const TensorSource& src, const LoadOptions& opt);

  // Runs ids at positions cache.length.. and appends to the cache. Writes logits for every position
  // (all_logits) or only the last one into `logits`.
  void forward(const std::vector<int32_t>& ids, KVCache& cache, bool all_logits,
               std::vector<float>& logits) const;
  KVCache new_cache() const;

  NamedTensors state_dict() const;
  size_t memory_footprint() const;
  size_t decode_bytes_per_token() const;
  int64_t num_parameters() const;  // float-model count (quantized weights count their full shape)
  void dequantize();
  bool quantized() const;
  const LlamaConfig& config() const { return c_; }
  // The quantization config the weights carry (pre-quantized checkpoint or quantize-on-load).
  const std::optional<BitsAndBytesConfig>& quantization_config() const { return qcfg_; }

 private:
  std::unique_ptr<nn::LinearBase> load_linear(const TensorSource& ck, const std::string& prefix, bool bias,
                                              const LoadOptions& opt, bool prequantized) const;
  LlamaConfig c_;
  DType dtype_;
  Tensor embed_;
  bool embed_is_lm_head_ = false;  // the checkpoint stored only lm_head.weight (tied)
  std::vector<LlamaLayer> layers_;
  Tensor norm_;
  std::vector<float> norm_f_;
  std::unique_ptr<nn::LinearBase> lm_head_;  // null when tied to the embedding and not quantized
  std::vector<float> inv_freq_;
  std::optional<BitsAndBytesConfig> qcfg_;
};

}  // namespace nibble::models
