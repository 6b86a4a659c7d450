#include "train/lora_model.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/gemm4.h"
#include "kernels/cpu/transpose.h"
#include "nibble/error.h"

namespace nibble::train {

namespace {

// The linears of a layer in LlamaLayer::linears() order, by role.
enum Role : int { kQ, kK, kV, kO, kGate, kUp, kDown, kRoles };
constexpr const char* kRoleName[kRoles] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};

std::unique_ptr<nn::LinearBase>& role_slot(models::LlamaLayer& L, int role) {
  switch (role) {
    case kQ:
      return L.attn.q_proj;
    case kK:
      return L.attn.k_proj;
    case kV:
      return L.attn.v_proj;
    case kO:
      return L.attn.o_proj;
    case kGate:
      return L.mlp.gate_proj;
    case kUp:
      return L.mlp.up_proj;
    default:
      return L.mlp.down_proj;
  }
}

// peft's check_target_module_exists for a list of targets: the full name, or a suffix after a dot.
bool matches(const std::string& name, const std::string& target) {
  if (name == target) return true;
  return name.size() > target.size() &&
         name.compare(name.size() - target.size(), target.size(), target) == 0 &&
         name[name.size() - target.size() - 1] == '.';
}

// Counter-based dropout masks: element i of module m's input keeps its value with probability 1 - p, the same
// draw every time for the same (seed, m, i), so a recomputed layer (gradient checkpointing) sees the mask the
// first pass saw.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
inline bool keep(uint64_t seed, uint64_t m, uint64_t i, float p) {
  const uint64_t h = mix(seed ^ mix(m * 0x100000001b3ULL + 0x51ed27) ^ (i * 0xd6e8feb86659fd93ULL));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f) >= p;
}

// dst = x with module m's dropout mask applied and the kept values scaled by 1 / (1 - p), as torch's dropout.
void drop_into(const float* x, int64_t n, uint64_t seed, uint64_t m, float p, float* dst) {
  const float s = 1.0f / (1.0f - p);
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dst[i] = keep(seed, m, static_cast<uint64_t>(i), p) ? x[i] * s : 0.0f;
}

// c[m, n] += alpha * sum_t a[t, m] * b[t, n]  (a: T x M, b: T x N, c: M x N): the LoRA weight gradients. A
// dense GEMM over the transposed operands, the narrow side (r) as its tokens and the wide side as its rows,
// so the kernel's threads split the wide side; T padded to a multiple of 8 with zeros (the dense kernels' K).
void add_tn(const float* a, const float* b, int64_t T, int64_t M, int64_t N, float alpha, float* c) {
  const int64_t Tp = (T + 7) / 8 * 8;
  std::vector<float> at(static_cast<size_t>(M * Tp)), bt(static_cast<size_t>(N * Tp)),
      y(static_cast<size_t>(M * N));
  kernels::transpose(a, T, M, at.data(), Tp);  // [M, Tp], the padding zero
  kernels::transpose(b, T, N, bt.data(), Tp);
  if (M <= N) {  // y[M, N] = a^T @ b: tokens a^T's rows, weights b^T's
    kernels::gemm_dense(bt.data(), DType::Float32, N, Tp, at.data(), M, y.data());
#pragma omp parallel for if (M * N > 65536)
    for (int64_t i = 0; i < M * N; ++i) c[i] += alpha * y[static_cast<size_t>(i)];
  } else {  // y[N, M] = b^T @ a, added transposed
    kernels::gemm_dense(at.data(), DType::Float32, M, Tp, bt.data(), N, y.data());
#pragma omp parallel for if (M * N > 65536)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[m * N + n] += alpha * y[static_cast<size_t>(n * M + m)];
  }
}

void add_to(float* y, const float* x, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// transformers' LlamaRMSNorm backward with the weight frozen: y = w * x * r, r = (mean(x^2) + eps)^-1/2;
// dx = r * (dy * w) - x * r^3 / n * sum(dy * w * x). Writes (overwrites) dx.
void rms_backward(const float* x, const std::vector<float>& w, double eps, const float* dy, int64_t T,
                  float* dx) {
  const auto n = static_cast<int64_t>(w.size());
#pragma omp parallel for if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * n;
    const float* dyt = dy + t * n;
    float ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += xt[i] * xt[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
    float dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += dyt[i] * w[static_cast<size_t>(i)] * xt[i];
    const float c = r * r * r * dot / static_cast<float>(n);
    for (int64_t i = 0; i < n; ++i) dx[t * n + i] = r * dyt[i] * w[static_cast<size_t>(i)] - xt[i] * c;
  }
}

struct Shape {
  int64_t B, L, nh, kvh, D;
  float scale;
  int64_t window;
};

// One head's rows of a [T, heads, D] tensor (sequence b) copied out contiguous [L, D], or written back.
void gather_head(const float* x, int64_t heads, int64_t D, int64_t b, int64_t L, int64_t h, float* out) {
  for (int64_t i = 0; i < L; ++i) std::copy_n(x + ((b * L + i) * heads + h) * D, D, out + i * D);
}
void scatter_head(const float* in, int64_t heads, int64_t D, int64_t b, int64_t L, int64_t h, float* x) {
  for (int64_t i = 0; i < L; ++i) std::copy_n(in + i * D, D, x + ((b * L + i) * heads + h) * D);
}
using kernels::transpose;  // a [R, C] -> out [C, R]
// y [M, N] = x [M, K] @ w [N, K]^T, one thread (the callers run inside a parallel loop over heads)
void mm(const float* w, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
  kernels::gemm_dense(w, DType::Float32, N, K, x, M, y);
}

// Causal (optionally sliding-window) grouped-query attention per sequence and head as matrix products
// (S = Q K^T, P = softmax(scale * S) over the visible keys, O = P V), keeping P [B, nh, L, L] for the
// backward pass. q [T, nh, D], k/v [T, kvh, D], out [T, nh, D].
void attention_forward(const Shape& s, const float* q, const float* k, const float* v, float* P, float* out) {
  const int64_t group = s.nh / s.kvh, L = s.L, D = s.D;
#pragma omp parallel
  {
    std::vector<float> qh(static_cast<size_t>(L * D)), kh(static_cast<size_t>(L * D)),
        vt(static_cast<size_t>(D * L)), tmp(static_cast<size_t>(L * D)), oh(static_cast<size_t>(L * D));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.nh; ++h) {
        const int64_t g = h / group;
        gather_head(q, s.nh, D, b, L, h, qh.data());
        gather_head(k, s.kvh, D, b, L, g, kh.data());
        gather_head(v, s.kvh, D, b, L, g, tmp.data());
        transpose(tmp.data(), L, D, vt.data());
        float* p = P + (b * s.nh + h) * L * L;
        mm(kh.data(), L, D, qh.data(), L, p);  // p[i, j] = q_i . k_j
        for (int64_t i = 0; i < L; ++i) {
          float* row = p + i * L;
          const int64_t j0 = s.window > 0 ? std::max<int64_t>(0, i - s.window + 1) : 0;
          float mx = -INFINITY;
          for (int64_t j = j0; j <= i; ++j) mx = std::max(mx, row[j] *= s.scale);
          float sum = 0;
          for (int64_t j = j0; j <= i; ++j) sum += (row[j] = std::exp(row[j] - mx));
          const float inv = 1.0f / sum;
          for (int64_t j = j0; j <= i; ++j) row[j] *= inv;
          std::fill(row, row + j0, 0.0f);
          std::fill(row + i + 1, row + L, 0.0f);
        }
        mm(vt.data(), D, L, p, L, oh.data());  // o_i = sum_j p[i, j] v_j
        scatter_head(oh.data(), s.nh, D, b, L, h, out);
      }
  }
}

// dO -> dq, dk, dv (dk, dv overwritten; each (sequence, kv head) is one thread's, so no races):
// dP = dO V^T, dS = P * (dP - rowsum(P * dP)) * scale, dQ = dS K, dK = sum over the group of dS^T Q,
// dV = sum over the group of P^T dO.
void attention_backward(const Shape& s, const float* q, const float* k, const float* v, const float* P,
                        const float* dout, float* dq, float* dk, float* dv) {
  const int64_t group = s.nh / s.kvh, L = s.L, D = s.D;
#pragma omp parallel
  {
    const auto LD = static_cast<size_t>(L * D), LL = static_cast<size_t>(L * L);
    std::vector<float> kh(LD), kt(LD), vh(LD), qh(LD), qt(LD), doh(LD), dot(LD), tmp(LD), dks(LD), dvs(LD);
    std::vector<float> ds(LL), dst(LL), pt(LL);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t g = 0; g < s.kvh; ++g) {
        gather_head(k, s.kvh, D, b, L, g, kh.data());
        transpose(kh.data(), L, D, kt.data());
        gather_head(v, s.kvh, D, b, L, g, vh.data());
        std::fill(dks.begin(), dks.end(), 0.0f);
        std::fill(dvs.begin(), dvs.end(), 0.0f);
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const float* p = P + (b * s.nh + h) * L * L;
          gather_head(dout, s.nh, D, b, L, h, doh.data());
          gather_head(q, s.nh, D, b, L, h, qh.data());
          mm(vh.data(), L, D, doh.data(), L, ds.data());  // dP[i, j] = dO_i . v_j
          for (int64_t i = 0; i < L; ++i) {
            const float* pr = p + i * L;
            float* dr = ds.data() + i * L;
            float rowsum = 0;
            for (int64_t j = 0; j <= i; ++j) rowsum += pr[j] * dr[j];
            for (int64_t j = 0; j < L; ++j) dr[j] = j <= i ? pr[j] * (dr[j] - rowsum) * s.scale : 0.0f;
          }
          mm(kt.data(), D, L, ds.data(), L, tmp.data());  // dQ = dS K
          scatter_head(tmp.data(), s.nh, D, b, L, h, dq);
          transpose(qh.data(), L, D, qt.data());
          transpose(ds.data(), L, L, dst.data());
          mm(qt.data(), D, L, dst.data(), L, tmp.data());  // dK += dS^T Q
          for (size_t e = 0; e < LD; ++e) dks[e] += tmp[e];
          transpose(doh.data(), L, D, dot.data());
          transpose(p, L, L, pt.data());
          mm(dot.data(), D, L, pt.data(), L, tmp.data());  // dV += P^T dO
          for (size_t e = 0; e < LD; ++e) dvs[e] += tmp[e];
        }
        scatter_head(dks.data(), s.kvh, D, b, L, g, dk);
        scatter_head(dvs.data(), s.kvh, D, b, L, g, dv);
      }
  }
}

float* grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace

struct LoraModel::Saved {
  std::vector<float> xn1, q, k, v, P, att, h_mid, xn2, g, u, a;
  std::vector<float> lora_u[kRoles];  // each adapted linear's x_dropped @ A^T [T, r]
};

std::vector<std::string> resolve_target_modules(const models::LlamaModel& model,
                                                const std::vector<std::string>& targets) {
  if (targets.empty()) throw ValueError("LoRA: no target modules given");
  const bool all_linear = targets.size() == 1 && targets[0] == "all-linear";
  std::vector<std::string> names;
  std::vector<bool> used(targets.size(), false);
  for (size_t l = 0; l < model.layers().size(); ++l)
    for (const auto& [role, lin] : model.layers()[l].linears()) {
      const std::string name = "model.layers." + std::to_string(l) + "." + role;
      bool hit = all_linear;
      for (size_t t = 0; t < targets.size() && !all_linear; ++t)
        if (matches(name, targets[t])) hit = used[t] = true;
      if (hit) names.push_back(name);
    }
  if (!all_linear)
    for (size_t t = 0; t < targets.size(); ++t)
      if (!used[t])
        throw ValueError("LoRA target module '" + targets[t] +
                         "' matches no linear layer of the model (names are like "
                         "model.layers.0.self_attn.q_proj; the output layer lm_head is not adaptable)");
  return names;
}

LoraModel::LoraModel(models::LlamaModel& model, const LoraSpec& spec, uint64_t seed)
    : model_(model), spec_(spec) {
  const auto& c = model.config();
  bool supported = !c.gemma && !c.gemma2 && !c.gemma3 && c.attn_softcap == 0 && c.final_softcap == 0;
  for (const auto& L : model.layers())
    supported = supported && !L.attn.qkv_proj && !L.mlp.gate_up_proj && !L.attn.q_norm &&
                L.mlp.act == nn::GatedMLP::Act::Silu && !L.pre_ff_norm;
  if (!supported)
    throw NotSupportedError("fine-tuning supports the llama, mistral and qwen2 families; not model_type '" +
                            c.model_type + "'");
  if (spec.r <= 0) throw ValueError("lora r must be positive, got " + std::to_string(spec.r));
  if (!(spec.dropout >= 0 && spec.dropout < 1))
    throw ValueError("lora dropout must be in [0, 1), got " + std::to_string(spec.dropout));
  const std::vector<std::string> names = resolve_target_modules(model, spec.target_modules);
  std::mt19937_64 rng(seed);
  module_of_.assign(model.layers().size(), std::vector<int>(kRoles, -1));
  size_t next = 0;
  for (size_t l = 0; l < model.layers().size(); ++l)
    for (int role = 0; role < kRoles; ++role) {
      const std::string name = "model.layers." + std::to_string(l) + "." + kRoleName[role];
      if (next >= names.size() || names[next] != name) continue;
      ++next;
      auto& slot = role_slot(model.layers()[l], role);
      const int64_t in = slot->in_features, out = slot->out_features;
      std::vector<float> A(static_cast<size_t>(spec.r * in)), B(static_cast<size_t>(out * spec.r), 0.0f);
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      std::uniform_real_distribution<double> U(-bound, bound);
      for (auto& a : A) a = static_cast<float>(U(rng));
      auto lora = std::make_unique<nn::LoraLinear>(std::move(slot), spec.r, std::move(A), std::move(B),
                                                   spec.scaling(), name);
      modules_.push_back(
          {name, lora.get(), std::vector<float>(lora->A.size()), std::vector<float>(lora->B.size())});
      module_of_[l][static_cast<size_t>(role)] = static_cast<int>(modules_.size() - 1);
      slot = std::move(lora);
    }
  for (const auto& L : model.layers()) {
    w_in_.push_back(L.input_norm.weight().to_float_vector());
    w_post_.push_back(L.post_norm.weight().to_float_vector());
  }
  w_final_ = model.final_norm().weight().to_float_vector();
}

int64_t LoraModel::num_trainable() const {
  int64_t n = 0;
  for (const auto& m : modules_) n += static_cast<int64_t>(m.lin->A.size() + m.lin->B.size());
  return n;
}

void LoraModel::zero_grad() {
  for (auto& m : modules_) {
    std::fill(m.dA.begin(), m.dA.end(), 0.0f);
    std::fill(m.dB.begin(), m.dB.end(), 0.0f);
  }
}

double grad_total_norm(const std::vector<LoraModule>& modules) {
  // torch.nn.utils.clip_grad_norm_: vector_norm of each gradient (float32), then the norm of those norms
  float total2 = 0;
  for (const auto& m : modules)
    for (const auto* g : {&m.dA, &m.dB}) {
      double s = 0;
      for (float x : *g) s += static_cast<double>(x) * x;
      const auto n = static_cast<float>(std::sqrt(s));
      total2 += n * n;
    }
  return std::sqrt(total2);
}

double LoraModel::grad_norm() const {
  return grad_total_norm(modules_);
}

namespace {
struct LinCtx {
  const nn::LinearBase* lin;
  LoraModule* mod;  // null: not adapted
  int64_t id;       // dropout stream of this module
};

// y = lin(x) (train: x dropped out on the LoRA branch); keeps u = x_d @ A^T.
void lin_forward(const LinCtx& c, const float* x, int64_t T, float* y, std::vector<float>& u, float p,
                 uint64_t seed, bool train) {
  if (!c.mod) {
    c.lin->forward(x, T, y);
    return;
  }
  const nn::LoraLinear& L = *c.mod->lin;
  L.base->forward(x, T, y);
  const float* xd = x;
  thread_local std::vector<float> drop;
  if (train && p > 0) {
    const int64_t n = T * L.in_features;
    float* d = grow(drop, n);
    drop_into(x, n, seed, static_cast<uint64_t>(c.id), p, d);
    xd = d;
  }
  u.resize(static_cast<size_t>(T * L.r));
  L.lora_forward(xd, T, u.data(), y);
}

// dx (+)= dy @ W_effective; the adapter's gradients += from (x, u, dy).
void lin_backward(const LinCtx& c, const float* x, const std::vector<float>& u, const float* dy, int64_t T,
                  float* dx, bool accumulate, float p, uint64_t seed) {
  const nn::LinearBase& lin = c.mod ? *c.mod->lin->base : *c.lin;
  thread_local std::vector<float> tmp;
  float* out = dx;
  if (accumulate) out = grow(tmp, T * lin.in_features);
  lin.backward_input(dy, T, out);
  if (c.mod) {
    const nn::LoraLinear& L = *c.mod->lin;
    const int64_t r = L.r, in = L.in_features, o = L.out_features;
    const float sc = L.scaling;
    // dB += s * dy^T u
    add_tn(dy, u.data(), T, o, r, sc, c.mod->dB.data());
    // g = dy @ B [T, r], d = g @ A [T, in]
    thread_local std::vector<float> g, xd, d;
    float* gp = grow(g, T * r);
    float* dp = grow(d, T * in);
    L.lora_input_grad(dy, T, gp, dp);
    // dA += s * g^T x_d
    const float* xdp = x;
    const bool dropping = p > 0;
    if (dropping) {
      float* dd = grow(xd, T * in);
      drop_into(x, T * in, seed, static_cast<uint64_t>(c.id), p, dd);
      xdp = dd;
    }
    add_tn(gp, xdp, T, r, in, sc, c.mod->dA.data());
    // dx += (s * d) * mask / (1 - p)
    const int64_t n = T * in;
    const float s = dropping ? sc / (1.0f - p) : sc;
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i)
      if (!dropping || keep(seed, static_cast<uint64_t>(c.id), static_cast<uint64_t>(i), p))
        out[i] += s * dp[i];
  }
  if (accumulate) add_to(dx, out, T * lin.in_features);
}
}  // namespace

void LoraModel::layer_forward(int64_t l, const float* h_in, float* h_out, Saved& s, bool train,
                              uint64_t seed) {
  const auto& c = model_.config();
  models::LlamaLayer& L = model_.layers()[static_cast<size_t>(l)];
  const int64_t T = batch_ * len_, H = c.hidden, D = c.head_dim, nh = c.heads, kvh = c.kv_heads,
                I = L.mlp.gate_proj->out_features;
  const float p = train ? static_cast<float>(spec_.dropout) : 0.0f;
  auto ctx = [&](int role) {
    const int m = module_of_[static_cast<size_t>(l)][static_cast<size_t>(role)];
    return LinCtx{role_slot(L, role).get(), m >= 0 ? &modules_[static_cast<size_t>(m)] : nullptr,
                  l * kRoles + role};
  };
  s.xn1.resize(static_cast<size_t>(T * H));
  L.input_norm.forward(h_in, T, s.xn1.data());
  s.q.resize(static_cast<size_t>(T * nh * D));
  s.k.resize(static_cast<size_t>(T * kvh * D));
  s.v.resize(static_cast<size_t>(T * kvh * D));
  lin_forward(ctx(kQ), s.xn1.data(), T, s.q.data(), s.lora_u[kQ], p, seed, train);
  lin_forward(ctx(kK), s.xn1.data(), T, s.k.data(), s.lora_u[kK], p, seed, train);
  lin_forward(ctx(kV), s.xn1.data(), T, s.v.data(), s.lora_u[kV], p, seed, train);
  const nn::RotaryEmbedding& rope = model_.rotary(l);
  rope.apply(s.q.data(), T, nh, cos_.data(), sin_.data());
  rope.apply(s.k.data(), T, kvh, cos_.data(), sin_.data());
  const Shape sh{
      batch_,       len_, nh,
      kvh,          D,    L.attn.scale != 0 ? L.attn.scale : 1.0f / std::sqrt(static_cast<float>(D)),
      L.attn.window};
  s.P.resize(static_cast<size_t>(batch_ * nh * len_ * len_));
  s.att.resize(static_cast<size_t>(T * nh * D));
  attention_forward(sh, s.q.data(), s.k.data(), s.v.data(), s.P.data(), s.att.data());
  s.h_mid.resize(static_cast<size_t>(T * H));
  lin_forward(ctx(kO), s.att.data(), T, s.h_mid.data(), s.lora_u[kO], p, seed, train);
  add_to(s.h_mid.data(), h_in, T * H);
  s.xn2.resize(static_cast<size_t>(T * H));
  L.post_norm.forward(s.h_mid.data(), T, s.xn2.data());
  s.g.resize(static_cast<size_t>(T * I));
  s.u.resize(static_cast<size_t>(T * I));
  s.a.resize(static_cast<size_t>(T * I));
  lin_forward(ctx(kGate), s.xn2.data(), T, s.g.data(), s.lora_u[kGate], p, seed, train);
  lin_forward(ctx(kUp), s.xn2.data(), T, s.u.data(), s.lora_u[kUp], p, seed, train);
  const int64_t n = T * I;
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) s.a[static_cast<size_t>(i)] = s.g[i] / (1.0f + std::exp(-s.g[i])) * s.u[i];
  lin_forward(ctx(kDown), s.a.data(), T, h_out, s.lora_u[kDown], p, seed, train);
  add_to(h_out, s.h_mid.data(), T * H);
}

void LoraModel::layer_backward(int64_t l, const float* h_in, Saved& s, float* dh, uint64_t seed) {
  const auto& c = model_.config();
  models::LlamaLayer& L = model_.layers()[static_cast<size_t>(l)];
  const int64_t T = batch_ * len_, H = c.hidden, D = c.head_dim, nh = c.heads, kvh = c.kv_heads,
                I = L.mlp.gate_proj->out_features;
  const float p = static_cast<float>(spec_.dropout);
  auto ctx = [&](int role) {
    const int m = module_of_[static_cast<size_t>(l)][static_cast<size_t>(role)];
    return LinCtx{role_slot(L, role).get(), m >= 0 ? &modules_[static_cast<size_t>(m)] : nullptr,
                  l * kRoles + role};
  };
  thread_local std::vector<float> da, dg, du, dxn, dnorm, datt, dq, dk, dv;
  // MLP: h_out = h_mid + down(silu(gate(xn2)) * up(xn2))
  float* dap = grow(da, T * I);
  lin_backward(ctx(kDown), s.a.data(), s.lora_u[kDown], dh, T, dap, false, p, seed);
  float* dgp = grow(dg, T * I);
  float* dup = grow(du, T * I);
  const int64_t n = T * I;
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = s.g[static_cast<size_t>(i)], sg = 1.0f / (1.0f + std::exp(-g));
    dup[i] = dap[i] * g * sg;
    dgp[i] = dap[i] * s.u[static_cast<size_t>(i)] * sg * (1.0f + g * (1.0f - sg));
  }
  float* dxnp = grow(dxn, T * H);
  lin_backward(ctx(kGate), s.xn2.data(), s.lora_u[kGate], dgp, T, dxnp, false, p, seed);
  lin_backward(ctx(kUp), s.xn2.data(), s.lora_u[kUp], dup, T, dxnp, true, p, seed);
  float* dn = grow(dnorm, T * H);
  rms_backward(s.h_mid.data(), w_post_[static_cast<size_t>(l)], c.rms_eps, dxnp, T, dn);
  add_to(dh, dn, T * H);  // dh is now d(h_mid)
  // attention: h_mid = h_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
  float* dattp = grow(datt, T * nh * D);
  lin_backward(ctx(kO), s.att.data(), s.lora_u[kO], dh, T, dattp, false, p, seed);
  const Shape sh{
      batch_,       len_, nh,
      kvh,          D,    L.attn.scale != 0 ? L.attn.scale : 1.0f / std::sqrt(static_cast<float>(D)),
      L.attn.window};
  float* dqp = grow(dq, T * nh * D);
  float* dkp = grow(dk, T * kvh * D);
  float* dvp = grow(dv, T * kvh * D);
  attention_backward(sh, s.q.data(), s.k.data(), s.v.data(), s.P.data(), dattp, dqp, dkp, dvp);
  // the rotation's transpose is the rotation by the opposite angle
  const nn::RotaryEmbedding& rope = model_.rotary(l);
  rope.apply(dqp, T, nh, cos_.data(), nsin_.data());
  rope.apply(dkp, T, kvh, cos_.data(), nsin_.data());
  lin_backward(ctx(kQ), s.xn1.data(), s.lora_u[kQ], dqp, T, dxnp, false, p, seed);
  lin_backward(ctx(kK), s.xn1.data(), s.lora_u[kK], dkp, T, dxnp, true, p, seed);
  lin_backward(ctx(kV), s.xn1.data(), s.lora_u[kV], dvp, T, dxnp, true, p, seed);
  rms_backward(h_in, w_in_[static_cast<size_t>(l)], c.rms_eps, dxnp, T, dn);
  add_to(dh, dn, T * H);  // d(h_in)
}

double LoraModel::forward_backward(std::span<const int32_t> tokens, int64_t batch, int64_t len,
                                   double loss_scale, uint64_t dropout_seed,
                                   std::span<const uint8_t> targets) {
  return run(tokens, batch, len, loss_scale, true, dropout_seed, targets);
}

double LoraModel::loss(std::span<const int32_t> tokens, int64_t batch, int64_t len) {
  return run(tokens, batch, len, 0, false, 0);
}

double LoraModel::run(std::span<const int32_t> tokens, int64_t batch, int64_t len, double loss_scale,
                      bool backward, uint64_t seed, std::span<const uint8_t> targets) {
  const auto& c = model_.config();
  if (batch <= 0 || len < 2 || static_cast<int64_t>(tokens.size()) != batch * len)
    throw ValueError("LoRA training: " + std::to_string(tokens.size()) + " tokens do not make " +
                     std::to_string(batch) + " sequences of " + std::to_string(len) + " (length >= 2)");
  if (!targets.empty() && targets.size() != tokens.size())
    throw ValueError("LoRA training: " + std::to_string(targets.size()) + " target flags for " +
                     std::to_string(tokens.size()) + " tokens");
  // position t is scored (predicting token t + 1) unless it ends its sequence or t + 1 is not a target
  auto scored = [&](int64_t t) {
    return t % len != len - 1 && (targets.empty() || targets[static_cast<size_t>(t + 1)] != 0);
  };
  int64_t count = 0;
  for (int64_t t = 0; t < batch * len; ++t) count += scored(t) ? 1 : 0;
  if (count == 0) throw ValueError("LoRA training: no token of the micro-batch is a target");
  if (len > model_.max_position_embeddings())
    throw ValueError("LoRA training: sequence length " + std::to_string(len) +
                     " exceeds the model's max_position_embeddings " +
                     std::to_string(model_.max_position_embeddings()));
  const int64_t T = batch * len, H = c.hidden, V = c.vocab, half = c.head_dim / 2, NL = c.layers;
  if (batch != batch_ || len != len_) {
    batch_ = batch;
    len_ = len;
    std::vector<float> cs(static_cast<size_t>(len * half)), sn(static_cast<size_t>(len * half));
    model_.rotary(0).angles(0, len, cs.data(), sn.data());
    cos_.resize(static_cast<size_t>(T * half));
    sin_.resize(static_cast<size_t>(T * half));
    nsin_.resize(static_cast<size_t>(T * half));
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(cs.begin(), cs.end(), cos_.begin() + b * len * half);
      std::copy(sn.begin(), sn.end(), sin_.begin() + b * len * half);
    }
    for (size_t i = 0; i < sin_.size(); ++i) nsin_[i] = -sin_[i];
  }
  // the residual stream at each layer's input, and after the last
  std::vector<std::vector<float>> hs(static_cast<size_t>(NL + 1));
  hs[0].resize(static_cast<size_t>(T * H));
  const Tensor& E = model_.embedding();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[static_cast<size_t>(t)];
    if (id < 0 || id >= V)
      throw ValueError("token id " + std::to_string(id) + " out of range [0, " + std::to_string(V) + ")");
    convert_floats(E.dtype(),
                   E.raw() + static_cast<size_t>(id) * static_cast<size_t>(H) * dtype_size(E.dtype()),
                   DType::Float32, hs[0].data() + t * H, static_cast<size_t>(H));
  }
  const bool keep_all = backward && !gradient_checkpointing;
  std::vector<Saved> saved(keep_all ? static_cast<size_t>(NL) : 1);
  for (int64_t l = 0; l < NL; ++l) {
    hs[static_cast<size_t>(l + 1)].resize(static_cast<size_t>(T * H));
    layer_forward(l, hs[static_cast<size_t>(l)].data(), hs[static_cast<size_t>(l + 1)].data(),
                  saved[keep_all ? static_cast<size_t>(l) : 0], backward, seed);
  }
  // final norm, logits, cross-entropy over the predicted positions (each sequence's first len - 1 rows)
  std::vector<float> xf(static_cast<size_t>(T * H)), logits(static_cast<size_t>(T * V));
  model_.final_norm().forward(hs[static_cast<size_t>(NL)].data(), T, xf.data());
  model_.output_layer().forward(xf.data(), T, logits.data());
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* z = logits.data() + t * V;
    if (!scored(t)) {  // no next token, or not a target
      std::fill(z, z + V, 0.0f);
      continue;
    }
    const int32_t target = tokens[static_cast<size_t>(t + 1)];
    float mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, z[j]);
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<double>(z[j] - mx));
    const double lse = std::log(sum) + mx;
    total += lse - z[target];
    // d(loss * loss_scale) / d(logit) = (softmax - onehot) * loss_scale / count
    const double k = loss_scale / static_cast<double>(count);
    for (int64_t j = 0; j < V; ++j) z[j] = static_cast<float>(std::exp(z[j] - lse) * k);
    z[target] -= static_cast<float>(k);
  }
  const double loss = total / static_cast<double>(count);
  if (!backward) return loss;
  std::vector<float> dxf(static_cast<size_t>(T * H)), dh(static_cast<size_t>(T * H));
  model_.output_layer().backward_input(logits.data(), T, dxf.data());
  rms_backward(hs[static_cast<size_t>(NL)].data(), w_final_, c.rms_eps, dxf.data(), T, dh.data());
  std::vector<float> scratch;
  for (int64_t l = NL - 1; l >= 0; --l) {
    Saved& s = saved[keep_all ? static_cast<size_t>(l) : 0];
    if (!keep_all) {  // recompute this layer's activations
      scratch.resize(static_cast<size_t>(T * H));
      layer_forward(l, hs[static_cast<size_t>(l)].data(), scratch.data(), s, true, seed);
    }
    layer_backward(l, hs[static_cast<size_t>(l)].data(), s, dh.data(), seed);
  }
  return loss;
}

}  // namespace nibble::train
