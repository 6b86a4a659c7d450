#include <omp.h>

#include <functional>

#include "models/llama.h"
#include "models/tensor_source.h"
#include "nibble/error.h"

namespace nibble::models {

RandomSource::RandomSource(const nlohmann::json& config, DType dtype, uint64_t seed)
    : config_(config), dtype_(dtype), seed_(seed) {}

Shape RandomSource::shape_of(const std::string& n) const {
  const LlamaConfig c = LlamaConfig::from_json(config_, "config");  // checked sizes, as the model sees them
  const int64_t H = c.hidden, I = c.intermediate, V = c.vocab, NQ = c.heads, NKV = c.kv_heads, D = c.head_dim;
  auto ends = [&](const char* s) { return n.ends_with(s); };
  if (n == "model.embed_tokens.weight" || n == "lm_head.weight") return {V, H};
  if (ends("layernorm.weight") || n == "model.norm.weight") return {H};
  if (ends("q_norm.weight") || ends("k_norm.weight")) return {D};  // qwen3: per-head norms
  if (n.find(".mlp.experts.") != std::string::npos) {              // qwen3_moe's experts and router
    if (ends("gate_proj.weight") || ends("up_proj.weight")) return {c.moe_intermediate, H};
    if (ends("down_proj.weight")) return {H, c.moe_intermediate};
    return {};
  }
  if (ends(".mlp.gate.weight")) return c.experts > 0 ? Shape{c.experts, H} : Shape{};
  if (ends("q_proj.weight")) return {NQ * D, H};
  if (ends("k_proj.weight") || ends("v_proj.weight")) return {NKV * D, H};
  if (ends("o_proj.weight")) return {H, NQ * D};
  if (ends("gate_proj.weight") || ends("up_proj.weight")) return {I, H};
  if (ends("down_proj.weight")) return {H, I};
  return {};
}

bool RandomSource::contains(const std::string& n) const {
  return !shape_of(n).empty();
}

Tensor RandomSource::get(const std::string& n) const {
  const Shape s = shape_of(n);
  if (s.empty()) throw FormatError("random weights: no tensor '" + n + "'");
  Tensor f = Tensor::empty(DType::Float32, s);
  float* p = f.mutable_data<float>();
  const int64_t count = f.numel();
  if (s.size() == 1) {
    std::fill(p, p + count, 1.0f);
  } else {
    // xorshift64* per chunk: uniform in [-0.035, 0.035] (std 0.02), fast enough for billions of weights
    const uint64_t base = seed_ ^ std::hash<std::string>{}(n);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (count + 4095) / 4096; ++c) {
      uint64_t x = base + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(c + 1);
      for (int64_t i = c * 4096; i < std::min(count, (c + 1) * 4096); ++i) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        const uint32_t r = static_cast<uint32_t>((x * 0x2545f4914f6cdd1dull) >> 40);  // 24 random bits
        p[i] = (static_cast<float>(r) * (1.0f / 16777216.0f) - 0.5f) * 0.07f;
      }
    }
  }
  return dtype_ == DType::Float32 ? f : f.to(dtype_);
}

}  // namespace nibble::models
