#include "train/optim.h"

#include <cmath>
#include <numbers>

#include "nibble/error.h"

namespace nibble::train {

void check_scheduler_name(const std::string& name) {
  if (name != "linear" && name != "cosine" && name != "constant" && name != "constant_with_warmup")
    throw ValueError("lr scheduler '" + name +
                     "' is not one of linear, cosine, constant, constant_with_warmup");
}

double schedule_factor(const std::string& name, int64_t step, int64_t warmup, int64_t total) {
  check_scheduler_name(name);
  const auto s = static_cast<double>(step), w = static_cast<double>(warmup), n = static_cast<double>(total);
  if (name == "constant") return 1.0;
  if (step < warmup) return s / std::max(1.0, w);
  if (name == "constant_with_warmup") return 1.0;
  if (name == "linear") return std::max(0.0, (n - s) / std::max(1.0, n - w));
  // cosine, num_cycles = 0.5
  const double progress = (s - w) / std::max(1.0, n - w);
  return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
}

double clip_grad_norm(std::vector<LoraModule>& modules, double max_norm) {
  const auto total = static_cast<float>(grad_total_norm(modules));
  if (max_norm > 0) {
    const float coef = std::min(1.0f, static_cast<float>(max_norm) / (total + 1e-6f));
    for (auto& m : modules)
      for (auto* g : {&m.dA, &m.dB})
        for (float& x : *g) x *= coef;
  }
  return total;
}

namespace {

class AdamW final : public Optimizer {
 public:
  AdamW(const OptimizerOptions& o, const std::vector<LoraModule>& modules) : o_(o) {
    for (const auto& m : modules) {
      state_.push_back({std::vector<float>(m.dA.size()), std::vector<float>(m.dA.size())});
      state_.push_back({std::vector<float>(m.dB.size()), std::vector<float>(m.dB.size())});
      names_.push_back(m.name + ".A");
      names_.push_back(m.name + ".B");
    }
  }
  // torch.optim.AdamW, single-tensor path (CPU):
  //   p *= 1 - lr * wd; m.lerp_(g, 1 - b1); v = v * b2 + (1 - b2) * g * g;
  //   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  void step(std::vector<LoraModule>& modules, double lr) override {
    ++t_;
    const double bc1 = 1 - std::pow(o_.beta1, static_cast<double>(t_));
    const double bc2 = 1 - std::pow(o_.beta2, static_cast<double>(t_));
    const auto decay = static_cast<float>(1 - lr * o_.weight_decay);
    const auto step_size = static_cast<float>(lr / bc1);
    const auto bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    const auto w1 = static_cast<float>(1 - o_.beta1), b2 = static_cast<float>(o_.beta2),
               w2 = static_cast<float>(1 - o_.beta2), eps = static_cast<float>(o_.eps);
    size_t k = 0;
    for (auto& m : modules)
      for (auto [pv, gv] : {std::pair{&m.lin->A, &m.dA}, {&m.lin->B, &m.dB}}) {
        // plain pointers: OpenMP regions cannot capture structured bindings (clang)
        float* p = pv->data();
        const float* g = gv->data();
        float* ma = state_[k].first.data();
        float* va = state_[k].second.data();
        ++k;
        const size_t n = pv->size();
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; ++i) {
          float& x = p[i];
          const float gi = g[i];
          if (o_.weight_decay != 0) x *= decay;
          ma[i] += w1 * (gi - ma[i]);
          va[i] = va[i] * b2 + w2 * gi * gi;
          const float denom = std::sqrt(va[i]) / bc2_sqrt + eps;
          x += -step_size * (ma[i] / denom);
        }
      }
  }
  NamedTensors state() const override {
    NamedTensors d;
    for (size_t k = 0; k < state_.size(); ++k) {
      const auto n = static_cast<int64_t>(state_[k].first.size());
      d.emplace_back(names_[k] + ".exp_avg", Tensor::from_vector(DType::Float32, {n}, state_[k].first));
      d.emplace_back(names_[k] + ".exp_avg_sq", Tensor::from_vector(DType::Float32, {n}, state_[k].second));
    }
    d.emplace_back("step", Tensor::from_vector<int64_t>(DType::Int64, {}, {t_}));
    return d;
  }
  void load_state(const NamedTensors& st) override {
    auto find = [&](const std::string& name) -> const Tensor& {
      for (const auto& [k, v] : st)
        if (k == name) return v;
      throw FormatError("optimizer state: tensor '" + name + "' missing");
    };
    for (size_t k = 0; k < state_.size(); ++k)
      for (auto [suffix, dst] :
           {std::pair{".exp_avg", &state_[k].first}, {".exp_avg_sq", &state_[k].second}}) {
        const Tensor& t = find(names_[k] + suffix);
        if (t.dtype() != DType::Float32 || t.numel() != static_cast<int64_t>(dst->size()))
          throw FormatError("optimizer state: tensor '" + names_[k] + suffix +
                            "' has the wrong shape or dtype");
        *dst = t.to_float_vector();
      }
    const Tensor& s = find("step");
    if (s.dtype() != DType::Int64 || s.numel() != 1)
      throw FormatError("optimizer state: 'step' must be one int64");
    t_ = s.data<int64_t>()[0];
  }

 private:
  OptimizerOptions o_;
  std::vector<std::pair<std::vector<float>, std::vector<float>>> state_;  // exp_avg, exp_avg_sq per tensor
  std::vector<std::string> names_;
  int64_t t_ = 0;
};

class SGD final : public Optimizer {
 public:
  explicit SGD(const OptimizerOptions& o) : o_(o) {}
  // torch.optim.SGD without momentum: g += wd * p; p -= lr * g
  void step(std::vector<LoraModule>& modules, double lr) override {
    const auto wd = static_cast<float>(o_.weight_decay), a = static_cast<float>(-lr);
    for (auto& m : modules)
      for (auto [p, g] : {std::pair{&m.lin->A, &m.dA}, {&m.lin->B, &m.dB}})
        for (size_t i = 0; i < p->size(); ++i) {
          float gi = (*g)[i];
          if (wd != 0) gi += wd * (*p)[i];
          (*p)[i] += a * gi;
        }
  }
  NamedTensors state() const override { return {}; }
  void load_state(const NamedTensors&) override {}

 private:
  OptimizerOptions o_;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerOptions& o, const std::vector<LoraModule>& modules) {
  if (o.name == "adamw_torch" || o.name == "adamw") return std::make_unique<AdamW>(o, modules);
  if (o.name == "sgd") return std::make_unique<SGD>(o);
  if (o.name == "adamw_8bit" || o.name == "paged_adamw_8bit")
    throw NotSupportedError("optimizer '" + o.name +
                            "' (bitsandbytes' 8-bit AdamW) is not implemented yet; use adamw_torch");
  throw ValueError("optimizer '" + o.name + "' is not one of adamw_torch, sgd");
}

}  // namespace nibble::train
