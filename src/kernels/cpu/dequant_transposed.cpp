#include <omp.h>

#include <algorithm>

#include "kernels/cpu/gemm4.h"
#include "nibble/error.h"

namespace nibble::kernels {

void dequantize_4bit_transposed(const Q4Weights& w, DType out, void* dst) {
  if (out != DType::Float32 && out != DType::BFloat16 && out != DType::Float16)
    throw ValueError(std::string("dequantize_4bit_transposed: unsupported output dtype ") + std::string(dtype_name(out)));
  const int64_t N = w.N, K = w.K;
  // Tiles of 64 rows x 64 columns: the rows' packed bytes are read once, the transposed writes stay within a
  // few cache lines per column.
  constexpr int64_t kTile = 64;
  const int64_t row_tiles = (N + kTile - 1) / kTile, col_tiles = (K + kTile - 1) / kTile;
#pragma omp parallel for collapse(2) schedule(static) if (N * K > (1 << 16))
  for (int64_t rt = 0; rt < row_tiles; ++rt)
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t n0 = rt * kTile, n1 = std::min(N, n0 + kTile);
      const int64_t k0 = ct * kTile, k1 = std::min(K, k0 + kTile);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = k0; k < k1;) {
          // the run of this row's elements in one quantization block: its absmax decoded once
          const int64_t i0 = n * K + k, b = i0 / w.blocksize;
          const int64_t run = std::min(k1 - k, (b + 1) * w.blocksize - i0);
          const float am = w.block_absmax(b);
          for (int64_t e = 0; e < run; ++e) {
            // bitsandbytes' dequantize_4bit: code[q] * absmax of the block, in float32, then the output dtype
            const int64_t i = i0 + e;
            const uint8_t byte = w.packed[i >> 1];
            const uint8_t q = (i & 1) ? (byte & 0xF) : (byte >> 4);
            const float v = w.code[q] * am;
            const int64_t o = (k + e) * N + n;
            if (out == DType::Float32)
              static_cast<float*>(dst)[o] = v;
            else if (out == DType::BFloat16)
              static_cast<uint16_t*>(dst)[o] = float_to_bf16(v);
            else
              static_cast<uint16_t*>(dst)[o] = float_to_fp16(v);
          }
          k += run;
        }
    }
}

}  // namespace nibble::kernels
