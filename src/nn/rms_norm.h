// RMSNorm as transformers' LlamaRMSNorm computes it in float32: x * rsqrt(mean(x^2) + eps) * weight.
#pragma once
#include <cstdint>
#include <vector>

#include "nibble/tensor.h"

namespace nibble::nn {

class RMSNorm {
 public:
  RMSNorm() = default;
  // unit_offset: Gemma's form, x_normed * (1 + weight) (the stored weight is the offset from 1)
  RMSNorm(Tensor weight, double eps, bool unit_offset = false);
  // out[T, n] = norm(x[T, n]); rows split over threads when T > 1. out may be x (each row is read whole
  // before it is written).
  void forward(const float* x, int64_t T, float* out) const;
  const Tensor& weight() const { return weight_; }
  int64_t size() const { return static_cast<int64_t>(w_.size()); }

 private:
  Tensor weight_;         // as stored (save_pretrained writes it back)
  std::vector<float> w_;  // float32 for compute
  float eps_ = 1e-6f;
};

}  // namespace nibble::nn
