// Turns a HuggingFace checkpoint directory into a bnb-4bit one (config.load_in_4bit) or a bnb 8-bit one
// (config.load_in_8bit: LLM.int8's int8 weight + SCB + weight_format per linear) that transformers +
// bitsandbytes load: the `nibble quantize` job.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "nibble/bitsandbytes_config.h"

namespace nibble {

struct QuantizeOptions {
  BitsAndBytesConfig config{.load_in_4bit = true};
  int64_t blocksize = 64;
  // dtype of the tensors that stay unquantized (and of the weights before quantization); nullopt = the
  // checkpoint's torch_dtype ("auto").
  std::optional<DType> dtype = std::nullopt;
  uint64_t max_shard_size = 5'000'000'000;  // transformers' save_pretrained default "5GB"
  bool quiet = false;
  // Replace an existing non-empty output directory (a model directory: config.json and plain files) once
  // the new one is complete; without it such a directory is an error. Never the input directory.
  bool overwrite = false;
};

struct QuantizeReport {
  int64_t quantized_tensors = 0, copied_tensors = 0;
  uint64_t input_bytes = 0, output_bytes = 0;
  double seconds = 0;
};

// Streams in_dir's tensors (one full-precision tensor in memory at a time) into out_dir, which appears only
// when complete (also if the process is killed) and must not already hold files unless opt.overwrite.
// Identical input and options give byte-identical output. in_dir may be a model id in the HuggingFace cache
// (resolve_model_path in nibble/hub.h); out_dir is always a path.
QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                   const QuantizeOptions& opt);

}  // namespace nibble
