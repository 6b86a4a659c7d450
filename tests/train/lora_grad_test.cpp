// The LoRA backward pass against finite differences of the loss, over dense and 4-bit bases, every compute
// dtype, grouped-query and sliding-window attention, dropout and gradient checkpointing.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "models/llama.h"
#include "models/tensor_source.h"
#include "nibble/error.h"
#include "train/lora_model.h"

namespace nibble {
namespace {

nlohmann::json tiny_config(const std::string& type = "llama", int64_t window = 0) {
  auto j =
      nlohmann::json::parse(R"({"hidden_size": 64, "intermediate_size": 96, "max_position_embeddings": 64,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32", "vocab_size": 97})");
  j["model_type"] = type;
  if (window > 0) j["sliding_window"] = window;
  return j;
}

struct Setup {
  std::unique_ptr<models::LlamaModel> model;
  std::unique_ptr<train::LoraModel> lora;
  std::vector<int32_t> tokens;
};

Setup make(const nlohmann::json& cfg, std::optional<DType> compute, const train::LoraSpec& spec) {
  Setup s;
  models::LoadOptions o;
  o.quiet = true;
  if (compute) {
    BitsAndBytesConfig q;
    q.load_in_4bit = true;
    q.bnb_4bit_quant_type = "nf4";
    q.bnb_4bit_use_double_quant = true;
    q.bnb_4bit_compute_dtype = *compute;
    o.quant = q;
  }
  s.model = std::make_unique<models::LlamaModel>(cfg, models::RandomSource(cfg, DType::Float32, 7), o);
  s.lora = std::make_unique<train::LoraModel>(*s.model, spec, 3);
  // B away from zero so that A's gradients are not zero and B's path is exercised
  std::mt19937 rng(11);
  std::normal_distribution<float> N(0.0f, 0.5f);
  for (auto& m : s.lora->modules())
    for (auto& b : m.lin->B) b = N(rng);
  std::uniform_int_distribution<int32_t> id(0, 96);
  for (int i = 0; i < 2 * 12; ++i) s.tokens.push_back(id(rng));
  return s;
}

// The directional derivative of the loss along random directions, by central differences, against the
// gradient's dot product with them.
void check_gradients(Setup& s, uint64_t seed, double tol) {
  auto& lora = *s.lora;
  lora.zero_grad();
  const double loss = lora.forward_backward(s.tokens, 2, 12, 1.0, seed);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(lora.grad_norm(), 0.0);
  std::mt19937 rng(5);
  std::normal_distribution<float> N(0.0f, 1.0f);
  for (int dir = 0; dir < 4; ++dir) {
    // a direction over all parameters, or (dir 1, 2) over the A's / the B's alone
    std::vector<std::vector<float>> vA, vB;
    double norm2 = 0;
    for (auto& m : lora.modules()) {
      vA.emplace_back(m.lin->A.size());
      vB.emplace_back(m.lin->B.size());
      for (auto& e : vA.back())
        if (dir != 2) {
          e = N(rng);
          norm2 += e * e;
        }
      for (auto& e : vB.back())
        if (dir != 1) {
          e = N(rng);
          norm2 += e * e;
        }
    }
    // a unit direction: the step h moves the parameters by h in all (the loss is far from linear over larger
    // moves: gate and up multiply)
    double dot = 0;
    for (size_t k = 0; k < vA.size(); ++k) {
      for (size_t i = 0; i < vA[k].size(); ++i)
        dot += lora.modules()[k].dA[i] * (vA[k][i] /= std::sqrt(norm2));
      for (size_t i = 0; i < vB[k].size(); ++i)
        dot += lora.modules()[k].dB[i] * (vB[k][i] /= std::sqrt(norm2));
    }
    const float h = 2e-3f;
    auto shifted = [&](float sign) {
      for (size_t k = 0; k < lora.modules().size(); ++k) {
        auto& m = lora.modules()[k];
        for (size_t i = 0; i < m.lin->A.size(); ++i) m.lin->A[i] += sign * h * vA[k][i];
        for (size_t i = 0; i < m.lin->B.size(); ++i) m.lin->B[i] += sign * h * vB[k][i];
      }
      const double l = lora.forward_backward(s.tokens, 2, 12, 0.0, seed);  // loss_scale 0: grads unchanged
      for (size_t k = 0; k < lora.modules().size(); ++k) {
        auto& m = lora.modules()[k];
        for (size_t i = 0; i < m.lin->A.size(); ++i) m.lin->A[i] -= sign * h * vA[k][i];
        for (size_t i = 0; i < m.lin->B.size(); ++i) m.lin->B[i] -= sign * h * vB[k][i];
      }
      return l;
    };
    const double fd = (shifted(1) - shifted(-1)) / (2.0 * h);
    EXPECT_NEAR(fd, dot, tol * std::abs(dot) + 1e-4) << "direction " << dir;
  }
}

train::LoraSpec spec(double dropout = 0) {
  train::LoraSpec s;
  s.r = 4;
  s.alpha = 8;
  s.dropout = dropout;
  s.target_modules = {"all-linear"};
  return s;
}

TEST(LoraGrad, DenseFloat32) {
  auto s = make(tiny_config(), std::nullopt, spec());
  check_gradients(s, 0, 2e-2);
}

TEST(LoraGrad, NF4Float32Compute) {
  auto s = make(tiny_config(), DType::Float32, spec());
  check_gradients(s, 0, 2e-2);
}

TEST(LoraGrad, NF4BFloat16AndFloat16Compute) {
  // x rounded to 16 bits before each 4-bit product makes the loss a step function at the scale finite
  // differences need; the same quantized weights with float32 compute (checked above) are the reference
  auto ref = make(tiny_config(), DType::Float32, spec());
  ref.lora->forward_backward(ref.tokens, 2, 12, 1.0, 0);
  for (auto [dt, tol] : {std::pair{DType::BFloat16, 3e-2}, {DType::Float16, 4e-3}}) {
    auto s = make(tiny_config(), dt, spec());
    s.lora->forward_backward(s.tokens, 2, 12, 1.0, 0);
    double diff = 0, norm = 0;
    for (size_t k = 0; k < s.lora->modules().size(); ++k)
      for (auto [g, r] : {std::pair{&s.lora->modules()[k].dA, &ref.lora->modules()[k].dA},
                          {&s.lora->modules()[k].dB, &ref.lora->modules()[k].dB}})
        for (size_t i = 0; i < g->size(); ++i) {
          diff += std::pow((*g)[i] - (*r)[i], 2);
          norm += std::pow((*r)[i], 2);
        }
    EXPECT_LT(std::sqrt(diff / norm), tol) << dtype_name(dt);
    EXPECT_GT(std::sqrt(diff / norm), 0.0) << dtype_name(dt) << ": the compute dtype changed nothing";
  }
}

TEST(LoraGrad, SlidingWindowMistral) {
  auto s = make(tiny_config("mistral", 5), DType::Float32, spec());
  check_gradients(s, 0, 2e-2);
}

TEST(LoraGrad, Dropout) {
  auto s = make(tiny_config(), DType::Float32, spec(0.3));
  check_gradients(s, 42, 2e-2);
}

TEST(LoraGrad, SomeTargetsOnly) {
  train::LoraSpec sp = spec();
  sp.target_modules = {"q_proj", "down_proj"};
  auto s = make(tiny_config(), DType::Float32, sp);
  ASSERT_EQ(s.lora->modules().size(), 4u);
  EXPECT_EQ(s.lora->modules()[0].name, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(s.lora->modules()[1].name, "model.layers.0.mlp.down_proj");
  check_gradients(s, 0, 2e-2);
}

TEST(LoraGrad, EachModuleAlone) {
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
    SCOPED_TRACE(m);
    train::LoraSpec sp = spec();
    sp.target_modules = {m};
    auto s = make(tiny_config(), std::nullopt, sp);
    check_gradients(s, 0, 2e-2);
  }
}

TEST(LoraGrad, CheckpointingGivesTheSameGradients) {
  auto a = make(tiny_config(), DType::Float32, spec(0.1));
  auto b = make(tiny_config(), DType::Float32, spec(0.1));
  b.lora->gradient_checkpointing = true;
  const double la = a.lora->forward_backward(a.tokens, 2, 12, 1.0, 9);
  const double lb = b.lora->forward_backward(b.tokens, 2, 12, 1.0, 9);
  EXPECT_EQ(la, lb);
  for (size_t k = 0; k < a.lora->modules().size(); ++k) {
    EXPECT_EQ(a.lora->modules()[k].dA, b.lora->modules()[k].dA) << k;
    EXPECT_EQ(a.lora->modules()[k].dB, b.lora->modules()[k].dB) << k;
  }
}

TEST(LoraGrad, LossMatchesTheInferenceForward) {
  // the training forward's loss equals the cross-entropy of the model's own (inference) logits
  auto s = make(tiny_config(), DType::Float32, spec());
  const double loss = s.lora->loss(std::span(s.tokens).first(12), 1, 12);
  std::vector<nn::KVLayer> kv;
  std::vector<std::vector<float>> store;
  const int64_t W = s.model->kv_width();
  for (int64_t l = 0; l < s.model->num_layers(); ++l) {
    store.emplace_back(static_cast<size_t>(2 * 12 * W));
    kv.push_back({store.back().data(), store.back().data() + 12 * W, 12});
  }
  nn::Workspace ws;
  const int64_t V = s.model->vocab_size();
  std::vector<float> logits(static_cast<size_t>(12 * V));
  s.model->forward(std::span(s.tokens).first(12), 0, kv, ws, 0, logits.data());
  double total = 0;
  for (int t = 0; t < 11; ++t) {
    const float* z = logits.data() + t * V;
    double mx = z[0], sum = 0;
    for (int64_t j = 0; j < V; ++j) mx = std::max<double>(mx, z[j]);
    for (int64_t j = 0; j < V; ++j) sum += std::exp(z[j] - mx);
    total += std::log(sum) + mx - z[s.tokens[static_cast<size_t>(t + 1)]];
  }
  EXPECT_NEAR(loss, total / 11, 1e-5);
}

TEST(LoraGrad, UnknownTargetIsAnError) {
  train::LoraSpec sp = spec();
  sp.target_modules = {"q_proj", "qkv"};
  EXPECT_THROW(make(tiny_config(), std::nullopt, sp), ValueError);
}

}  // namespace
}  // namespace nibble
