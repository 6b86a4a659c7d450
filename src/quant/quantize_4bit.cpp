#include <cmath>

#include "kernels/cpu/quant4.h"
#include "nibble/error.h"
#include "nibble/quantize.h"

namespace nibble {

bool valid_4bit_blocksize(int64_t b) {
  return b >= 32 && b <= 4096 && (b & (b - 1)) == 0;
}

namespace {
void check_quant_storage(DType t) {
  switch (t) {
    case DType::UInt8:
    case DType::Int8:
    case DType::Float16:
    case DType::BFloat16:
    case DType::Float32:
    case DType::Float64:
      return;
    default:
      throw ValueError("quant_storage must be one of float16, float32, int8, uint8, float64, bfloat16; got " +
                       std::string(dtype_name(t)));
  }
}
}  // namespace

Linear4bitSpec Linear4bitSpec::from_config(const BitsAndBytesConfig& cfg, int64_t blocksize) {
  if (!valid_4bit_blocksize(blocksize))
    throw ValueError("blocksize must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096; got " +
                     std::to_string(blocksize));
  return {.quant_type = cfg.quant_type(),
          .blocksize = blocksize,
          .double_quant = cfg.bnb_4bit_use_double_quant,
          .quant_storage = cfg.quant_storage(),
          .compute_dtype = cfg.compute_dtype()};
}

Quantized4bit quantize_linear_weight(const Tensor& weight, const Linear4bitSpec& spec,
                                     const std::string& where) {
  if (weight.shape().size() != 2 || !dtype_is_float(weight.dtype()))
    throw FormatError(where + " is a Linear weight and must be a 2-D float tensor, got " +
                      std::string(dtype_name(weight.dtype())) + " " + shape_str(weight.shape()));
  return quantize_4bit(weight, spec.blocksize, spec.quant_type, spec.double_quant, spec.quant_storage);
}

Quantized4bit quantize_4bit(const Tensor& A, int64_t blocksize, QuantType quant_type,
                            bool compress_statistics, DType quant_storage) {
  const DType dt = A.dtype();
  if (dt != DType::Float32 && dt != DType::Float16 && dt != DType::BFloat16)
    throw ValueError("quantize_4bit: input must be float32, float16 or bfloat16, got " +
                     std::string(dtype_name(dt)));
  if (!valid_4bit_blocksize(blocksize))
    throw ValueError("quantize_4bit: blocksize must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096; got " +
                     std::to_string(blocksize));
  check_quant_storage(quant_storage);
  const int64_t n = A.numel();
  const int64_t nb = (n + blocksize - 1) / blocksize;
  const int64_t nbytes = (n + 1) / 2;
  const auto item = static_cast<int64_t>(dtype_size(quant_storage));
  if (nbytes % item != 0)
    throw ValueError("quantize_4bit: " + std::to_string(nbytes) + " packed bytes cannot be viewed as " +
                     std::string(dtype_name(quant_storage)) + " (shape " + shape_str(A.shape()) + ")");
  Tensor packed = Tensor::empty(DType::UInt8, {nbytes, 1});
  Tensor absmax = Tensor::empty(DType::Float32, {nb});
  kernels::quantize_4bit(A.raw(), dt, n, blocksize, quant_type, absmax.mutable_data<float>(),
                         packed.mutable_data<uint8_t>());

  QuantState s;
  s.shape = A.shape();
  s.dtype = dt;
  s.blocksize = blocksize;
  s.quant_type = quant_type;
  const auto& table = code_table(quant_type);
  s.code = Tensor::from_bytes(DType::Float32, {16}, {reinterpret_cast<const uint8_t*>(table.data()), 64});
  if (compress_statistics) {
    // offset = mean(absmax): bitsandbytes lets torch reduce in float32 (bits vary by device); one rounding of
    // the exact double sum is the most faithful choice.
    double sum = 0;
    const float* am = absmax.data<float>();
    for (int64_t i = 0; i < nb; ++i) sum += am[i];
    const float offset = nb > 0 ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
    Tensor centered = Tensor::empty(DType::Float32, {nb});
    float* c = centered.mutable_data<float>();
    for (int64_t i = 0; i < nb; ++i) c[i] = am[i] - offset;
    Quantized8bit q = quantize_blockwise(centered, 256);
    s.nested = true;
    s.offset = offset;
    s.absmax = q.codes;
    s.nested_absmax = q.absmax;
    s.nested_code = q.code;
    s.nested_blocksize = 256;
  } else {
    s.absmax = absmax;
  }
  return {packed.view(quant_storage, {nbytes / item, 1}), std::move(s)};
}

Tensor dequantize_4bit(const Tensor& packed, const QuantState& state, std::optional<DType> out_dtype) {
  state.check_packed(packed, "dequantize_4bit");
  const DType out = out_dtype.value_or(state.dtype);
  if (out != DType::Float32 && out != DType::Float16 && out != DType::BFloat16)
    throw ValueError("dequantize_4bit: output dtype must be float32, float16 or bfloat16, got " +
                     std::string(dtype_name(out)));
  const std::vector<float> absmax = state.float_absmax();
  Tensor result = Tensor::empty(out, state.shape);
  kernels::dequantize_4bit(packed.raw(), absmax.data(), state.numel(), state.blocksize,
                           state.code.data<float>(), out, result.mutable_raw());
  return result;
}

}  // namespace nibble
