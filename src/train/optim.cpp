#include "train/optim.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>

#include "nibble/error.h"
#include "nibble/quantize.h"

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

// The tensor `name` of a saved optimizer state; FormatError naming it (and `hint`) if it is absent.
const Tensor& find_state(const NamedTensors& st, const std::string& name, const std::string& hint = "") {
  for (const auto& [k, v] : st)
    if (k == name) return v;
  throw FormatError("optimizer state: tensor '" + name + "' missing" + hint);
}

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
    auto find = [&](const std::string& name) -> const Tensor& { return find_state(st, name); };
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

// bitsandbytes' AdamW with optim_bits=8 (bnb.optim.AdamW8bit; what transformers' Trainer builds for
// optim="adamw_8bit" and, paging aside, "paged_adamw_8bit"), as its CPU backend computes it
// (bitsandbytes/backends/cpu/ops.py, csrc/cpu_ops.cpp, 0.50):
//  - a tensor of fewer than min_8bit_size = 4096 elements keeps float32 state and takes the 32-bit update:
//      m = m * b1 + (1 - b1) g; v = v * b2 + ((1 - b2) g) g; p *= 1 - lr wd;
//      p += (m / (sqrt(v) + eps sqrt(1 - b2^t))) * (-lr sqrt(1 - b2^t) / (1 - b1^t));
//  - larger ones keep m and v 8-bit blockwise (blocks of 256; m with the signed dynamic map, v with the
//    unsigned one, an absmax per block), dequantized (code * absmax), updated as torch does
//      m = m * b1 + (1 - b1) g; v = v * b2 + ((1 - b2) g) g; p *= 1 - lr wd;
//      p += ((-lr / (1 - b1^t)) m) / (sqrt(v) / sqrt(1 - b2^t) + eps)
//    and quantized back with bitsandbytes' CPU quantize_blockwise: absmax = max |x| of the block, and the
//    code of x / absmax looked up in a 65536-bin table of nearest codes over [-1, 1] (not the exact nearest
//    code: a value near a midpoint can land one code off, as there).
// torch's CPU kernels fuse `add_(x, alpha)` and `addcmul_` into multiply-adds (measured against torch), so
// those are std::fma here. Its float32 sqrt (MKL's vsSqrt on x86) is not always correctly rounded - one unit
// in the last place off in ~18% of elements on an AVX2 CPU, and CPU-dependent - so parameters agree to a few
// units in the last place while the 8-bit states (which no sqrt reaches) agree bit for bit; checked against
// bitsandbytes' own run in tests/train/adamw8bit_test.cpp.
class AdamW8bit final : public Optimizer {
 public:
  static constexpr int64_t kMin8bitSize = 4096, kBlock = 256;

  AdamW8bit(const OptimizerOptions& o, const std::vector<LoraModule>& modules)
      : o_(o), map1_(create_dynamic_map(true)), map2_(create_dynamic_map(false)) {
    lut1_ = build_lut(map1_);
    lut2_ = build_lut(map2_);
    for (const auto& m : modules)
      for (auto [suffix, n] : {std::pair{".A", m.dA.size()}, {".B", m.dB.size()}}) {
        State st;
        st.name = m.name + suffix;
        st.eight_bit = static_cast<int64_t>(n) >= kMin8bitSize;
        if (st.eight_bit) {
          st.q1.assign(n, 0);
          st.q2.assign(n, 0);
          const size_t blocks = (n + kBlock - 1) / kBlock;
          st.absmax1.assign(blocks, 0.0f);
          st.absmax2.assign(blocks, 0.0f);
        } else {
          st.m.assign(n, 0.0f);
          st.v.assign(n, 0.0f);
        }
        states_.push_back(std::move(st));
      }
  }

  void step(std::vector<LoraModule>& modules, double lr) override {
    ++t_;
    const double t = static_cast<double>(t_);
    const double c1 = 1.0 - std::pow(o_.beta1, t), c2 = std::sqrt(1.0 - std::pow(o_.beta2, t));
    const auto b1 = static_cast<float>(o_.beta1), w1 = static_cast<float>(1.0 - o_.beta1),
               b2 = static_cast<float>(o_.beta2), w2 = static_cast<float>(1.0 - o_.beta2);
    const auto decay = static_cast<float>(1.0 - lr * o_.weight_decay);
    size_t k = 0;
    for (auto& mod : modules)
      for (auto [pv, gv] : {std::pair{&mod.lin->A, &mod.dA}, {&mod.lin->B, &mod.dB}}) {
        State& st = states_[k++];
        float* p = pv->data();
        const float* g = gv->data();
        const int64_t n = static_cast<int64_t>(pv->size());
        if (!st.eight_bit) {
          const auto step_size = static_cast<float>(-lr * c2 / c1), eps_c2 = static_cast<float>(o_.eps * c2);
          for (int64_t i = 0; i < n; ++i) {
            float& m = st.m[static_cast<size_t>(i)];
            float& v = st.v[static_cast<size_t>(i)];
            m = std::fma(g[i], w1, m * b1);
            v = std::fma(w2 * g[i], g[i], v * b2);
            if (o_.weight_decay > 0) p[i] *= decay;
            p[i] = std::fma(m / (std::sqrt(v) + eps_c2), step_size, p[i]);
          }
          continue;
        }
        const auto scale = static_cast<float>(-lr / c1), c2f = static_cast<float>(c2),
                   eps = static_cast<float>(o_.eps);
        // plain pointers for the parallel loop (clang: no structured bindings in OpenMP regions)
        uint8_t* q1 = st.q1.data();
        uint8_t* q2 = st.q2.data();
        float* am1 = st.absmax1.data();
        float* am2 = st.absmax2.data();
        const float* map1 = map1_.data();
        const float* map2 = map2_.data();
        const uint8_t* lut1 = lut1_.data();
        const uint8_t* lut2 = lut2_.data();
        const bool wd = o_.weight_decay > 0;
        const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
          float m[kBlock], v[kBlock];
          float max1 = 0.0f, max2 = 0.0f;
          for (int64_t i = i0; i < i1; ++i) {
            float mi = map1[q1[i]] * am1[b], vi = map2[q2[i]] * am2[b];
            mi = std::fma(g[i], w1, mi * b1);
            vi = std::fma(w2 * g[i], g[i], vi * b2);
            if (wd) p[i] *= decay;
            p[i] = p[i] + scale * mi / (std::sqrt(vi) / c2f + eps);
            m[i - i0] = mi;
            v[i - i0] = vi;
            max1 = std::max(max1, std::fabs(mi));
            max2 = std::max(max2, std::fabs(vi));
          }
          am1[b] = max1;
          am2[b] = max2;
          quantize_block(m, i1 - i0, max1, lut1, q1 + i0);
          quantize_block(v, i1 - i0, max2, lut2, q2 + i0);
        }
      }
  }

  NamedTensors state() const override {
    NamedTensors d;
    for (const State& st : states_) {
      if (st.eight_bit) {
        const auto n = static_cast<int64_t>(st.q1.size()), nb = static_cast<int64_t>(st.absmax1.size());
        d.emplace_back(st.name + ".state1", Tensor::from_vector(DType::UInt8, {n}, st.q1));
        d.emplace_back(st.name + ".state2", Tensor::from_vector(DType::UInt8, {n}, st.q2));
        d.emplace_back(st.name + ".absmax1", Tensor::from_vector(DType::Float32, {nb}, st.absmax1));
        d.emplace_back(st.name + ".absmax2", Tensor::from_vector(DType::Float32, {nb}, st.absmax2));
      } else {
        const auto n = static_cast<int64_t>(st.m.size());
        d.emplace_back(st.name + ".state1", Tensor::from_vector(DType::Float32, {n}, st.m));
        d.emplace_back(st.name + ".state2", Tensor::from_vector(DType::Float32, {n}, st.v));
      }
    }
    d.emplace_back("step", Tensor::from_vector<int64_t>(DType::Int64, {}, {t_}));
    d.emplace_back("optim_bits", Tensor::from_vector<int64_t>(DType::Int64, {}, {8}));
    return d;
  }

  void load_state(const NamedTensors& st) override {
    auto find = [&](const std::string& name, DType dt, size_t n) -> const Tensor& {
      const Tensor& v = find_state(st, name, " (is the checkpoint from adamw_8bit?)");
      if (v.dtype() != dt || static_cast<size_t>(v.numel()) != n)
        throw FormatError("optimizer state: tensor '" + name + "' must be " + std::string(dtype_name(dt)) +
                          " with " + std::to_string(n) +
                          " elements (an adamw_8bit checkpoint of this adapter)");
      return v;
    };
    for (State& s : states_) {
      if (s.eight_bit) {
        const Tensor& a = find(s.name + ".state1", DType::UInt8, s.q1.size());
        const Tensor& b = find(s.name + ".state2", DType::UInt8, s.q2.size());
        std::copy_n(a.data<uint8_t>(), s.q1.size(), s.q1.data());
        std::copy_n(b.data<uint8_t>(), s.q2.size(), s.q2.data());
        s.absmax1 = find(s.name + ".absmax1", DType::Float32, s.absmax1.size()).to_float_vector();
        s.absmax2 = find(s.name + ".absmax2", DType::Float32, s.absmax2.size()).to_float_vector();
      } else {
        s.m = find(s.name + ".state1", DType::Float32, s.m.size()).to_float_vector();
        s.v = find(s.name + ".state2", DType::Float32, s.v.size()).to_float_vector();
      }
    }
    t_ = find("step", DType::Int64, 1).data<int64_t>()[0];
  }

 private:
  struct State {
    std::string name;
    bool eight_bit = false;
    std::vector<uint8_t> q1, q2;          // 8-bit: codes of m (signed map) and v (unsigned map)
    std::vector<float> absmax1, absmax2;  // 8-bit: per block of 256
    std::vector<float> m, v;              // 32-bit
  };

  // csrc/cpu_ops.cpp build_quantize_lut: bin i of 65536 over [-1, 1] -> the first code whose midpoint with
  // the next one is not below the bin's value
  static std::vector<uint8_t> build_lut(const std::vector<float>& code) {
    constexpr int kLut = 65536;
    std::array<float, 255> mid{};
    for (int i = 0; i < 255; ++i)
      mid[static_cast<size_t>(i)] = 0.5f * (code[static_cast<size_t>(i)] + code[static_cast<size_t>(i + 1)]);
    std::vector<uint8_t> lut(kLut);
    int c = 0;
    for (int i = 0; i < kLut; ++i) {
      const float val = -1.0f + (2.0f * static_cast<float>(i)) / static_cast<float>(kLut - 1);
      while (c < 255 && mid[static_cast<size_t>(c)] < val) ++c;
      lut[static_cast<size_t>(i)] = static_cast<uint8_t>(c);
    }
    return lut;
  }
  // quantize_cpu_impl for one block whose absmax is known
  static void quantize_block(const float* x, int64_t n, float absmax, const uint8_t* lut, uint8_t* out) {
    if (absmax == 0.0f) {
      std::fill(out, out + n, uint8_t{0});
      return;
    }
    const float inv = 1.0f / absmax;
    for (int64_t i = 0; i < n; ++i) {
      const float v = std::clamp(x[i] * inv, -1.0f, 1.0f);
      out[i] = lut[static_cast<uint16_t>((v + 1.0f) * 0.5f * 65535.0f + 0.5f)];
    }
  }

  OptimizerOptions o_;
  std::vector<float> map1_, map2_;
  std::vector<uint8_t> lut1_, lut2_;
  std::vector<State> states_;
  int64_t t_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerOptions& o, const std::vector<LoraModule>& modules) {
  if (o.name == "adamw_torch" || o.name == "adamw") return std::make_unique<AdamW>(o, modules);
  if (o.name == "sgd") return std::make_unique<SGD>(o);
  // paged_adamw_8bit: the same optimizer; its paging (CUDA unified memory) has no meaning on the CPU
  if (o.name == "adamw_8bit" || o.name == "paged_adamw_8bit" || o.name == "adamw_bnb_8bit")
    return std::make_unique<AdamW8bit>(o, modules);
  throw ValueError("optimizer '" + o.name + "' is not one of adamw_torch, sgd, adamw_8bit, paged_adamw_8bit");
}

}  // namespace nibble::train
