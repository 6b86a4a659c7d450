#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "nibble/error.h"
#include "nibble/quantize.h"

using namespace nibble;

namespace {
Tensor randn(Shape shape, DType dt, unsigned seed = 3) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(DType::Float32, std::move(shape), v).to(dt);
}
std::map<std::string, Tensor> to_map(const NamedTensors& d) {
  std::map<std::string, Tensor> m;
  for (const auto& [k, v] : d) m["model.layers.0.mlp.up_proj.weight." + k] = v;
  return m;
}
void expect_error(const std::map<std::string, Tensor>& d, const std::string& fragment) {
  try {
    QuantState::from_dict(d, "model.layers.0.mlp.up_proj");
    FAIL() << "no error; wanted " << fragment;
  } catch (const FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.layers.0.mlp.up_proj"), std::string::npos) << m;
    EXPECT_NE(m.find(fragment), std::string::npos) << m;
  }
}
}  // namespace

TEST(QuantState, RoundTripThroughDict) {
  for (bool dq : {false, true}) {
    const Tensor w = randn({96, 64}, DType::BFloat16);
    const auto q = quantize_4bit(w, 64, QuantType::NF4, dq);
    const QuantState s = QuantState::from_dict(to_map(q.state.as_dict()), "x");
    EXPECT_EQ(s.shape, (Shape{96, 64}));
    EXPECT_EQ(s.dtype, DType::BFloat16);
    EXPECT_EQ(s.nested, dq);
    const Tensor a = dequantize_4bit(q.packed, q.state), b = dequantize_4bit(q.packed, s);
    EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes()));
  }
}

TEST(QuantState, PackedJsonFormat) {
  const auto q = quantize_4bit(randn({4, 64}, DType::Float32), 64, QuantType::NF4, false);
  EXPECT_EQ(q.state.packed_json(),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, 64]})");
  const auto q2 = quantize_4bit(randn({4, 64}, DType::Float16), 32, QuantType::FP4, true);
  const std::string j = q2.state.packed_json();
  EXPECT_EQ(
      j.rfind(
          R"({"quant_type": "fp4", "blocksize": 32, "dtype": "float16", "shape": [4, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )",
          0),
      0u)
      << j;
}

TEST(QuantState, QuantStorageViews) {
  const Tensor w = randn({64, 64}, DType::Float32);
  const auto base = quantize_4bit(w, 64, QuantType::NF4, false, DType::UInt8);
  for (DType st : {DType::Int8, DType::Float16, DType::BFloat16, DType::Float32, DType::Float64}) {
    const auto q = quantize_4bit(w, 64, QuantType::NF4, false, st);
    EXPECT_EQ(q.packed.dtype(), st);
    EXPECT_EQ(q.packed.shape(), (Shape{2048 / static_cast<int64_t>(dtype_size(st)), 1}));
    EXPECT_EQ(0, std::memcmp(q.packed.raw(), base.packed.raw(), 2048));  // same bytes, other view
    const Tensor d = dequantize_4bit(q.packed, q.state);
    EXPECT_EQ(d.shape(), w.shape());
  }
  EXPECT_THROW(quantize_4bit(randn({1, 3}, DType::Float32), 64, QuantType::NF4, false, DType::Float32),
               ValueError);
  EXPECT_THROW(quantize_4bit(w, 64, QuantType::NF4, false, DType::Int32), ValueError);
  EXPECT_THROW(quantize_4bit(w, 48), ValueError);
  EXPECT_THROW(quantize_4bit(w.view(DType::Int32, {64, 64}), 64), ValueError);
}

TEST(QuantState, DequantizeErrorIsSmall) {
  // NF4 error per element is at most half the largest gap of the table times absmax
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const Tensor w = randn({128, 256}, DType::Float32, 9);
    const auto q = quantize_4bit(w, 64, qt, true);
    const Tensor d = dequantize_4bit(q.packed, q.state);
    double err = 0, ref = 0;
    for (int64_t i = 0; i < w.numel(); ++i) {
      err += std::pow(w.data<float>()[i] - d.data<float>()[i], 2);
      ref += std::pow(w.data<float>()[i], 2);
    }
    const double rel = std::sqrt(err / ref);
    EXPECT_LT(rel, qt == QuantType::NF4 ? 0.11 : 0.16) << quant_type_name(qt);
    EXPECT_GT(rel, 0.01);  // it is lossy: a pass-through would be a bug
  }
}

TEST(QuantState, MalformedDictsAreClearErrors) {
  const auto q = quantize_4bit(randn({8, 64}, DType::Float32), 64, QuantType::NF4, true);
  const auto good = to_map(q.state.as_dict());
  const std::string p = "model.layers.0.mlp.up_proj.weight.";
  auto without = [&](const std::string& k) {
    auto d = good;
    d.erase(p + k);
    return d;
  };
  expect_error(without("quant_state.bitsandbytes__nf4"), "missing quant_state");
  expect_error(without("quant_map"), "missing quant_map");
  expect_error(without("nested_quant_map"), "missing nested_quant_map");
  {
    auto d = good;
    d[p + "absmax"] = Tensor::empty(DType::UInt8, {3});
    expect_error(d, "absmax must be uint8 [8]");
  }
  {
    auto d = good;
    d[p + "quant_state.bitsandbytes__nf4"] =
        Tensor::from_vector(DType::UInt8, {5}, std::vector<uint8_t>{'{', '"', 'a', 'b', 'c'});
    expect_error(d, "valid JSON");
  }
  {
    auto d = good;
    const std::string js = R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [8, 64]})";
    d[p + "quant_state.bitsandbytes__nf4"] =
        Tensor::from_bytes(DType::UInt8, {static_cast<int64_t>(js.size())},
                           {reinterpret_cast<const uint8_t*>(js.data()), js.size()});
    expect_error(d, "does not match");
  }
  {
    auto d = good;
    const std::string js = R"({"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [8, 64]})";
    d[p + "quant_state.bitsandbytes__nf4"] =
        Tensor::from_bytes(DType::UInt8, {static_cast<int64_t>(js.size())},
                           {reinterpret_cast<const uint8_t*>(js.data()), js.size()});
    expect_error(d, "'blocksize' is 48");
  }
  EXPECT_THROW(dequantize_4bit(Tensor::empty(DType::UInt8, {10, 1}), q.state), FormatError);
}

TEST(Blockwise8, RoundTripAndMap) {
  const auto map = create_dynamic_map();
  ASSERT_EQ(map.size(), 256u);
  EXPECT_TRUE(std::is_sorted(map.begin(), map.end()));
  EXPECT_EQ(map.back(), 1.0f);
  EXPECT_EQ(map.front(), -map[254]);  // -0.9925 .. 0.9925 and 1.0
  const Tensor x = randn({1000}, DType::Float32);
  const auto q = quantize_blockwise(x, 256);
  const Tensor d = dequantize_blockwise(q);
  for (int64_t i = 0; i < x.numel(); ++i)
    EXPECT_NEAR(d.data<float>()[i], x.data<float>()[i], 0.02 * q.absmax.data<float>()[i / 256]);
}
