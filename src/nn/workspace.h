// Scratch activations a forward pass reuses between calls: each slot grows to the largest size asked of it
// and is never shrunk, so a decode loop allocates nothing after its first step.
#pragma once
#include <cstddef>
#include <vector>

namespace nibble::nn {

class Workspace {
 public:
  // Slot `slot` with room for at least n floats (contents unspecified).
  float* get(size_t slot, size_t n) {
    if (slots_.size() <= slot) slots_.resize(slot + 1);
    if (slots_[slot].size() < n) slots_[slot].resize(n);
    return slots_[slot].data();
  }

 private:
  std::vector<std::vector<float>> slots_;
};

}  // namespace nibble::nn
