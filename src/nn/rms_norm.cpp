#include "nn/rms_norm.h"

#include <cmath>

namespace nibble::nn {

RMSNorm::RMSNorm(Tensor weight, double eps, bool unit_offset)
    : weight_(std::move(weight)), w_(weight_.to_float_vector()), eps_(static_cast<float>(eps)) {
  if (unit_offset)
    for (float& w : w_) w = 1.0f + w;
}

void RMSNorm::forward(const float* x, int64_t T, float* out) const {
  const int64_t n = size();
#pragma omp parallel for if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * n;
    float* o = out + t * n;
    float ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps_);
    for (int64_t i = 0; i < n; ++i) o[i] = w_[static_cast<size_t>(i)] * (xr[i] * r);
  }
}

}  // namespace nibble::nn
