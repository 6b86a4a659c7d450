// Next-token selection as transformers' generate does it: greedy argmax (first maximum), or sampling after
// temperature -> top-k -> top-p warping; and the scores perplexity reports (log-probability, KL divergence).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace nibble {

int32_t argmax(const float* logits, int64_t n);

struct SamplingParams {
  float temperature = 1.0f;
  int top_k = 50;  // 0 = off
  float top_p = 1.0f;
};
// Samples from softmax(warped logits).
int32_t sample(const float* logits, int64_t n, const SamplingParams& p, std::mt19937_64& rng);

// log_softmax(logits)[target]; and helpers for KL / agreement in perplexity.
double log_prob(const float* logits, int64_t n, int32_t target);
// KL(p_ref || p) for one position, from two logit rows.
double kl_divergence(const float* ref_logits, const float* logits, int64_t n);

}  // namespace nibble
