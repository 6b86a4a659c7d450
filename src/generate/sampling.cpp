#include "nibble/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "nibble/error.h"

namespace nibble {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t sample(const float* logits, int64_t n, const SamplingParams& p, std::mt19937_64& rng) {
  if (p.temperature <= 0)
    throw ValueError("temperature must be strictly positive, got " + std::to_string(p.temperature));
  if (p.top_p <= 0 || p.top_p > 1)
    throw ValueError("top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (p.top_k < 0) throw ValueError("top_k must be >= 0");
  // per-thread scratch, reused: sampling allocates nothing per token once warm
  static thread_local std::vector<double> l, cp;
  static thread_local std::vector<int32_t> idx;
  l.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) l[static_cast<size_t>(i)] = static_cast<double>(logits[i]) / p.temperature;
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  // descending, ties in id order (what a stable sort gives); only the top-k need ordering
  const auto before = [&](int32_t a, int32_t b) {
    const double la = l[static_cast<size_t>(a)], lb = l[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  size_t keep = idx.size();
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  if (keep < idx.size())
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(keep), idx.end(), before);
  else
    std::sort(idx.begin(), idx.end(), before);
  // top-p: the smallest prefix (by descending probability) whose mass reaches top_p, at least one token
  const double mx = l[static_cast<size_t>(idx[0])];
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(l[static_cast<size_t>(idx[i])] - mx);
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t k = 0;
    while (k < keep) {
      cum += std::exp(l[static_cast<size_t>(idx[k])] - mx) / total;
      ++k;
      if (cum >= p.top_p) break;
    }
    keep = std::max<size_t>(1, k);
  }
  if (keep == 1) return idx[0];  // (std::discrete_distribution draws nothing for a single outcome)
  // std::discrete_distribution's draw (libstdc++: normalized cumulative sums, the last set to 1, one
  // canonical double, lower_bound) without its per-call allocation
  if (cp.size() < idx.size()) cp.resize(idx.size());  // room for any keep: no reallocation per token
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (cp[i] = std::exp(l[static_cast<size_t>(idx[i])] - mx));
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) cp[i] = (acc += cp[i] / sum);
  cp[keep - 1] = 1.0;
  const double u = std::generate_canonical<double, std::numeric_limits<double>::digits>(rng);
  const auto end = cp.begin() + static_cast<std::ptrdiff_t>(keep);
  const size_t pick = static_cast<size_t>(std::lower_bound(cp.begin(), end, u) - cp.begin());
  return idx[std::min(pick, keep - 1)];
}

double log_prob(const float* logits, int64_t n, int32_t target) {
  double mx = logits[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(logits[target]) - mx - std::log(s);
}

double kl_divergence(const float* ref, const float* q, int64_t n) {
  auto lse = [n](const float* x) {
    double mx = x[0];
    for (int64_t i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
    return mx + std::log(s);
  };
  const double lr = lse(ref), lq = lse(q);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = static_cast<double>(ref[i]) - lr, b = static_cast<double>(q[i]) - lq;
    kl += std::exp(a) * (a - b);
  }
  return kl;
}

}  // namespace nibble
