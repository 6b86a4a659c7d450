#include "nn/rotary.h"

#include <cmath>
#include <numbers>

namespace nibble::nn {

RotaryEmbedding::RotaryEmbedding(int64_t D, const RopeConfig& c) {
  inv_freq_.resize(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    float f = 1.0f / std::pow(static_cast<float>(c.theta), e);
    if (c.type == "linear") f = f / static_cast<float>(c.factor);
    if (c.type == "llama3") {
      const double old_ctx = static_cast<double>(c.original_max_positions);
      const double low_wl = old_ctx / c.low_freq_factor, high_wl = old_ctx / c.high_freq_factor;
      const double wl = 2 * std::numbers::pi / f;
      if (wl > low_wl) {
        f = static_cast<float>(f / c.factor);
      } else if (wl >= high_wl) {
        const double smooth = (old_ctx / wl - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / c.factor + smooth * f);
      }
    }
    inv_freq_[static_cast<size_t>(i)] = f;
  }
}

void RotaryEmbedding::angles(int64_t start, int64_t T, float* cos, float* sin) const {
  const auto half = static_cast<int64_t>(inv_freq_.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float f = static_cast<float>(start + t) * inv_freq_[static_cast<size_t>(i)];
      cos[t * half + i] = std::cos(f);
      sin[t * half + i] = std::sin(f);
    }
}

void RotaryEmbedding::apply(float* x, int64_t T, int64_t heads, const float* cos, const float* sin) const {
  const auto half = static_cast<int64_t>(inv_freq_.size());
#pragma omp parallel for if (T > 1)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * 2 * half;
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
}

}  // namespace nibble::nn
