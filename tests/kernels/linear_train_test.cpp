// A 4-bit linear layer's input gradient (backward_input: dy @ W through the transposed dequantized weight and
// the dense kernels) against double-precision arithmetic over its dequantized weight, for every compute
// dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/gemm4.h"
#include "nibble/quantize.h"
#include "nn/linear.h"

namespace nibble {
namespace {

TEST(Linear4bitTrain, BackwardInputMatchesTheDequantizedWeight) {
  std::mt19937 rng(9);
  std::normal_distribution<float> Nd(0.0f, 1.0f);
  for (auto [out, in, T] : {std::tuple{96, 128, 20}, {200, 64, 40}, {70, 320, 17}})
    for (auto [dt, tol] :
         {std::pair{DType::Float32, 1e-5}, {DType::BFloat16, 1e-2}, {DType::Float16, 2e-3}}) {
      SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in) + " T " + std::to_string(T) + " " +
                   std::string(dtype_name(dt)));
      std::vector<float> w(static_cast<size_t>(out * in)), bias(static_cast<size_t>(out)),
          x(static_cast<size_t>(T * in)), dy(static_cast<size_t>(T * out));
      for (auto* v : {&w, &bias, &x, &dy})
        for (auto& e : *v) e = Nd(rng);
      Linear4bitSpec spec;
      spec.quant_type = QuantType::NF4;
      spec.double_quant = true;
      spec.compute_dtype = dt;
      const auto lin =
          nn::Linear4bit::quantize(Tensor::from_vector(DType::Float32, {out, in}, w),
                                   Tensor::from_vector(DType::Float32, {out}, bias), spec, "test");
      const std::vector<float> W = lin->dequantized_weight().to_float_vector();
      std::vector<float> dx(static_cast<size_t>(T * in));
      lin->backward_input(dy.data(), T, dx.data());
      double worst_dx = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < in; ++i) {
          double s = 0, mag = 0;
          for (int64_t o = 0; o < out; ++o) {
            const double p = static_cast<double>(dy[static_cast<size_t>(t * out + o)]) *
                             W[static_cast<size_t>(o * in + i)];
            s += p;
            mag += std::abs(p);
          }
          worst_dx = std::max(worst_dx, std::abs(dx[static_cast<size_t>(t * in + i)] - s) / mag);
        }
      EXPECT_LT(worst_dx, tol);
    }
}

// The AVX2 input-gradient kernel (panels straight from the packed rows) against the path it replaces
// (dequantize_4bit_transposed + gemm_dense's reference), per compute dtype; where the CPU has AVX2 it must
// run, not fall back.
TEST(Linear4bitTrain, InputGradKernelMatchesTheTransposedPath) {
  std::mt19937 rng(4);
  std::normal_distribution<float> Nd(0.0f, 1.0f);
  const int64_t N = 70, K = 96, M = 37;  // 70 rows: a partial 256-row panel of the sum; 96: 6 strips
  std::vector<float> w(static_cast<size_t>(N * K)), dy(static_cast<size_t>(M * N));
  for (auto* v : {&w, &dy})
    for (auto& e : *v) e = Nd(rng);
  const Quantized4bit q =
      quantize_4bit(Tensor::from_vector(DType::Float32, {N, K}, w), 32, QuantType::NF4, true);
  const kernels::Q4Weights view = nn::q4_weights(q.packed, q.state);
  for (DType dt : {DType::Float32, DType::BFloat16, DType::Float16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    std::vector<uint8_t> t(static_cast<size_t>(N * K) * dtype_size(dt));
    kernels::dequantize_4bit_transposed(view, dt, t.data());
    std::vector<float> want(static_cast<size_t>(M * K)), got(want.size());
    // the dense reference sums float32 x (dy) against the weights; bfloat16 compute rounds dy first
    std::vector<float> dyr = dy;
    if (dt == DType::BFloat16)
      for (auto& e : dyr) e = bf16_to_float(float_to_bf16(e));
    kernels::gemm_dense(t.data(), dt, K, N, dyr.data(), M, want.data(), kernels::GemmPath::Reference);
    if (!kernels::gemm_path_available(kernels::GemmPath::Avx2, dt)) {
      EXPECT_FALSE(kernels::gemm_4bit_input_grad(view, dy.data(), M, got.data(), dt));
      continue;
    }
    ASSERT_TRUE(kernels::gemm_4bit_input_grad(view, dy.data(), M, got.data(), dt));
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5 * (1 + std::fabs(want[i])));
  }
}

}  // namespace
}  // namespace nibble
