// One matrix transpose for the training and backward paths (nn's transposed weights, LoRA's A^T / B^T,
// attention's per-head operands, the LoRA weight gradients' padded operands).
#pragma once
#include <algorithm>
#include <cstdint>

namespace nibble::kernels {

// src [R, C] of element type E transposed into dst: dst[c * ld + r] for ld >= R (default R; the columns of
// each dst row past R are left as they are), in 64 x 64 tiles that keep both sides in cache. Threaded when
// large; called inside a parallel region it runs on the calling thread.
template <typename E>
void transpose(const E* src, int64_t R, int64_t C, E* dst, int64_t ld = 0) {
  if (ld == 0) ld = R;
  constexpr int64_t kTile = 64;
#pragma omp parallel for collapse(2) if (R * C > (1 << 16))
  for (int64_t r0 = 0; r0 < R; r0 += kTile)
    for (int64_t c0 = 0; c0 < C; c0 += kTile)
      for (int64_t r = r0; r < std::min(R, r0 + kTile); ++r)
        for (int64_t c = c0; c < std::min(C, c0 + kTile); ++c) dst[c * ld + r] = src[r * C + c];
}

}  // namespace nibble::kernels
