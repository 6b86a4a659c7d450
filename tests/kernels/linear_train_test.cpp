// Training's paths of a 4-bit linear layer against plain arithmetic over its dequantized weight:
// forward_train (blocked GEMM over the transposed weight) and backward_input (dy @ W, in chunks of W's rows),
// for every compute dtype, shapes that cross the kernels' blocks, with a bias.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "nibble/quantize.h"
#include "nn/linear.h"

namespace nibble {
namespace {

TEST(Linear4bitTrain, ForwardTrainAndBackwardInputMatchTheDequantizedWeight) {
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
      std::vector<float> y(static_cast<size_t>(T * out)), dx(static_cast<size_t>(T * in));
      lin->forward_train(x.data(), T, y.data());
      lin->backward_input(dy.data(), T, dx.data());
      double worst_y = 0, worst_dx = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double s = bias[static_cast<size_t>(o)], mag = std::abs(s);
          for (int64_t i = 0; i < in; ++i) {
            const double p =
                static_cast<double>(x[static_cast<size_t>(t * in + i)]) * W[static_cast<size_t>(o * in + i)];
            s += p;
            mag += std::abs(p);
          }
          worst_y = std::max(worst_y, std::abs(y[static_cast<size_t>(t * out + o)] - s) / mag);
        }
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
      EXPECT_LT(worst_y, tol);
      EXPECT_LT(worst_dx, tol);
      // and forward_train agrees with the inference forward as closely
      std::vector<float> yi(y.size());
      lin->forward(x.data(), T, yi.data());
      double d = 0, n = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        d += std::pow(y[i] - yi[i], 2);
        n += std::pow(yi[i], 2);
      }
      EXPECT_LT(std::sqrt(d / n), tol);
    }
}

}  // namespace
}  // namespace nibble
