#include "nn/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "nibble/error.h"

namespace nibble::nn {

namespace {
// Workspace slots of this module (after GatedMLP's; the model's start at 16).
enum Slot : size_t { kRouter = 12, kRows, kExpertOut };
}  // namespace

SparseMoE::SparseMoE(Tensor router, std::vector<GatedMLP> ex, int64_t k, bool norm)
    : experts(std::move(ex)), top_k(k), norm_topk_prob(norm), router_weight_(router) {
  const auto E = static_cast<int64_t>(experts.size());
  if (router.shape().size() != 2 || router.shape()[0] != E)
    throw ValueError("SparseMoE: the router has shape " + shape_str(router.shape()) + ", expected [" +
                     std::to_string(E) + ", hidden]");
  if (k < 1 || k > E)
    throw ValueError("SparseMoE: top_k " + std::to_string(k) + " is not in [1, " + std::to_string(E) + "]");
  router_ = std::make_unique<Linear>(std::move(router), std::nullopt);
  auto names = std::make_shared<std::vector<std::string>>();
  for (int64_t e = 0; e < E; ++e)
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
      names->push_back("mlp.experts." + std::to_string(e) + "." + proj);
  names_ = std::move(names);
}

std::vector<std::pair<const char*, std::unique_ptr<LinearBase>*>> SparseMoE::linears() {
  std::vector<std::pair<const char*, std::unique_ptr<LinearBase>*>> v;
  for (size_t e = 0; e < experts.size(); ++e) {
    GatedMLP& m = experts[e];
    v.emplace_back((*names_)[3 * e].c_str(), &m.gate_proj);
    v.emplace_back((*names_)[3 * e + 1].c_str(), &m.up_proj);
    v.emplace_back((*names_)[3 * e + 2].c_str(), &m.down_proj);
  }
  return v;
}

void SparseMoE::forward(const float* x, int64_t T, Workspace& ws, float* out) const {
  const auto E = static_cast<int64_t>(experts.size());
  const int64_t H = router_->in_features, K = top_k;
  float* logits = ws.get(kRouter, static_cast<size_t>(T * E));
  router_->forward(x, T, logits);
  // routing, per token: softmax in float32, the top k (ties to the lower expert), renormalized if asked
  thread_local std::vector<int32_t> pick, order;
  thread_local std::vector<float> pick_w;
  pick.resize(static_cast<size_t>(T * K));
  pick_w.resize(static_cast<size_t>(T * K));
  order.resize(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    float* p = logits + t * E;
    const float mx = *std::max_element(p, p + E);
    float sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(p[e] - mx));
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float total = 0;
    for (int64_t i = 0; i < K; ++i) total += p[order[static_cast<size_t>(i)]];
    for (int64_t i = 0; i < K; ++i) {
      const int32_t e = order[static_cast<size_t>(i)];
      pick[static_cast<size_t>(t * K + i)] = e;
      pick_w[static_cast<size_t>(t * K + i)] = norm_topk_prob ? p[e] / total : p[e];
    }
  }
  std::fill(out, out + T * H, 0.0f);
  // each expert over the tokens that chose it (in token order), its weighted output added to theirs:
  // experts in ascending order, as transformers' index_add_ loop. The tokens of every expert in one counting
  // pass (a token picks an expert at most once, so each expert's list is in token order).
  thread_local std::vector<int64_t> start, fill, rows_all;
  thread_local std::vector<float> w_all;
  start.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t i = 0; i < T * K; ++i) ++start[static_cast<size_t>(pick[static_cast<size_t>(i)] + 1)];
  for (int64_t e = 0; e < E; ++e) start[static_cast<size_t>(e + 1)] += start[static_cast<size_t>(e)];
  rows_all.resize(static_cast<size_t>(T * K));
  w_all.resize(static_cast<size_t>(T * K));
  fill.assign(start.begin(), start.end() - 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) {
      const auto e = static_cast<size_t>(pick[static_cast<size_t>(t * K + i)]);
      const auto at = static_cast<size_t>(fill[e]++);
      rows_all[at] = t;
      w_all[at] = pick_w[static_cast<size_t>(t * K + i)];
    }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t* rows = rows_all.data() + start[static_cast<size_t>(e)];
    const float* row_w = w_all.data() + start[static_cast<size_t>(e)];
    const int64_t M = start[static_cast<size_t>(e + 1)] - start[static_cast<size_t>(e)];
    if (M == 0) continue;
    float* xe = ws.get(kRows, static_cast<size_t>(M * H));
    for (int64_t i = 0; i < M; ++i) std::copy_n(x + rows[i] * H, H, xe + i * H);
    float* ye = ws.get(kExpertOut, static_cast<size_t>(M * H));
    experts[static_cast<size_t>(e)].forward(xe, M, ws, ye);
    for (int64_t i = 0; i < M; ++i) {
      float* o = out + rows[i] * H;
      const float w = row_w[i];
      for (int64_t h = 0; h < H; ++h) o[h] += ye[i * H + h] * w;
    }
  }
}

}  // namespace nibble::nn
