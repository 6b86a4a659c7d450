// nibble::BitsAndBytesConfig against transformers' own outputs (tests/golden/make_config_golden.py).
#include "nibble/bitsandbytes_config.h"

#include <gtest/gtest.h>

#include <sstream>

#include "nibble/files.h"
#include "nibble/error.h"
#include "test_util.h"

using namespace nibble;
using nlohmann::json;

namespace {
const json& golden() {
  static const json g = json::parse(read_text_file(test::golden_dir() + "/bnb_config.json"));
  return g;
}
}  // namespace

TEST(BitsAndBytesConfig, Defaults) {
  const BitsAndBytesConfig c;
  EXPECT_FALSE(c.load_in_8bit);
  EXPECT_FALSE(c.load_in_4bit);
  EXPECT_EQ(c.llm_int8_threshold, 6.0);
  EXPECT_FALSE(c.llm_int8_skip_modules.has_value());
  EXPECT_FALSE(c.llm_int8_enable_fp32_cpu_offload);
  EXPECT_FALSE(c.llm_int8_has_fp16_weight);
  EXPECT_EQ(c.compute_dtype(), DType::Float32);
  EXPECT_EQ(c.bnb_4bit_quant_type, "fp4");
  EXPECT_FALSE(c.bnb_4bit_use_double_quant);
  EXPECT_EQ(c.quant_storage(), DType::UInt8);
  EXPECT_STREQ(c.quant_method, "bitsandbytes");
  EXPECT_FALSE(c.is_quantizable());
  EXPECT_FALSE(c.quantization_method());
  EXPECT_EQ(c.to_dict().size(), 13u);
  EXPECT_EQ(c.to_diff_dict(), json::object());
}

TEST(BitsAndBytesConfig, SeedExampleDesignatedInitializers) {
  const BitsAndBytesConfig q{.load_in_4bit = true,
                             .bnb_4bit_compute_dtype = DType::BFloat16,
                             .bnb_4bit_quant_type = "nf4",
                             .bnb_4bit_use_double_quant = true};
  const json diff = q.to_diff_dict();
  EXPECT_EQ(diff.size(), 5u);
  EXPECT_EQ(diff, json::parse(R"({"_load_in_4bit": true, "bnb_4bit_compute_dtype": "bfloat16",
      "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true, "load_in_4bit": true})"));
  EXPECT_EQ(q.quantization_method(), "nf4");
  // dtype by name works the same
  const BitsAndBytesConfig by_name{.load_in_4bit = true,
                                   .bnb_4bit_compute_dtype = "bfloat16",
                                   .bnb_4bit_quant_type = "nf4",
                                   .bnb_4bit_use_double_quant = true};
  EXPECT_EQ(by_name, q);
  EXPECT_EQ(by_name.compute_dtype(), DType::BFloat16);
}

TEST(BitsAndBytesConfig, ValidationOnConstruction) {
  try {
    BitsAndBytesConfig c{.load_in_8bit = true, .load_in_4bit = true};
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(),
                 "load_in_4bit and load_in_8bit are both True, but only one can be used at the same time");
  }
  try {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_quant_storage = "int4"};
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(
        e.what(),
        "`bnb_4bit_quant_storage` must be a valid string (one of 'float16', 'float32', 'int8', 'uint8', "
        "'float64', 'bfloat16') ");
  }
  EXPECT_THROW((BitsAndBytesConfig{.bnb_4bit_compute_dtype = "float8"}), ValueError);
  // nibble's improvement over transformers: the quant type is checked at once
  try {
    BitsAndBytesConfig c{.load_in_4bit = true, .bnb_4bit_quant_type = "int4"};
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'fp4' or 'nf4'"), std::string::npos);
  }
}

TEST(BitsAndBytesConfig, MutualExclusionEveryPath) {
  BitsAndBytesConfig c{.load_in_4bit = true};
  EXPECT_THROW(c.set_load_in_8bit(true), ValueError);
  EXPECT_FALSE(c.load_in_8bit);
  EXPECT_THROW(c.update({{"load_in_8bit", true}}), ValueError);
  EXPECT_FALSE(c.load_in_8bit);  // unchanged after a failed update
  EXPECT_THROW(BitsAndBytesConfig::from_dict({{"load_in_4bit", true}, {"load_in_8bit", true}}), ValueError);
  BitsAndBytesConfig e{.load_in_8bit = true};
  EXPECT_THROW(e.set_load_in_4bit(true), ValueError);
  c.set_load_in_4bit(false);
  c.set_load_in_8bit(true);
  EXPECT_EQ(c.quantization_method(), "llm_int8");
}

TEST(BitsAndBytesConfig, UpdateReturnsUnusedAndRevalidates) {
  BitsAndBytesConfig c{.load_in_4bit = true};
  const json rest = c.update({{"bnb_4bit_quant_type", "nf4"}, {"foo", 1}});
  EXPECT_EQ(c.bnb_4bit_quant_type, "nf4");
  EXPECT_EQ(rest, json({{"foo", 1}}));
  EXPECT_THROW(c.update({{"bnb_4bit_quant_type", "nf5"}}), ValueError);
  EXPECT_EQ(c.bnb_4bit_quant_type, "nf4");
  EXPECT_THROW(c.update({{"llm_int8_threshold", 6}}), TypeError);  // an int is not a float, as in Python
}

TEST(BitsAndBytesConfig, FromDictOfSavedBlock) {
  const json saved = json::parse(R"({"_load_in_4bit": true, "_load_in_8bit": false,
    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": true, "llm_int8_enable_fp32_cpu_offload": false,
    "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0,
    "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes", "extra_key": 3})");
  std::vector<std::string> unused;
  const auto c = BitsAndBytesConfig::from_dict(saved, &unused);
  EXPECT_EQ(unused, std::vector<std::string>{"extra_key"});
  EXPECT_EQ(unused_kwargs_message(unused),
            "Unused kwargs: ['extra_key']. These kwargs are not used in "
            "<class 'transformers.utils.quantization_config.BitsAndBytesConfig'>.");
  json expect = saved;
  expect.erase("extra_key");
  EXPECT_EQ(c.to_dict(), expect);
  // JSON round trip, byte for byte
  EXPECT_EQ(BitsAndBytesConfig::from_dict(json::parse(c.to_json_string(false))).to_json_string(false),
            c.to_json_string(false));
  test::TempDir d;
  c.to_json_file(d / "q.json");
  EXPECT_EQ(test::read_bytes(d / "q.json"), c.to_json_string(false));
  EXPECT_EQ(BitsAndBytesConfig::from_json_file(d / "q.json"), c);
}

TEST(BitsAndBytesConfig, AutoQuantizationConfig) {
  EXPECT_EQ(AutoQuantizationConfig::from_dict({{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}})
                .load_in_4bit,
            true);
  EXPECT_EQ(AutoQuantizationConfig::from_dict({{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}})
                .load_in_8bit,
            true);
  try {
    AutoQuantizationConfig::from_dict({{"quant_method", "gptq"}, {"bits", 4}});
    FAIL();
  } catch (const NotSupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'gptq'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bitsandbytes"), std::string::npos);
  }
  EXPECT_THROW(AutoQuantizationConfig::from_dict({{"bits", 4}}), FormatError);
}

TEST(BitsAndBytesConfig, ItemsAndPrinting) {
  const BitsAndBytesConfig c{.load_in_4bit = true};
  const auto items = c.items();
  ASSERT_EQ(items.size(), 13u);
  EXPECT_EQ(items.front().first, "_load_in_4bit");
  std::ostringstream os;
  os << c;
  EXPECT_EQ(os.str(), c.repr());
}

// Every case of transformers' golden file: same dicts, same JSON bytes, same errors and messages.
TEST(BitsAndBytesConfig, MatchesTransformersGolden) {
  ASSERT_GE(golden()["cases"].size(), 12u);
  for (const auto& c : golden()["cases"]) {
    SCOPED_TRACE(c["kwargs"].dump());
    if (c.contains("error")) {
      try {
        BitsAndBytesConfig::from_dict(c["kwargs"]);
        ADD_FAILURE() << "expected " << c["error_type"];
      } catch (const ValueError& e) {
        EXPECT_EQ(c["error_type"], "ValueError");
        EXPECT_EQ(e.what(), c["error"].get<std::string>());
      } catch (const TypeError& e) {
        EXPECT_EQ(c["error_type"], "TypeError");
        EXPECT_EQ(e.what(), c["error"].get<std::string>());
      }
      continue;
    }
    const auto cfg = BitsAndBytesConfig::from_dict(c["kwargs"]);
    EXPECT_EQ(cfg.to_dict(), json::parse(c["to_dict"].get<std::string>()));
    EXPECT_EQ(cfg.to_diff_dict(), json::parse(c["to_diff_dict"].get<std::string>()));
    EXPECT_EQ(cfg.to_json_string(), c["to_json_string"].get<std::string>());
    EXPECT_EQ(cfg.to_json_string(false), c["to_json_string_full"].get<std::string>());
    EXPECT_EQ(cfg.repr(), c["repr"].get<std::string>());
    EXPECT_EQ(cfg.is_quantizable(), c["is_quantizable"].get<bool>());
    if (c["quantization_method"].is_null()) {
      EXPECT_FALSE(cfg.quantization_method());
    } else {
      EXPECT_EQ(cfg.quantization_method(), c["quantization_method"].get<std::string>());
    }
    EXPECT_EQ(kBitsAndBytesConfigClass, c["class_name"].get<std::string>());
  }
}
