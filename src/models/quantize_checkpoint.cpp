#include "nibble/quantize_checkpoint.h"

#include <chrono>
#include <filesystem>

#include "core/progress.h"
#include "core/python_json.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "models/registry.h"
#include "nibble/error.h"
#include "nibble/hub.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"

namespace nibble {
namespace fs = std::filesystem;

QuantizeReport quantize_checkpoint(const std::string& in_name_or_path, const std::string& out_dir,
                                   const QuantizeOptions& opt) {
  const std::string in_dir = resolve_model_path(in_name_or_path);  // out_dir is always a plain path
  const auto t0 = std::chrono::steady_clock::now();
  const BitsAndBytesConfig& cfg = opt.config;
  if (!cfg.load_in_4bit && !cfg.load_in_8bit)
    throw NotSupportedError(
        "nibble quantize writes 4-bit or 8-bit checkpoints; the config must have load_in_4bit=true or "
        "load_in_8bit=true");
  if (cfg.load_in_8bit && (cfg.llm_int8_has_fp16_weight || cfg.llm_int8_enable_fp32_cpu_offload))
    throw NotSupportedError(
        "nibble quantize writes 8-bit checkpoints with int8 weights: llm_int8_has_fp16_weight and "
        "llm_int8_enable_fp32_cpu_offload must be False");
  const std::optional<Linear4bitSpec> spec =
      cfg.load_in_4bit ? std::optional(Linear4bitSpec::from_config(cfg, opt.blocksize)) : std::nullopt;
  const std::string config_path = (fs::path(in_dir) / "config.json").string();
  nlohmann::json config = read_json_file(config_path);
  check_model_type(config, config_path);
  if (config.contains("quantization_config"))
    throw ValueError(config_path +
                     ": the checkpoint is already quantized (config.json has quantization_config)");
  const std::string model_type = jsonf::get_string(config, "model_type", jsonf::JsonPath(config_path));
  const DType dtype = opt.dtype.value_or(checkpoint_dtype(config, config_path));

  const Checkpoint in = Checkpoint::open(in_dir);
  AtomicDir out(out_dir, {.overwrite = opt.overwrite, .marker = "config.json", .source = in_dir});
  if (in.names().empty()) throw FormatError(in_dir + ": the checkpoint holds no tensors");
  // keep tied-weight aliases the source recorded (e.g. model.embed_tokens.weight -> lm_head.weight)
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  for (const auto& [k, v] : in.metadata()) metadata[k] = v;
  CheckpointWriter writer(out.path(), opt.max_shard_size, metadata);
  QuantizeReport rep;
  Progress bar("quantize", static_cast<int64_t>(in.names().size()), opt.quiet);
  for (const std::string& name : in.names()) {
    const Tensor t = in.get(name);
    rep.input_bytes += t.nbytes();
    if (should_quantize(model_type, name, cfg)) {
      const std::string where = in.file_of(name) + ": tensor '" + name + "'";
      const Tensor w = dtype_is_float(t.dtype()) && t.dtype() != dtype ? t.to(dtype) : t;
      auto add = [&](const std::string& n, const Tensor& v) {
        writer.add(n, v);
        rep.output_bytes += v.nbytes();
      };
      if (spec) {
        Quantized4bit q = quantize_linear_weight(w, *spec, where);
        add(name, q.packed);
        for (const auto& [k, v] : q.state.as_dict()) add(name + "." + k, v);
      } else {  // Linear8bitLt's state dict: weight (int8), SCB, weight_format 0 ("row")
        const std::string module = name.substr(0, name.size() - std::string(".weight").size());
        QuantizedInt8 q = int8_vectorwise_quant(w, where);
        add(name, q.CB);
        add(module + ".SCB", q.SCB);
        add(module + ".weight_format", Tensor::from_vector<uint8_t>(DType::UInt8, {}, {0}));
      }
      ++rep.quantized_tensors;
      in.release(name);
    } else {
      const Tensor c = dtype_is_float(t.dtype()) && t.dtype() != dtype ? t.to(dtype) : t;
      writer.add(name, c);
      in.release(name);
      rep.output_bytes += c.nbytes();
      ++rep.copied_tensors;
    }
    bar.advance(1, name);
  }
  writer.finish();
  bar.finish();

  config["quantization_config"] = cfg.to_dict();
  config[config.contains("dtype") ? "dtype" : "torch_dtype"] = std::string(dtype_name(dtype));
  write_text_file((fs::path(out.path()) / "config.json").string(), python_json_dumps(config, 2, true) + "\n");
  copy_side_files(in_dir, out.path());
  out.commit();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace nibble
