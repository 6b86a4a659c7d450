#include "nn/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention.h"
#include "nibble/error.h"

namespace nibble::nn {

namespace {
// Workspace slots of this module (the model uses slots from 16 up).
enum Slot : size_t { kQ, kAtt, kQKV, kK, kV };
}  // namespace

Attention::Attention(std::unique_ptr<LinearBase> q, std::unique_ptr<LinearBase> k,
                     std::unique_ptr<LinearBase> v, std::unique_ptr<LinearBase> o, int64_t nq, int64_t nkv,
                     int64_t d)
    : q_proj(std::move(q)),
      k_proj(std::move(k)),
      v_proj(std::move(v)),
      o_proj(std::move(o)),
      heads(nq),
      kv_heads(nkv),
      head_dim(d) {}

Attention::Attention(std::unique_ptr<LinearBase> qkv, std::unique_ptr<LinearBase> o, int64_t nq, int64_t nkv,
                     int64_t d)
    : o_proj(std::move(o)), qkv_proj(std::move(qkv)), heads(nq), kv_heads(nkv), head_dim(d) {}

void Attention::forward(const float* x, int64_t T, int64_t start, const RotaryEmbedding& rope,
                        const float* cos, const float* sin, const KVLayer& kv, Workspace& ws,
                        float* out) const {
  const AttentionSegment one{T, start, &kv};
  forward(x, std::span(&one, 1), rope, cos, sin, ws, out);
}

void Attention::forward(const float* x, std::span<const AttentionSegment> segments,
                        const RotaryEmbedding& rope, const float* cos, const float* sin, Workspace& ws,
                        float* out) const {
  int64_t T = 0;
  for (const auto& s : segments) {
    if (s.start + s.T > s.kv->capacity)
      throw ValueError("KV cache full: " + std::to_string(s.start + s.T) + " positions needed, room for " +
                       std::to_string(s.kv->capacity));
    T += s.T;
  }
  const int64_t D = head_dim, W = kv_heads * D;
  // one sequence: new keys and values go straight into its cache; several: through scratch rows
  const bool direct = segments.size() == 1;
  float* q = ws.get(kQ, static_cast<size_t>(T * heads * D));
  float* k = direct ? segments[0].kv->k + segments[0].start * W : ws.get(kK, static_cast<size_t>(T * W));
  float* v = direct ? segments[0].kv->v + segments[0].start * W : ws.get(kV, static_cast<size_t>(T * W));
  float* att = ws.get(kAtt, static_cast<size_t>(T * heads * D));
  if (qkv_proj) {  // one projection, its rows split into q, k and v
    const int64_t Q = heads * D, R = Q + 2 * W;
    float* qkv = ws.get(kQKV, static_cast<size_t>(T * R));
    qkv_proj->forward(x, T, qkv);
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(qkv + t * R, Q, q + t * Q);
      std::copy_n(qkv + t * R + Q, W, k + t * W);
      std::copy_n(qkv + t * R + Q + W, W, v + t * W);
    }
  } else {
    q_proj->forward(x, T, q);
    k_proj->forward(x, T, k);
    v_proj->forward(x, T, v);
  }
  if (q_norm) q_norm->forward(q, T * heads, q);
  if (k_norm) k_norm->forward(k, T * kv_heads, k);
  rope.apply(q, T, heads, cos, sin);
  rope.apply(k, T, kv_heads, cos, sin);
  const float sc = scale != 0 ? scale : 1.0f / std::sqrt(static_cast<float>(D));
  int64_t row = 0;
  for (const auto& s : segments) {
    if (!direct) {
      std::copy_n(k + row * W, s.T * W, s.kv->k + s.start * W);
      std::copy_n(v + row * W, s.T * W, s.kv->v + s.start * W);
    }
    kernels::attention({s.T, heads, kv_heads, D, s.start, sc, window, softcap}, q + row * heads * D, s.kv->k,
                       s.kv->v, att + row * heads * D);
    row += s.T;
  }
  o_proj->forward(att, T, out);
}

}  // namespace nibble::nn
