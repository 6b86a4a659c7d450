// A sparse mixture-of-experts MLP block as Qwen3-MoE's (transformers' Qwen3MoeSparseMoeBlock): a router picks
// each token's top-k experts from softmax(x @ router^T) (float32; renormalized to sum 1 when norm_topk_prob),
// and the token's output is the sum, in ascending expert order, of each chosen expert's gated MLP output
// times its weight. Experts are ordinary GatedMLPs (their linears quantized as bitsandbytes quantizes any
// nn.Linear); the router stays dense, as transformers keeps it (a parameter, not a Linear).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/linear.h"
#include "nn/mlp.h"
#include "nn/workspace.h"

namespace nibble::nn {

class SparseMoE {
 public:
  SparseMoE() = default;
  SparseMoE(Tensor router, std::vector<GatedMLP> experts, int64_t top_k, bool norm_topk_prob);
  // out[T, hidden] for x[T, hidden].
  void forward(const float* x, int64_t T, Workspace& ws, float* out) const;
  // The experts' linear modules with their names after "model.layers.N." (mlp.experts.E.gate_proj, ...),
  // in transformers' state-dict order.
  std::vector<std::pair<const char*, std::unique_ptr<LinearBase>*>> linears();
  const Tensor& router_weight() const { return router_weight_; }

  std::vector<GatedMLP> experts;
  int64_t top_k = 0;
  bool norm_topk_prob = false;

 private:
  Tensor router_weight_;
  std::unique_ptr<Linear> router_;
  std::shared_ptr<const std::vector<std::string>> names_;  // stable storage for linears()' names
};

}  // namespace nibble::nn
