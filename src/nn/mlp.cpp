#include "nn/mlp.h"

#include <cmath>

namespace nibble::nn {

namespace {
// torch's gelu(approximate="tanh") in float32
inline float gelu_tanh(float x) {
  constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;  // sqrt(2 / pi)
  const float inner = kBeta * (x + kKappa * (x * x * x));
  return 0.5f * x * (1.0f + std::tanh(inner));
}
// Workspace slots of this module (after Attention's).
enum Slot : size_t { kGate = 8, kUp, kGateUp };
}  // namespace

GatedMLP::GatedMLP(std::unique_ptr<LinearBase> gate, std::unique_ptr<LinearBase> up,
                   std::unique_ptr<LinearBase> down)
    : gate_proj(std::move(gate)), up_proj(std::move(up)), down_proj(std::move(down)) {}

GatedMLP::GatedMLP(std::unique_ptr<LinearBase> gate_up, std::unique_ptr<LinearBase> down)
    : down_proj(std::move(down)), gate_up_proj(std::move(gate_up)) {}

void GatedMLP::forward(const float* x, int64_t T, Workspace& ws, float* out) const {
  if (gate_up_proj) {  // [gate | up] per row: up * silu(gate)
    const int64_t I = gate_up_proj->out_features / 2;
    float* gu = ws.get(kGateUp, static_cast<size_t>(T * 2 * I));
    float* g = ws.get(kGate, static_cast<size_t>(T * I));
    gate_up_proj->forward(x, T, gu);
#pragma omp parallel for if (T > 1)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < I; ++i) {
        const float a = gu[t * 2 * I + i];
        g[t * I + i] = a / (1.0f + std::exp(-a)) * gu[t * 2 * I + I + i];
      }
    down_proj->forward(g, T, out);
    return;
  }
  const auto n = static_cast<size_t>(T * gate_proj->out_features);
  float* g = ws.get(kGate, n);
  float* u = ws.get(kUp, n);
  gate_proj->forward(x, T, g);
  up_proj->forward(x, T, u);
  if (act == Act::GeluTanh) {
#pragma omp parallel for if (T > 1)
    for (size_t i = 0; i < n; ++i) g[i] = gelu_tanh(g[i]) * u[i];
  } else {
#pragma omp parallel for if (T > 1)
    for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
  down_proj->forward(g, T, out);
}

}  // namespace nibble::nn
