// Uses the installed public API: 4-bit quantize/dequantize, then the example model through from_pretrained,
// Tokenizer and generate, checked against the golden greedy continuation.
// Usage: consumer MODEL_DIR GOLDEN_JSON
#include <nibble/nibble.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {
int fail(const std::string& what) {
  std::cerr << "consumer: FAILED: " << what << "\n";
  return 1;
}

// quantize_4bit -> dequantize_4bit: every element within half the widest NF4 code gap (plus the double-quant
// absmax error) of its block's absmax; values that are codes times the absmax come back exactly.
bool round_trip() {
  constexpr int64_t n = 1000, bs = 64;
  std::vector<float> x(n);
  uint32_t s = 12345;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) / static_cast<float>(1u << 24) * 4.0f - 2.0f;
  }
  const auto A = nibble::Tensor::from_vector(nibble::DType::Float32, {20, 50}, x);
  const auto q = nibble::quantize_4bit(A, bs, nibble::QuantType::NF4, /*compress_statistics=*/true);
  const nibble::Tensor y = nibble::dequantize_4bit(q.packed, q.state);
  if (!q.state.nested || y.shape() != A.shape() || y.dtype() != nibble::DType::Float32) return false;
  const float* yd = y.data<float>();
  for (int64_t b = 0; b < n; b += bs) {
    float absmax = 0;
    for (int64_t i = b; i < std::min(n, b + bs); ++i) absmax = std::max(absmax, std::fabs(x[i]));
    for (int64_t i = b; i < std::min(n, b + bs); ++i)
      if (!(std::fabs(yd[i] - x[i]) <= 0.15f * absmax)) return false;
  }
  // exactly representable input (no double quantization): codes times a power-of-two absmax
  const nibble::Tensor code = q.state.code;
  std::vector<float> r(128);
  for (size_t i = 0; i < r.size(); ++i) r[i] = code.data<float>()[(i * 7) % 16] * 0.5f;
  r[3] = 0.5f;  // each block holds its absmax
  r[64 + 5] = -0.5f;
  const auto R = nibble::Tensor::from_vector(nibble::DType::Float32, {128}, r);
  const auto qr = nibble::quantize_4bit(R, bs, nibble::QuantType::NF4);
  const auto rr = nibble::dequantize_4bit(qr.packed, qr.state).to_float_vector();
  return rr == r;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return fail("usage: consumer MODEL_DIR GOLDEN_JSON");
  const std::string dir = argv[1];
  try {
    if (!round_trip()) return fail("4-bit round trip");
    std::cout << "4-bit round trip: ok\n";

    std::ifstream golden_file(argv[2]);
    const auto golden = nlohmann::json::parse(golden_file)["cases"][0];
    const auto tok = nibble::Tokenizer::from_pretrained(dir);
    const std::string prompt = golden["prompt"].get<std::string>();
    const std::vector<int32_t> ids = tok.encode(prompt);
    if (ids != golden["input_ids"].get<std::vector<int32_t>>()) return fail("encode differs from golden");

    const auto model = nibble::AutoModelForCausalLM::from_pretrained(dir, {.quiet = true});
    const auto want = golden["greedy_new_ids"].get<std::vector<int32_t>>();
    const auto out = model.generate(ids, {.max_new_tokens = static_cast<int>(want.size())});
    if (std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(ids.size()), out.end()) != want)
      return fail("float greedy continuation differs from golden");
    std::cout << "float greedy matches golden: ok\n";

    nibble::BitsAndBytesConfig q{
        .load_in_4bit = true, .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = true};
    const auto m4 =
        nibble::AutoModelForCausalLM::from_pretrained(dir, {.quantization_config = q, .quiet = true});
    const auto out4 = m4.generate(ids, {.max_new_tokens = 8});
    if (out4.size() <= ids.size() || !std::equal(ids.begin(), ids.end(), out4.begin()))
      return fail("nf4 generate returned no continuation");
    std::cout << "nf4 generate: " << tok.decode(out4) << "\n";
  } catch (const nibble::Error& e) {
    return fail(std::string("nibble::Error: ") + e.what());
  }
  std::cout << "consumer: ok\n";
  return 0;
}
