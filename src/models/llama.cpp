#include "models/llama.h"

#include <cmath>
#include <numbers>

#include "io/hf_config.h"
#include "kernels/cpu/attention.h"
#include "nibble/error.h"
#include "nibble/models.h"
#include "nibble/progress.h"

namespace nibble::models {
using nlohmann::json;

namespace {

void rms_norm(const float* x, const std::vector<float>& w, double eps, int64_t n, float* out) {
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = w[static_cast<size_t>(i)] * (x[i] * r);
}

std::vector<float> as_floats(const Tensor& t) {
  return t.to_float_vector();
}

}  // namespace

std::unique_ptr<nn::LinearBase> LlamaModel::load_linear(const TensorSource& ck, const std::string& prefix,
                                                        bool bias, const LoadOptions& opt,
                                                        bool prequantized) const {
  std::optional<Tensor> b;
  if (bias) {
    const Tensor t = ck.get(prefix + ".bias");
    b = t.dtype() == dtype_ ? t : t.to(dtype_);
  }
  for (const char* qt : {"nf4", "fp4"}) {
    const std::string qs = prefix + ".weight.quant_state.bitsandbytes__" + qt;
    if (!ck.contains(qs)) continue;
    if (!prequantized)
      throw FormatError(ck.where(qs) + ": tensor '" + qs +
                        "' is quantized but config.json has no quantization_config");
    std::map<std::string, Tensor> d;
    for (const char* k : {"absmax", "quant_map", "nested_absmax", "nested_quant_map"})
      if (ck.contains(prefix + ".weight." + k)) d[prefix + ".weight." + k] = ck.get(prefix + ".weight." + k);
    d[qs] = ck.get(qs);
    QuantState s = QuantState::from_dict(d, ck.where(qs) + ": " + prefix);
    return std::make_unique<nn::Linear4bit>(ck.get(prefix + ".weight"), std::move(s), std::move(b),
                                            qcfg_->compute_dtype());
  }
  const std::string wname = prefix + ".weight";
  const Tensor w = ck.get(wname);
  if (w.shape().size() != 2 || !dtype_is_float(w.dtype()))
    throw FormatError(ck.where(wname) + ": tensor '" + wname + "' must be a 2-D float weight, got " +
                      std::string(dtype_name(w.dtype())) + " " + shape_str(w.shape()));
  const Tensor wd = w.dtype() == dtype_ ? w : w.to(dtype_);
  if (!prequantized && opt.quant && opt.quant->load_in_4bit &&
      should_quantize(c_.model_type, wname, *opt.quant)) {
    const BitsAndBytesConfig& q = *opt.quant;
    auto lin = nn::Linear4bit::quantize(wd, std::move(b), 64, parse_quant_type(q.bnb_4bit_quant_type),
                                        q.bnb_4bit_use_double_quant, q.quant_storage(), q.compute_dtype());
    ck.release(wname);  // the full-precision weight leaves resident memory once quantized
    return lin;
  }
  return std::make_unique<nn::Linear>(wd, std::move(b));
}

LlamaModel::LlamaModel(const json& config, const TensorSource& ck, const LoadOptions& opt)
    : dtype_(opt.dtype) {
  const std::string dir = ck.label();
  const std::string cpath = dir + "/config.json";
  c_ = LlamaConfig::from_json(config, cpath);
  const bool prequantized = config.contains("quantization_config");
  if (prequantized) {
    qcfg_ = AutoQuantizationConfig::from_dict(config["quantization_config"]);
  } else if (opt.quant && opt.quant->is_quantizable()) {
    if (opt.quant->load_in_8bit)
      throw NotSupportedError("load_in_8bit (LLM.int8) is not implemented in nibble; use load_in_4bit");
    qcfg_ = opt.quant;
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
             !ck.contains("lm_head.weight.absmax")) {
    embed_ = dense("lm_head.weight", {c_.vocab, c_.hidden});
    embed_is_lm_head_ = true;
  } else {
    throw FormatError(dir + ": checkpoint has no model.embed_tokens.weight");
  }
  Progress bar(qcfg_ && !prequantized ? "quantize" : "load", c_.layers, opt.quiet);
  const int64_t H = c_.hidden, D = c_.head_dim;
  for (int64_t i = 0; i < c_.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    LlamaLayer L;
    L.input_norm = dense(p + ".input_layernorm.weight", {H});
    L.post_norm = dense(p + ".post_attention_layernorm.weight", {H});
    L.input_norm_f = as_floats(L.input_norm);
    L.post_norm_f = as_floats(L.post_norm);
    L.q = load_linear(ck, p + ".self_attn.q_proj", c_.attention_bias, opt, prequantized);
    L.k = load_linear(ck, p + ".self_attn.k_proj", c_.attention_bias, opt, prequantized);
    L.v = load_linear(ck, p + ".self_attn.v_proj", c_.attention_bias, opt, prequantized);
    L.o = load_linear(ck, p + ".self_attn.o_proj", c_.model_type != "qwen2" && c_.attention_bias, opt,
                      prequantized);
    L.gate = load_linear(ck, p + ".mlp.gate_proj", c_.mlp_bias, opt, prequantized);
    L.up = load_linear(ck, p + ".mlp.up_proj", c_.mlp_bias, opt, prequantized);
    L.down = load_linear(ck, p + ".mlp.down_proj", c_.mlp_bias, opt, prequantized);
    const std::pair<nn::LinearBase*, std::pair<int64_t, int64_t>> shapes[] = {
        {L.q.get(), {c_.heads * D, H}},       {L.k.get(), {c_.kv_heads * D, H}},
        {L.v.get(), {c_.kv_heads * D, H}},    {L.o.get(), {H, c_.heads * D}},
        {L.gate.get(), {c_.intermediate, H}}, {L.up.get(), {c_.intermediate, H}},
        {L.down.get(), {H, c_.intermediate}}};
    for (const auto& [lin, s] : shapes)
      if (lin->out_features != s.first || lin->in_features != s.second)
        throw FormatError(dir + ": layer " + std::to_string(i) + " has a linear weight of shape [" +
                          std::to_string(lin->out_features) + ", " + std::to_string(lin->in_features) +
                          "], expected [" + std::to_string(s.first) + ", " + std::to_string(s.second) + "]");
    layers_.push_back(std::move(L));
    bar.advance(1, p);
  }
  norm_ = dense("model.norm.weight", {H});
  norm_f_ = as_floats(norm_);
  if (!c_.tie_word_embeddings || ck.contains("lm_head.weight.absmax")) {
    lm_head_ = load_linear(ck, "lm_head", false, opt, prequantized);
  } else if (qcfg_ && !prequantized && opt.quant->llm_int8_skip_modules &&
             should_quantize(c_.model_type, "lm_head.weight", *opt.quant)) {
    // the user's skip list leaves the (tied) output embedding quantizable: quantize a copy
    lm_head_ = nn::Linear4bit::quantize(
        embed_, std::nullopt, 64, parse_quant_type(opt.quant->bnb_4bit_quant_type),
        opt.quant->bnb_4bit_use_double_quant, opt.quant->quant_storage(), opt.quant->compute_dtype());
  }
  bar.finish();
  if (!embed_.storage()->writable()) embed_ = embed_.clone();  // detach from the file mapping
  // RoPE inverse frequencies, float32 as transformers computes them
  inv_freq_.resize(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    float f = 1.0f / std::pow(static_cast<float>(c_.rope_theta), e);
    if (c_.rope_type == "linear") f = f / static_cast<float>(c_.rope_factor);
    if (c_.rope_type == "llama3") {
      const double old_ctx = static_cast<double>(c_.original_max_positions);
      const double low_wl = old_ctx / c_.low_freq_factor, high_wl = old_ctx / c_.high_freq_factor;
      const double wl = 2 * std::numbers::pi / f;
      if (wl > low_wl) {
        f = static_cast<float>(f / c_.rope_factor);
      } else if (wl >= high_wl) {
        const double smooth =
            (old_ctx / wl - c_.low_freq_factor) / (c_.high_freq_factor - c_.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / c_.rope_factor + smooth * f);
      }
    }
    inv_freq_[static_cast<size_t>(i)] = f;
  }
}

KVCache LlamaModel::new_cache() const {
  KVCache c;
  c.k.resize(static_cast<size_t>(c_.layers));
  c.v.resize(static_cast<size_t>(c_.layers));
  return c;
}

void LlamaModel::forward(const std::vector<int32_t>& ids, KVCache& cache, bool all_logits,
                         std::vector<float>& logits) const {
  const int64_t T = static_cast<int64_t>(ids.size()), H = c_.hidden, D = c_.head_dim;
  const int64_t NQ = c_.heads, NKV = c_.kv_heads, I = c_.intermediate, V = c_.vocab;
  const int64_t start = cache.length;
  std::vector<float> h(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = ids[static_cast<size_t>(t)];
    if (id < 0 || id >= V)
      throw ValueError("token id " + std::to_string(id) + " out of range [0, " + std::to_string(V) + ")");
    convert_floats(
        embed_.dtype(),
        embed_.raw() + static_cast<size_t>(id) * static_cast<size_t>(H) * dtype_size(embed_.dtype()),
        DType::Float32, h.data() + t * H, static_cast<size_t>(H));
  }
  // cos/sin per new position
  std::vector<float> cosv(static_cast<size_t>(T * D / 2)), sinv(cosv.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const float f = static_cast<float>(start + t) * inv_freq_[static_cast<size_t>(i)];
      cosv[static_cast<size_t>(t * D / 2 + i)] = std::cos(f);
      sinv[static_cast<size_t>(t * D / 2 + i)] = std::sin(f);
    }
  auto rope = [&](float* v, int64_t t) {  // rotate_half convention
    for (int64_t i = 0; i < D / 2; ++i) {
      const float c = cosv[static_cast<size_t>(t * D / 2 + i)], s = sinv[static_cast<size_t>(t * D / 2 + i)];
      const float a = v[i], b = v[i + D / 2];
      v[i] = a * c - b * s;
      v[i + D / 2] = b * c + a * s;
    }
  };
  std::vector<float> xn(static_cast<size_t>(T * H)), q(static_cast<size_t>(T * NQ * D)),
      k(static_cast<size_t>(T * NKV * D)), v(k.size()), att(q.size()), o(h.size()),
      g(static_cast<size_t>(T * I)), u(g.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (int64_t l = 0; l < c_.layers; ++l) {
    const LlamaLayer& L = layers_[static_cast<size_t>(l)];
#pragma omp parallel for if (T > 1)
    for (int64_t t = 0; t < T; ++t)
      rms_norm(h.data() + t * H, L.input_norm_f, c_.rms_eps, H, xn.data() + t * H);
    L.q->forward(xn.data(), T, q.data());
    L.k->forward(xn.data(), T, k.data());
    L.v->forward(xn.data(), T, v.data());
#pragma omp parallel for if (T > 1)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hq = 0; hq < NQ; ++hq) rope(q.data() + (t * NQ + hq) * D, t);
      for (int64_t hk = 0; hk < NKV; ++hk) rope(k.data() + (t * NKV + hk) * D, t);
    }
    auto& kc = cache.k[static_cast<size_t>(l)];
    auto& vc = cache.v[static_cast<size_t>(l)];
    kc.insert(kc.end(), k.begin(), k.end());
    vc.insert(vc.end(), v.begin(), v.end());
    kernels::attention({T, NQ, NKV, D, start, scale}, q.data(), kc.data(), vc.data(), att.data());
    L.o->forward(att.data(), T, o.data());
#pragma omp parallel for if (T > 1)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = t * H; i < (t + 1) * H; ++i) h[static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
      rms_norm(h.data() + t * H, L.post_norm_f, c_.rms_eps, H, xn.data() + t * H);
    }
    L.gate->forward(xn.data(), T, g.data());
    L.up->forward(xn.data(), T, u.data());
#pragma omp parallel for if (T > 1)
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    L.down->forward(g.data(), T, o.data());
#pragma omp parallel for if (T > 1)
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
  }
  cache.length += T;
  const int64_t first = all_logits ? 0 : T - 1, rows = T - first;
  for (int64_t t = first; t < T; ++t)
    rms_norm(h.data() + t * H, norm_f_, c_.rms_eps, H, xn.data() + (t - first) * H);
  logits.resize(static_cast<size_t>(rows * V));
  if (lm_head_) {
    lm_head_->forward(xn.data(), rows, logits.data());
  } else {
    const nn::Linear tied(embed_, std::nullopt);
    tied.forward(xn.data(), rows, logits.data());
  }
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
    d.emplace_back(p + ".input_layernorm.weight", L.input_norm);
    d.emplace_back(p + ".post_attention_layernorm.weight", L.post_norm);
    add(p + ".self_attn.q_proj", *L.q);
    add(p + ".self_attn.k_proj", *L.k);
    add(p + ".self_attn.v_proj", *L.v);
    add(p + ".self_attn.o_proj", *L.o);
    add(p + ".mlp.gate_proj", *L.gate);
    add(p + ".mlp.up_proj", *L.up);
    add(p + ".mlp.down_proj", *L.down);
  }
  d.emplace_back("model.norm.weight", norm_);
  if (lm_head_) add("lm_head", *lm_head_);
  return d;
}

size_t LlamaModel::memory_footprint() const {
  // buffers as transformers 5 registers them: rotary_emb.inv_freq and rotary_emb.original_inv_freq
  size_t n = embed_.nbytes() + norm_.nbytes() + 2 * inv_freq_.size() * sizeof(float);
  for (const auto& L : layers_) {
    n += L.input_norm.nbytes() + L.post_norm.nbytes();
    for (const auto* lin :
         {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
      n += lin->parameter_bytes();
  }
  if (lm_head_) n += lm_head_->parameter_bytes();
  return n;
}

size_t LlamaModel::decode_bytes_per_token() const {
  const size_t n = memory_footprint();
  if (!lm_head_) return n;  // the tied embedding is the lm_head: read whole
  return n - embed_.nbytes() + static_cast<size_t>(c_.hidden) * dtype_size(embed_.dtype());
}

int64_t LlamaModel::num_parameters() const {
  int64_t n = embed_.numel() + norm_.numel();
  auto lin = [](const nn::LinearBase& l) { return l.in_features * l.out_features; };
  for (const auto& L : layers_) {
    n += L.input_norm.numel() + L.post_norm.numel();
    for (const auto* l : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
      n += lin(*l) +
           (c_.attention_bias && (l == L.q.get() || l == L.k.get() || l == L.v.get()) ? l->out_features : 0);
  }
  if (lm_head_ && !c_.tie_word_embeddings) n += lin(*lm_head_);
  return n;
}

bool LlamaModel::quantized() const {
  for (const auto& L : layers_)
    for (const auto* l : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
      if (l->quantized()) return true;
  return lm_head_ && lm_head_->quantized();
}

void LlamaModel::dequantize() {
  auto deq = [](std::unique_ptr<nn::LinearBase>& l) {
    if (!l || !l->quantized()) return;
    auto* q = static_cast<nn::Linear4bit*>(l.get());
    l = std::make_unique<nn::Linear>(q->dequantized_weight(), q->bias());
  };
  for (auto& L : layers_)
    for (auto* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) deq(*l);
  if (lm_head_ && lm_head_->quantized() && c_.tie_word_embeddings) lm_head_.reset();
  deq(lm_head_);
  qcfg_.reset();
}

}  // namespace nibble::models
