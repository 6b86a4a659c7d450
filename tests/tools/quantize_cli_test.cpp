// `nibble quantize` end to end on the example model: the output loads back, dequantizes close to the
// original weights, and bad input gives one clear line and a non-zero exit without leaving partial output.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "fake_hf_cache.h"
#include "nibble/bitsandbytes_config.h"
#include "nibble/files.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
struct CliResult {
  int code;
  std::string err;
};
CliResult run(const std::string& args, const test::TempDir& d) {
  const std::string errf = d / "stderr.txt";
  const int rc =
      std::system((std::string(NIBBLE_CLI) + " " + args + " 2>" + errf + " >" + (d / "stdout.txt")).c_str());
  return {WEXITSTATUS(rc), test::read_bytes(errf)};
}
}  // namespace

TEST(QuantizeCli, Nf4DoubleQuantExampleModel) {
  test::TempDir d;
  const std::string out = d / "out";
  const CliResult r =
      run("quantize " + test::example_model() + " " + out + " --quant-type nf4 --double-quant --quiet", d);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;

  const auto cfg = nlohmann::json::parse(read_text_file(out + "/config.json"));
  const auto q = BitsAndBytesConfig::from_dict(cfg["quantization_config"]);
  EXPECT_EQ(q.bnb_4bit_quant_type, "nf4");
  EXPECT_TRUE(q.bnb_4bit_use_double_quant);
  EXPECT_EQ(cfg["quantization_config"].size(), 13u);

  const Checkpoint orig = Checkpoint::open(test::example_model());
  const Checkpoint got = Checkpoint::open(out);
  int quantized = 0;
  for (const auto& name : orig.names()) {
    const Tensor w = orig.get(name);
    if (got.contains(name + ".quant_state.bitsandbytes__nf4")) {
      ++quantized;
      std::map<std::string, Tensor> d;
      for (const char* k :
           {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4"})
        d[name + "." + k] = got.get(name + "." + k);
      const QuantState s = QuantState::from_dict(d, name);
      EXPECT_EQ(s.shape, w.shape());
      const Tensor deq = dequantize_4bit(got.get(name), s);
      double err = 0, ref = 0;
      for (int64_t i = 0; i < w.numel(); ++i) {
        err += std::pow(deq.data<float>()[i] - w.data<float>()[i], 2);
        ref += std::pow(w.data<float>()[i], 2);
      }
      const double rel = std::sqrt(err / ref);
      EXPECT_LT(rel, 0.12) << name;  // NF4 on Gaussian-like weights: ~0.09-0.10 relative RMS error
      EXPECT_GT(rel, 0.0) << name;
    } else {
      // unquantized (norms, lm_head): copied bit for bit
      const Tensor c = got.get(name);
      ASSERT_EQ(c.nbytes(), w.nbytes()) << name;
      EXPECT_EQ(0, std::memcmp(c.raw(), w.raw(), w.nbytes())) << name;
    }
  }
  EXPECT_EQ(quantized, 14);  // 2 layers x 7 projections; lm_head skipped by default
}

TEST(QuantizeCli, InputByModelIdOutputAPlainPath) {
  test::ClearHubEnv clear;  // the child process inherits the environment
  test::TempDir d, cache;
  const std::string snap =
      test::add_cached_snapshot(cache.str(), "org/name", test::example_model(), test::fake_commit(1));
  test::ScopedEnv hub("HF_HUB_CACHE", cache.str());
  // OUT spelled like an id is still a path (relative to the working directory), never the cache
  fs::create_directories(d / "org");
  const std::string errf = d / "stderr.txt";
  const int rc = std::system(
      ("cd " + d.str() + " && " + NIBBLE_CLI + " quantize org/name org/q --quiet 2>" + errf).c_str());
  ASSERT_EQ(WEXITSTATUS(rc), 0) << test::read_bytes(errf);
  EXPECT_TRUE(fs::is_regular_file(d / "org/q/model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(d / "org/q/tokenizer.json")));  // copied, not linked
  EXPECT_FALSE(fs::exists(cache / "models--org--q"));
  // the same checkpoint as quantizing the directory itself
  const CliResult r = run("quantize " + test::example_model() + " " + (d / "direct") + " --quiet", d);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::read_bytes(d / "org/q/model.safetensors"),
            test::read_bytes(d / "direct/model.safetensors"));
  EXPECT_EQ(test::read_bytes(d / "org/q/config.json"), test::read_bytes(d / "direct/config.json"));
  // and the snapshot is untouched: still the links into blobs/
  EXPECT_TRUE(fs::is_symlink(fs::path(snap) / "model.safetensors"));
}

TEST(QuantizeCli, FlagsAndSkipModules) {
  test::TempDir d;
  const std::string out = d / "out";
  const CliResult r =
      run("quantize " + test::example_model() + " " + out +
              " --quant-type fp4 --blocksize 128 --quant-storage bfloat16 --skip-modules lm_head,down_proj"
              " --dtype bfloat16 -q --max-shard-size 100KB",
          d);
  ASSERT_EQ(r.code, 0) << r.err;
  const Checkpoint got = Checkpoint::open(out);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_FALSE(got.contains("model.layers.0.mlp.down_proj.weight.absmax"));
  EXPECT_EQ(got.info("model.layers.0.mlp.down_proj.weight").dtype, DType::BFloat16);
  EXPECT_EQ(got.info("model.layers.0.mlp.up_proj.weight").dtype, DType::BFloat16);  // quant_storage view
  EXPECT_EQ(got.info("model.layers.0.mlp.up_proj.weight").shape, (Shape{384 * 128 / 4, 1}));
  EXPECT_EQ(got.info("model.norm.weight").dtype, DType::BFloat16);
  const auto js = got.get("model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__fp4");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(js.raw()), js.nbytes()),
            R"({"quant_type": "fp4", "blocksize": 128, "dtype": "bfloat16", "shape": [384, 128]})");
}

TEST(QuantizeCli, ConfigFileAndConfigCommand) {
  test::TempDir d;
  test::write_bytes(d / "q.json", R"({"load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bogus": 1})");
  CliResult r = run("config --config " + (d / "q.json") + " --diff", d);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(
      test::read_bytes(d / "stdout.txt"),
      "{\n  \"_load_in_4bit\": true,\n  \"bnb_4bit_quant_type\": \"nf4\",\n  \"load_in_4bit\": true\n}\n");
  EXPECT_NE(r.err.find("Unused kwargs: ['bogus']"), std::string::npos) << r.err;
  r = run("config --load-in-4bit --load-in-8bit", d);
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err,
            "nibble: error: load_in_4bit and load_in_8bit are both True, but only one can be used at the "
            "same time\n");
}

TEST(QuantizeCli, ClearErrorsAndNoPartialOutput) {
  test::TempDir d;
  // unsupported model_type
  fs::create_directories(d / "gpt2");
  test::write_bytes(d / "gpt2/config.json", R"({"model_type": "gpt2"})");
  CliResult r = run("quantize " + (d / "gpt2") + " " + (d / "o1") + " -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("model_type 'gpt2' is not supported"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "o1"));
  // missing input
  r = run("quantize " + (d / "nope") + " " + (d / "o2") + " -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("nope: no such model directory"), std::string::npos) << r.err;
  // a truncated safetensors file: the error names it, and no output directory appears
  fs::create_directories(d / "trunc");
  fs::copy_file(test::example_model() + "/config.json", d / "trunc/config.json");
  const std::string full = test::read_bytes(test::example_model() + "/model.safetensors");
  test::write_bytes(d / "trunc/model.safetensors", full.substr(0, full.size() / 2));
  r = run("quantize " + (d / "trunc") + " " + (d / "o3") + " -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("trunc/model.safetensors"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "o3"));
  for (const auto& e : fs::directory_iterator(d.str()))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  // an existing non-empty output is never overwritten
  fs::create_directories(d / "o4");
  test::write_bytes(d / "o4/keep.txt", "mine");
  r = run("quantize " + test::example_model() + " " + (d / "o4") + " -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(test::read_bytes(d / "o4/keep.txt"), "mine");
  // bad flag values are the config class's messages
  r = run("quantize " + test::example_model() + " " + (d / "o5") + " --quant-type nf5 -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("'fp4' or 'nf4'"), std::string::npos) << r.err;
  r = run("quantize " + test::example_model() + " " + (d / "o6") + " --blocksize 100 -q", d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("blocksize"), std::string::npos) << r.err;
}

TEST(QuantizeCli, Int8ExampleModelAsSavePretrained) {
  test::TempDir d;
  const std::string out = d / "out";
  const CliResult r = run("quantize " + test::example_model() + " " + out + " --load-in-8bit --quiet", d);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto cfg = nlohmann::json::parse(read_text_file(out + "/config.json"));
  const auto q = BitsAndBytesConfig::from_dict(cfg["quantization_config"]);
  EXPECT_TRUE(q.load_in_8bit);
  EXPECT_FALSE(q.load_in_4bit);
  EXPECT_EQ(cfg["quantization_config"], BitsAndBytesConfig{.load_in_8bit = true}.to_dict());
  const Checkpoint orig = Checkpoint::open(test::example_model());
  const Checkpoint got = Checkpoint::open(out);
  int quantized = 0;
  for (const auto& name : orig.names()) {
    if (!name.ends_with("_proj.weight")) {  // norms, the (tied) embedding: copied as they were
      EXPECT_TRUE(got.contains(name)) << name;
      continue;
    }
    ++quantized;
    const std::string m = name.substr(0, name.size() - 7);
    const QuantizedInt8 want = int8_vectorwise_quant(orig.get(name));
    const Tensor cb = got.get(name), scb = got.get(m + ".SCB"), fmt = got.get(m + ".weight_format");
    EXPECT_EQ(cb.dtype(), DType::Int8);
    EXPECT_EQ(0, std::memcmp(cb.raw(), want.CB.raw(), want.CB.nbytes())) << name;
    EXPECT_EQ(0, std::memcmp(scb.raw(), want.SCB.raw(), want.SCB.nbytes())) << name;
    EXPECT_TRUE(fmt.dtype() == DType::UInt8 && fmt.shape().empty() && fmt.data<uint8_t>()[0] == 0) << name;
  }
  EXPECT_EQ(quantized, 14);
  EXPECT_FALSE(got.contains("lm_head.SCB"));
  // --load-in-8bit over a 4-bit config: transformers' own error, no output
  test::write_bytes(d / "q4.json", "{\"load_in_4bit\": true}");
  const CliResult both = run(
      "quantize " + test::example_model() + " " + (d / "o2") + " --load-in-8bit --config " + (d / "q4.json"),
      d);
  EXPECT_NE(both.code, 0);
  EXPECT_NE(both.err.find("load_in_4bit and load_in_8bit are both True"), std::string::npos) << both.err;
  EXPECT_FALSE(fs::exists(d / "o2"));
}
