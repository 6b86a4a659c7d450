// AutoModelForCausalLM: load a HuggingFace causal LM (llama, mistral, qwen2), optionally quantizing its
// linear layers to 4-bit as they stream in, or loading a pre-quantized bnb-4bit checkpoint; run, generate,
// save_pretrained, dequantize.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nibble/bitsandbytes_config.h"
#include "nibble/dtype.h"

namespace nibble {

// The model_type values nibble loads: "llama", "mistral", "qwen2".
const std::vector<std::string>& supported_model_types();

// How 4-bit linear layers meet their input. Exact (the default): bitsandbytes' numerics, x in the compute
// dtype and float32 sums. Int8 (opt-in, `--fast-activations int8`): llama.cpp's way, x quantized per block of
// 32 to int8 and the code table to int8, exact integer dot products: faster on CPUs without AVX-512, not
// bitsandbytes' numerics (measure it with `nibble perplexity --reference`). Layers whose shape the int8
// kernels do not take (K or blocksize not a multiple of 32) stay exact.
enum class Activations { Exact, Int8 };

struct FromPretrainedOptions {
  std::optional<BitsAndBytesConfig> quantization_config = std::nullopt;
  std::optional<DType> dtype = std::nullopt;  // unquantized parameters; default: the checkpoint's torch_dtype
  int threads = 0;     // this model's CPU threads (loading, forward, generate, its sessions); 0 = all cores
  bool quiet = false;  // no progress bar / warnings on stderr
  Activations activations = Activations::Exact;
  // A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as peft or `nibble
  // finetune` saves it) applied unmerged on top of the loaded weights, as PeftModel.from_pretrained does.
  std::string adapter = {};
};

struct SavePretrainedOptions {
  // Replace an existing non-empty model directory (one holding config.json and only plain files). The old
  // directory stays in place until the new one is complete, then is swapped out atomically and removed.
  // Without it, a non-empty `dir` is an error.
  bool overwrite = false;
};

struct GenerationConfig {
  int max_new_tokens = 20;
  bool do_sample = false;  // greedy by default, as transformers
  float temperature = 1.0f;
  int top_k = 50;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::vector<int32_t> eos_token_id = {};  // empty: from generation_config.json / config.json
};

struct ModelInfo {
  std::string model_type, architecture;
  int64_t num_parameters = 0;  // as the float model counts them
  int64_t num_layers = 0, hidden_size = 0, vocab_size = 0;
  std::optional<BitsAndBytesConfig> quantization_config;
  DType dtype = DType::Float32;
  std::string adapter;  // FromPretrainedOptions::adapter ("" = none)
};

class AutoModelForCausalLM {
 public:
  // `dir`: a model directory, or a model id in the HuggingFace cache ("ORG/NAME[@REVISION]", read offline;
  // see resolve_model_path in nibble/hub.h).
  static AutoModelForCausalLM from_pretrained(const std::string& dir, const FromPretrainedOptions& opt = {});
  // A model of `config`'s architecture with random weights (transformers' from_config), built in memory and
  // quantized on load if opt asks: benchmarks of real shapes without files.
  static AutoModelForCausalLM from_config(const nlohmann::json& config, const FromPretrainedOptions& opt = {},
                                          uint64_t seed = 0);
  AutoModelForCausalLM(AutoModelForCausalLM&&) noexcept;
  AutoModelForCausalLM& operator=(AutoModelForCausalLM&&) noexcept;
  ~AutoModelForCausalLM();

  // Full causal forward in a fresh one-shot Session: logits [ids.size(), vocab] row-major.
  std::vector<float> forward(const std::vector<int32_t>& ids) const;
  // Returns prompt + new tokens (a one-shot Session; use nibble::Session to keep the KV cache between calls);
  // on_token is called with each new id as it is generated.
  std::vector<int32_t> generate(const std::vector<int32_t>& input_ids, const GenerationConfig& cfg = {},
                                const std::function<void(int32_t)>& on_token = {}) const;
  // Writes a checkpoint transformers loads (bnb-4bit layout when quantized), atomically: `dir` appears
  // only when complete, even if the process is killed. It must not be the directory the model came from.
  void save_pretrained(const std::string& dir, const SavePretrainedOptions& opt = {}) const;
  // Turns every Linear4bit back into a dense Linear of its original dtype.
  void dequantize();
  // peft's merge_and_unload() for the adapter loaded with FromPretrainedOptions::adapter: each adapted layer
  // becomes W + scaling * B @ A (a 4-bit layer dequantized, summed in float32 and quantized again with its
  // own settings); with `dtype`, the merged and all other quantized layers become dense weights of that
  // dtype. Afterwards save_pretrained writes the merged model.
  void merge_and_unload(std::optional<DType> dtype = std::nullopt);
  // transformers' get_memory_footprint(): parameter + buffer bytes.
  size_t memory_footprint() const;
  // Weight bytes one decode step reads: the footprint less the embedding table where only one row of it is
  // read (an untied or quantized lm_head); the bandwidth bound on tokens/s is read bandwidth / this.
  size_t decode_bytes_per_token() const;
  const ModelInfo& info() const;
  int64_t max_position_embeddings() const;
  // Bytes of one Session's KV cache (float32 keys and values) at this context length; a sliding-window layer
  // holds about 1.25 x its window however long the context. ValueError unless context_length > 0.
  size_t kv_cache_bytes(int64_t context_length) const;
  int threads() const;  // FromPretrainedOptions::threads (0 = all cores)
  // The CPU kernel path each linear layer (lm_head included) takes for `tokens` tokens on this machine, with
  // how many layers take it: ("avx2", 15), ... A "reference" entry is a scalar fallback.
  std::vector<std::pair<std::string, int64_t>> kernel_paths(int64_t tokens = 1) const;
  std::vector<int32_t> default_eos_token_ids() const;

  struct Impl;

 private:
  friend class Session;
  friend struct ModelAccess;  // the library's own layers (training) reach the modules through it
  AutoModelForCausalLM();
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
