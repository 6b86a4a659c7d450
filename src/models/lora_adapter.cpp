#include "models/lora_adapter.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "io/hf_config.h"
#include "io/json_field.h"
#include "nibble/error.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "nn/lora.h"

namespace nibble::models {
namespace fs = std::filesystem;

std::string peft_lora_key(const std::string& module, char which) {
  return "base_model.model." + module + ".lora_" + std::string(1, which) + ".weight";
}

LoraAdapter read_lora_adapter(const std::string& dir) {
  LoraAdapter a;
  a.dir = dir;
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::exists(cfg_path)) throw IoError(dir + ": not a PEFT adapter directory (no adapter_config.json)");
  a.config = read_json_file(cfg_path);
  const jsonf::JsonPath root(cfg_path);
  const std::string type = jsonf::get_string(a.config, "peft_type", root);
  if (type != "LORA") (root / "peft_type").fail("must be \"LORA\", found \"" + type + "\"");
  if (jsonf::get_bool_or(a.config, "use_dora", root, false))
    throw NotSupportedError(cfg_path + ": DoRA adapters (use_dora: true) are not supported");
  if (jsonf::get_bool_or(a.config, "fan_in_fan_out", root, false))
    throw NotSupportedError(cfg_path + ": fan_in_fan_out: true (Conv1D layers) is not supported");
  const std::string bias = jsonf::get_string_or(a.config, "bias", root, "none");
  if (bias != "none")
    throw NotSupportedError(cfg_path + ": 'bias' \"" + bias + "\" is not supported (only \"none\")");
  if (const auto* m = jsonf::find(a.config, "modules_to_save", root); m && !m->empty())
    throw NotSupportedError(cfg_path + ": modules_to_save (fully trained extra modules) is not supported");
  if (const auto* m = jsonf::find(a.config, "alpha_pattern", root); m && !m->empty())
    throw NotSupportedError(cfg_path + ": a per-module alpha_pattern is not supported");
  const double alpha = jsonf::get_number(a.config, "lora_alpha", root, {1e-12, 1e12});
  const bool rslora = jsonf::get_bool_or(a.config, "use_rslora", root, false);
  jsonf::get_int(a.config, "r", root, {1, 1 << 20});  // present and valid; each module's r is its shape's

  const std::string st = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!fs::exists(st)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin"))
      throw NotSupportedError(dir +
                              ": adapter_model.bin (pickle) is not read; save the adapter with "
                              "safe_serialization=True (peft's default)");
    throw IoError(dir + ": adapter_model.safetensors not found");
  }
  const SafetensorsFile f = SafetensorsFile::open(st);
  std::map<std::string, std::pair<const TensorInfo*, const TensorInfo*>> pairs;
  const std::string prefix = "base_model.model.";
  for (const auto& t : f.tensors()) {
    const auto ends = [&](const std::string& suf) {
      return t.name.size() > suf.size() && t.name.compare(t.name.size() - suf.size(), suf.size(), suf) == 0;
    };
    const bool isA = ends(".lora_A.weight"), isB = ends(".lora_B.weight");
    if ((!isA && !isB) || t.name.rfind(prefix, 0) != 0)
      throw FormatError(st + ": tensor '" + t.name +
                        "' is not a LoRA weight (base_model.model.<module>.lora_A.weight / lora_B.weight)");
    const std::string module = t.name.substr(prefix.size(), t.name.size() - prefix.size() - 14);
    (isA ? pairs[module].first : pairs[module].second) = &t;
  }
  if (pairs.empty()) throw FormatError(st + ": holds no LoRA weights");
  for (const auto& [module, ab] : pairs) {
    if (!ab.first || !ab.second)
      throw FormatError(st + ": module '" + module + "' has " + (ab.first ? "lora_A" : "lora_B") +
                        " but no " + (ab.first ? "lora_B" : "lora_A"));
    const TensorInfo &A = *ab.first, &B = *ab.second;
    if (A.shape.size() != 2 || B.shape.size() != 2 || A.shape[0] != B.shape[1] || A.shape[0] < 1)
      throw FormatError(st + ": module '" + module + "': lora_A " + shape_str(A.shape) + " and lora_B " +
                        shape_str(B.shape) + " do not make a LoRA pair ([r, in] and [out, r])");
    if (!dtype_is_float(A.dtype) || !dtype_is_float(B.dtype))
      throw FormatError(st + ": module '" + module + "': LoRA weights must be float tensors");
    LoraAdapter::Module m;
    m.name = module;
    m.r = A.shape[0];
    const double r = static_cast<double>(m.r);
    m.scaling = static_cast<float>(rslora ? alpha / std::sqrt(r) : alpha / r);
    m.A = f.get(A.name).to(DType::Float32);
    m.B = f.get(B.name).to(DType::Float32);
    a.modules.push_back(std::move(m));
  }
  return a;
}

void attach_lora_adapter(LlamaModel& model, const LoraAdapter& a) {
  std::map<std::string, std::unique_ptr<nn::LinearBase>*> slots;
  for (size_t l = 0; l < model.layers().size(); ++l)
    for (auto& [name, slot] : model.layers()[l].linears())
      slots["model.layers." + std::to_string(l) + "." + name] = slot;
  for (const auto& m : a.modules)
    if (!slots.count(m.name))
      throw FormatError(a.dir + ": the adapter adapts '" + m.name +
                        "', which is not a linear layer of this model (an adapter for another base model?)");
  for (const auto& m : a.modules) {
    auto& slot = *slots.at(m.name);
    if (m.A.dim(1) != slot->in_features || m.B.dim(0) != slot->out_features)
      throw FormatError(a.dir + ": module '" + m.name + "': lora_A " + shape_str(m.A.shape()) +
                        " and lora_B " + shape_str(m.B.shape()) + " do not fit the layer's " +
                        std::to_string(slot->out_features) + " x " + std::to_string(slot->in_features) +
                        " weight (an adapter for another base model?)");
  }
  for (const auto& m : a.modules) {
    auto& slot = *slots.at(m.name);
    slot = std::make_unique<nn::LoraLinear>(std::move(slot), m.r, m.A.to_float_vector(),
                                            m.B.to_float_vector(), m.scaling, m.name);
  }
}

void merge_lora_adapters(LlamaModel& model, std::optional<DType> dtype) {
  for (size_t l = 0; l < model.layers().size(); ++l)
    for (auto& [name, slot] : model.layers()[l].linears()) {
      const std::string where = "model.layers." + std::to_string(l) + "." + name;
      auto* lora = dynamic_cast<nn::LoraLinear*>(slot->get());
      if (!lora) {
        if (dtype && (*slot)->quantized()) {
          auto* q4 = dynamic_cast<nn::Linear4bit*>(slot->get());
          if (!q4) throw NotSupportedError(where + ": only 4-bit layers can be written dequantized here");
          *slot = std::make_unique<nn::Linear>(q4->dequantized_weight().to(*dtype), q4->bias());
        }
        continue;
      }
      const nn::LinearBase& base = *lora->base;
      const int64_t out = base.out_features, in = base.in_features, r = lora->r;
      Tensor w;
      std::optional<Tensor> bias;
      const auto* q4 = dynamic_cast<const nn::Linear4bit*>(&base);
      const auto* dense = dynamic_cast<const nn::Linear*>(&base);
      if (q4) {
        w = dequantize_4bit(q4->packed(), q4->state(), DType::Float32);
        bias = q4->bias();
      } else if (dense) {
        w = dense->weight().to(DType::Float32);
        bias = dense->bias();
      } else {
        throw NotSupportedError(where + ": merging an adapter into an 8-bit layer is not supported");
      }
      const DType wdt = q4 ? q4->state().dtype : dense->weight().dtype();
      // delta = (B @ A) * scaling, float32 (peft's get_delta_weight), added to the float32 weight
      std::vector<float> W = w.to_float_vector();
#pragma omp parallel for if (out * in > 65536)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          float d = 0;
          for (int64_t j = 0; j < r; ++j)
            d += lora->B[static_cast<size_t>(o * r + j)] * lora->A[static_cast<size_t>(j * in + i)];
          W[static_cast<size_t>(o * in + i)] += d * lora->scaling;
        }
      Tensor merged = Tensor::from_vector(DType::Float32, {out, in}, W);
      if (dtype) {
        *slot = std::make_unique<nn::Linear>(merged.to(*dtype), bias);
      } else if (q4) {
        Linear4bitSpec spec;
        spec.quant_type = q4->state().quant_type;
        spec.blocksize = q4->state().blocksize;
        spec.double_quant = q4->state().nested;
        spec.quant_storage = q4->packed().dtype();
        spec.compute_dtype = q4->compute_dtype();
        *slot = nn::Linear4bit::quantize(merged.to(wdt), bias, spec, where);
      } else {
        *slot = std::make_unique<nn::Linear>(merged.to(wdt), bias);
      }
    }
  if (dtype) model.dequantize();  // the output layer and the quantization config
}

}  // namespace nibble::models
