// Causal grouped-query attention over a KV cache (float32): for each new token t (at position start + t) and
// query head h, softmax(q . k_j * scale) over j <= position, then the weighted sum of v_j. Cache rows are
// [position - kv_first][kv_heads * head_dim]. A scalar reference and AVX-512 paths (head_dim % 16 == 0): per
// token for decode, blocked over 16 queries x 16 keys for prefill; AVX2 (head_dim % 8 == 0) per token.
#pragma once
#include <cstdint>

namespace nibble::kernels {

struct AttentionShape {
  int64_t T, heads, kv_heads, head_dim, start;
  float scale;
  int64_t window = 0;  // sliding window: position p sees keys j with p - window < j <= p; 0 = all j <= p
  float softcap = 0;  // Gemma 2: each score s becomes tanh(s / softcap) * softcap before the softmax; 0 = off
  // position of cache row 0 (a window-bounded cache drops the positions no query can see any more): position
  // j sits in row j - kv_first, and every key a query sees must be >= kv_first. 0 = rows are positions.
  int64_t kv_first = 0;
};

void attention(const AttentionShape& s, const float* q, const float* k_cache, const float* v_cache,
               float* out);

namespace ref {
void attention(const AttentionShape& s, const float* q, const float* k_cache, const float* v_cache,
               float* out);
}

// The per-token path with AVX2 + FMA dot/axpy (CPUs without AVX-512); attention() uses it there.
namespace avx2 {
bool supported(int64_t head_dim);
void attention(const AttentionShape& s, const float* q, const float* k_cache, const float* v_cache,
               float* out);
}  // namespace avx2

}  // namespace nibble::kernels
