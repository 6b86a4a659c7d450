// Session::step, the server's continuous batching: sessions decoded together in one forward get exactly the
// logits (bit for bit) they get stepping alone, whatever joins or leaves between steps, on every kernel path
// a model takes here (float32 dense, NF4 with float32 / bfloat16 / float16 compute, int8 activations, a
// sliding-window soft-capped family, a mixture of experts); and bad batches are refused before anything runs.
#include <gtest/gtest.h>

#include <cstring>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/sampling.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

namespace {
AutoModelForCausalLM load(std::optional<DType> compute, Activations act = Activations::Exact) {
  FromPretrainedOptions o{.quiet = true};
  if (compute)
    o.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                               .bnb_4bit_compute_dtype = *compute,
                                               .bnb_4bit_quant_type = "nf4",
                                               .bnb_4bit_use_double_quant = true};
  o.activations = act;
  return AutoModelForCausalLM::from_pretrained(test::example_model(), o);
}

std::vector<std::vector<int32_t>> prompts() {
  const auto tok = Tokenizer::from_pretrained(test::example_model());
  return {tok.encode("Once upon a time, a little girl"), tok.encode("The dog"),
          tok.encode("Tom and Sam went to the park to play with a big red ball."), tok.encode("One day")};
}

constexpr int kSteps = 10;

// Greedy decode of prompt p stepping alone: the logits after each step.
std::vector<std::vector<float>> alone(const AutoModelForCausalLM& m, const std::vector<int32_t>& p) {
  Session s(m, {.context_length = 128});
  s.append(p);
  std::vector<std::vector<float>> out;
  for (int i = 0; i < kSteps; ++i) {
    if (i > 0) {
      Session* one[] = {&s};
      Session::step(one);
    }
    const auto l = s.logits();
    out.emplace_back(l.begin(), l.end());
    s.push(argmax(l.data(), static_cast<int64_t>(l.size())));
  }
  return out;
}

void expect_batch_matches_alone(const AutoModelForCausalLM& m, const std::string& what) {
  SCOPED_TRACE(what);
  const auto ps = prompts();
  std::vector<std::vector<std::vector<float>>> ref;
  for (const auto& p : ps) ref.push_back(alone(m, p));
  // session i joins at step i (prefilled alone, then decoded with whoever is active); session 0 leaves after
  // kSteps - 3 steps so the batch shrinks too
  std::vector<Session> ss;
  for (size_t i = 0; i < ps.size(); ++i) ss.emplace_back(m, SessionOptions{.context_length = 128});
  std::vector<int> done(ps.size(), 0);
  for (int t = 0; t < kSteps + static_cast<int>(ps.size()); ++t) {
    std::vector<Session*> active;
    for (size_t i = 0; i < ps.size(); ++i) {
      const int limit = i == 0 ? kSteps - 3 : kSteps;
      if (static_cast<int>(i) == t) ss[i].append(ps[i]);  // joins: its prompt runs alone
      if (static_cast<int>(i) <= t && done[i] < limit) active.push_back(&ss[i]);
    }
    if (active.empty()) continue;
    Session::step(active);
    for (Session* s : active) {
      const size_t i = static_cast<size_t>(s - ss.data());
      const auto l = s->logits();
      const auto& want = ref[i][static_cast<size_t>(done[i])];
      ASSERT_EQ(l.size(), want.size());
      EXPECT_EQ(std::memcmp(l.data(), want.data(), want.size() * sizeof(float)), 0)
          << "session " << i << " step " << done[i] << " with " << active.size() << " in the batch";
      s->push(argmax(l.data(), static_cast<int64_t>(l.size())));
      ++done[i];
    }
  }
  EXPECT_EQ(done[0], kSteps - 3);
  EXPECT_EQ(done[3], kSteps);
}
}  // namespace

TEST(BatchStep, MatchesSteppingAloneFloat32) {
  expect_batch_matches_alone(load(std::nullopt), "float32");
}

TEST(BatchStep, MatchesSteppingAloneNf4EveryComputeDtype) {
  for (DType cd : {DType::Float32, DType::BFloat16, DType::Float16})
    expect_batch_matches_alone(load(cd), "nf4 " + std::string(dtype_name(cd)));
}

TEST(BatchStep, MatchesSteppingAloneInt8Activations) {
  expect_batch_matches_alone(load(DType::BFloat16, Activations::Int8), "nf4 bfloat16, int8 activations");
}

namespace {
// Sessions of a family's golden checkpoint decoded together from the start, each step against stepping alone.
void expect_family_batch_matches_alone(const std::string& name, const std::vector<std::vector<int32_t>>& ps) {
  const auto m = AutoModelForCausalLM::from_pretrained(
      std::string(NIBBLE_TEST_DATA) + "/checkpoints/families/" + name, {.quiet = true});
  SCOPED_TRACE(name);
  std::vector<std::vector<std::vector<float>>> ref;
  for (const auto& p : ps) ref.push_back(alone(m, p));
  std::vector<Session> ss;
  for (const auto& p : ps) {
    ss.emplace_back(m, SessionOptions{.context_length = 128});
    ss.back().append(p);
  }
  for (int t = 0; t < kSteps; ++t) {
    std::vector<Session*> all;
    for (auto& s : ss) all.push_back(&s);
    if (t > 0) Session::step(all);
    for (size_t i = 0; i < ss.size(); ++i) {
      const auto l = ss[i].logits();
      EXPECT_EQ(std::memcmp(l.data(), ref[i][static_cast<size_t>(t)].data(), l.size() * sizeof(float)), 0)
          << "session " << i << " step " << t;
      ss[i].push(argmax(l.data(), static_cast<int64_t>(l.size())));
    }
  }
}
}  // namespace

TEST(BatchStep, MatchesSteppingAloneSlidingWindowSoftcapFamily) {
  // gemma2: alternating sliding windows, attention and final soft-capping, pre/post feed-forward norms
  expect_family_batch_matches_alone("gemma2",
                                    {{2, 17, 33, 40, 5, 9, 12, 30, 31, 7}, {2, 3}, {2, 50, 51, 52, 53}});
}

TEST(BatchStep, MatchesSteppingAloneMixtureOfExperts) {
  // qwen3_moe: each expert runs over the rows of every session that routed a token to it; window 8 on every
  // layer (the cache bounded by it)
  expect_family_batch_matches_alone("qwen3-moe-sw",
                                    {{1, 17, 99, 100, 3, 45, 45, 125, 12, 7, 64}, {1, 5}, {1, 90, 91}});
}

TEST(BatchStep, RefusesBadBatchesBeforeRunning) {
  const auto m = load(std::nullopt), other = load(std::nullopt);
  const auto p = prompts()[1];
  Session a(m, {.context_length = 16}), b(m, {.context_length = 16}), c(other, {.context_length = 16});
  a.append(p);
  b.append(p);
  c.append(p);
  a.push(5);
  b.push(5);
  c.push(5);
  Session* twice[] = {&a, &a};
  EXPECT_THROW(Session::step(twice), ValueError);
  Session* mixed[] = {&a, &c};
  EXPECT_THROW(Session::step(mixed), ValueError);
  EXPECT_EQ(a.length(), static_cast<int64_t>(p.size()) + 1);  // still queued, nothing ran
  // a full context: push refuses, the batch holding a full session is refused whole
  Session full(m, {.context_length = static_cast<int64_t>(p.size()) + 1});
  full.append(p);
  full.push(7);
  EXPECT_THROW(full.push(8), ValueError);
  Session* ok[] = {&a, &b};
  Session::step(ok);
  EXPECT_EQ(std::memcmp(a.logits().data(), b.logits().data(), a.logits().size() * sizeof(float)), 0);
  Session::step(std::span<Session* const>{});  // nothing to do
}
