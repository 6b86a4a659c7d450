#include <omp.h>

#include <algorithm>

#include "kernels/cpu/gemm4.h"
#include "nibble/error.h"

namespace nibble::kernels {

namespace {
// Tiles of 64 rows x 64 columns: the rows' packed bytes are read once, the transposed writes stay within a
// few cache lines per column. Each run of a row inside one quantization block decodes its absmax once.
template <typename E, typename Convert>
void transposed_tiles(const Q4Weights& w, E* dst, Convert convert) {
  const int64_t N = w.N, K = w.K;
  constexpr int64_t kTile = 64;
  const int64_t row_tiles = (N + kTile - 1) / kTile, col_tiles = (K + kTile - 1) / kTile;
#pragma omp parallel for collapse(2) schedule(static) if (N * K > (1 << 16))
  for (int64_t rt = 0; rt < row_tiles; ++rt)
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t n0 = rt * kTile, n1 = std::min(N, n0 + kTile);
      const int64_t k0 = ct * kTile, k1 = std::min(K, k0 + kTile);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = k0; k < k1;) {
          const int64_t i0 = n * K + k, b = i0 / w.blocksize;
          const int64_t run = std::min(k1 - k, (b + 1) * w.blocksize - i0);
          const float am = w.block_absmax(b);
          for (int64_t e = 0; e < run; ++e) {
            // bitsandbytes' dequantize_4bit: code[q] * absmax of the block, in float32, then the output dtype
            const int64_t i = i0 + e;
            const uint8_t byte = w.packed[i >> 1];
            const uint8_t q = (i & 1) ? (byte & 0xF) : (byte >> 4);
            dst[(k + e) * N + n] = convert(w.code[q] * am);
          }
          k += run;
        }
    }
}
}  // namespace

void dequantize_4bit_transposed(const Q4Weights& w, DType out, void* dst) {
  if (out == DType::Float32)
    transposed_tiles(w, static_cast<float*>(dst), [](float v) { return v; });
  else if (out == DType::BFloat16)
    transposed_tiles(w, static_cast<uint16_t*>(dst), [](float v) { return float_to_bf16(v); });
  else if (out == DType::Float16)
    transposed_tiles(w, static_cast<uint16_t*>(dst), [](float v) { return float_to_fp16(v); });
  else
    throw ValueError("dequantize_4bit_transposed: unsupported output dtype " + std::string(dtype_name(out)));
}

}  // namespace nibble::kernels
