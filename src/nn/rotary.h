// Rotary position embedding as transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb (rotate_half
// convention): inverse frequencies in float32 (default, linear, llama3, yarn and dynamic NTK scaling), angle
// = position * inv_freq in float32, cos/sin times yarn's attention factor, then x' = x * cos + rotate_half(x)
// * sin per head.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace nibble::nn {

struct RopeConfig {
  double theta = 10000.0;
  std::string type = "default";  // "default", "linear", "llama3", "yarn", "dynamic", "longrope"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
  int64_t max_positions = 2048;  // dynamic: beyond it the base grows with the sequence
  // longrope (Phi-3): per-frequency factors for sequences up to / past original_max_positions
  std::vector<double> short_factor, long_factor;
  // yarn (transformers' _compute_yarn_parameters): attention_factor (NaN: from factor, mscale,
  // mscale_all_dim), the ramp's beta_fast / beta_slow, and whether its correction range is truncated to
  // integers
  double attention_factor = NAN, mscale = 0, mscale_all_dim = 0, beta_fast = 32, beta_slow = 1;
  bool truncate = true;
};

class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  // rotary_dim: the leading dims of each head that turn (phi3's head_dim * partial_rotary_factor); 0 = all.
  RotaryEmbedding(int64_t head_dim, const RopeConfig& c, int64_t rotary_dim = 0);
  // cos/sin [T, head_dim / 2] for positions start .. start + T - 1.
  void angles(int64_t start, int64_t T, float* cos, float* sin) const;
  // Rotates x [T, heads, head_dim] in place with the angles of its T positions; threaded when T > 1.
  void apply(float* x, int64_t T, int64_t heads, const float* cos, const float* sin) const;
  // longrope: positions below `start` were turned by the short factors and a call reaching `end` needs the
  // long ones (transformers' Phi-3 generate then recomputes its whole cache).
  bool regime_changes(int64_t start, int64_t end) const {
    return !inv_long_.empty() && start > 0 && start <= original_max_positions_ &&
           end > original_max_positions_;
  }
  // Bytes of the buffers transformers registers (inv_freq and original_inv_freq).
  size_t buffer_bytes() const { return 2 * inv_freq_.size() * sizeof(float); }

 private:
  std::vector<float> inv_freq_;
  int64_t head_dim_ = 0;
  // dynamic NTK: a call whose last position + 1 (seq_len) passes max_positions turns all its positions with
  // base = theta * (factor * seq_len / max - (factor - 1))^(dim / (dim - 2)) (float32, as transformers'
  // forward computes it); earlier positions keep the rotation they had (cached keys), as in transformers'
  // generate.
  bool dynamic_ = false;
  // longrope: calls whose last position + 1 passes original_max_positions turn by the long factors
  std::vector<float> inv_long_;
  int64_t original_max_positions_ = 0;
  float theta_ = 0, factor_ = 1;
  int64_t max_positions_ = 0;
  float attention_scaling_ = 1.0f;  // yarn's attention factor; 1 otherwise
};

}  // namespace nibble::nn
