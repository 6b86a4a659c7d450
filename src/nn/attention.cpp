#include "nn/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
    const KVLayer& c = *s.kv;
    if (!c.first && s.start + s.T > c.capacity)
      throw ValueError("KV cache full: " + std::to_string(s.start + s.T) + " positions needed, room for " +
                       std::to_string(c.capacity));
    if (c.first) {  // window-bounded: the rows must still hold what the first new query sees
      if (window <= 0 || c.capacity < window)
        throw ValueError("KV cache: a layer bounded to " + std::to_string(c.capacity) +
                         " rows needs a sliding window of at most that many positions (window " +
                         std::to_string(window) + ")");
      const int64_t lo = std::max<int64_t>(0, s.start - window + 1);
      if (s.start > 0 && (lo < *c.first || s.start - *c.first > c.capacity))
        throw ValueError("KV cache: position " + std::to_string(lo) +
                         " is no longer held (the bounded rows start at position " +
                         std::to_string(*c.first) + "); run the sequence again from position 0");
    }
    T += s.T;
  }
  const int64_t D = head_dim, W = kv_heads * D;
  // one sequence over an unbounded cache: new keys and values go straight into it; else through scratch rows
  const bool direct = segments.size() == 1 && !segments[0].kv->first;
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
    const KVLayer& c = *s.kv;
    if (!c.first) {
      if (!direct) {
        std::copy_n(k + row * W, s.T * W, c.k + s.start * W);
        std::copy_n(v + row * W, s.T * W, c.v + s.start * W);
      }
      kernels::attention({s.T, heads, kv_heads, D, s.start, sc, window, softcap}, q + row * heads * D, c.k,
                         c.v, att + row * heads * D);
    } else {
      // window-bounded rows: queries in chunks that fit beside the window - 1 positions before them; before a
      // chunk that would run past the last row, the positions its first query sees move to the front
      if (s.start == 0) *c.first = 0;
      const int64_t chunk = c.capacity - (window - 1);
      for (int64_t t0 = 0; t0 < s.T; t0 += chunk) {
        const int64_t p0 = s.start + t0, nq = std::min(chunk, s.T - t0);
        if (p0 + nq - *c.first > c.capacity) {
          const int64_t lo = std::max<int64_t>(0, p0 - window + 1), from = (lo - *c.first) * W;
          std::memmove(c.k, c.k + from, static_cast<size_t>((p0 - lo) * W) * sizeof(float));
          std::memmove(c.v, c.v + from, static_cast<size_t>((p0 - lo) * W) * sizeof(float));
          *c.first = lo;
        }
        std::copy_n(k + (row + t0) * W, nq * W, c.k + (p0 - *c.first) * W);
        std::copy_n(v + (row + t0) * W, nq * W, c.v + (p0 - *c.first) * W);
        kernels::attention({nq, heads, kv_heads, D, p0, sc, window, softcap, *c.first},
                           q + (row + t0) * heads * D, c.k, c.v, att + (row + t0) * heads * D);
      }
    }
    row += s.T;
  }
  o_proj->forward(att, T, out);
}

}  // namespace nibble::nn
