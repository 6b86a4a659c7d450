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
  if (w.shape().size() != 2 || !dtype_is_float(w.dtype()))
    throw FormatError(src.where(wname) + ": tensor '" + wname + "' must be a 2-D float weight, got " +
                      std::string(dtype_name(w.dtype())) + " " + shape_str(w.shape()));
  const Tensor wd = w.dtype() == dtype ? w : w.to(dtype);
  if (!prequantized && spec && should_quantize(model_type, wname, *quantize)) {
    auto lin = with_activations(
        nn::Linear4bit::quantize(wd, std::move(b), *spec, src.where(wname) + ": tensor '" + wname + "'"));
    src.release(wname);  // the full-precision weight leaves resident memory once quantized
    return lin;
  }
  return std::make_unique<nn::Linear>(wd, std::move(b));
}

std::unique_ptr<nn::LinearBase> LinearLoader::quantize_dense(const std::string& prefix,
                                                             const Tensor& weight) const {
  if (prequantized || !spec || !should_quantize(model_type, prefix + ".weight", *quantize)) return nullptr;
  return with_activations(nn::Linear4bit::quantize(weight, std::nullopt, *spec, prefix + ".weight"));
}

std::unique_ptr<nn::LinearBase> LinearLoader::with_activations(std::unique_ptr<nn::Linear4bit> lin) const {
  lin->set_int8_activations(int8_activations);
  return lin;
}

}  // namespace nibble::models
