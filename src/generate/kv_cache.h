// The KV cache a Session owns: per layer, key and value rows [position][kv_heads * head_dim] (float32) for a
// fixed number of positions, allocated once. The memory is reserved, not zeroed, so pages are touched only
// as positions fill (a long context costs address space, not RSS, until it is used).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "nn/attention.h"

namespace nibble::generate {

class KVCache {
 public:
  KVCache(int64_t layers, int64_t width, int64_t capacity);
  std::span<const nn::KVLayer> layers() const { return views_; }
  int64_t capacity() const { return capacity_; }

 private:
  std::unique_ptr<float[]> data_;
  std::vector<nn::KVLayer> views_;
  int64_t capacity_ = 0;
};

}  // namespace nibble::generate
