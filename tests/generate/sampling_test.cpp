// sample(): the same draws as the straightforward implementation (stable sort of the vocabulary, then
// std::discrete_distribution) for any logits and settings, and the warped distribution itself.
#include "nibble/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

using namespace nibble;

namespace {
// transformers' order: temperature, top-k, top-p (smallest prefix reaching top_p, at least one token)
std::vector<std::pair<int32_t, double>> warped(const std::vector<float>& logits, const SamplingParams& p) {
  const size_t n = logits.size();
  std::vector<double> l(n);
  for (size_t i = 0; i < n; ++i) l[i] = static_cast<double>(logits[i]) / p.temperature;
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  size_t keep = p.top_k > 0 ? std::min(n, static_cast<size_t>(p.top_k)) : n;
  const double mx = l[idx[0]];
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(l[idx[i]] - mx);
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t k = 0;
    while (k < keep) {
      cum += std::exp(l[idx[k]] - mx) / total;
      ++k;
      if (cum >= p.top_p) break;
    }
    keep = std::max<size_t>(1, k);
  }
  std::vector<std::pair<int32_t, double>> out;
  for (size_t i = 0; i < keep; ++i) out.emplace_back(idx[i], std::exp(l[idx[i]] - mx));
  return out;
}

int32_t reference_sample(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng) {
  const auto w = warped(logits, p);
  std::vector<double> weights;
  for (const auto& e : w) weights.push_back(e.second);
  std::discrete_distribution<size_t> dist(weights.begin(), weights.end());
  return w[dist(rng)].first;
}
}  // namespace

TEST(Sampling, SameDrawsAsStableSortAndDiscreteDistribution) {
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n = 1 + static_cast<size_t>(trial * 37 % 500);
    std::vector<float> logits(n);
    for (auto& v : logits) v = trial % 5 == 0 ? std::round(nd(gen)) : nd(gen);  // rounded: many ties
    const SamplingParams p{.temperature = 0.5f + 0.1f * static_cast<float>(trial % 9),
                           .top_k = trial % 3 == 0 ? 0 : 1 + trial % 60,
                           .top_p = trial % 4 == 0 ? 1.0f : 0.3f + 0.1f * static_cast<float>(trial % 7)};
    std::mt19937_64 a(static_cast<uint64_t>(trial)), b(static_cast<uint64_t>(trial));
    for (int draw = 0; draw < 50; ++draw)
      ASSERT_EQ(sample(logits.data(), static_cast<int64_t>(n), p, a), reference_sample(logits, p, b))
          << "trial " << trial << " draw " << draw;
  }
}

TEST(Sampling, FrequenciesFollowTheWarpedDistribution) {
  const std::vector<float> logits{2.0f, 1.0f, 0.5f, 0.5f, -1.0f, 3.0f, 0.1f};
  const SamplingParams p{.temperature = 0.8f, .top_k = 5, .top_p = 0.95f};
  const auto w = warped(logits, p);
  double total = 0;
  for (const auto& e : w) total += e.second;
  std::vector<int> count(logits.size());
  std::mt19937_64 rng(1);
  const int draws = 200000;
  for (int i = 0; i < draws; ++i) ++count[static_cast<size_t>(sample(logits.data(), 7, p, rng))];
  std::vector<double> want(logits.size());
  for (const auto& e : w) want[static_cast<size_t>(e.first)] = e.second / total;
  ASSERT_LT(w.size(), 5u);  // top-p cut something after top-k
  for (size_t t = 0; t < logits.size(); ++t) {
    if (want[t] == 0) {
      EXPECT_EQ(count[t], 0) << "token " << t << " is outside top-k/top-p";
      continue;
    }
    const double sd = std::sqrt(draws * want[t] * (1 - want[t]));
    EXPECT_NEAR(count[t], draws * want[t], 5 * sd) << "token " << t;
  }
}
