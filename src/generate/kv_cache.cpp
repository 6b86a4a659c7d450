#include "generate/kv_cache.h"

#include <string>

#include "nibble/error.h"

namespace nibble::generate {

KVCache::KVCache(int64_t layers, int64_t width, int64_t capacity) : capacity_(capacity) {
  if (layers <= 0 || width <= 0 || capacity <= 0)
    throw ValueError("KV cache: layers, width and capacity must be positive (got " + std::to_string(layers) +
                     ", " + std::to_string(width) + ", " + std::to_string(capacity) + ")");
  const auto per_layer = static_cast<size_t>(width) * static_cast<size_t>(capacity);
  const size_t n = 2 * static_cast<size_t>(layers) * per_layer;
  data_.reset(new float[n]);  // default-initialized: not touched until written
  views_.resize(static_cast<size_t>(layers));
  for (size_t l = 0; l < views_.size(); ++l)
    views_[l] = {data_.get() + 2 * l * per_layer, data_.get() + (2 * l + 1) * per_layer, capacity};
}

}  // namespace nibble::generate
