// The decode loop allocates nothing once warm (issue 10, item 4): activations, logits and the KV cache are
// allocated once per model/session, kernel scratch once per thread. A separate test executable, because it
// replaces the global operator new to count heap allocations while a flag is up.
#include <gtest/gtest.h>

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // operator new here is malloc, delete is free

#include <atomic>
#include <cstdlib>
#include <new>

#include "nibble/bitsandbytes_config.h"
#include "nibble/model.h"
#include "nibble/sampling.h"
#include "nibble/session.h"
#include "test_util.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

using namespace nibble;

namespace {
constexpr int32_t kVocab = 512;  // ids below every model's vocabulary here (the example model has 2048)

// Heap allocations made by `tokens` one-token appends, each followed by sampling the next token, after a
// warm-up prompt and two such steps.
long allocations_per_decode(const AutoModelForCausalLM& m, int tokens) {
  Session s(m, {.context_length = 256});
  const std::vector<int32_t> prompt{1, 415, 250, 302, 264, 727, 87, 264, 162, 293};
  std::vector<int32_t> ids;
  for (int32_t id : prompt) ids.push_back(id % kVocab);
  s.append(ids);
  int32_t next[1] = {7};
  std::mt19937_64 warm(1);
  for (int i = 0; i < 2; ++i) {
    s.append(next);
    sample(s.logits().data(), static_cast<int64_t>(s.logits().size()), {.top_k = 40, .top_p = 0.9f}, warm);
  }
  allocations = 0;
  counting = true;
  float sink = 0;
  std::mt19937_64 rng(3);
  for (int i = 0; i < tokens; ++i) {
    s.append(next);
    const std::span<const float> logits = s.logits();
    sink += logits[0];
    // the sampler too (top-k, then top-p), as generate(do_sample) runs it each token
    next[0] = sample(logits.data(), static_cast<int64_t>(logits.size()), {.top_k = 40, .top_p = 0.9f}, rng) %
              kVocab;
  }
  counting = false;
  EXPECT_TRUE(std::isfinite(sink));
  return allocations.load();
}
}  // namespace

TEST(NoAllocation, DecodeLoopFloat32) {
  const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  EXPECT_EQ(allocations_per_decode(m, 16), 0);
}

TEST(NoAllocation, DecodeLoop4bitEveryComputeDtype) {
  for (const char* cd : {"float32", "bfloat16", "float16"}) {
    SCOPED_TRACE(cd);
    BitsAndBytesConfig q;
    q.load_in_4bit = true;
    q.bnb_4bit_quant_type = "nf4";
    q.bnb_4bit_use_double_quant = true;
    q.bnb_4bit_compute_dtype = cd;
    const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(),
                                                         {.quantization_config = q, .quiet = true});
    EXPECT_EQ(allocations_per_decode(m, 16), 0);
  }
}

TEST(NoAllocation, DecodeLoopLlmInt8) {
  for (const double threshold : {6.0, 0.5, 0.0}) {  // 0.5: outlier columns in most calls, their count varying
    SCOPED_TRACE(threshold);
    BitsAndBytesConfig q;
    q.update({{"load_in_8bit", true}, {"llm_int8_threshold", threshold}});
    const auto m = AutoModelForCausalLM::from_pretrained(test::example_model(),
                                                         {.quantization_config = q, .quiet = true});
    EXPECT_EQ(allocations_per_decode(m, 16), 0);
  }
}

TEST(NoAllocation, CounterSeesAllocations) {  // the counter itself works: a test that could fail
  allocations = 0;
  counting = true;
  auto* v = new std::vector<int>(100);
  counting = false;
  delete v;
  EXPECT_GE(allocations.load(), 2);
}
