// Session: the KV cache kept between calls gives what a fresh full forward / one-shot generate gives, without
// re-running earlier tokens; truncate rewinds; the context bound is enforced; threads stay per model.
#include "nibble/session.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

namespace {
const AutoModelForCausalLM& model4() {  // NF4 + dq, bfloat16 compute: the fused kernels' paths
  static const AutoModelForCausalLM m = AutoModelForCausalLM::from_pretrained(
      test::example_model(),
      {.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                                 .bnb_4bit_compute_dtype = DType::BFloat16,
                                                 .bnb_4bit_quant_type = "nf4",
                                                 .bnb_4bit_use_double_quant = true},
       .quiet = true});
  return m;
}
const AutoModelForCausalLM& model32() {
  static const AutoModelForCausalLM m =
      AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  return m;
}
std::vector<int32_t> prompt() {
  static const auto ids =
      Tokenizer::from_pretrained(test::example_model()).encode("Once upon a time, a little girl");
  return ids;
}
using test::max_abs_diff;
}  // namespace

TEST(Session, IncrementalAppendMatchesFullForward) {
  for (const AutoModelForCausalLM* m : {&model32(), &model4()}) {
    const auto ids = prompt();
    ASSERT_GT(ids.size(), 6u);
    const std::vector<float> full = m->forward(ids);
    const auto V = static_cast<size_t>(m->info().vocab_size);
    Session s(*m);
    // the prompt in three pieces: a prefill, one token, the rest
    s.append(std::span(ids).first(4));
    s.append(std::span(ids).subspan(4, 1));
    const auto rest = s.append_all_logits(std::span(ids).subspan(5));
    ASSERT_EQ(rest.size(), (ids.size() - 5) * V);
    EXPECT_EQ(s.length(), static_cast<int64_t>(ids.size()));
    // rows computed with another split (GEMV vs GEMM paths: other summation orders) agree to the compute
    // dtype's precision: float32 to 2e-3; bfloat16 rounds every linear's output, so a last-bit difference
    // can flip a rounding: one bfloat16 ulp (2^-7 relative) of the largest logit
    double big = 0;
    for (const float v : full) big = std::max(big, std::fabs(static_cast<double>(v)));
    const double tol = m->info().quantization_config ? big / 128 : 2e-3;
    EXPECT_LT(max_abs_diff(rest, std::span(full).subspan(5 * V)), tol);
    EXPECT_LT(max_abs_diff(s.logits(), std::span(full).subspan(full.size() - V)), tol);
  }
}

TEST(Session, MultiTurnGenerateMatchesOneShot) {
  const AutoModelForCausalLM& m = model4();
  const auto ids = prompt();
  // one shot: prompt -> 12 tokens
  const auto whole = m.generate(ids, {.max_new_tokens = 12, .eos_token_id = {-1}});
  // session: prompt -> 5 tokens, then 7 more continuing from the cache
  Session s(m);
  s.append(ids);
  const auto a = s.generate({.max_new_tokens = 5, .eos_token_id = {-1}});
  EXPECT_EQ(s.finish_reason(), FinishReason::Length);
  const auto b = s.generate({.max_new_tokens = 7, .eos_token_id = {-1}});
  std::vector<int32_t> got = ids;
  got.insert(got.end(), a.begin(), a.end());
  got.insert(got.end(), b.begin(), b.end());
  EXPECT_EQ(got, whole);
  EXPECT_EQ(s.tokens(), whole);
  // a user turn after generating: only the new tokens run, and the result is the one-shot result
  const std::vector<int32_t> turn = {ids[1], ids[2]};
  s.append(turn);
  std::vector<int32_t> all = whole;
  all.insert(all.end(), turn.begin(), turn.end());
  const auto next = s.generate({.max_new_tokens = 4, .eos_token_id = {-1}});
  const auto ref = m.generate(all, {.max_new_tokens = 4, .eos_token_id = {-1}});
  EXPECT_EQ(std::vector<int32_t>(ref.begin() + static_cast<long>(all.size()), ref.end()), next);
}

TEST(Session, TruncateRewindsToAPrefix) {
  const AutoModelForCausalLM& m = model4();
  const auto ids = prompt();
  Session s(m);
  s.append(ids);
  const std::vector<float> want(s.logits().begin(), s.logits().end());
  s.generate({.max_new_tokens = 6, .eos_token_id = {-1}});
  s.truncate(static_cast<int64_t>(ids.size()) - 2);
  s.append(std::span(ids).last(2));
  // the same tokens at the same positions through the same kernels: bit-identical
  EXPECT_EQ(max_abs_diff(s.logits(), want), 0.0);
  EXPECT_THROW(s.truncate(s.length() + 1), ValueError);
  s.reset();
  EXPECT_EQ(s.length(), 0);
  EXPECT_THROW(s.logits(), ValueError);
}

TEST(Session, ContextBoundIsEnforced) {
  const AutoModelForCausalLM& m = model32();
  const auto ids = prompt();
  Session s(m, {.context_length = static_cast<int64_t>(ids.size()) + 3});
  s.append(ids);
  // generation stops at the context (the last chosen token needs no room), finish_reason length
  const auto out = s.generate({.max_new_tokens = 50, .eos_token_id = {-1}});
  EXPECT_EQ(out.size(), 4u);
  EXPECT_EQ(s.finish_reason(), FinishReason::Length);
  try {
    s.append(ids);
    FAIL() << "appending past the context must throw";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("context full"), std::string::npos) << e.what();
  }
  Session bad(m);
  EXPECT_THROW(bad.append(std::vector<int32_t>{static_cast<int32_t>(m.info().vocab_size)}), ValueError);
  EXPECT_EQ(bad.length(), 0);  // a rejected append leaves the session as it was
}

TEST(Session, ThreadsArePerModelNotProcessWide) {
  const int before = omp_get_max_threads();
  const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(), {.threads = 1, .quiet = true});
  EXPECT_EQ(m.threads(), 1);
  EXPECT_EQ(omp_get_max_threads(), before);
  (void)m.generate(prompt(), {.max_new_tokens = 2});
  EXPECT_EQ(omp_get_max_threads(), before);
  Session s(m, {.threads = 2});
  s.append(prompt());
  EXPECT_EQ(omp_get_max_threads(), before);
}
