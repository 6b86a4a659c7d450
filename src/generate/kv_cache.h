// The KV cache a Session owns: per layer, key and value rows [row][kv_heads * head_dim] (float32), allocated
// once. A layer with a sliding window W keeps only window - 1 + slack rows (the positions a later query can
// still see, plus room for new ones; nn::KVLayer::first tracks which); the others keep a row per position of
// the context. The memory is reserved, not zeroed, so pages are touched only as rows fill (a long context
// costs address space, not RSS, until it is used).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "nn/attention.h"

namespace nibble::generate {

class KVCache {
 public:
  // windows: per layer, its sliding window (0 = full attention); empty = every layer full. slack: rows a
  // bounded layer keeps beyond window - 1 (the most queries one attention chunk runs); 0 = default_slack.
  KVCache(int64_t layers, int64_t width, int64_t capacity, std::span<const int64_t> windows = {},
          int64_t slack = 0);
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  std::span<const nn::KVLayer> layers() const { return views_; }
  int64_t capacity() const { return capacity_; }  // positions: the context length
  size_t bytes() const { return bytes_; }         // what the rows take once filled
  // Whether a sequence cut back to its first n positions can go on from this cache: every bounded layer still
  // holds the positions position n's query sees (else the caller re-runs from position 0).
  bool holds_prefix(int64_t n) const;
  // bytes() of a cache with these arguments, without allocating one.
  static size_t bytes_for(int64_t width, int64_t capacity, std::span<const int64_t> windows, int64_t layers,
                          int64_t slack = 0);
  // A quarter of the window, at least 1: a chunk of W / 4 queries, compaction every W / 4 positions (moving
  // W - 1 rows: about 4 row copies per token).
  static int64_t default_slack(int64_t window) { return std::max<int64_t>(1, window / 4); }
  // Rows a layer with this window keeps (capacity when the window bounds nothing).
  static int64_t rows_for(int64_t window, int64_t capacity, int64_t slack) {
    return window > 0 ? std::min(capacity, window - 1 + (slack > 0 ? slack : default_slack(window)))
                      : capacity;
  }

 private:
  std::unique_ptr<float[]> data_;
  std::vector<nn::KVLayer> views_;
  std::vector<int64_t> windows_;
  std::unique_ptr<int64_t[]> first_;  // per layer (bounded ones use theirs)
  int64_t capacity_ = 0;
  size_t bytes_ = 0;
};

}  // namespace nibble::generate
