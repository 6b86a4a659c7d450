// nibble generate / perplexity / info end to end on the example model.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>

#include "fake_hf_cache.h"
#include "io/hf_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;

namespace {
using Out = test::CliResult;
Out nibble_cli(const std::string& args) {
  return test::run_cli(args);
}
// The number after "name: " (std::regex is avoided: GCC 12 -O2 + sanitizers warns inside it).
double field(const std::string& text, const std::string& name) {
  const size_t p = text.find(name + ": ");
  if (p == std::string::npos) {
    ADD_FAILURE() << "no '" << name << "' in: " << text;
    return NAN;
  }
  return std::strtod(text.c_str() + p + name.size() + 2, nullptr);
}
std::string model() {
  return test::example_model();
}
std::string story() {
  return std::string(NIBBLE_SOURCE_DIR) + "/tests/data/eval_story.txt";
}
}  // namespace

TEST(GenerateCli, GreedyMatchesGoldenText) {
  const auto g = read_json_file(test::shared_dir() + "/golden/tinystories-656k.json");
  const auto& c = g["cases"][0];
  const Out r =
      nibble_cli("generate " + model() + " --prompt \"" + c["prompt"].get<std::string>() + "\" -n 40 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, c["greedy_text"].get<std::string>() + "\n");  // prompt, then the streamed continuation
}

TEST(GenerateCli, FourBitDemoCommandAndStats) {
  const Out r = nibble_cli("generate " + model() +
                           " --load-in-4bit --quant-type nf4 --double-quant --prompt \"Once upon a time\"");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), 60u);
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  // sampling with a seed is reproducible, and differs from greedy
  const std::string s =
      "generate " + model() +
      " --prompt \"Once upon a time\" -n 30 -q --do-sample --top-k 20 --top-p 0.9 --temperature 1.2 --seed ";
  const Out a = nibble_cli(s + "7"), b = nibble_cli(s + "7"), c = nibble_cli(s + "8");
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(GenerateCli, PerplexityMatchesGoldenLogits) {
  // the golden logits file holds a prompt + greedy continuation; perplexity of its text (BOS + tokens, all
  // scored) must equal exp(mean NLL) computed here from the independent implementation's logits
  const auto f = SafetensorsFile::open(test::shared_dir() + "/golden/tinystories-656k.logits.safetensors");
  const Tensor ids = f.get("input_ids"), logits = f.get("logits");
  const int64_t T = ids.numel(), V = logits.dim(1);
  double nll = 0;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* row = logits.data<float>() + t * V;
    double mx = row[0], s = 0;
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, static_cast<double>(row[i]));
    for (int64_t i = 0; i < V; ++i) s += std::exp(row[i] - mx);
    nll -= row[ids.data<int32_t>()[t + 1]] - mx - std::log(s);
  }
  const double want = std::exp(nll / static_cast<double>(T - 1));
  const auto g = read_json_file(test::shared_dir() + "/golden/tinystories-656k.json");
  test::TempDir d;
  test::write_bytes(d / "t.txt", g["cases"][0]["greedy_text"].get<std::string>());
  const Out r = nibble_cli("perplexity " + model() + " --file " + (d / "t.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NEAR(field(r.out, "perplexity"), want, want * 1e-4);
}

// --ctx / --stride: transformers' sliding-window recipe (each window BOS + up to ctx - 1 text tokens,
// starting `stride` tokens after the previous; only tokens no earlier window scored are scored, each from its
// own window). Recomputed here with full forwards; the CLI computes logits for the scored rows only.
TEST(GenerateCli, PerplexityWindowsAsTransformersRecipe) {
  const auto m = nibble::AutoModelForCausalLM::from_pretrained(model(), {.quiet = true});
  const auto tok = nibble::Tokenizer::from_pretrained(model());
  const auto text = tok.encode(test::read_bytes(story()), false);
  const int64_t N = static_cast<int64_t>(text.size()), V = m.info().vocab_size;
  for (const auto& [ctx, stride] : std::vector<std::pair<int64_t, int64_t>>{{32, 16}, {32, 31}, {64, 20}}) {
    SCOPED_TRACE("ctx " + std::to_string(ctx) + " stride " + std::to_string(stride));
    double nll = 0;
    int64_t scored = 0, prev_end = 0;
    for (int64_t begin = 0;; begin += stride) {
      const int64_t end = std::min(N, begin + ctx - 1);
      std::vector<int32_t> w{*tok.bos_token_id()};
      w.insert(w.end(), text.begin() + begin, text.begin() + end);
      const auto logits = m.forward(w);
      for (int64_t i = std::max(prev_end, begin); i < end; ++i, ++scored) {
        const float* row =
            logits.data() + (i - begin) * V;  // window row 1 + (i - begin) - 1 predicts text[i]
        double mx = row[0], sum = 0;
        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
        for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
        nll -= row[text[static_cast<size_t>(i)]] - mx - std::log(sum);
      }
      prev_end = end;
      if (end == N) break;
    }
    ASSERT_EQ(scored, N);
    const Out r = nibble_cli("perplexity " + model() + " --file " + story() + " --ctx " +
                             std::to_string(ctx) + " --stride " + std::to_string(stride));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(field(r.out, "tokens"), static_cast<double>(N));
    const double want = std::exp(nll / static_cast<double>(N));
    EXPECT_NEAR(field(r.out, "perplexity"), want, want * 1e-5);
  }
  // more context per scored token (a smaller stride) predicts better
  const double p16 = field(
                   nibble_cli("perplexity " + model() + " --file " + story() + " --ctx 32 --stride 8").out,
                   "perplexity"),
               p31 = field(nibble_cli("perplexity " + model() + " --file " + story() + " --ctx 32").out,
                           "perplexity");
  EXPECT_LT(p16, p31);
  const Out bad = nibble_cli("perplexity " + model() + " --file " + story() + " --ctx 32 --stride 40");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("--stride 40 exceeds the window's text length (31)"), std::string::npos) << bad.err;
}

TEST(GenerateCli, Nf4BeatsFp4AgainstFloat) {
  const std::string base =
      "perplexity " + model() + " --file " + story() + " --reference " + model() + " --load-in-4bit";
  const Out nf4 = nibble_cli(base + " --quant-type nf4"), fp4 = nibble_cli(base + " --quant-type fp4");
  ASSERT_EQ(nf4.code, 0) << nf4.err;
  ASSERT_EQ(fp4.code, 0) << fp4.err;
  const double kl_nf4 = field(nf4.out, "mean KL divergence"), kl_fp4 = field(fp4.out, "mean KL divergence");
  EXPECT_LT(kl_nf4, kl_fp4) << "NF4 should be closer to float32 than FP4 (QLoRA)";
  EXPECT_GT(kl_nf4, 0.0);
  EXPECT_GE(field(nf4.out, "top-1 agreement"), field(fp4.out, "top-1 agreement"));
  RecordProperty("kl_nf4", std::to_string(kl_nf4));
  RecordProperty("kl_fp4", std::to_string(kl_fp4));
}

TEST(GenerateCli, InfoReportsFootprintAndRss) {
  const Out f = nibble_cli("info " + model()),
            q = nibble_cli("info " + model() + " --load-in-4bit --quant-type nf4");
  ASSERT_EQ(f.code, 0) << f.err;
  ASSERT_EQ(q.code, 0) << q.err;
  EXPECT_EQ(field(f.out, "parameters"), 656000);  // 2048*128 tied embedding + 2 layers + norm
  EXPECT_LT(field(q.out, "memory footprint"), 0.5 * field(f.out, "memory footprint"));
  EXPECT_GT(field(q.out, "peak RSS after load"), 0);
  EXPECT_NE(q.out.find("\"bnb_4bit_quant_type\": \"nf4\""), std::string::npos);
  EXPECT_NE(q.out.find("kernels (1 token): "), std::string::npos) << q.out;
  EXPECT_NE(q.out.find("kernels (512 tokens): "), std::string::npos) << q.out;
  // one sequence's KV cache at a Session's default context (max_position_embeddings capped at 8192)
  const auto m = AutoModelForCausalLM::from_pretrained(model(), {.quiet = true});
  const int64_t ctx = std::min<int64_t>(m.max_position_embeddings(), 8192);
  EXPECT_EQ(field(f.out, "kv cache per sequence"), static_cast<double>(m.kv_cache_bytes(ctx)));
  EXPECT_GT(field(f.out, "kv cache per sequence"), 0.0);
}

TEST(GenerateCli, ModelIdFromTheHfCache) {
  test::ClearHubEnv clear;  // the child processes inherit the environment
  test::TempDir cache;
  test::add_cached_snapshot(cache.str(), "org/name", model(), test::fake_commit(1));
  test::ScopedEnv hub("HF_HUB_CACHE", cache.str());
  const Out by_id = nibble_cli("info org/name"), by_dir = nibble_cli("info " + model());
  ASSERT_EQ(by_id.code, 0) << by_id.err;
  EXPECT_EQ(field(by_id.out, "parameters"), 656000);
  EXPECT_EQ(field(by_id.out, "memory footprint"), field(by_dir.out, "memory footprint"));
  // generate reads the model and the tokenizer from the snapshot: the golden greedy text
  const auto g = read_json_file(test::shared_dir() + "/golden/tinystories-656k.json");
  const auto& c = g["cases"][0];
  const Out gen = nibble_cli("generate org/name@" + test::fake_commit(1) + " --prompt \"" +
                             c["prompt"].get<std::string>() + "\" -n 40 -q");
  ASSERT_EQ(gen.code, 0) << gen.err;
  EXPECT_EQ(gen.out, c["greedy_text"].get<std::string>() + "\n");
  // an id that is not there: one line, where it looked, how to fetch it
  const Out miss = nibble_cli("generate org/missing --prompt hi");
  EXPECT_NE(miss.code, 0);
  EXPECT_EQ(miss.err.rfind(
                "nibble: error: org/missing: no such model directory, and not in the HuggingFace cache", 0),
            0u)
      << miss.err;
  EXPECT_NE(miss.err.find(cache / "models--org--missing"), std::string::npos) << miss.err;
  EXPECT_NE(miss.err.find("huggingface-cli download org/missing"), std::string::npos) << miss.err;
  EXPECT_EQ(std::count(miss.err.begin(), miss.err.end(), '\n'), 1) << miss.err;
}

TEST(GenerateCli, ErrorsAreOneLine) {
  Out r = nibble_cli("generate /nonexistent --prompt hi");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err.rfind("nibble: error: /nonexistent: no such model directory", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = nibble_cli("info " + std::string(NIBBLE_SOURCE_DIR) + "/tests");  // a directory, not a model
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("no config.json (not a HuggingFace model directory)"), std::string::npos) << r.err;
  r = nibble_cli("generate " + model() + " --prompt hi --load-in-8bit --llm-int8-threshold=-1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("llm_int8_threshold must be >= 0"), std::string::npos) << r.err;
  std::string long_prompt;  // the example model has 512 positions: about 600 tokens
  for (int i = 0; i < 300; ++i) long_prompt += "a cat ";
  r = nibble_cli("generate " + model() + " --prompt \"" + long_prompt + "\"");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("more than the model's context of 512 positions"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = nibble_cli("generate " + model() + " --prompt hi --do-sample --temperature 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("temperature"), std::string::npos) << r.err;
}
