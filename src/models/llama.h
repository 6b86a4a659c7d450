// The llama-family decoder (llama, mistral, qwen2, qwen3, qwen3_moe, phi3, gemma 1-3) assembled from nn
// modules: embedding, per layer RMSNorm -> Attention (RoPE, GQA) -> residual -> RMSNorm -> GatedMLP ->
// residual, final RMSNorm, lm_head (or the tied embedding).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/causal_lm.h"
#include "models/tensor_source.h"
#include "nibble/bitsandbytes_config.h"
#include "nn/attention.h"
#include "nn/linear.h"
#include "nn/mlp.h"
#include "nn/moe.h"
#include "nn/rms_norm.h"
#include "nn/rotary.h"

namespace nibble::models {

struct LlamaConfig {
  std::string model_type;
  int64_t rotary_dim = 0;  // dims of each head the rotary embedding turns (phi3's partial_rotary_factor)
  // Gemma (gemma = true for gemma and gemma2): embedding scaled by sqrt(hidden), RMSNorm (1 + w), GELU-tanh
  // gate. Gemma 2 (gemma2) adds norms around the attention and MLP outputs, the attention scale
  // query_pre_attn_scalar^-0.5 and score / logit soft-capping.
  bool gemma = false, gemma2 = false, gemma3 = false;  // gemma3 (gemma3_text) implies gemma2's pieces
  double local_rope_theta = 0;  // gemma3: sliding layers' rotary base (0: one rotary embedding for all)
  double query_pre_attn_scalar = 0, attn_softcap = 0, final_softcap = 0;
  std::string hidden_act = "silu";
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0,
          max_positions = 2048;
  double rms_eps = 1e-6;
  nn::RopeConfig rope;  // the rotary embedding's type and scaling, read straight into what it takes
  bool tie_word_embeddings = false, attention_bias = false, mlp_bias = false;
  // per layer: the sliding window (a query sees the `window` positions ending at its own), 0 = full causal
  std::vector<int64_t> window;
  // qwen3_moe: sparse MLP blocks (router + experts) on the layers moe_layer marks, the dense MLP elsewhere
  int64_t experts = 0, experts_per_tok = 0, moe_intermediate = 0;
  bool norm_topk_prob = false;
  std::vector<bool> moe_layer;

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& path);
};

struct LlamaLayer {
  nn::RMSNorm input_norm, post_norm;
  // Gemma 2: post_norm normalizes the attention output; these wrap the MLP (pre: its input, post: its output)
  std::optional<nn::RMSNorm> pre_ff_norm, post_ff_norm;
  nn::Attention attn;
  nn::GatedMLP mlp;
  std::optional<nn::SparseMoE> moe;  // qwen3_moe's sparse layers (then mlp is empty)
  // The layer's linear modules that exist (phi3 has fused qkv_proj / gate_up_proj instead of the separate
  // ones), with their names after "model.layers.N.", in transformers' state-dict order.
  std::vector<std::pair<const char*, std::unique_ptr<nn::LinearBase>*>> linears();
  std::vector<std::pair<const char*, const nn::LinearBase*>> linears() const;
};

struct LoadOptions {
  std::optional<BitsAndBytesConfig> quant;  // quantize-on-load (ignored for pre-quantized checkpoints)
  DType dtype = DType::Float32;
  bool quiet = false;
  bool int8_activations = false;  // FromPretrainedOptions::activations == Int8
};

class LlamaModel final : public CausalLM {
 public:
  LlamaModel(const nlohmann::json& config, const TensorSource& src, const LoadOptions& opt);

  void forward(std::span<const int32_t> ids, int64_t start, std::span<const nn::KVLayer> kv,
               nn::Workspace& ws, int64_t first_logit, float* logits) const override;
  void forward_batch(std::span<const SequenceStep> seqs, nn::Workspace& ws, float* logits) const override;
  int64_t num_layers() const override { return c_.layers; }
  int64_t kv_width() const override { return c_.kv_heads * c_.head_dim; }
  std::vector<int64_t> kv_windows() const override { return c_.window; }
  int64_t vocab_size() const override { return c_.vocab; }
  int64_t hidden_size() const override { return c_.hidden; }
  // The positions a sequence may use: max_position_embeddings, or with dynamic NTK rope (which grows its base
  // past it, with no limit in transformers) factor times that, the length the scaling is meant for.
  bool rotation_changes(int64_t start, int64_t end) const override {
    return rope_.regime_changes(start, end);
  }
  int64_t max_position_embeddings() const override {
    return c_.rope.type == "dynamic"
               ? static_cast<int64_t>(static_cast<double>(c_.max_positions) * c_.rope.factor)
               : c_.max_positions;
  }

  NamedTensors state_dict() const override;
  size_t memory_footprint() const override;
  size_t decode_bytes_per_token() const override;
  int64_t num_parameters() const override;
  void dequantize() override;
  bool quantized() const override;
  std::map<std::string, int64_t> kernel_paths(int64_t T) const override;
  const std::optional<BitsAndBytesConfig>& quantization_config() const override { return qcfg_; }
  const LlamaConfig& config() const { return c_; }
  // The modules themselves, for what works on them rather than through forward: adapters wrap linear layers
  // in place, training (src/train) runs its own forward and backward over them.
  std::vector<LlamaLayer>& layers() { return layers_; }
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  const Tensor& embedding() const { return embed_; }
  const nn::RMSNorm& final_norm() const { return norm_; }
  const nn::LinearBase& output_layer() const {
    return lm_head_ ? *lm_head_ : static_cast<const nn::LinearBase&>(*tied_head_);
  }
  // The rotary embedding layer `l` turns its queries and keys by (gemma3's sliding layers have their own).
  const nn::RotaryEmbedding& rotary(int64_t l) const {
    return c_.local_rope_theta > 0 && layers_[static_cast<size_t>(l)].attn.window > 0 ? rope_local_ : rope_;
  }

 private:
  void run(std::span<const SequenceStep> seqs, nn::Workspace& ws, int64_t first_logit, float* logits) const;
  std::vector<const nn::LinearBase*> linears() const;
  LlamaConfig c_;
  DType dtype_;
  Tensor embed_;
  bool embed_is_lm_head_ = false;  // the checkpoint stored only lm_head.weight (tied)
  std::vector<LlamaLayer> layers_;
  nn::RMSNorm norm_;
  std::unique_ptr<nn::LinearBase> lm_head_;  // null when tied to the embedding and not quantized
  std::unique_ptr<nn::Linear> tied_head_;    // the embedding as the output layer when lm_head_ is null
  nn::RotaryEmbedding rope_local_;           // gemma3's sliding layers
  nn::RotaryEmbedding rope_;
  std::optional<BitsAndBytesConfig> qcfg_;
};

}  // namespace nibble::models
