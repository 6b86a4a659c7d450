// KV caches bounded by the sliding window (issue 13): a windowed layer keeps window - 1 + slack rows however
// long the sequence, and gives the logits (bit for bit) of a cache holding every position, whatever the call
// sizes (prompt chunks longer than the rows, single decode steps, compaction in between), on the families
// that window every layer (mistral), alternate (gemma2, gemma3) or window the upper layers (qwen2); a session
// cut back past what the rows still hold runs its tokens again.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "generate/kv_cache.h"
#include "models/auto_model_impl.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/session.h"
#include "nn/linear.h"
#include "test_util.h"

using namespace nibble;

namespace {
std::string family(const std::string& name) {
  return test::golden_dir() + "/checkpoints/families/" + name;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(3, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = d(rng);
  return ids;
}

// Logits of every position of `ids`, fed in calls of the given sizes (cycled), over `cache`.
std::vector<float> run_in_calls(const models::CausalLM& m, generate::KVCache& cache,
                                const std::vector<int32_t>& ids, const std::vector<int64_t>& calls) {
  nn::Workspace ws;
  const int64_t V = m.vocab_size(), n = static_cast<int64_t>(ids.size());
  std::vector<float> out(static_cast<size_t>(n * V));
  for (int64_t pos = 0, c = 0; pos < n; ++c) {
    const int64_t len = std::min(calls[static_cast<size_t>(c) % calls.size()], n - pos);
    m.forward(std::span(ids).subspan(static_cast<size_t>(pos), static_cast<size_t>(len)), pos, cache.layers(),
              ws, 0, out.data() + pos * V);
    pos += len;
  }
  return out;
}
}  // namespace

TEST(WindowCache, RowsPerLayerFollowTheWindows) {
  const int64_t W = 16;  // floats per row
  generate::KVCache full(3, W, 1000);
  EXPECT_EQ(full.bytes(), size_t{3 * 2 * W * 1000 * 4});
  generate::KVCache mixed(3, W, 1000, std::vector<int64_t>{8, 0, 100}, 4);
  EXPECT_EQ(mixed.layers()[0].capacity, 11);  // window - 1 + slack
  EXPECT_NE(mixed.layers()[0].first, nullptr);
  EXPECT_EQ(mixed.layers()[1].capacity, 1000);
  EXPECT_EQ(mixed.layers()[1].first, nullptr);
  EXPECT_EQ(mixed.layers()[2].capacity, 103);
  EXPECT_EQ(mixed.bytes(), size_t{2 * W * (11 + 1000 + 103) * 4});
  // the default slack (a quarter of the window); a window the context does not exceed bounds nothing
  generate::KVCache dflt(1, W, 1 << 20, std::vector<int64_t>{4096});
  EXPECT_EQ(dflt.layers()[0].capacity, 4095 + 1024);
  generate::KVCache small_ctx(1, W, 50, std::vector<int64_t>{4096});
  EXPECT_EQ(small_ctx.layers()[0].capacity, 50);
  EXPECT_EQ(small_ctx.layers()[0].first, nullptr);
  EXPECT_THROW(generate::KVCache(2, W, 10, std::vector<int64_t>{8}), ValueError);
  EXPECT_THROW(generate::KVCache(1, W, 10, std::vector<int64_t>{8}, -1), ValueError);
}

TEST(WindowCache, ModelReportsWhatItsSessionCacheTakes) {
  // mistral-sw: 2 layers, 2 KV heads x 8, window 8 on both: 7 + 2 rows each, whatever the context
  const auto sw = AutoModelForCausalLM::from_pretrained(family("mistral-sw"), {.quiet = true});
  EXPECT_EQ(sw.kv_cache_bytes(1000), size_t{2 * 2 * 16 * 9 * 4});
  EXPECT_EQ(sw.kv_cache_bytes(100000), sw.kv_cache_bytes(1000));
  EXPECT_EQ(sw.kv_cache_bytes(5), size_t{2 * 2 * 16 * 5 * 4});  // a context under the window: one row each
  // gemma2: window 8 on layer 0 only
  auto g = AutoModelForCausalLM::from_pretrained(family("gemma2"), {.quiet = true});
  const models::CausalLM& gm = *ModelAccess::impl(g).model;
  EXPECT_EQ(g.kv_cache_bytes(1000), generate::KVCache(2, gm.kv_width(), 1000, gm.kv_windows()).bytes());
  EXPECT_EQ(g.kv_cache_bytes(1000), static_cast<size_t>(2 * gm.kv_width() * (9 + 1000) * 4));
  EXPECT_THROW((void)g.kv_cache_bytes(0), ValueError);
}

TEST(WindowCache, BoundedRowsGiveTheBitsOfTheFullCache) {
  struct Case {
    std::string dir;
    bool nf4;
  };
  for (const Case& c : {Case{"mistral-sw", false}, Case{"mistral-sw", true}, Case{"gemma2", false},
                        Case{"gemma3-text", false}, Case{"qwen2-sw", false}}) {
    SCOPED_TRACE(c.dir + (c.nf4 ? " nf4" : ""));
    FromPretrainedOptions o{.quiet = true};
    if (c.nf4)
      o.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                                 .bnb_4bit_compute_dtype = DType::BFloat16,
                                                 .bnb_4bit_quant_type = "nf4",
                                                 .bnb_4bit_use_double_quant = true};
    auto model = AutoModelForCausalLM::from_pretrained(family(c.dir), o);
    const models::CausalLM& m = *ModelAccess::impl(model).model;
    const auto windows = m.kv_windows();
    ASSERT_EQ(static_cast<int64_t>(windows.size()), m.num_layers());
    ASSERT_TRUE(std::any_of(windows.begin(), windows.end(), [](int64_t w) { return w > 0; }));
    const auto ids = random_ids(70, m.vocab_size(), 3);
    const int64_t n = static_cast<int64_t>(ids.size());
    // prompt longer than any window in one call, then decode steps and short continuations
    for (const std::vector<int64_t>& calls :
         {std::vector<int64_t>{30, 1, 1, 1, 5, 1, 13}, std::vector<int64_t>{1}, std::vector<int64_t>{70}}) {
      generate::KVCache full(m.num_layers(), m.kv_width(), n);
      const auto want = run_in_calls(m, full, ids, calls);
      for (int64_t slack : {1, 3, 0}) {
        SCOPED_TRACE("slack " + std::to_string(slack) + ", first call " + std::to_string(calls[0]));
        generate::KVCache bounded(m.num_layers(), m.kv_width(), n, windows, slack);
        EXPECT_LT(bounded.bytes(), full.bytes());
        const auto got = run_in_calls(m, bounded, ids, calls);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
      }
    }
  }
}

TEST(WindowCache, SessionCutBackPastDroppedRowsRunsAgain) {
  const auto model = AutoModelForCausalLM::from_pretrained(family("mistral-sw"), {.quiet = true});
  const auto ids = random_ids(60, 128, 9);
  const nn::RowInvariantScope invariant;  // a row's logits do not depend on how many ran beside it
  auto logits_after = [&](int64_t n) {
    Session fresh(model, {.context_length = 100});
    fresh.append(std::span(ids).first(static_cast<size_t>(n)));
    const auto l = fresh.logits();
    return std::vector<float>(l.begin(), l.end());
  };
  Session s(model, {.context_length = 100});
  s.append(ids);  // window 8, rows 9: positions before 52 are gone
  for (int64_t n : {58, 20, 59, 3}) {
    SCOPED_TRACE("cut back to " + std::to_string(n));
    s.truncate(n);
    s.append(std::span(ids).subspan(static_cast<size_t>(n), 1));  // runs again from 0 if it had to
    const auto l = s.logits();
    EXPECT_EQ(std::vector<float>(l.begin(), l.end()), logits_after(n + 1));
    s.append(std::span(ids).subspan(static_cast<size_t>(n + 1)));
  }
}
