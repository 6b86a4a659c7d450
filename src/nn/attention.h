// Self-attention of the llama family as a module: q/k/v/o projections, rotary embedding, the causal
// grouped-query attention over one layer of a KV cache, and the output projection.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "nn/linear.h"
#include "nn/rms_norm.h"
#include "nn/rotary.h"
#include "nn/workspace.h"

namespace nibble::nn {

// One layer's slice of a KV cache: key and value rows [row][kv_heads * head_dim], `capacity` rows. The
// cache's owner (generate::KVCache) allocates it; the module writes new rows. Without `first`, row = position
// and capacity is the context. A sliding-window layer's cache may be bounded by its window: then *first is
// the position held in row 0 (the module moves it forward as positions fall out of every query's window), and
// a call's keys go in as chunks of at most capacity - (window - 1) queries, so memory stays window-sized
// however long the sequence grows.
struct KVLayer {
  float* k = nullptr;
  float* v = nullptr;
  int64_t capacity = 0;
  int64_t* first = nullptr;  // bounded: position of row 0 (state kept between calls); null = unbounded
};

// One sequence of a batched call: T rows of the batch at positions start .. start + T - 1 over its own cache.
struct AttentionSegment {
  int64_t T = 0, start = 0;
  const KVLayer* kv = nullptr;
};

class Attention {
 public:
  Attention() = default;
  Attention(std::unique_ptr<LinearBase> q, std::unique_ptr<LinearBase> k, std::unique_ptr<LinearBase> v,
            std::unique_ptr<LinearBase> o, int64_t heads, int64_t kv_heads, int64_t head_dim);
  // phi3: one fused projection whose output rows are [q | k | v] (heads, kv_heads, kv_heads times head_dim)
  Attention(std::unique_ptr<LinearBase> qkv, std::unique_ptr<LinearBase> o, int64_t heads, int64_t kv_heads,
            int64_t head_dim);
  // out[T, hidden] for x[T, hidden] at positions start .. start + T - 1; cos/sin are the rotary angles of
  // those positions (RotaryEmbedding::angles). Appends the T new keys/values to `kv` (capacity checked).
  void forward(const float* x, int64_t T, int64_t start, const RotaryEmbedding& rope, const float* cos,
               const float* sin, const KVLayer& kv, Workspace& ws, float* out) const;
  // Several sequences at once: x holds their rows one after another (segments in order), cos/sin the angles
  // of each row's own position. The projections run over all rows in one call; the attention itself per
  // sequence over its own cache.
  void forward(const float* x, std::span<const AttentionSegment> segments, const RotaryEmbedding& rope,
               const float* cos, const float* sin, Workspace& ws, float* out) const;

  std::unique_ptr<LinearBase> q_proj, k_proj, v_proj, o_proj;
  std::unique_ptr<LinearBase> qkv_proj;  // fused (then q/k/v_proj are null)
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // sliding window (kernels::AttentionShape::window); 0 = full causal attention
  float scale = 0;     // scores scaled by it; 0 = 1 / sqrt(head_dim) (Gemma 2: query_pre_attn_scalar^-0.5)
  float softcap = 0;   // Gemma 2's attn_logit_softcapping; 0 = off
  // qwen3: RMSNorm over each head's query and key (head_dim weights) before the rotary embedding
  std::optional<RMSNorm> q_norm, k_norm;
};

}  // namespace nibble::nn
