// nibble quantize IN_DIR OUT_DIR: write a bnb-4bit (or, with --load-in-8bit, an 8-bit) checkpoint
// transformers + bitsandbytes load.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "config_flags.h"
#include "nibble/error.h"
#include "nibble/quantize_checkpoint.h"
#include "nibble/safetensors.h"

namespace nibble::cli {

void add_quantize(CLI::App& app) {
  struct Args {
    std::string in, out, dtype = "auto", max_shard = "5GB";
    int64_t blocksize = 64;
    bool quiet = false, overwrite = false;
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "quantize",
      "quantize a HuggingFace checkpoint to a bnb-4bit (or --load-in-8bit: bnb 8-bit) checkpoint");
  sub->add_option("IN_DIR", a->in,
                  "HuggingFace model directory, or a model id in the HF cache (ORG/NAME[@REVISION])")
      ->required();
  sub->add_option("OUT_DIR", a->out, "output directory (must not exist, or be empty, unless --overwrite)")
      ->required();
  add_quant_flags(sub, a->q, false);
  sub->add_option("--blocksize", a->blocksize, "quantization block size (32..4096, default 64)");
  sub->add_option("--dtype", a->dtype, "dtype of the unquantized tensors: auto|float16|bfloat16|float32");
  sub->add_option("--max-shard-size", a->max_shard, "largest output shard (default 5GB)");
  sub->add_flag("--overwrite", a->overwrite,
                "replace an existing OUT_DIR (a model directory) once the new output is complete");
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar");
  sub->callback([a] {
    QuantizeOptions opt;
    opt.config = build_config(a->q, true);
    opt.blocksize = a->blocksize;
    if (a->dtype != "auto") {
      const DType t = parse_dtype(a->dtype, "--dtype");
      if (t != DType::Float32 && t != DType::Float16 && t != DType::BFloat16)
        throw ValueError("--dtype must be auto, float16, bfloat16 or float32; got " + a->dtype);
      opt.dtype = t;
    }
    opt.max_shard_size = parse_size(a->max_shard);
    opt.quiet = a->quiet;
    opt.overwrite = a->overwrite;
    const QuantizeReport r = quantize_checkpoint(a->in, a->out, opt);
    if (!a->quiet)
      std::fprintf(stderr,
                   "quantized %lld linear weights, copied %lld tensors: %.2f MB -> %.2f MB in %.2fs (%s)\n",
                   static_cast<long long>(r.quantized_tensors), static_cast<long long>(r.copied_tensors),
                   static_cast<double>(r.input_bytes) / 1e6, static_cast<double>(r.output_bytes) / 1e6,
                   r.seconds, a->out.c_str());
  });
}

}  // namespace nibble::cli
