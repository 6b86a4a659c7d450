// bitsandbytes' functional 4-bit and 8-bit blockwise quantization, exactly (spec/bnb-4bit.md):
// quantize_4bit / dequantize_4bit, quantize_blockwise / dequantize_blockwise, QuantState and its packed dict;
// and LLM.int8's row-wise weight quantization (spec/bnb-int8.md): int8_vectorwise_quant / _dequant.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nibble/bitsandbytes_config.h"
#include "nibble/quant_type.h"
#include "nibble/tensor.h"

namespace nibble {

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits, total_bits): the 8-bit dynamic code used by
// double quantization (256 sorted float32 values).
std::vector<float> create_dynamic_map(bool is_signed = true, int max_exponent_bits = 7, int total_bits = 8);

bool valid_4bit_blocksize(int64_t blocksize);  // 32, 64, ..., 4096

// State needed to dequantize a 4-bit tensor (bitsandbytes.functional.QuantState).
struct QuantState {
  Tensor absmax;                 // float32 [nb]; uint8 [nb] codes when nested (double quantization)
  Shape shape;                   // shape of the original tensor
  DType dtype = DType::Float32;  // dtype of the original tensor
  int64_t blocksize = 64;
  Tensor code;  // float32 [16], the quant_map
  QuantType quant_type = QuantType::FP4;
  // double quantization
  bool nested = false;
  float offset = 0.0f;
  Tensor nested_absmax;  // float32 [ceil(nb / nested_blocksize)]
  Tensor nested_code;    // float32 [256]
  int64_t nested_blocksize = 256;
  DType nested_dtype = DType::Float32;

  int64_t numel() const { return shape_numel(shape); }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // The per-block absmax as float32 (decoding the nested statistics if any).
  std::vector<float> float_absmax() const;

  // bitsandbytes QuantState.as_dict(packed=true): keys without the "<prefix>.weight." part, in bnb's order:
  // absmax, quant_map, [nested_absmax, nested_quant_map], quant_state.bitsandbytes__<type>.
  NamedTensors as_dict() const;
  // The JSON packed into the quant_state.bitsandbytes__* tensor (json.dumps format).
  std::string packed_json() const;
  // QuantState.from_dict: `d` holds the same keys (full names are fine: everything up to the component name
  // is ignored). `where` names the module in errors. Validates every key, dtype and shape.
  static QuantState from_dict(const std::map<std::string, Tensor>& d, const std::string& where);
  // Throws FormatError unless `packed` is a valid packed weight for this state (byte count).
  void check_packed(const Tensor& packed, const std::string& where) const;
};

struct Quantized4bit {
  Tensor packed;  // quant_storage dtype, [ceil(n/2) / itemsize, 1]
  QuantState state;
};

// A: float32, float16 or bfloat16, any shape (flattened row-major).
Quantized4bit quantize_4bit(const Tensor& A, int64_t blocksize = 64, QuantType quant_type = QuantType::FP4,
                            bool compress_statistics = false, DType quant_storage = DType::UInt8);
// How a Linear weight is quantized under a BitsAndBytesConfig (bitsandbytes' Params4bit / Linear4bit): the
// config's fields resolved once (quant type parsed, dtypes defaulted) plus the blocksize, which transformers
// does not expose (bitsandbytes' default 64; `nibble quantize --blocksize` sets it).
struct Linear4bitSpec {
  QuantType quant_type = QuantType::FP4;
  int64_t blocksize = 64;
  bool double_quant = false;
  DType quant_storage = DType::UInt8;
  DType compute_dtype = DType::Float32;
  // ValueError for a blocksize bitsandbytes does not support.
  static Linear4bitSpec from_config(const BitsAndBytesConfig& cfg, int64_t blocksize = 64);
};
// The one place a Linear weight becomes 4-bit, for quantize-on-load and `nibble quantize` alike: checks that
// `weight` is a 2-D float tensor (FormatError naming `where` otherwise) and quantizes it as spec says.
Quantized4bit quantize_linear_weight(const Tensor& weight, const Linear4bitSpec& spec,
                                     const std::string& where);

// Returns a tensor of state.shape in out_dtype (default: state.dtype).
Tensor dequantize_4bit(const Tensor& packed, const QuantState& state, std::optional<DType> out_dtype = {});

struct Quantized8bit {
  Tensor codes;   // uint8, same shape as the input
  Tensor absmax;  // float32 [ceil(n / blocksize)]
  Tensor code;    // float32 [256]
  int64_t blocksize = 4096;
};
// A: float32. code: 256 sorted entries (default: create_dynamic_map()).
Quantized8bit quantize_blockwise(const Tensor& A, int64_t blocksize = 4096,
                                 const std::vector<float>& code = {});
Tensor dequantize_blockwise(const Quantized8bit& q, DType out_dtype = DType::Float32);

// LLM.int8 weights as bitsandbytes' Int8Params quantizes them on CPU (transformers' load_in_8bit): the weight
// rounded to float16 first, SCB[r] = max_j |W16[r, j]| (a float16 value held in float32) and
// CB[r, j] = round_half_even(W16[r, j] * (127 / SCB[r])) in float32. An all-zero row gives SCB 0 and CB 0
// (torch's 0 * inf = NaN converts to 0).
struct QuantizedInt8 {
  Tensor CB;   // int8 [out, in]
  Tensor SCB;  // float32 [out]
};
// weight: a 2-D float tensor (FormatError naming `where` otherwise).
QuantizedInt8 int8_vectorwise_quant(const Tensor& weight, const std::string& where = "int8_vectorwise_quant");
// bitsandbytes' int8_vectorwise_dequant: CB * SCB[r] * 7.874015718698502e-3 (float32), then to out_dtype.
Tensor int8_vectorwise_dequant(const Tensor& CB, const Tensor& SCB, DType out_dtype = DType::Float32);

}  // namespace nibble
