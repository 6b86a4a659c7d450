// dequantize_4bit_transposed (the 4-bit input gradient's weight) against dequantize_4bit, bit for bit: every
// output dtype, plain and nested absmax, blocksizes smaller and larger than its 64x64 tiles, ragged shapes.
#include <gtest/gtest.h>

#include <random>

#include "kernels/cpu/gemm4.h"
#include "nibble/quantize.h"
#include "nn/linear.h"

namespace nibble {
namespace {

TEST(DequantTransposed, MatchesDequantize4bitBitForBit) {
  std::mt19937 rng(1);
  std::normal_distribution<float> N(0.0f, 1.0f);
  for (auto [rows, cols, bs] : {std::tuple{70, 96, 32}, {64, 128, 64}, {130, 256, 128}, {33, 4096, 4096}, {5, 640, 64}})
    for (bool nested : {false, true})
      for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
        std::vector<float> w(static_cast<size_t>(rows * cols));
        for (auto& v : w) v = N(rng);
        const Tensor W = Tensor::from_vector(DType::Float32, {rows, cols}, w);
        const auto q = quantize_4bit(W, bs, qt, nested);
        const auto view = nn::q4_weights(q.packed, q.state);
        for (DType dt : {DType::Float32, DType::BFloat16, DType::Float16}) {
          SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " bs " + std::to_string(bs) +
                       (nested ? " nested " : " ") + std::string(dtype_name(dt)));
          const Tensor ref = dequantize_4bit(q.packed, q.state, dt);
          const size_t es = dtype_size(dt);
          std::vector<uint8_t> t(static_cast<size_t>(rows * cols) * es);
          kernels::dequantize_4bit_transposed(view, dt, t.data());
          int bad = 0;
          for (int64_t n = 0; n < rows; ++n)
            for (int64_t k = 0; k < cols; ++k)
              bad += std::memcmp(ref.raw() + static_cast<size_t>(n * cols + k) * es,
                                 t.data() + static_cast<size_t>(k * rows + n) * es, es) != 0;
          EXPECT_EQ(bad, 0);
        }
      }
}

}  // namespace
}  // namespace nibble
