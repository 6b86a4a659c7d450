// AutoModelForCausalLM, loading half: from_pretrained / from_config build the family's model (the registry
// by model_type), save_pretrained, dequantize and the reports. Running it (forward, generate, Session) is
// in src/generate.
#include <cstdio>
#include <filesystem>

#include "core/python_json.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_field.h"
#include "models/auto_model_impl.h"
#include "models/llama.h"
#include "models/lora_adapter.h"
#include "models/registry.h"
#include "nibble/error.h"
#include "nibble/hub.h"
#include "nibble/model.h"

namespace nibble {
namespace fs = std::filesystem;
using nlohmann::json;

AutoModelForCausalLM::AutoModelForCausalLM() : impl_(std::make_unique<Impl>()) {}
AutoModelForCausalLM::AutoModelForCausalLM(AutoModelForCausalLM&&) noexcept = default;
AutoModelForCausalLM& AutoModelForCausalLM::operator=(AutoModelForCausalLM&&) noexcept = default;
AutoModelForCausalLM::~AutoModelForCausalLM() = default;

namespace {
void apply_adapter(AutoModelForCausalLM::Impl& im, const FromPretrainedOptions& opt) {
  if (opt.adapter.empty()) return;
  auto* llama = dynamic_cast<models::LlamaModel*>(im.model.get());
  if (!llama) throw NotSupportedError("LoRA adapters are supported for the llama-family models only");
  models::attach_lora_adapter(*llama, models::read_lora_adapter(opt.adapter));
  im.info.adapter = opt.adapter;
}

void fill_info(AutoModelForCausalLM::Impl& im, DType dtype, const std::string& config_path);
void apply_adapter(AutoModelForCausalLM::Impl& im, const FromPretrainedOptions& opt);

void check_model_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw IoError(dir + ": no such model directory");
  if (!fs::is_directory(dir, ec))
    throw IoError(dir + ": not a directory (expected a HuggingFace model directory)");
  if (!fs::exists(fs::path(dir) / "config.json", ec))
    throw FormatError(dir + ": no config.json (not a HuggingFace model directory)");
}
}  // namespace

AutoModelForCausalLM AutoModelForCausalLM::from_pretrained(const std::string& name_or_path,
                                                           const FromPretrainedOptions& opt) {
  const std::string dir = resolve_model_path(name_or_path);  // a directory, or a model id in the HF cache
  check_model_dir(dir);
  const ThreadScope threads(opt.threads);  // quantize-on-load runs with the model's thread count
  AutoModelForCausalLM m;
  Impl& im = *m.impl_;
  im.dir = dir;
  im.threads = opt.threads;
  const std::string cpath = (fs::path(dir) / "config.json").string();
  im.config = read_json_file(cpath);
  check_model_type(im.config, cpath);
  const std::string gpath = (fs::path(dir) / "generation_config.json").string();
  const json generation_config = fs::exists(gpath) ? read_json_file(gpath) : json::object();
  if (im.config.contains("quantization_config") && opt.quantization_config && !opt.quiet)
    std::fprintf(
        stderr,
        "nibble: warning: You passed `quantization_config` or equivalent parameters to `from_pretrained` but "
        "the model you're loading already has a `quantization_config` attribute. The `quantization_config` "
        "from the model will be used.\n");
  models::LoadOptions lo;
  lo.quant = opt.quantization_config;
  lo.dtype = opt.dtype.value_or(checkpoint_dtype(im.config, cpath));
  lo.quiet = opt.quiet;
  lo.int8_activations = opt.activations == Activations::Int8;
  im.model = models::create_model(im.config, models::CheckpointSource(dir), lo);
  fill_info(im, lo.dtype, cpath);
  apply_adapter(im, opt);
  im.eos = eos_token_ids(generation_config, gpath, im.info.vocab_size);
  if (im.eos.empty()) im.eos = eos_token_ids(im.config, cpath, im.info.vocab_size);
  return m;
}

AutoModelForCausalLM AutoModelForCausalLM::from_config(const nlohmann::json& config,
                                                       const FromPretrainedOptions& opt, uint64_t seed) {
  const ThreadScope threads(opt.threads);
  AutoModelForCausalLM m;
  Impl& im = *m.impl_;
  im.threads = opt.threads;
  im.config = config;
  check_model_type(config, "config");
  models::LoadOptions lo;
  lo.quant = opt.quantization_config;
  lo.dtype = opt.dtype.value_or(checkpoint_dtype(config, "config"));
  lo.quiet = opt.quiet;
  lo.int8_activations = opt.activations == Activations::Int8;
  im.model = models::create_model(config, models::RandomSource(config, lo.dtype, seed), lo);
  fill_info(im, lo.dtype, "config");
  apply_adapter(im, opt);
  im.eos = eos_token_ids(config, "config", im.info.vocab_size);
  return m;
}

namespace {
void fill_info(AutoModelForCausalLM::Impl& im, DType dtype, const std::string& config_path) {
  const auto& c = *im.model;
  const jsonf::JsonPath root(config_path);
  im.info.model_type = jsonf::get_string(im.config, "model_type", root);
  if (const json* a = jsonf::find_array(im.config, "architectures", root); a && !a->empty())
    im.info.architecture = jsonf::as_string((*a)[0], (root / "architectures")[0]);
  im.info.num_layers = c.num_layers();
  im.info.hidden_size = c.hidden_size();
  im.info.vocab_size = c.vocab_size();
  im.info.dtype = dtype;
  im.refresh_info();
}
}  // namespace

std::vector<int32_t> AutoModelForCausalLM::default_eos_token_ids() const {
  return impl_->eos;
}

void AutoModelForCausalLM::save_pretrained(const std::string& dir, const SavePretrainedOptions& opt) const {
  const Impl& im = *impl_;
  if (!im.info.adapter.empty())
    throw NotSupportedError("save_pretrained: the model has a LoRA adapter attached (" + im.info.adapter +
                            "); write the merged model with `nibble merge` instead");
  AtomicDir out(dir, {.overwrite = opt.overwrite, .marker = "config.json", .source = im.dir});
  {
    CheckpointWriter w(out.path(), 5'000'000'000ull);
    for (const auto& [name, t] : im.model->state_dict()) w.add(name, t);
    w.finish();
  }
  json config = im.config;
  config.erase("quantization_config");
  if (const auto& q = im.model->quantization_config(); q && im.model->quantized())
    config["quantization_config"] = q->to_dict();
  config[config.contains("dtype") ? "dtype" : "torch_dtype"] = std::string(dtype_name(im.info.dtype));
  write_text_file((fs::path(out.path()) / "config.json").string(), python_json_dumps(config, 2, true) + "\n");
  copy_side_files(im.dir, out.path());
  out.commit();
}

void AutoModelForCausalLM::dequantize() {
  impl_->model->dequantize();
  impl_->config.erase("quantization_config");
  impl_->refresh_info();
}

void AutoModelForCausalLM::merge_and_unload(std::optional<DType> dtype) {
  Impl& im = *impl_;
  if (im.info.adapter.empty()) throw ValueError("merge_and_unload: the model has no adapter loaded");
  auto* llama = dynamic_cast<models::LlamaModel*>(im.model.get());
  if (!llama)
    throw NotSupportedError("merge_and_unload: LoRA adapters are supported for llama-family models only");
  models::merge_lora_adapters(*llama, dtype);
  if (dtype) {
    im.config.erase("quantization_config");
    im.info.dtype = *dtype;
  }
  im.info.adapter.clear();
  im.refresh_info();
}

size_t AutoModelForCausalLM::memory_footprint() const {
  return impl_->model->memory_footprint();
}
size_t AutoModelForCausalLM::decode_bytes_per_token() const {
  return impl_->model->decode_bytes_per_token();
}
const ModelInfo& AutoModelForCausalLM::info() const {
  return impl_->info;
}
int64_t AutoModelForCausalLM::max_position_embeddings() const {
  return impl_->model->max_position_embeddings();
}
std::vector<std::pair<std::string, int64_t>> AutoModelForCausalLM::kernel_paths(int64_t tokens) const {
  const auto m = impl_->model->kernel_paths(tokens);
  return {m.begin(), m.end()};
}
int AutoModelForCausalLM::threads() const {
  return impl_->threads;
}

}  // namespace nibble
