#include "nn/rotary.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "nibble/error.h"

namespace nibble::nn {

namespace {
// yarn, as transformers 5.24 computes it: the correction range in double precision, the ramp and the blend
// of interpolated and extrapolated frequencies in float32.
void yarn(int64_t D, const RopeConfig& c, std::vector<float>& inv_freq, float& attention_scaling) {
  const double base = c.theta, factor = c.factor;
  auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  double af = c.attention_factor;
  if (std::isnan(af))
    af = c.mscale != 0 && c.mscale_all_dim != 0
             ? get_mscale(factor, c.mscale) / get_mscale(factor, c.mscale_all_dim)
             : get_mscale(factor, 1.0);
  attention_scaling = static_cast<float>(af);
  const double dim = static_cast<double>(D), orig = static_cast<double>(c.original_max_positions);
  auto correction_dim = [&](double rot) {
    return (dim * std::log(orig / (rot * 2 * std::numbers::pi))) / (2 * std::log(base));
  };
  double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1);
  if (low == high) high += 0.001;
  const float lo = static_cast<float>(low), span = static_cast<float>(high - low),
              fac = static_cast<float>(factor);
  for (int64_t i = 0; i < D / 2; ++i) {
    const float pos = std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(D));
    const float extrapolation = 1.0f / pos, interpolation = 1.0f / (fac * pos);
    const float ramp = std::clamp((static_cast<float>(i) - lo) / span, 0.0f, 1.0f);
    const float ef = 1.0f - ramp;  // inv_freq_extrapolation_factor
    inv_freq[static_cast<size_t>(i)] = interpolation * (1.0f - ef) + extrapolation * ef;
  }
}
}  // namespace

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, const RopeConfig& c, int64_t rotary_dim)
    : head_dim_(head_dim) {
  const int64_t D = rotary_dim > 0 ? rotary_dim : head_dim;  // frequencies over the rotated dims only
  inv_freq_.resize(static_cast<size_t>(D / 2));
  dynamic_ = c.type == "dynamic";
  theta_ = static_cast<float>(c.theta);
  factor_ = static_cast<float>(c.factor);
  max_positions_ = c.max_positions;
  if (c.type == "yarn") {
    yarn(D, c, inv_freq_, attention_scaling_);
    return;
  }
  if (c.type == "longrope") {  // transformers' _compute_longrope_parameters
    const auto half = static_cast<size_t>(D / 2);
    if (c.short_factor.size() != half || c.long_factor.size() != half)
      throw FormatError("longrope: short_factor and long_factor need " + std::to_string(half) +
                        " entries (rotary dims / 2), got " + std::to_string(c.short_factor.size()) + " and " +
                        std::to_string(c.long_factor.size()));
    const double orig = static_cast<double>(c.original_max_positions);
    const double factor = c.factor > 0 ? c.factor : static_cast<double>(c.max_positions) / orig;
    double af = c.attention_factor;
    if (std::isnan(af)) af = factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(orig));
    attention_scaling_ = static_cast<float>(af);
    original_max_positions_ = c.original_max_positions;
    inv_long_.resize(half);
    for (size_t i = 0; i < half; ++i) {
      const float p =
          std::pow(static_cast<float>(c.theta), static_cast<float>(2 * i) / static_cast<float>(D));
      inv_freq_[i] = 1.0f / (static_cast<float>(c.short_factor[i]) * p);
      inv_long_[i] = 1.0f / (static_cast<float>(c.long_factor[i]) * p);
    }
    return;
  }
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
  const float* inv = inv_freq_.data();
  thread_local std::vector<float> grown;
  if (dynamic_ && start + T > max_positions_) {
    const float dim = static_cast<float>(2 * half);
    float t = factor_ * static_cast<float>(start + T);
    t = t / static_cast<float>(max_positions_);
    t = t - (factor_ - 1.0f);
    const float base =
        theta_ * std::pow(t, static_cast<float>(static_cast<double>(2 * half) / (2 * half - 2)));
    grown.resize(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      grown[static_cast<size_t>(i)] = 1.0f / std::pow(base, static_cast<float>(2 * i) / dim);
    inv = grown.data();
  }
  if (!inv_long_.empty() && start + T > original_max_positions_) inv = inv_long_.data();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float f = static_cast<float>(start + t) * inv[i];
      cos[t * half + i] = std::cos(f) * attention_scaling_;
      sin[t * half + i] = std::sin(f) * attention_scaling_;
    }
}

void RotaryEmbedding::apply(float* x, int64_t T, int64_t heads, const float* cos, const float* sin) const {
  const auto half = static_cast<int64_t>(inv_freq_.size());
#pragma omp parallel for if (T > 1)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim_;  // the first 2 * half dims turn, the rest pass
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
