#include "generate/kv_cache.h"

#include <algorithm>
#include <string>

#include "nibble/error.h"

namespace nibble::generate {

KVCache::KVCache(int64_t layers, int64_t width, int64_t capacity, std::span<const int64_t> windows,
                 int64_t slack)
    : capacity_(capacity) {
  if (layers <= 0 || width <= 0 || capacity <= 0)
    throw ValueError("KV cache: layers, width and capacity must be positive (got " + std::to_string(layers) +
                     ", " + std::to_string(width) + ", " + std::to_string(capacity) + ")");
  if (!windows.empty() && static_cast<int64_t>(windows.size()) != layers)
    throw ValueError("KV cache: " + std::to_string(windows.size()) + " windows for " +
                     std::to_string(layers) + " layers");
  if (slack < 0) throw ValueError("KV cache: slack must be >= 0, got " + std::to_string(slack));
  windows_.assign(static_cast<size_t>(layers), 0);
  std::copy(windows.begin(), windows.end(), windows_.begin());
  first_ = std::make_unique<int64_t[]>(static_cast<size_t>(layers));
  std::vector<int64_t> rows(static_cast<size_t>(layers), capacity);
  for (size_t l = 0; l < rows.size(); ++l) {
    rows[l] = rows_for(windows_[l], capacity, slack);
    if (rows[l] == capacity) windows_[l] = 0;  // the window bounds nothing within this context
  }
  bytes_ = bytes_for(width, capacity, windows_, layers, slack);  // one definition of the size
  data_.reset(new float[bytes_ / sizeof(float)]);  // default-initialized: not touched until written
  views_.resize(rows.size());
  float* p = data_.get();
  for (size_t l = 0; l < rows.size(); ++l) {
    const size_t n = static_cast<size_t>(width) * static_cast<size_t>(rows[l]);
    views_[l] = {p, p + n, rows[l], windows_[l] > 0 ? &first_[l] : nullptr};
    p += 2 * n;
  }
}

size_t KVCache::bytes_for(int64_t width, int64_t capacity, std::span<const int64_t> windows, int64_t layers,
                          int64_t slack) {
  size_t rows = 0;
  for (int64_t l = 0; l < layers; ++l)
    rows += static_cast<size_t>(rows_for(
        static_cast<size_t>(l) < windows.size() ? windows[static_cast<size_t>(l)] : 0, capacity, slack));
  return 2 * static_cast<size_t>(width) * rows * sizeof(float);
}

bool KVCache::holds_prefix(int64_t n) const {
  if (n == 0) return true;
  for (size_t l = 0; l < windows_.size(); ++l)
    if (windows_[l] > 0 && std::max<int64_t>(0, n - windows_[l] + 1) < first_[l]) return false;
  return true;
}

}  // namespace nibble::generate
