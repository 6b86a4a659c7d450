// config.json of the llama family (llama, mistral, qwen2) -> LlamaConfig.
#include <algorithm>

#include "io/json_field.h"
#include "models/llama.h"
#include "nibble/error.h"

namespace nibble::models {
using nlohmann::json;

namespace {
using jsonf::IntRange;
using jsonf::NumberRange;

// Bounds on declared sizes: far above any published model (hidden 16384, 126 layers, vocab 262144,
// 1M positions), low enough that products of them cannot overflow and a hostile config.json cannot make
// nibble plan absurd allocations before the checkpoint's tensor shapes are checked against it.
constexpr IntRange kHidden{1, 1 << 20}, kIntermediate{1, 1 << 22}, kLayers{0, 1 << 12}, kHeads{1, 1 << 12},
    kHeadDim{2, 1 << 12}, kVocab{1, 1 << 24}, kPositions{1, int64_t{1} << 26};
constexpr NumberRange kPositive{1e-30, 1e30};

// Sliding-window layers as transformers reads them. mistral, phi3: every layer when sliding_window is set.
// gemma2: layer_types' sliding layers, or without it every other layer starting with the first. gemma3_text:
// layer_types, or every sliding_window_pattern-th layer (default 6) full, the others sliding.
// qwen2: sliding_window only if use_sliding_window (false switches it off whatever sliding_window says), on
// the layers layer_types marks "sliding_attention", or without layer_types on layers >= max_window_layers
// (qwen3 alike). qwen3_moe: every layer when use_sliding_window. llama has no sliding window.
void read_sliding_windows(const json& j, const jsonf::JsonPath& root, LlamaConfig& c) {
  c.window.assign(static_cast<size_t>(c.layers), 0);
  static const char* kWindowed[] = {"mistral", "qwen2",  "qwen3",      "qwen3_moe",
                                    "phi3",    "gemma2", "gemma3_text"};
  if (std::none_of(std::begin(kWindowed), std::end(kWindowed),
                   [&](const char* t) { return c.model_type == t; }))
    return;
  constexpr IntRange kWindow{1, int64_t{1} << 26};
  int64_t sw = jsonf::get_int_or(j, "sliding_window", root, 0, kWindow);
  if (c.model_type == "mistral" || c.model_type == "phi3") {
    std::fill(c.window.begin(), c.window.end(), sw);
    return;
  }
  // Qwen3MoeConfig: sliding_window only if use_sliding_window, then on every layer
  if (c.model_type == "qwen3_moe") {
    if (jsonf::get_bool_or(j, "use_sliding_window", root, false))
      std::fill(c.window.begin(), c.window.end(), sw);
    return;
  }
  if (c.model_type == "gemma2") {  // layer_types, or alternating sliding / full starting with sliding
    if (!jsonf::find_array(j, "layer_types", root)) {
      for (int64_t i = 0; i < c.layers; ++i) c.window[static_cast<size_t>(i)] = i % 2 == 0 ? sw : 0;
      return;
    }
  } else if (c.model_type == "gemma3_text") {  // layer_types, or every sliding_window_pattern-th layer full
    if (!jsonf::find_array(j, "layer_types", root)) {
      const int64_t pattern = jsonf::get_int_or(
          j, "sliding_window_pattern", root,
          jsonf::get_int_or(j, "_sliding_window_pattern", root, 6, {1, 1 << 12}), {1, 1 << 12});
      for (int64_t i = 0; i < c.layers; ++i)
        c.window[static_cast<size_t>(i)] = (i + 1) % pattern != 0 ? sw : 0;
      return;
    }
  } else if (!jsonf::get_bool_or(j, "use_sliding_window", root, false)) {
    sw = 0;
  }
  if (const json* lt = jsonf::find_array(j, "layer_types", root)) {
    const jsonf::JsonPath at = root / "layer_types";
    if (static_cast<int64_t>(lt->size()) != c.layers)
      at.fail("has " + std::to_string(lt->size()) + " entries, expected num_hidden_layers (" +
              std::to_string(c.layers) + ")");
    for (size_t i = 0; i < lt->size(); ++i) {
      const std::string& t = jsonf::as_string((*lt)[i], at[i]);
      if (t != "sliding_attention" && t != "full_attention")
        at[i].fail("is '" + t + "', expected 'sliding_attention' or 'full_attention'");
      c.window[i] = t == "sliding_attention" ? sw : 0;
    }
    return;
  }
  const int64_t first = jsonf::get_int_or(j, "max_window_layers", root, 28, {0, int64_t{1} << 12});
  for (int64_t i = first; i < c.layers; ++i) c.window[static_cast<size_t>(i)] = sw;
}

// Qwen3-MoE's sparse blocks (Qwen3MoeConfig): num_experts (transformers 5 writes num_local_experts),
// num_experts_per_tok, moe_intermediate_size, norm_topk_prob; layer i is sparse unless it is in
// mlp_only_layers or (i + 1) % decoder_sparse_step != 0.
void read_moe(const json& j, const jsonf::JsonPath& root, LlamaConfig& c) {
  if (c.model_type != "qwen3_moe") return;
  constexpr IntRange kExperts{1, 1 << 16};
  c.experts = jsonf::get_int_or(j, "num_experts", root,
                                jsonf::get_int_or(j, "num_local_experts", root, 128, kExperts), kExperts);
  c.experts_per_tok = jsonf::get_int_or(j, "num_experts_per_tok", root, 8, {1, c.experts});
  c.moe_intermediate = jsonf::get_int_or(j, "moe_intermediate_size", root, 768, kIntermediate);
  c.norm_topk_prob = jsonf::get_bool_or(j, "norm_topk_prob", root, false);
  const int64_t step = jsonf::get_int_or(j, "decoder_sparse_step", root, 1, {1, int64_t{1} << 12});
  jsonf::checked_product({c.experts, c.moe_intermediate, c.hidden}, root,
                         "num_experts * moe_intermediate_size * hidden_size (experts)");
  c.moe_layer.assign(static_cast<size_t>(c.layers), false);
  for (int64_t i = 0; i < c.layers; ++i) c.moe_layer[static_cast<size_t>(i)] = (i + 1) % step == 0;
  if (const json* only = jsonf::find(j, "mlp_only_layers", root); only && !only->is_null()) {
    const jsonf::JsonPath at = root / "mlp_only_layers";
    const json& a = jsonf::as_array(*only, at);
    for (size_t i = 0; i < a.size(); ++i) {
      const int64_t l = jsonf::as_int(a[i], at[i], {0, int64_t{1} << 20});
      if (l < c.layers) c.moe_layer[static_cast<size_t>(l)] = false;
    }
  }
}

// A soft-capping value as transformers reads it: absent = the config class's default, null = off (0).
double softcap(const json& j, const char* key, const jsonf::JsonPath& root, double def) {
  if (!j.contains(key)) return def;
  if (j.at(key).is_null()) return 0.0;
  return jsonf::as_number(j.at(key), root / key, {1e-30, 1e30});
}

// Gemma and Gemma 2 (their config classes' defaults). Gemma reads hidden_act, where the legacy "gelu" means
// the tanh approximation (GemmaConfig rewrites it); Gemma 2 reads hidden_activation. Only the tanh GELU is
// built.
void read_gemma(const json& j, const jsonf::JsonPath& root, LlamaConfig& c) {
  c.gemma3 = c.model_type == "gemma3_text";
  c.gemma2 = c.model_type == "gemma2" || c.gemma3;
  c.gemma = c.gemma2 || c.model_type == "gemma";
  if (!c.gemma) return;
  const char* act_key = c.gemma2 ? "hidden_activation" : "hidden_act";  // (Gemma 3 as Gemma 2)
  c.hidden_act = jsonf::get_string_or(j, act_key, root, "gelu_pytorch_tanh");
  if (!c.gemma2 && c.hidden_act == "gelu") c.hidden_act = "gelu_pytorch_tanh";
  if (c.hidden_act != "gelu_pytorch_tanh")
    (root / act_key).fail("is '" + c.hidden_act + "'; nibble builds gelu_pytorch_tanh for " + c.model_type);
  if (!j.contains("tie_word_embeddings")) c.tie_word_embeddings = true;  // the Gemma configs' default
  if (!c.gemma2) return;
  c.query_pre_attn_scalar = jsonf::get_number_or(j, "query_pre_attn_scalar", root, 256.0, kPositive);
  // Gemma2Config defaults the soft-caps to 50 / 30, Gemma3TextConfig to None
  c.attn_softcap = softcap(j, "attn_logit_softcapping", root, c.gemma3 ? 0.0 : 50.0);
  c.final_softcap = softcap(j, "final_logit_softcapping", root, c.gemma3 ? 0.0 : 30.0);
}

// One rope dict (rope_parameters / rope_scaling, or one layer type's entry): type and scaling parameters.
void read_rope_dict(const json& rs, const jsonf::JsonPath& at, const std::string& path, LlamaConfig& c) {
  c.rope.type = jsonf::get_string_or(rs, "rope_type", at, jsonf::get_string_or(rs, "type", at, "default"));
  static const char* kTypes[] = {"default", "linear", "llama3", "yarn", "dynamic", "longrope"};
  if (std::none_of(std::begin(kTypes), std::end(kTypes), [&](const char* t) { return c.rope.type == t; }))
    throw NotSupportedError(path + ": rope_scaling type '" + c.rope.type +
                            "' is not supported (default, linear, llama3, yarn, dynamic, longrope)");
  c.rope.factor = jsonf::get_number_or(rs, "factor", at, 1.0, kPositive);
  c.rope.low_freq_factor = jsonf::get_number_or(rs, "low_freq_factor", at, 1.0, kPositive);
  c.rope.high_freq_factor = jsonf::get_number_or(rs, "high_freq_factor", at, 4.0, kPositive);
  c.rope.original_max_positions =
      jsonf::get_int_or(rs, "original_max_position_embeddings", at, 8192, kPositions);
  if (c.rope.type == "yarn") {
    // transformers: original_max_position_embeddings is required; a missing factor is max / original
    c.rope.original_max_positions = jsonf::get_int(rs, "original_max_position_embeddings", at, kPositions);
    c.rope.factor = jsonf::get_number_or(
        rs, "factor", at,
        static_cast<double>(c.max_positions) / static_cast<double>(c.rope.original_max_positions), kPositive);
    c.rope.attention_factor = jsonf::get_number_or(rs, "attention_factor", at, NAN, kPositive);
    c.rope.mscale = jsonf::get_number_or(rs, "mscale", at, 0.0, {0.0, 1e6});
    c.rope.mscale_all_dim = jsonf::get_number_or(rs, "mscale_all_dim", at, 0.0, {0.0, 1e6});
    c.rope.beta_fast = jsonf::get_number_or(rs, "beta_fast", at, 32.0, kPositive);
    c.rope.beta_slow = jsonf::get_number_or(rs, "beta_slow", at, 1.0, kPositive);
    c.rope.truncate = jsonf::get_bool_or(rs, "truncate", at, true);
  }
  if (c.rope.type == "longrope") {  // factor absent = max / original (0 here, resolved by the rotary module)
    c.rope.factor = jsonf::get_number_or(rs, "factor", at, 0.0, {0.0, 1e30});
    c.rope.attention_factor = jsonf::get_number_or(rs, "attention_factor", at, NAN, kPositive);
    c.rope.original_max_positions = jsonf::get_int(rs, "original_max_position_embeddings", at, kPositions);
    for (auto [key, dst] :
         {std::pair{"short_factor", &c.rope.short_factor}, {"long_factor", &c.rope.long_factor}}) {
      const json& a = jsonf::get_array(rs, key, at);
      dst->clear();
      for (size_t i = 0; i < a.size(); ++i) dst->push_back(jsonf::as_number(a[i], (at / key)[i], kPositive));
    }
  }
  if (c.rope.type == "llama3" && c.rope.high_freq_factor == c.rope.low_freq_factor)
    (at / "high_freq_factor").fail("must differ from low_freq_factor for llama3 rope scaling");
}

// Gemma 3's two rotary embeddings: full-attention layers use rope_theta (default 1e6) with the rope scaling,
// sliding layers rope_local_base_freq (default 1e4) unscaled. transformers 5 writes them as rope_parameters
// {"full_attention": {...}, "sliding_attention": {...}}; Hub configs as rope_theta, rope_local_base_freq and
// rope_scaling.
void read_gemma3_rope(const json& j, const jsonf::JsonPath& root, const std::string& path, LlamaConfig& c) {
  if (!c.gemma3) return;
  const json* rp = jsonf::find_object(j, "rope_parameters", root);
  if (rp && rp->contains("full_attention")) {
    const jsonf::JsonPath at = root / "rope_parameters";
    const json& full = jsonf::get_object(*rp, "full_attention", at);
    const json& local = jsonf::get_object(*rp, "sliding_attention", at);
    read_rope_dict(full, at / "full_attention", path, c);
    c.rope.theta = jsonf::get_number(full, "rope_theta", at / "full_attention", kPositive);
    c.local_rope_theta = jsonf::get_number(local, "rope_theta", at / "sliding_attention", kPositive);
    const std::string lt = jsonf::get_string_or(local, "rope_type", at / "sliding_attention", "default");
    if (lt != "default")
      throw NotSupportedError(path + ": rope_parameters.sliding_attention type '" + lt +
                              "' is not supported (default)");
    return;
  }
  c.rope.theta = jsonf::get_number_or(j, "rope_theta", root, 1e6, kPositive);
  c.local_rope_theta = jsonf::get_number_or(j, "rope_local_base_freq", root, 1e4, kPositive);
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& path) {
  const jsonf::JsonPath root(path);
  jsonf::as_object(j, root);
  LlamaConfig c;
  c.model_type = jsonf::get_string_or(j, "model_type", root, "");
  c.hidden = jsonf::get_int(j, "hidden_size", root, kHidden);
  c.intermediate = jsonf::get_int(j, "intermediate_size", root, kIntermediate);
  c.layers = jsonf::get_int(j, "num_hidden_layers", root, kLayers);
  c.heads = jsonf::get_int(j, "num_attention_heads", root, kHeads);
  c.kv_heads = jsonf::get_int_or(j, "num_key_value_heads", root, c.heads, {1, c.heads});
  c.vocab = jsonf::get_int(j, "vocab_size", root, kVocab);
  c.max_positions = jsonf::get_int_or(j, "max_position_embeddings", root, 2048, kPositions);
  c.rope.max_positions = c.max_positions;  // dynamic NTK and longrope scale against it
  if (c.heads % c.kv_heads != 0)
    (root / "num_attention_heads")
        .fail("(" + std::to_string(c.heads) + ") must be a multiple of num_key_value_heads (" +
              std::to_string(c.kv_heads) + ")");
  // Qwen3Config's head_dim defaults to 128, Gemma2Config's to 256, the others' to hidden / heads
  const int64_t default_head_dim =
      c.model_type == "qwen3" ? 128
      : c.model_type == "gemma2" || c.model_type == "gemma" || c.model_type == "gemma3_text"
          ? 256
          : std::max<int64_t>(c.hidden / c.heads, 1);
  c.head_dim = jsonf::get_int_or(j, "head_dim", root, default_head_dim, kHeadDim);
  if (c.head_dim % 2 != 0)
    (root / "head_dim").fail("must be a positive even number, found " + std::to_string(c.head_dim));
  // every weight the config declares holds at most 2^31 elements
  jsonf::checked_product({c.vocab, c.hidden}, root, "vocab_size * hidden_size (embed_tokens)");
  jsonf::checked_product({c.intermediate, c.hidden}, root, "intermediate_size * hidden_size (mlp)");
  jsonf::checked_product({c.heads, c.head_dim, c.hidden}, root,
                         "num_attention_heads * head_dim * hidden_size (q_proj)");
  c.rms_eps = jsonf::get_number_or(j, "rms_norm_eps", root, 1e-6, {0.0, 1.0});
  c.rope.theta = jsonf::get_number_or(j, "rope_theta", root, 10000.0, kPositive);
  // transformers 5 writes rope_parameters {rope_theta, rope_type, factor, ...}; 4.x writes rope_theta +
  // rope_scaling
  const json* rp = jsonf::find(j, "rope_parameters", root);
  if (rp && !rp->is_object()) rp = nullptr;  // transformers 5 also allows a per-layer-type mapping; ignored
  if (rp)
    c.rope.theta = jsonf::get_number_or(*rp, "rope_theta", root / "rope_parameters", c.rope.theta, kPositive);
  // partial_rotary_factor: phi3's rotary embedding reads it from rope_parameters, where transformers also
  // copies the top-level value Hub configs carry; the other families here rotate whole heads whatever it says
  double prf = 1.0;
  if (c.model_type == "phi3") {
    prf = jsonf::get_number_or(j, "partial_rotary_factor", root, 1.0, {1e-6, 1.0});
    if (rp)
      prf = jsonf::get_number_or(*rp, "partial_rotary_factor", root / "rope_parameters", prf, {1e-6, 1.0});
  }
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * prf);
  if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0)
    (root / "partial_rotary_factor")
        .fail("gives " + std::to_string(c.rotary_dim) + " rotary dims of head_dim " +
              std::to_string(c.head_dim) + ", expected a positive even number");
  c.tie_word_embeddings = jsonf::get_bool_or(j, "tie_word_embeddings", root, false);
  c.attention_bias = jsonf::get_bool_or(j, "attention_bias", root, false) || c.model_type == "qwen2";
  c.mlp_bias = jsonf::get_bool_or(j, "mlp_bias", root, false);
  const char* rs_key = rp ? "rope_parameters" : "rope_scaling";
  if (const json* rs = jsonf::find_object(j, rs_key, root)) read_rope_dict(*rs, root / rs_key, path, c);
  // transformers' standardize_rope_params: a top-level original_max_position_embeddings (Phi-3 writes one)
  // wins for the types that read it
  if (c.rope.type == "llama3" || c.rope.type == "yarn" || c.rope.type == "longrope")
    c.rope.original_max_positions = jsonf::get_int_or(j, "original_max_position_embeddings", root,
                                                      c.rope.original_max_positions, kPositions);
  read_sliding_windows(j, root, c);
  read_moe(j, root, c);
  read_gemma(j, root, c);
  read_gemma3_rope(j, root, path, c);
  return c;
}

}  // namespace nibble::models
