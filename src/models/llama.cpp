#include "models/llama.h"

#include <map>
#include <utility>

#include "core/progress.h"
#include "models/linear_loader.h"
#include "models/registry.h"
#include "nibble/error.h"

namespace nibble::models {
using nlohmann::json;

namespace {
// Workspace slots of the decoder (nn modules use the slots below 16).
enum Slot : size_t { kHidden = 16, kNormed, kOut, kCos, kSin, kCosLocal, kSinLocal };

// The 8-bit options nibble refuses rather than ignores.
void check_int8_options(const BitsAndBytesConfig& q, const std::string& where) {
  if (!q.load_in_8bit) return;
  if (q.llm_int8_has_fp16_weight)
    throw NotSupportedError(
        where +
        "llm_int8_has_fp16_weight=True keeps 16-bit weights to train them (re-quantized on "
        "every call); nibble runs 8-bit models for inference: leave it False");
  if (q.llm_int8_enable_fp32_cpu_offload)
    throw NotSupportedError(
        where +
        "llm_int8_enable_fp32_cpu_offload=True keeps the modules a device_map offloads to "
        "the CPU in float32; nibble has no device_map: name those modules in "
        "llm_int8_skip_modules instead");
  if (!(q.llm_int8_threshold >= 0.0))
    throw ValueError(where + "llm_int8_threshold must be >= 0 (0 turns the outlier decomposition off), got " +
                     std::to_string(q.llm_int8_threshold));
}
}  // namespace

LlamaModel::LlamaModel(const json& config, const TensorSource& ck, const LoadOptions& opt)
    : dtype_(opt.dtype) {
  const std::string dir = ck.label();
  const std::string cpath = dir + "/config.json";
  c_ = LlamaConfig::from_json(config, cpath);
  LinearLoader loader{.src = ck,
                      .model_type = c_.model_type,
                      .dtype = dtype_,
                      .quantize = std::nullopt,
                      .spec = std::nullopt,
                      .prequantized = config.contains("quantization_config"),
                      .int8_activations = opt.int8_activations};
  if (loader.prequantized) {
    // the file is at fault, whichever rule its quantization_config breaks: say which file and key
    try {
      qcfg_ = AutoQuantizationConfig::from_dict(config.at("quantization_config"));
    } catch (const NotSupportedError& e) {
      throw NotSupportedError(cpath + ": 'quantization_config': " + e.what());
    } catch (const Error& e) {
      throw FormatError(cpath + ": 'quantization_config': " + e.what());
    }
    loader.prequantized_compute = qcfg_->compute_dtype();
    loader.int8_prequantized = qcfg_->load_in_8bit;
    loader.int8_threshold = static_cast<float>(qcfg_->llm_int8_threshold);
    check_int8_options(*qcfg_, cpath + ": 'quantization_config': ");
  } else if (opt.quant && opt.quant->is_quantizable()) {
    qcfg_ = opt.quant;
    loader.quantize = opt.quant;
    if (opt.quant->load_in_8bit) {
      check_int8_options(*opt.quant, "");
      loader.int8_threshold = static_cast<float>(opt.quant->llm_int8_threshold);
    } else {
      loader.spec = Linear4bitSpec::from_config(*opt.quant);
    }
  }
  auto expect_shape = [&](const Tensor& t, const std::string& name, const Shape& s) {
    if (t.shape() != s)
      throw FormatError(ck.where(name) + ": tensor '" + name + "' has shape " + shape_str(t.shape()) +
                        ", expected " + shape_str(s));
  };
  auto dense = [&](const std::string& name, const Shape& s) {
    const Tensor t = ck.get(name);
    expect_shape(t, name, s);
    return t.dtype() == dtype_ ? t : t.to(dtype_);
  };
  // embeddings, possibly stored only as lm_head.weight (tied)
  if (ck.contains("model.embed_tokens.weight")) {
    embed_ = dense("model.embed_tokens.weight", {c_.vocab, c_.hidden});
  } else if (c_.tie_word_embeddings && ck.contains("lm_head.weight") &&
             !ck.contains("lm_head.weight.absmax") && !ck.contains("lm_head.SCB")) {
    embed_ = dense("lm_head.weight", {c_.vocab, c_.hidden});
    embed_is_lm_head_ = true;
  } else {
    throw FormatError(dir + ": checkpoint has no model.embed_tokens.weight");
  }
  Progress bar(qcfg_ && !loader.prequantized ? "quantize" : "load", c_.layers, opt.quiet);
  const int64_t H = c_.hidden, D = c_.head_dim;
  for (int64_t i = 0; i < c_.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    LlamaLayer L;
    const bool g2 = c_.gemma2;
    L.input_norm = nn::RMSNorm(dense(p + ".input_layernorm.weight", {H}), c_.rms_eps, c_.gemma);
    L.post_norm = nn::RMSNorm(dense(p + ".post_attention_layernorm.weight", {H}), c_.rms_eps, c_.gemma);
    if (g2) {
      L.pre_ff_norm = nn::RMSNorm(dense(p + ".pre_feedforward_layernorm.weight", {H}), c_.rms_eps, true);
      L.post_ff_norm = nn::RMSNorm(dense(p + ".post_feedforward_layernorm.weight", {H}), c_.rms_eps, true);
    }
    const bool qkv_bias = c_.attention_bias, o_bias = c_.model_type != "qwen2" && c_.attention_bias;
    const bool fused = c_.model_type == "phi3";
    // each linear loaded in its own statement, in checkpoint order: a missing tensor is the first one missing
    // (arguments of one call are evaluated in no fixed order)
    if (fused) {
      auto qkv = loader.load(p + ".self_attn.qkv_proj", false);
      auto o = loader.load(p + ".self_attn.o_proj", false);
      L.attn = nn::Attention(std::move(qkv), std::move(o), c_.heads, c_.kv_heads, D);
    } else {
      auto q = loader.load(p + ".self_attn.q_proj", qkv_bias);
      auto k = loader.load(p + ".self_attn.k_proj", qkv_bias);
      auto v = loader.load(p + ".self_attn.v_proj", qkv_bias);
      auto o = loader.load(p + ".self_attn.o_proj", o_bias);
      L.attn =
          nn::Attention(std::move(q), std::move(k), std::move(v), std::move(o), c_.heads, c_.kv_heads, D);
    }
    L.attn.window = c_.window[static_cast<size_t>(i)];
    if (g2) {
      L.attn.scale = static_cast<float>(1.0 / std::sqrt(c_.query_pre_attn_scalar));
      L.attn.softcap = static_cast<float>(c_.attn_softcap);
    }
    if (c_.model_type == "qwen3" || c_.model_type == "qwen3_moe" || c_.gemma3) {  // (Gemma 3's with 1 + w)
      L.attn.q_norm = nn::RMSNorm(dense(p + ".self_attn.q_norm.weight", {D}), c_.rms_eps, c_.gemma3);
      L.attn.k_norm = nn::RMSNorm(dense(p + ".self_attn.k_norm.weight", {D}), c_.rms_eps, c_.gemma3);
    }
    const bool sparse = !c_.moe_layer.empty() && c_.moe_layer[static_cast<size_t>(i)];
    if (sparse) {  // qwen3_moe: the router (dense) and each expert's gated MLP
      std::vector<nn::GatedMLP> experts;
      for (int64_t e = 0; e < c_.experts; ++e) {
        const std::string q = p + ".mlp.experts." + std::to_string(e);
        auto gate = loader.load(q + ".gate_proj", false);
        auto up = loader.load(q + ".up_proj", false);
        experts.emplace_back(std::move(gate), std::move(up), loader.load(q + ".down_proj", false));
      }
      L.moe = nn::SparseMoE(dense(p + ".mlp.gate.weight", {c_.experts, H}), std::move(experts),
                            c_.experts_per_tok, c_.norm_topk_prob);
    } else if (fused) {
      auto gate_up = loader.load(p + ".mlp.gate_up_proj", false);
      auto down = loader.load(p + ".mlp.down_proj", false);
      L.mlp = nn::GatedMLP(std::move(gate_up), std::move(down));
    } else {
      auto gate = loader.load(p + ".mlp.gate_proj", c_.mlp_bias);
      auto up = loader.load(p + ".mlp.up_proj", c_.mlp_bias);
      auto down = loader.load(p + ".mlp.down_proj", c_.mlp_bias);
      L.mlp = nn::GatedMLP(std::move(gate), std::move(up), std::move(down));
    }
    if (c_.gemma) L.mlp.act = nn::GatedMLP::Act::GeluTanh;
    const std::map<std::string, std::pair<int64_t, int64_t>> expected{
        {"self_attn.q_proj", {c_.heads * D, H}},
        {"self_attn.k_proj", {c_.kv_heads * D, H}},
        {"self_attn.v_proj", {c_.kv_heads * D, H}},
        {"self_attn.qkv_proj", {(c_.heads + 2 * c_.kv_heads) * D, H}},
        {"self_attn.o_proj", {H, c_.heads * D}},
        {"mlp.gate_proj", {c_.intermediate, H}},
        {"mlp.up_proj", {c_.intermediate, H}},
        {"mlp.gate_up_proj", {2 * c_.intermediate, H}},
        {"mlp.down_proj", {H, c_.intermediate}}};
    const int64_t EI = c_.moe_intermediate;
    auto expected_shape = [&](const std::string& name) -> std::pair<int64_t, int64_t> {
      if (name.starts_with("mlp.experts."))  // mlp.experts.E.{gate,up,down}_proj
        return name.ends_with("down_proj") ? std::pair{H, EI} : std::pair{EI, H};
      return expected.at(name);
    };
    for (const auto& [name, lin] : std::as_const(L).linears())
      if (const auto s = expected_shape(name); lin->out_features != s.first || lin->in_features != s.second)
        throw FormatError(dir + ": layer " + std::to_string(i) + " has a linear weight of shape [" +
                          std::to_string(lin->out_features) + ", " + std::to_string(lin->in_features) +
                          "], expected [" + std::to_string(s.first) + ", " + std::to_string(s.second) + "]");
    layers_.push_back(std::move(L));
    bar.advance(1, p);
  }
  norm_ = nn::RMSNorm(dense("model.norm.weight", {H}), c_.rms_eps, c_.gemma);
  if (!c_.tie_word_embeddings || ck.contains("lm_head.weight.absmax") || ck.contains("lm_head.SCB")) {
    lm_head_ = loader.load("lm_head", false);
  } else {
    // tied: the user's skip list may leave the output embedding quantizable: quantize a copy
    lm_head_ = loader.quantize_dense("lm_head", embed_);
  }
  bar.finish();
  if (!embed_.storage()->writable()) embed_ = embed_.clone();  // detach from the file mapping
  if (!lm_head_) tied_head_ = std::make_unique<nn::Linear>(embed_, std::nullopt);
  rope_ = nn::RotaryEmbedding(D, c_.rope, c_.rotary_dim);
  if (c_.local_rope_theta > 0) {
    nn::RopeConfig local;
    local.theta = c_.local_rope_theta;
    rope_local_ = nn::RotaryEmbedding(D, local, c_.rotary_dim);
  }
}

void LlamaModel::forward(std::span<const int32_t> ids, int64_t start, std::span<const nn::KVLayer> kv,
                         nn::Workspace& ws, int64_t first_logit, float* logits) const {
  const auto T = static_cast<int64_t>(ids.size());
  if (first_logit < 0 || first_logit >= T)  // checked before the cache is written
    throw ValueError("forward: first_logit " + std::to_string(first_logit) + " is not in [0, " +
                     std::to_string(T) + ")");
  const SequenceStep one{ids, start, kv};
  run(std::span(&one, 1), ws, first_logit, logits);
}

void LlamaModel::forward_batch(std::span<const SequenceStep> seqs, nn::Workspace& ws, float* logits) const {
  if (seqs.empty()) return;
  for (const auto& s : seqs)
    if (s.ids.empty()) throw ValueError("forward_batch: a sequence has no tokens");
  run(seqs, ws, -1, logits);
}

// first_logit >= 0: one sequence, logits of its rows first_logit ..; -1: the last row of each sequence.
void LlamaModel::run(std::span<const SequenceStep> seqs, nn::Workspace& ws, int64_t first_logit,
                     float* logits) const {
  const int64_t H = c_.hidden, V = c_.vocab, half = c_.head_dim / 2;
  int64_t T = 0;
  for (const auto& s : seqs) {
    if (static_cast<int64_t>(s.kv.size()) != c_.layers)
      throw ValueError("forward: the KV cache has " + std::to_string(s.kv.size()) + " layers, the model " +
                       std::to_string(c_.layers));
    T += static_cast<int64_t>(s.ids.size());
  }
  float* h = ws.get(kHidden, static_cast<size_t>(T * H));
  float* xn = ws.get(kNormed, static_cast<size_t>(T * H));
  float* o = ws.get(kOut, static_cast<size_t>(T * H));
  float* cosv = ws.get(kCos, static_cast<size_t>(T * half));
  float* sinv = ws.get(kSin, static_cast<size_t>(T * half));
  float* cosl = nullptr;
  float* sinl = nullptr;
  if (c_.local_rope_theta > 0) {  // gemma3's sliding layers turn by their own base
    cosl = ws.get(kCosLocal, static_cast<size_t>(T * half));
    sinl = ws.get(kSinLocal, static_cast<size_t>(T * half));
  }
  int64_t row = 0;
  for (const auto& s : seqs) {
    const auto n = static_cast<int64_t>(s.ids.size());
    for (int64_t t = 0; t < n; ++t) {
      const int32_t id = s.ids[static_cast<size_t>(t)];
      if (id < 0 || id >= V)
        throw ValueError("token id " + std::to_string(id) + " out of range [0, " + std::to_string(V) + ")");
      convert_floats(
          embed_.dtype(),
          embed_.raw() + static_cast<size_t>(id) * static_cast<size_t>(H) * dtype_size(embed_.dtype()),
          DType::Float32, h + (row + t) * H, static_cast<size_t>(H));
    }
    rope_.angles(s.start, n, cosv + row * half, sinv + row * half);
    if (cosl) rope_local_.angles(s.start, n, cosl + row * half, sinl + row * half);
    row += n;
  }
  if (c_.gemma) {  // Gemma: the embedding times sqrt(hidden) (a float32 constant)
    const auto normalizer = static_cast<float>(std::sqrt(static_cast<double>(H)));
    for (int64_t i = 0; i < T * H; ++i) h[i] *= normalizer;
  }
  thread_local std::vector<nn::AttentionSegment> segs;  // grows to the largest batch, then allocates nothing
  for (int64_t l = 0; l < c_.layers; ++l) {
    const LlamaLayer& L = layers_[static_cast<size_t>(l)];
    segs.clear();
    for (const auto& s : seqs)
      segs.push_back({static_cast<int64_t>(s.ids.size()), s.start, &s.kv[static_cast<size_t>(l)]});
    L.input_norm.forward(h, T, xn);
    const bool local = cosl && L.attn.window > 0;
    L.attn.forward(xn, segs, local ? rope_local_ : rope_, local ? cosl : cosv, local ? sinl : sinv, ws, o);
    if (L.pre_ff_norm) {  // Gemma 2: normalize the attention output, add; normalize around the MLP, add
      L.post_norm.forward(o, T, o);
#pragma omp parallel for if (T > 1)
      for (int64_t i = 0; i < T * H; ++i) h[i] += o[i];
      L.pre_ff_norm->forward(h, T, xn);
      L.mlp.forward(xn, T, ws, o);
      L.post_ff_norm->forward(o, T, o);
#pragma omp parallel for if (T > 1)
      for (int64_t i = 0; i < T * H; ++i) h[i] += o[i];
      continue;
    }
#pragma omp parallel for if (T > 1)
    for (int64_t i = 0; i < T * H; ++i) h[i] += o[i];
    L.post_norm.forward(h, T, xn);
    if (L.moe)
      L.moe->forward(xn, T, ws, o);
    else
      L.mlp.forward(xn, T, ws, o);
#pragma omp parallel for if (T > 1)
    for (int64_t i = 0; i < T * H; ++i) h[i] += o[i];
  }
  int64_t rows = 0;
  if (first_logit >= 0) {  // one sequence: its rows from first_logit on
    rows = T - first_logit;
    norm_.forward(h + first_logit * H, rows, xn);
  } else {            // each sequence's last row, gathered
    float* last = o;  // free now
    int64_t end = 0;
    for (const auto& s : seqs) {
      end += static_cast<int64_t>(s.ids.size());
      std::copy_n(h + (end - 1) * H, H, last + rows * H);
      ++rows;
    }
    norm_.forward(last, rows, xn);
  }
  (lm_head_ ? *lm_head_ : static_cast<const nn::LinearBase&>(*tied_head_)).forward(xn, rows, logits);
  if (c_.final_softcap > 0) {  // Gemma 2: logits / cap, tanh, * cap
    const auto cap = static_cast<float>(c_.final_softcap);
    const int64_t n = rows * V;
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) logits[i] = std::tanh(logits[i] / cap) * cap;
  }
}

std::vector<std::pair<const char*, std::unique_ptr<nn::LinearBase>*>> LlamaLayer::linears() {
  std::vector<std::pair<const char*, std::unique_ptr<nn::LinearBase>*>> v;
  for (auto [name, l] : {std::pair{"self_attn.q_proj", &attn.q_proj},
                         {"self_attn.k_proj", &attn.k_proj},
                         {"self_attn.v_proj", &attn.v_proj},
                         {"self_attn.qkv_proj", &attn.qkv_proj},
                         {"self_attn.o_proj", &attn.o_proj},
                         {"mlp.gate_proj", &mlp.gate_proj},
                         {"mlp.up_proj", &mlp.up_proj},
                         {"mlp.gate_up_proj", &mlp.gate_up_proj},
                         {"mlp.down_proj", &mlp.down_proj}})
    if (*l) v.emplace_back(name, l);
  if (moe)
    for (const auto& e : moe->linears()) v.push_back(e);
  return v;
}

std::vector<std::pair<const char*, const nn::LinearBase*>> LlamaLayer::linears() const {
  std::vector<std::pair<const char*, const nn::LinearBase*>> v;
  for (const auto& [name, l] : const_cast<LlamaLayer*>(this)->linears()) v.emplace_back(name, l->get());
  return v;
}

std::vector<const nn::LinearBase*> LlamaModel::linears() const {
  std::vector<const nn::LinearBase*> v;
  for (const auto& L : layers_)
    for (const auto& [name, l] : L.linears()) v.push_back(l);
  return v;
}

NamedTensors LlamaModel::state_dict() const {
  NamedTensors d;
  auto add = [&](const std::string& prefix, const nn::LinearBase& lin) {
    for (auto& [k, v] : lin.state_dict()) d.emplace_back(prefix + "." + k, v);
  };
  d.emplace_back(embed_is_lm_head_ && !lm_head_ ? "lm_head.weight" : "model.embed_tokens.weight", embed_);
  for (int64_t i = 0; i < c_.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    const LlamaLayer& L = layers_[static_cast<size_t>(i)];
    d.emplace_back(p + ".input_layernorm.weight", L.input_norm.weight());
    d.emplace_back(p + ".post_attention_layernorm.weight", L.post_norm.weight());
    if (L.pre_ff_norm) {
      d.emplace_back(p + ".pre_feedforward_layernorm.weight", L.pre_ff_norm->weight());
      d.emplace_back(p + ".post_feedforward_layernorm.weight", L.post_ff_norm->weight());
    }
    if (L.attn.q_norm) {
      d.emplace_back(p + ".self_attn.q_norm.weight", L.attn.q_norm->weight());
      d.emplace_back(p + ".self_attn.k_norm.weight", L.attn.k_norm->weight());
    }
    for (const auto& [name, lin] : L.linears()) add(p + "." + name, *lin);
    if (L.moe) d.emplace_back(p + ".mlp.gate.weight", L.moe->router_weight());
  }
  d.emplace_back("model.norm.weight", norm_.weight());
  if (lm_head_) add("lm_head", *lm_head_);
  return d;
}

size_t LlamaModel::memory_footprint() const {
  // buffers as transformers 5 registers them: rotary_emb.inv_freq and rotary_emb.original_inv_freq
  size_t n = embed_.nbytes() + norm_.weight().nbytes() + rope_.buffer_bytes();
  for (const auto& L : layers_) {
    n += L.input_norm.weight().nbytes() + L.post_norm.weight().nbytes();
    if (L.attn.q_norm) n += L.attn.q_norm->weight().nbytes() + L.attn.k_norm->weight().nbytes();
    if (L.pre_ff_norm) n += L.pre_ff_norm->weight().nbytes() + L.post_ff_norm->weight().nbytes();
    if (L.moe) n += L.moe->router_weight().nbytes();
  }
  for (const auto* lin : linears()) n += lin->parameter_bytes();
  if (lm_head_) n += lm_head_->parameter_bytes();
  return n;
}

size_t LlamaModel::decode_bytes_per_token() const {
  size_t n = memory_footprint();
  // a sparse layer reads the router and top_k of its experts per token
  for (const auto& L : layers_) {
    if (!L.moe) continue;
    size_t experts = 0;
    for (const auto& ex : L.moe->experts)
      experts +=
          ex.gate_proj->parameter_bytes() + ex.up_proj->parameter_bytes() + ex.down_proj->parameter_bytes();
    const auto E = static_cast<size_t>(L.moe->experts.size()), k = static_cast<size_t>(L.moe->top_k);
    n -= experts - experts * k / E;
  }
  if (!lm_head_) return n;  // the tied embedding is the lm_head: read whole
  return n - embed_.nbytes() + static_cast<size_t>(c_.hidden) * dtype_size(embed_.dtype());
}

int64_t LlamaModel::num_parameters() const {
  int64_t n = embed_.numel() + norm_.weight().numel();
  for (const auto& L : layers_) {
    n += L.input_norm.weight().numel() + L.post_norm.weight().numel();
    if (L.attn.q_norm) n += L.attn.q_norm->weight().numel() + L.attn.k_norm->weight().numel();
    if (L.pre_ff_norm) n += L.pre_ff_norm->weight().numel() + L.post_ff_norm->weight().numel();
    if (L.moe) n += L.moe->router_weight().numel();
  }
  for (const auto* l : linears())
    n += l->in_features * l->out_features + (l->has_bias() ? l->out_features : 0);
  if (lm_head_ && !c_.tie_word_embeddings)
    n += lm_head_->in_features * lm_head_->out_features + (lm_head_->has_bias() ? lm_head_->out_features : 0);
  return n;
}

bool LlamaModel::quantized() const {
  for (const auto* l : linears())
    if (l->quantized()) return true;
  return lm_head_ && lm_head_->quantized();
}

std::map<std::string, int64_t> LlamaModel::kernel_paths(int64_t T) const {
  std::map<std::string, int64_t> n;
  for (const auto* l : linears()) ++n[l->kernel_path(T)];
  ++n[(lm_head_ ? *lm_head_ : static_cast<const nn::LinearBase&>(*tied_head_)).kernel_path(T)];
  return n;
}

void LlamaModel::dequantize() {
  auto deq = [](std::unique_ptr<nn::LinearBase>& l) {
    if (l && l->quantized()) l = l->dequantized();
  };
  for (auto& L : layers_)
    for (auto& [name, l] : L.linears()) deq(*l);
  if (lm_head_ && lm_head_->quantized() && c_.tie_word_embeddings) lm_head_.reset();
  deq(lm_head_);
  if (!lm_head_ && !tied_head_) tied_head_ = std::make_unique<nn::Linear>(embed_, std::nullopt);
  qcfg_.reset();
}

}  // namespace nibble::models
