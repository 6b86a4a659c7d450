// llm_int8_skip_modules matching (both 4-bit and 8-bit conversion) against transformers' own
// should_convert_module: tests/golden/make_module_match_golden.py made module_match.json.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "models/registry.h"
#include "nibble/error.h"
#include "test_util.h"

using namespace nibble;

TEST(ModuleMatch, AsTransformersShouldConvertModule) {
  const auto g = nlohmann::json::parse(test::read_bytes(test::golden_dir() + "/module_match.json"));
  ASSERT_GT(g["cases"].size(), 50u);
  int skipped = 0;
  for (const auto& c : g["cases"]) {
    const std::string module = c[0], entry = c[1];
    const bool want = c[2];
    EXPECT_EQ(module_matches(module, entry), want) << module << " / " << entry;
    skipped += want;
  }
  EXPECT_GT(skipped, 10);  // both outcomes are exercised
}

TEST(ModuleMatch, InvalidRegexIsAValueError) {
  EXPECT_THROW(module_matches("model.layers.0.mlp.down_proj", "model.layers.[0"), ValueError);
}
