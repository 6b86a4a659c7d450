#include "nn/mlp.h"

#include <cmath>

namespace nibble::nn {

namespace {
// Workspace slots of this module (after Attention's).
enum Slot : size_t { kGate = 8, kUp };
}  // namespace

GatedMLP::GatedMLP(std::unique_ptr<LinearBase> gate, std::unique_ptr<LinearBase> up,
                   std::unique_ptr<LinearBase> down)
    : gate_proj(std::move(gate)), up_proj(std::move(up)), down_proj(std::move(down)) {}

void GatedMLP::forward(const float* x, int64_t T, Workspace& ws, float* out) const {
  const auto n = static_cast<size_t>(T * gate_proj->out_features);
  float* g = ws.get(kGate, n);
  float* u = ws.get(kUp, n);
  gate_proj->forward(x, T, g);
  up_proj->forward(x, T, u);
#pragma omp parallel for if (T > 1)
  for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  down_proj->forward(g, T, out);
}

}  // namespace nibble::nn
