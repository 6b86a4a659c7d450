// A 4-bit linear layer's input gradient (backward_input: dy @ W through the transposed dequantized weight and the
// dense kernels) against double-precision arithmetic over its dequantized weight, for every compute dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

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

}  // namespace
}  // namespace nibble
