#include "nn/lora.h"

#include "kernels/cpu/gemm4.h"
#include "kernels/cpu/transpose.h"
#include "nibble/error.h"

namespace nibble::nn {

LoraLinear::LoraLinear(std::unique_ptr<LinearBase> b, int64_t rank, std::vector<float> a,
                       std::vector<float> bb, float s, const std::string& where)
    : base(std::move(b)), r(rank), A(std::move(a)), B(std::move(bb)), scaling(s) {
  if (!base) throw ValueError(where + ": LoRA needs a base layer");
  in_features = base->in_features;
  out_features = base->out_features;
  if (r <= 0) throw ValueError(where + ": LoRA rank must be positive, got " + std::to_string(r));
  if (static_cast<int64_t>(A.size()) != r * in_features)
    throw FormatError(where + ": lora_A has " + std::to_string(A.size()) + " elements, expected [" +
                      std::to_string(r) + ", " + std::to_string(in_features) + "]");
  if (static_cast<int64_t>(B.size()) != out_features * r)
    throw FormatError(where + ": lora_B has " + std::to_string(B.size()) + " elements, expected [" +
                      std::to_string(out_features) + ", " + std::to_string(r) + "]");
}

void LoraLinear::lora_forward(const float* x, int64_t T, float* u, float* y) const {
  kernels::gemm_dense(A.data(), DType::Float32, r, in_features, x, T, u);
  thread_local std::vector<float> v;
  v.resize(static_cast<size_t>(T * out_features));
  float* vp = v.data();  // a thread_local seen from inside the parallel region would be each thread's own
  kernels::gemm_dense(B.data(), DType::Float32, out_features, r, u, T, vp);
  const int64_t n = T * out_features;
  const float s = scaling;
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] += vp[i] * s;
}

void LoraLinear::forward(const float* x, int64_t T, float* y) const {
  base->forward(x, T, y);
  thread_local std::vector<float> u;
  u.resize(static_cast<size_t>(T * r));
  lora_forward(x, T, u.data(), y);
}

void LoraLinear::lora_input_grad(const float* dy, int64_t T, float* g, float* d) const {
  thread_local std::vector<float> bt, at;  // B^T [r, out] and A^T [in, r] as gemm_dense's weights
  bt.resize(B.size());
  at.resize(A.size());
  kernels::transpose(B.data(), out_features, r, bt.data());
  kernels::transpose(A.data(), r, in_features, at.data());
  kernels::gemm_dense(bt.data(), DType::Float32, r, out_features, dy, T, g);
  kernels::gemm_dense(at.data(), DType::Float32, in_features, r, g, T, d);
}

void LoraLinear::backward_input(const float* dy, int64_t T, float* dx) const {
  base->backward_input(dy, T, dx);
  // dx += ((dy @ B) @ A) * scaling
  thread_local std::vector<float> g, d;
  g.resize(static_cast<size_t>(T * r));
  d.resize(static_cast<size_t>(T * in_features));
  lora_input_grad(dy, T, g.data(), d.data());
  const float* dp = d.data();
  const float s = scaling;
  const int64_t n = T * in_features;
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dx[i] += s * dp[i];
}

std::unique_ptr<LinearBase> LoraLinear::dequantized() const {
  auto deq = base->dequantized();
  if (!deq) return nullptr;
  return std::make_unique<LoraLinear>(std::move(deq), r, A, B, scaling, "LoraLinear");
}

}  // namespace nibble::nn
