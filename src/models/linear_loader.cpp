#include "models/linear_loader.h"

#include <map>

#include "models/registry.h"
#include "nibble/error.h"

namespace nibble::models {

std::unique_ptr<nn::LinearBase> LinearLoader::load(const std::string& prefix, bool bias) const {
  std::optional<Tensor> b;
  if (bias) {
    const Tensor t = src.get(prefix + ".bias");
    b = t.dtype() == dtype ? t : t.to(dtype);
  }
  if (src.contains(prefix + ".SCB")) return load_8bit(prefix, std::move(b));
  for (const QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const std::string qs = prefix + ".weight.quant_state.bitsandbytes__" + std::string(quant_type_name(qt));
    if (!src.contains(qs)) continue;
    if (!prequantized)
      throw FormatError(src.where(qs) + ": tensor '" + qs +
                        "' is quantized but config.json has no quantization_config");
    std::map<std::string, Tensor> d;
    for (const char* k : {"absmax", "quant_map", "nested_absmax", "nested_quant_map"})
      if (src.contains(prefix + ".weight." + k))
        d[prefix + ".weight." + k] = src.get(prefix + ".weight." + k);
    d[qs] = src.get(qs);
    QuantState s = QuantState::from_dict(d, src.where(qs) + ": " + prefix);
    try {
      return with_activations(std::make_unique<nn::Linear4bit>(src.get(prefix + ".weight"), std::move(s),
                                                               std::move(b), prequantized_compute));
    } catch (const FormatError& e) {  // its shape checks do not know the file
      throw FormatError(src.where(qs) + ": " + prefix + ": " + e.what());
    }
  }
  const std::string wname = prefix + ".weight";
  const Tensor w = src.get(wname);
  if (w.dtype() == DType::Int8 && prequantized)
    throw FormatError(src.where(wname) + ": tensor '" + wname + "' is an 8-bit weight but '" + prefix +
                      ".SCB' (its row scales) is missing");
  if (w.shape().size() != 2 || !dtype_is_float(w.dtype()))
    throw FormatError(src.where(wname) + ": tensor '" + wname + "' must be a 2-D float weight, got " +
                      std::string(dtype_name(w.dtype())) + " " + shape_str(w.shape()));
  const Tensor wd = w.dtype() == dtype ? w : w.to(dtype);
  if (!prequantized && quantize && should_quantize(model_type, wname, *quantize)) {
    auto lin = quantize_weight(wd, std::move(b), src.where(wname) + ": tensor '" + wname + "'");
    src.release(wname);  // the full-precision weight leaves resident memory once quantized
    return lin;
  }
  return std::make_unique<nn::Linear>(wd, std::move(b));
}

std::unique_ptr<nn::LinearBase> LinearLoader::quantize_dense(const std::string& prefix,
                                                             const Tensor& weight) const {
  if (prequantized || !quantize || !should_quantize(model_type, prefix + ".weight", *quantize))
    return nullptr;
  return quantize_weight(weight, std::nullopt, prefix + ".weight");
}

std::unique_ptr<nn::LinearBase> LinearLoader::quantize_weight(const Tensor& weight,
                                                              std::optional<Tensor> bias,
                                                              const std::string& where) const {
  if (quantize->load_in_8bit)
    return nn::Linear8bitLt::quantize(weight, std::move(bias), int8_threshold, dtype, where);
  return with_activations(nn::Linear4bit::quantize(weight, std::move(bias), *spec, where));
}

std::unique_ptr<nn::LinearBase> LinearLoader::load_8bit(const std::string& prefix,
                                                        std::optional<Tensor> bias) const {
  const std::string wname = prefix + ".weight", sname = prefix + ".SCB", fname = prefix + ".weight_format";
  if (!prequantized)
    throw FormatError(src.where(sname) + ": tensor '" + sname +
                      "' is an 8-bit row scale but config.json has no quantization_config");
  if (!int8_prequantized)
    throw FormatError(src.where(sname) + ": tensor '" + sname +
                      "' is an 8-bit row scale but config.json's quantization_config is not load_in_8bit");
  const Tensor w = src.get(wname), scb = src.get(sname);
  if (w.dtype() != DType::Int8 || w.shape().size() != 2)
    throw FormatError(src.where(wname) + ": tensor '" + wname + "' must be a 2-D int8 weight, got " +
                      std::string(dtype_name(w.dtype())) + " " + shape_str(w.shape()));
  if ((scb.dtype() != DType::Float32 && scb.dtype() != DType::Float16) || scb.shape() != Shape{w.dim(0)})
    throw FormatError(src.where(sname) + ": tensor '" + sname + "' must be float32 or float16 of shape [" +
                      std::to_string(w.dim(0)) + "], got " + std::string(dtype_name(scb.dtype())) + " " +
                      shape_str(scb.shape()));
  if (src.contains(fname)) {  // bitsandbytes: 0 = "row"; col32 / col_turing / col_ampere are refused
    const Tensor f = src.get(fname);
    int64_t v = -1;
    if (f.numel() == 1 && f.dtype() == DType::UInt8) v = f.data<uint8_t>()[0];
    if (f.numel() == 1 && f.dtype() == DType::Int64) v = f.data<int64_t>()[0];
    if (f.numel() == 1 && f.dtype() == DType::Int32) v = f.data<int32_t>()[0];
    if (v != 0)
      throw FormatError(src.where(fname) + ": tensor '" + fname + "' must be 0 (the \"row\" weight format, " +
                        "the only one bitsandbytes loads), got " + std::string(dtype_name(f.dtype())) + " " +
                        shape_str(f.shape()) + (v > 0 ? " value " + std::to_string(v) : ""));
  }
  return std::make_unique<nn::Linear8bitLt>(w, scb, std::move(bias), int8_threshold, dtype);
}

std::unique_ptr<nn::LinearBase> LinearLoader::with_activations(std::unique_ptr<nn::Linear4bit> lin) const {
  lin->set_int8_activations(int8_activations);
  return lin;
}

}  // namespace nibble::models
