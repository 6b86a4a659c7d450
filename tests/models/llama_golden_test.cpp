// The float32 forward against the shared golden outputs of an independent HF LlamaForCausalLM
// implementation: full-sequence logits to 1e-4 and every greedy continuation exactly.
#include <gtest/gtest.h>

#include <cmath>

#include "io/hf_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

namespace {
const AutoModelForCausalLM& fp32_model() {
  static const AutoModelForCausalLM m =
      AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  return m;
}
}  // namespace

TEST(LlamaGolden, LogitsMatchTo1e4) {
  const auto f = SafetensorsFile::open(test::shared_dir() + "/golden/tinystories-656k.logits.safetensors");
  const Tensor ids_t = f.get("input_ids"), want = f.get("logits");
  std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
  const std::vector<float> got = fp32_model().forward(ids);
  ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
  double max_err = 0;
  for (int64_t i = 0; i < want.numel(); ++i)
    max_err = std::max(max_err,
                       static_cast<double>(std::fabs(got[static_cast<size_t>(i)] - want.data<float>()[i])));
  EXPECT_LT(max_err, 1e-4);
  RecordProperty("max_abs_logit_error", std::to_string(max_err));
}

TEST(LlamaGolden, GreedyContinuationsExact) {
  const auto g = read_json_file(test::shared_dir() + "/golden/tinystories-656k.json");
  const Tokenizer tok = Tokenizer::from_pretrained(test::example_model());
  for (const auto& c : g["cases"]) {
    const auto input = c["input_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(c["prompt"].get<std::string>()), input);
    const auto out = fp32_model().generate(input, {.max_new_tokens = g["max_new_tokens"].get<int>()});
    const std::vector<int32_t> fresh(out.begin() + static_cast<long>(input.size()), out.end());
    EXPECT_EQ(fresh, c["greedy_new_ids"].get<std::vector<int32_t>>()) << c["prompt"];
    EXPECT_EQ(tok.decode(out), c["greedy_text"].get<std::string>());
  }
}
