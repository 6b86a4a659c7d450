// What every decoder family offers the generate layer: a forward over new tokens that reads and extends a KV
// cache it does not own, its state dict for save_pretrained, and the facts sessions and reports need.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nibble/bitsandbytes_config.h"
#include "nibble/tensor.h"
#include "nn/attention.h"
#include "nn/workspace.h"

namespace nibble::models {

// One sequence of a batched step: its new tokens at positions start .. start + ids.size() - 1 over its own
// cache (one KVLayer per layer).
struct SequenceStep {
  std::span<const int32_t> ids;
  int64_t start = 0;
  std::span<const nn::KVLayer> kv;
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  // Runs ids at positions start .. start + n - 1 (the cache holds 0 .. start - 1), writing their keys and
  // values into kv (one KVLayer per layer). Logits of the new positions first_logit .. n - 1 (0: all, n - 1:
  // only the last) go to `logits` ([rows, vocab]). Scratch comes from ws, which the caller keeps between
  // calls.
  virtual void forward(std::span<const int32_t> ids, int64_t start, std::span<const nn::KVLayer> kv,
                       nn::Workspace& ws, int64_t first_logit, float* logits) const = 0;
  // Several sequences in one pass (continuous batching): the linear layers see all their tokens at once, so
  // each weight is read once for all; attention runs per sequence over its own cache. The logits of each
  // sequence's last token go to logits[s * vocab]. Under kernels' row-invariant mode (the caller's scope),
  // each sequence's results do not depend on the others.
  virtual void forward_batch(std::span<const SequenceStep> seqs, nn::Workspace& ws, float* logits) const = 0;

  virtual int64_t num_layers() const = 0;
  virtual int64_t kv_width() const = 0;  // kv_heads * head_dim: floats per cache row
  // Per layer, the sliding window of its attention (0 = full causal; empty = every layer full): the cache of
  // a windowed layer need only hold the last window - 1 positions between calls (nn::KVLayer::first).
  virtual std::vector<int64_t> kv_windows() const { return {}; }
  virtual int64_t vocab_size() const = 0;
  virtual int64_t hidden_size() const = 0;
  virtual int64_t max_position_embeddings() const = 0;
  // True if a call over positions start .. end - 1 needs the cached positions 0 .. start - 1 turned otherwise
  // than they were (Phi-3's longrope crossing its original length): the caller then re-runs them all.
  virtual bool rotation_changes(int64_t start, int64_t end) const {
    (void)start;
    (void)end;
    return false;
  }

  virtual NamedTensors state_dict() const = 0;
  virtual size_t memory_footprint() const = 0;
  virtual size_t decode_bytes_per_token() const = 0;
  virtual int64_t num_parameters() const = 0;  // float-model count (quantized weights count their full shape)
  virtual void dequantize() = 0;
  virtual bool quantized() const = 0;
  // How many of the model's linear layers (lm_head included) run on each kernel path for T tokens.
  virtual std::map<std::string, int64_t> kernel_paths(int64_t T) const = 0;
  // The quantization config the weights carry (pre-quantized checkpoint or quantize-on-load).
  virtual const std::optional<BitsAndBytesConfig>& quantization_config() const = 0;
};

}  // namespace nibble::models
