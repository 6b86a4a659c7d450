#include "synthetic.h"

#include <map>

#include "nibble/error.h"

namespace nibble::cli {

const char* const kSyntheticHelp =
    "random weights of a named shape: llama-7b, llama-3-8b, mistral-7b, tinyllama-1.1b, qwen3-30b-a3b (MoE), "
    "...";

nlohmann::json synthetic_config(const std::string& shape, int64_t layers) {
  struct S {
    int64_t hidden, inter, heads, kv, layers, vocab;
    double theta;
  };
  static const std::map<std::string, S> shapes{
      {"llama-7b", {4096, 11008, 32, 32, 32, 32000, 10000.0}},
      {"llama-13b", {5120, 13824, 40, 40, 40, 32000, 10000.0}},
      {"llama-3-8b", {4096, 14336, 32, 8, 32, 128256, 500000.0}},
      {"mistral-7b", {4096, 14336, 32, 8, 32, 32000, 1000000.0}},
      {"tinyllama-1.1b", {2048, 5632, 32, 4, 22, 32000, 10000.0}},
      {"qwen3-30b-a3b", {2048, 6144, 32, 4, 48, 151936, 1000000.0}},
      {"tiny", {256, 704, 8, 4, 2, 2048, 10000.0}},
  };
  auto it = shapes.find(shape);
  if (it == shapes.end()) {
    std::string names;
    for (const auto& [k, v] : shapes) names += (names.empty() ? "" : ", ") + k;
    throw ValueError("--synthetic: unknown shape '" + shape + "' (known: " + names + ")");
  }
  const S& s = it->second;
  nlohmann::json c{{"model_type", "llama"},
                   {"architectures", {"LlamaForCausalLM"}},
                   {"hidden_size", s.hidden},
                   {"intermediate_size", s.inter},
                   {"num_attention_heads", s.heads},
                   {"num_key_value_heads", s.kv},
                   {"num_hidden_layers", layers > 0 ? layers : s.layers},
                   {"vocab_size", s.vocab},
                   {"max_position_embeddings", 4096},
                   {"rms_norm_eps", 1e-5},
                   {"rope_theta", s.theta},
                   {"tie_word_embeddings", false},
                   {"torch_dtype", "bfloat16"}};
  if (shape == "qwen3-30b-a3b")  // Qwen3-30B-A3B: 128 experts of 768, 8 per token, q/k norms, head_dim 128
    c.update({{"model_type", "qwen3_moe"},
              {"architectures", {"Qwen3MoeForCausalLM"}},
              {"moe_intermediate_size", 768},
              {"num_experts", 128},
              {"num_experts_per_tok", 8},
              {"norm_topk_prob", true},
              {"head_dim", 128},
              {"rms_norm_eps", 1e-6}});
  return c;
}

BitsAndBytesConfig default_synthetic_quantization() {
  return BitsAndBytesConfig{.load_in_4bit = true,
                            .bnb_4bit_compute_dtype = DType::BFloat16,
                            .bnb_4bit_quant_type = "nf4",
                            .bnb_4bit_use_double_quant = true};
}

}  // namespace nibble::cli
