// AutoModelForCausalLM::kernel_paths names the path each linear layer takes, so a scalar fallback is visible
// (nibble info, generate -v, bench --json print it).
#include <gtest/gtest.h>

#include "nibble/cpu.h"
#include "nibble/model.h"
#include "test_util.h"

using namespace nibble;

namespace {
int64_t total(const std::vector<std::pair<std::string, int64_t>>& p) {
  int64_t n = 0;
  for (const auto& [path, k] : p) n += k;
  return n;
}
int64_t count(const std::vector<std::pair<std::string, int64_t>>& p, const std::string& path) {
  for (const auto& [name, k] : p)
    if (name == path) return k;
  return 0;
}
}  // namespace

TEST(KernelPaths, EveryLinearLayerIsCountedOnThePathItTakes) {
  // the example model: 2 layers x 7 linears, and the tied embedding as the (dense float32) output layer
  for (const DType compute : {DType::Float32, DType::BFloat16, DType::Float16}) {
    const auto m = AutoModelForCausalLM::from_pretrained(
        test::example_model(), {.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                                                          .bnb_4bit_compute_dtype = compute,
                                                                          .bnb_4bit_quant_type = "nf4"},
                                .quiet = true});
    for (const int64_t tokens : {1, 64}) {
      const auto p = m.kernel_paths(tokens);
      EXPECT_EQ(total(p), 15) << dtype_name(compute);
      // the 14 4-bit layers (in 128, a multiple of every fast path's granularity) fall back to the scalar
      // reference exactly when the dispatch has no fast path for this compute dtype on this CPU (float16 has
      // none yet), the float32 tied output layer when float32 has none
      const int64_t want_ref = (kernel_path(compute) == "reference" ? 14 : 0) +
                               (kernel_path(DType::Float32) == "reference" ? 1 : 0);
      EXPECT_EQ(count(p, "reference"), want_ref) << dtype_name(compute) << " " << tokens;
    }
  }
  const auto dense = AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  EXPECT_EQ(total(dense.kernel_paths(1)), 15);
  EXPECT_EQ(count(dense.kernel_paths(1), "reference"), kernel_path(DType::Float32) == "reference" ? 15 : 0);
}
