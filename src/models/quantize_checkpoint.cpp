#include "nibble/quantize_checkpoint.h"

#include <chrono>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "nibble/error.h"
#include "nibble/models.h"
#include "nibble/progress.h"
#include "nibble/python_json.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"

namespace nibble {
namespace fs = std::filesystem;

QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                   const QuantizeOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const BitsAndBytesConfig& cfg = opt.config;
  if (!cfg.load_in_4bit)
    throw NotSupportedError(
        "nibble quantize writes 4-bit checkpoints; the config must have load_in_4bit=true");
  if (!valid_4bit_blocksize(opt.blocksize))
    throw ValueError("blocksize must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096; got " +
                     std::to_string(opt.blocksize));
  const std::string config_path = (fs::path(in_dir) / "config.json").string();
  nlohmann::json config = read_json_file(config_path);
  check_model_type(config, config_path);
  if (config.contains("quantization_config"))
    throw ValueError(config_path +
                     ": the checkpoint is already quantized (config.json has quantization_config)");
  const std::string model_type = config["model_type"].get<std::string>();
  const DType dtype = opt.dtype.value_or(checkpoint_dtype(config, config_path));
  const QuantType qt = parse_quant_type(cfg.bnb_4bit_quant_type);

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
      if (t.shape().size() != 2)
        throw FormatError(in.file_of(name) + ": tensor '" + name + "' is a Linear weight but has shape " +
                          shape_str(t.shape()) + " (expected 2-D)");
      if (!dtype_is_float(t.dtype()))
        throw FormatError(in.file_of(name) + ": tensor '" + name + "' has dtype " +
                          std::string(dtype_name(t.dtype())) + ", expected a float dtype");
      const Tensor w = t.dtype() == dtype ? t : t.to(dtype);
      Quantized4bit q =
          quantize_4bit(w, opt.blocksize, qt, cfg.bnb_4bit_use_double_quant, cfg.quant_storage());
      writer.add(name, q.packed);
      rep.output_bytes += q.packed.nbytes();
      for (const auto& [k, v] : q.state.as_dict()) {
        writer.add(name + "." + k, v);
        rep.output_bytes += v.nbytes();
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
