// Qwen3-MoE's sparse block (issue 13): routing as transformers' Qwen3MoeTopKRouter (softmax in float32, top
// k, renormalized when norm_topk_prob) and the weighted sum of the chosen experts, checked against the
// experts run one by one; quantize-on-load turns every expert's linears into 4-bit ones (the router stays
// dense) and save_pretrained + from_pretrained gives the same logits; batched decode gives each session its
// logits alone; bad configs and checkpoints are clear errors. (Logits against transformers: FamilyGolden,
// qwen3-moe*.)
#include "nn/moe.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
std::string family(const std::string& name) {
  return test::golden_dir() + "/checkpoints/families/" + name;
}

Tensor random_matrix(int64_t rows, int64_t cols, unsigned seed, float scale = 0.5f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (auto& e : v) e = nd(rng);
  return Tensor::from_vector(DType::Float32, {rows, cols}, v);
}

nn::GatedMLP expert(int64_t H, int64_t I, unsigned seed) {
  return nn::GatedMLP(std::make_unique<nn::Linear>(random_matrix(I, H, seed), std::nullopt),
                      std::make_unique<nn::Linear>(random_matrix(I, H, seed + 1), std::nullopt),
                      std::make_unique<nn::Linear>(random_matrix(H, I, seed + 2), std::nullopt));
}
}  // namespace

TEST(SparseMoE, RoutesEachTokenToItsTopKExpertsWeightedBySoftmax) {
  const int64_t H = 8, I = 6, E = 5, T = 7;
  const Tensor router = random_matrix(E, H, 100, 1.0f);
  const Tensor x = random_matrix(T, H, 200, 1.0f);
  for (bool norm : {false, true}) {
    for (int64_t k : {1, 2, 5}) {
      SCOPED_TRACE("top " + std::to_string(k) + (norm ? " renormalized" : ""));
      std::vector<nn::GatedMLP> ex;
      for (int64_t e = 0; e < E; ++e) ex.push_back(expert(H, I, static_cast<unsigned>(10 * e + 1)));
      const nn::SparseMoE moe(router, std::move(ex), k, norm);
      nn::Workspace ws;
      std::vector<float> out(static_cast<size_t>(T * H));
      moe.forward(x.data<float>(), T, ws, out.data());
      for (int64_t t = 0; t < T; ++t) {
        // the expected routing, in double
        std::vector<double> p(static_cast<size_t>(E));
        double mx = -1e30, sum = 0;
        for (int64_t e = 0; e < E; ++e) {
          double z = 0;
          for (int64_t h = 0; h < H; ++h)
            z += double(router.data<float>()[e * H + h]) * x.data<float>()[t * H + h];
          p[static_cast<size_t>(e)] = z;
          mx = std::max(mx, z);
        }
        for (auto& v : p) sum += (v = std::exp(v - mx));
        for (auto& v : p) v /= sum;
        std::vector<int64_t> order(static_cast<size_t>(E));
        for (int64_t e = 0; e < E; ++e) order[static_cast<size_t>(e)] = e;
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)];
        });
        double chosen = 0;
        for (int64_t i = 0; i < k; ++i) chosen += p[static_cast<size_t>(order[static_cast<size_t>(i)])];
        std::vector<double> want(static_cast<size_t>(H), 0.0);
        for (int64_t i = 0; i < k; ++i) {
          const int64_t e = order[static_cast<size_t>(i)];
          const double w = p[static_cast<size_t>(e)] / (norm ? chosen : 1.0);
          std::vector<float> y(static_cast<size_t>(H));
          moe.experts[static_cast<size_t>(e)].forward(x.data<float>() + t * H, 1, ws, y.data());
          for (int64_t h = 0; h < H; ++h) want[static_cast<size_t>(h)] += w * y[static_cast<size_t>(h)];
        }
        for (int64_t h = 0; h < H; ++h)
          EXPECT_NEAR(out[static_cast<size_t>(t * H + h)], want[static_cast<size_t>(h)],
                      1e-5 * (1 + std::fabs(want[static_cast<size_t>(h)])))
              << "token " << t << " h " << h;
      }
    }
  }
  std::vector<nn::GatedMLP> two;
  two.push_back(expert(H, I, 1));
  two.push_back(expert(H, I, 2));
  EXPECT_THROW(nn::SparseMoE(router, std::move(two), 1, false), ValueError);  // router rows != experts
}

TEST(Qwen3Moe, QuantizeOnLoadQuantizesEveryExpertAndSavesWhatItLoads) {
  FromPretrainedOptions o{.quiet = true};
  o.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                             .bnb_4bit_compute_dtype = DType::BFloat16,
                                             .bnb_4bit_quant_type = "nf4",
                                             .bnb_4bit_use_double_quant = true};
  const auto m = AutoModelForCausalLM::from_pretrained(family("qwen3-moe"), o);
  test::TempDir d;
  m.save_pretrained(d / "q");
  const auto f = SafetensorsFile::open(d / "q/model.safetensors");
  for (int64_t layer : {0, 2})
    for (int64_t e = 0; e < 4; ++e)
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        const std::string w = "model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(e) +
                              "." + proj + ".weight";
        EXPECT_EQ(f.get(w).dtype(), DType::UInt8) << w;
        EXPECT_TRUE(f.contains(w + ".absmax")) << w;
      }
  // the router stays a dense float32 matrix; layer 1 is dense (mlp_only_layers)
  EXPECT_EQ(f.get("model.layers.0.mlp.gate.weight").dtype(), DType::Float32);
  EXPECT_EQ(f.get("model.layers.0.mlp.gate.weight").shape(), (Shape{4, 32}));
  EXPECT_FALSE(f.contains("model.layers.1.mlp.gate.weight"));
  EXPECT_TRUE(f.contains("model.layers.1.mlp.gate_proj.weight.absmax"));
  const std::vector<int32_t> ids{1, 17, 99, 100, 3, 45, 45, 125, 12, 7};
  const auto a = m.forward(ids);
  const auto b = AutoModelForCausalLM::from_pretrained(d / "q", {.quiet = true}).forward(ids);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  // and it is a different model from the float32 one (the experts really are 4-bit)
  const auto full = AutoModelForCausalLM::from_pretrained(family("qwen3-moe"), {.quiet = true}).forward(ids);
  EXPECT_GT(test::max_abs_diff(a, full), 1e-3);
  EXPECT_EQ(
      m.info().num_parameters,
      AutoModelForCausalLM::from_pretrained(family("qwen3-moe"), {.quiet = true}).info().num_parameters);
}

TEST(Qwen3Moe, BadConfigsAndCheckpointsAreClearErrors) {
  const std::string src = family("qwen3-moe");
  auto with = [&](const test::TempDir& d, const std::function<void(nlohmann::json&)>& edit) {
    fs::copy(src, d.str(), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    nlohmann::json c = nlohmann::json::parse(test::read_bytes(d / "config.json"));
    edit(c);
    test::write_bytes(d / "config.json", c.dump());
    return d.str();
  };
  auto expect_error = [](const std::string& dir, const std::string& needle) {
    try {
      (void)AutoModelForCausalLM::from_pretrained(dir, {.quiet = true});
      ADD_FAILURE() << "loaded: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    test::TempDir d;
    expect_error(with(d, [](nlohmann::json& c) { c["num_experts_per_tok"] = 9; }), "num_experts_per_tok");
  }
  {
    test::TempDir d;
    expect_error(with(d, [](nlohmann::json& c) { c["num_local_experts"] = 0; }), "num_local_experts");
  }
  {
    test::TempDir d;  // more experts than the checkpoint holds: the first missing one is named
    expect_error(with(d, [](nlohmann::json& c) { c["num_local_experts"] = 5; }), "mlp.experts.4.gate_proj");
  }
  {
    test::TempDir d;  // an expert of the wrong width
    expect_error(with(d, [](nlohmann::json& c) { c["moe_intermediate_size"] = 12; }), "expected [12, 32]");
  }
  {
    test::TempDir d;
    expect_error(with(d, [](nlohmann::json& c) { c["mlp_only_layers"] = {0, "one"}; }), "mlp_only_layers");
  }
}
