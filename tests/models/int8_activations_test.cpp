// Opt-in int8 activations end to end on the example model: every 4-bit layer reports the int8 path, the
// logits move (the option is in effect) but stay close to the exact NF4 model's.
#include <gtest/gtest.h>

#include "nibble/model.h"
#include "nibble/sampling.h"
#include "test_util.h"

using namespace nibble;

TEST(Int8Activations, ExampleModelCloseToExact) {
  BitsAndBytesConfig q{.load_in_4bit = true,
                       .bnb_4bit_compute_dtype = DType::BFloat16,
                       .bnb_4bit_quant_type = "nf4",
                       .bnb_4bit_use_double_quant = true};
  const auto exact =
      AutoModelForCausalLM::from_pretrained(test::example_model(), {.quantization_config = q, .quiet = true});
  const auto fast = AutoModelForCausalLM::from_pretrained(
      test::example_model(), {.quantization_config = q, .quiet = true, .activations = Activations::Int8});
  int64_t int8_layers = 0, exact_int8 = 0;
  for (const auto& [path, n] : fast.kernel_paths(1))
    if (path.find("int8") != std::string::npos) int8_layers += n;
  for (const auto& [path, n] : exact.kernel_paths(1))
    if (path.find("int8") != std::string::npos) exact_int8 += n;
  EXPECT_EQ(int8_layers, 14);  // 2 layers x 7 linears; lm_head stays dense
  EXPECT_EQ(exact_int8, 0);

  const std::vector<int32_t> ids{1, 415, 250, 302, 264, 727, 87, 264, 162, 293, 30, 1100, 57, 9, 400, 12};
  const std::vector<float> a = exact.forward(ids), b = fast.forward(ids);
  const int64_t V = exact.info().vocab_size, T = static_cast<int64_t>(ids.size());
  double kl = 0;
  int agree = 0;
  for (int64_t t = 0; t < T; ++t) {
    kl += kl_divergence(a.data() + t * V, b.data() + t * V, V);
    agree += argmax(a.data() + t * V, V) == argmax(b.data() + t * V, V);
  }
  EXPECT_GT(test::max_abs_diff(a, b), 1e-4);  // the option changed the arithmetic
  // measured on 2883 tokens with `nibble perplexity --reference`: mean KL 0.00075, top-1 97.6 %
  EXPECT_LT(kl / T, 0.01);
  EXPECT_GE(agree, T - 2);
}
