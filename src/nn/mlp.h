// The llama family's gated MLP: down(silu(gate(x)) * up(x)).
#pragma once
#include <cstdint>
#include <memory>

#include "nn/linear.h"
#include "nn/workspace.h"

namespace nibble::nn {

class GatedMLP {
 public:
  GatedMLP() = default;
  GatedMLP(std::unique_ptr<LinearBase> gate, std::unique_ptr<LinearBase> up,
           std::unique_ptr<LinearBase> down);
  // phi3: one fused projection whose output rows are [gate | up]
  GatedMLP(std::unique_ptr<LinearBase> gate_up, std::unique_ptr<LinearBase> down);
  // out[T, hidden] for x[T, hidden].
  void forward(const float* x, int64_t T, Workspace& ws, float* out) const;

  std::unique_ptr<LinearBase> gate_proj, up_proj, down_proj;
  std::unique_ptr<LinearBase> gate_up_proj;  // fused (then gate/up_proj are null)
  // the gate's activation: silu, or the tanh approximation of GELU (Gemma's gelu_pytorch_tanh)
  enum class Act { Silu, GeluTanh } act = Act::Silu;
};

}  // namespace nibble::nn
