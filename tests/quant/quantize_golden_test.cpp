// nibble's 4-bit and 8-bit quantization against real bitsandbytes output (tests/golden/make_bnb_golden.py,
// bitsandbytes on CPU). nibble produces data as bitsandbytes' CUDA kernels do (spec/bnb-4bit.md); where the
// CPU backend that made the golden files differs from CUDA, the test checks the spec's CUDA rule instead and
// says why at that line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "nibble/files.h"
#include "kernels/cpu/reference.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "test_util.h"

using namespace nibble;

namespace {

struct Golden {
  SafetensorsFile file;
  nlohmann::json meta;
};

const Golden& golden() {
  static const Golden g{SafetensorsFile::open(test::golden_dir() + "/bnb_4bit.safetensors"),
                        nlohmann::json::parse(read_text_file(test::golden_dir() + "/bnb_4bit.json"))};
  return g;
}

int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = INT32_MIN - ia;
  if (ib < 0) ib = INT32_MIN - ib;
  return std::llabs(static_cast<int64_t>(ia) - ib);
}

std::map<std::string, Tensor> state_dict_of(const std::string& name) {
  std::map<std::string, Tensor> d;
  for (const auto& t : golden().file.tensors())
    if (t.name.rfind(name + ".", 0) == 0) {
      const std::string k = t.name.substr(name.size() + 1);
      if (k != "input" && k != "packed" && k != "dequantized") d[k] = golden().file.get(t.name);
    }
  return d;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

class Bnb4bitGolden : public ::testing::TestWithParam<int> {};

}  // namespace

TEST(Bnb4bitGoldenSuite, HasCases) {
  EXPECT_GE(golden().meta["cases"].size(), 20u);
}

TEST_P(Bnb4bitGolden, MatchesBitsandbytes) {
  const auto& c = golden().meta["cases"][static_cast<size_t>(GetParam())];
  const std::string name = c["name"];
  SCOPED_TRACE(name);
  const auto& f = golden().file;
  const Tensor input = f.get(name + ".input");
  const Tensor bnb_packed = f.get(name + ".packed");
  const int64_t bs = c["blocksize"];
  const QuantType qt = parse_quant_type(c["quant_type"].get<std::string>());
  const bool dq = c["double_quant"];
  const QuantState bnb_state = QuantState::from_dict(state_dict_of(name), name);

  const Quantized4bit q = quantize_4bit(input, bs, qt, dq);
  ASSERT_EQ(q.packed.shape(), bnb_packed.shape());
  EXPECT_EQ(q.state.shape, bnb_state.shape);
  EXPECT_EQ(q.state.dtype, bnb_state.dtype);
  EXPECT_TRUE(same_bytes(q.state.code, bnb_state.code)) << "quant_map";

  // absmax: exact without double quant
  const std::vector<float> x = input.to_float_vector();
  const int64_t n = input.numel();
  if (!dq) {
    EXPECT_TRUE(same_bytes(q.state.absmax, bnb_state.absmax)) << "absmax";
  } else {
    // offset = torch's float32 mean on the golden device vs our exactly-rounded mean: within one ulp
    EXPECT_LE(ulp_distance(q.state.offset, bnb_state.offset), 1)
        << q.state.offset << " vs " << bnb_state.offset;
    // the dynamic map's last bits depend on torch.linspace's evaluation: within one ulp per entry
    for (int i = 0; i < 256; ++i)
      EXPECT_LE(ulp_distance(q.state.nested_code.data<float>()[i], bnb_state.nested_code.data<float>()[i]), 1)
          << i;
    // nested codes: bitsandbytes' CPU 8-bit quantizer rounds through a lookup table and misses the nearest
    // code for a few values; CUDA (and nibble) take the exact nearest. Re-quantize the golden absmax with the
    // golden map and offset through nibble's CUDA-rule quantizer: each code must be bnb's, or strictly
    // nearer.
    const int64_t nb = bnb_state.num_blocks();
    Tensor bnb_fp_absmax = f.get(name + ".absmax");  // uint8 codes
    int differ = 0;
    // reconstruct bnb's float absmax before double quantization is not possible from the file, so check that
    // nibble's nested codes decode to within one code step of bitsandbytes' decoded absmax
    for (int64_t i = 0; i < nb; ++i) {
      const uint8_t a = q.state.absmax.data<uint8_t>()[i], b = bnb_fp_absmax.data<uint8_t>()[i];
      if (a != b) {
        ++differ;
        EXPECT_LE(std::abs(static_cast<int>(a) - static_cast<int>(b)), 1) << "block " << i;
      }
    }
    EXPECT_LE(differ, std::max<int64_t>(2, nb / 100)) << "nested codes differing from bitsandbytes CPU";
    // and nibble's nested codes are the exact nearest entries of its stored map for its stored offset
    const float* map = q.state.nested_code.data<float>();
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0.0f;
      for (int64_t i = b * bs; i < std::min(n, (b + 1) * bs); ++i)
        amax = std::max(amax, std::fabs(x[static_cast<size_t>(i)]));
      const float y = (amax - q.state.offset) * (1.0f / q.state.nested_absmax.data<float>()[b / 256]);
      const float d = std::fabs(map[q.state.absmax.data<uint8_t>()[b]] - y);
      for (int k = 0; k < 256; ++k) ASSERT_LE(d, std::fabs(map[k] - y)) << "block " << b;
    }
  }

  // 4-bit codes: element-exact, except where bitsandbytes' CPU backend is not its CUDA kernel (spec):
  //  - an all-zero block: CUDA computes 0 * (1/0) = NaN, every comparison is false, code 0; the CPU backend
  //    writes the code of 0.0 (NF4 7). nibble follows CUDA.
  //  - FP4: the CPU backend picks the nearest table value; CUDA uses its decision-tree thresholds
  //    (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333), which round some
  //    values to a neighbouring code. nibble follows CUDA; the expected code is recomputed here from the
  //    spec's threshold table.
  const uint8_t* ours = q.packed.data<uint8_t>();
  const uint8_t* theirs = bnb_packed.data<uint8_t>();
  int64_t zero_block_codes = 0, fp4_threshold_codes = 0, unexplained = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int shift = (k & 1) ? 0 : 4;
    const int a = (ours[k / 2] >> shift) & 15, b = (theirs[k / 2] >> shift) & 15;
    if (a == b) continue;
    // the absmax the 4-bit codes were made with (before any double quantization)
    float amax = 0.0f;
    for (int64_t i = (k / bs) * bs; i < std::min(n, (k / bs + 1) * bs); ++i)
      amax = std::max(amax, std::fabs(x[static_cast<size_t>(i)]));
    if (amax == 0.0f) {
      EXPECT_EQ(a, 0) << "all-zero block must give CUDA's code 0 at " << k;
      ++zero_block_codes;
    } else if (qt == QuantType::FP4) {
      const float v = x[static_cast<size_t>(k)] * (1.0f / amax);
      static constexpr float kT[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                      0.4166667f,  0.583333f,  0.8333333f};
      static constexpr int kBits[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
      int above = 0;
      for (float t : kT) above += std::fabs(v) > t;
      EXPECT_EQ(a, (v < 0 ? 8 : 0) | kBits[above]) << "FP4 CUDA threshold rule at " << k << " value " << v;
      const float* table = q.state.code.data<float>();
      EXPECT_NEAR(table[a], table[b], 0.17f) << "bnb CPU and CUDA codes should be neighbours at " << k;
      ++fp4_threshold_codes;
    } else {
      ++unexplained;
      if (unexplained < 5) ADD_FAILURE() << "element " << k << " ours " << a << " bnb " << b;
    }
  }
  EXPECT_EQ(unexplained, 0);
  if (name == "nf4_zero_block") {
    EXPECT_GT(zero_block_codes, 0) << "the golden case should exercise the rule";
  }
  RecordProperty("zero_block_codes", static_cast<int>(zero_block_codes));
  RecordProperty("fp4_threshold_codes", static_cast<int>(fp4_threshold_codes));

  // dequantize bitsandbytes' own packed data and state: bit-exact with its dequantized output
  const Tensor bnb_deq = f.get(name + ".dequantized");
  const Tensor deq = dequantize_4bit(bnb_packed, bnb_state);
  ASSERT_EQ(deq.dtype(), bnb_deq.dtype());
  int64_t deq_diff = 0;
  for (size_t i = 0; i < deq.nbytes(); ++i) deq_diff += deq.raw()[i] != bnb_deq.raw()[i];
  EXPECT_EQ(deq_diff, 0) << "dequantized bytes differing";

  // packed quant_state JSON: identical bytes (with double quant, up to nested_offset's last digit)
  const auto ours_dict = q.state.as_dict();
  const Tensor& ours_qs = ours_dict.back().second;
  const Tensor theirs_qs = f.get(name + "." + c["quant_state_key"].get<std::string>());
  EXPECT_EQ(ours_dict.back().first, c["quant_state_key"].get<std::string>());
  if (!dq || q.state.offset == bnb_state.offset) {
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(ours_qs.raw()), ours_qs.nbytes()),
              std::string(reinterpret_cast<const char*>(theirs_qs.raw()), theirs_qs.nbytes()));
  }
  std::vector<std::string> keys;
  for (const auto& [k, v] : ours_dict) keys.push_back(k);
  std::vector<std::string> want{"absmax", "quant_map"};
  if (dq) want.insert(want.end(), {"nested_absmax", "nested_quant_map"});
  want.push_back(c["quant_state_key"]);
  EXPECT_EQ(keys, want);
}

INSTANTIATE_TEST_SUITE_P(Cases, Bnb4bitGolden, ::testing::Range(0, 26));

TEST(Bnb8bitGolden, DynamicMapWithinOneUlp) {
  const Tensor m = golden().file.get("dynamic_map");
  const std::vector<float> ours = create_dynamic_map();
  ASSERT_EQ(m.numel(), 256);
  int exact = 0;
  for (int i = 0; i < 256; ++i) {
    EXPECT_LE(ulp_distance(ours[static_cast<size_t>(i)], m.data<float>()[i]), 1) << i;
    exact += ours[static_cast<size_t>(i)] == m.data<float>()[i];
  }
  RecordProperty("dynamic_map_exact_entries", exact);
}

TEST(Bnb8bitGolden, BlockwiseCodesExactNearest) {
  const auto& f = golden().file;
  const Tensor x = f.get("blockwise.input");
  const Tensor map = f.get("dynamic_map");
  std::vector<float> code(map.data<float>(), map.data<float>() + 256);
  const Quantized8bit q = quantize_blockwise(x, 256, code);
  EXPECT_TRUE(same_bytes(q.absmax, f.get("blockwise.absmax")));
  const uint8_t* bnb = f.get("blockwise.codes").data<uint8_t>();
  const uint8_t* ours = q.codes.data<uint8_t>();
  int64_t differ = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.data<float>()[i] * (1.0f / q.absmax.data<float>()[i / 256]);
    // nibble's code is the exact nearest (CUDA); bitsandbytes CPU's may be a neighbour via its lookup table
    const float d_ours = std::fabs(code[ours[i]] - v);
    for (int k = 0; k < 256; ++k) ASSERT_LE(d_ours, std::fabs(code[static_cast<size_t>(k)] - v)) << i;
    if (ours[i] != bnb[i]) {
      ++differ;
      EXPECT_LE(std::abs(int(ours[i]) - int(bnb[i])), 1);
    }
  }
  EXPECT_LE(differ, x.numel() / 100) << "codes where bitsandbytes CPU missed the nearest";
  RecordProperty("cpu_lut_misses", static_cast<int>(differ));
  // dequantizing bitsandbytes' codes with its absmax reproduces its output exactly
  Quantized8bit theirs{f.get("blockwise.codes"), f.get("blockwise.absmax"), map, 256};
  EXPECT_TRUE(same_bytes(dequantize_blockwise(theirs), f.get("blockwise.dequantized")));
}
