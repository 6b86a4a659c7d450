#include <omp.h>

#include <cstdio>
#include <filesystem>

#include "generate/sampling.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "models/llama.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/models.h"
#include "nibble/python_json.h"

namespace nibble {
namespace fs = std::filesystem;
using nlohmann::json;

struct AutoModelForCausalLM::Impl {
  std::string dir;
  json config, generation_config;
  std::unique_ptr<models::LlamaModel> model;
  ModelInfo info;
  void refresh_info() {
    info.quantization_config = model->quantization_config();
    info.num_parameters = model->num_parameters();
  }
};

AutoModelForCausalLM::AutoModelForCausalLM() : impl_(std::make_unique<Impl>()) {}
AutoModelForCausalLM::AutoModelForCausalLM(AutoModelForCausalLM&&) noexcept = default;
AutoModelForCausalLM& AutoModelForCausalLM::operator=(AutoModelForCausalLM&&) noexcept = default;
AutoModelForCausalLM::~AutoModelForCausalLM() = default;

namespace {
void fill_info(AutoModelForCausalLM::Impl& im, DType dtype);
}  // namespace

AutoModelForCausalLM AutoModelForCausalLM::from_pretrained(const std::string& dir,
                                                           const FromPretrainedOptions& opt) {
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  AutoModelForCausalLM m;
  Impl& im = *m.impl_;
  im.dir = dir;
  const std::string cpath = (fs::path(dir) / "config.json").string();
  im.config = read_json_file(cpath);
  check_model_type(im.config, cpath);
  const std::string gpath = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gpath)) im.generation_config = read_json_file(gpath);
  if (im.config.contains("quantization_config") && opt.quantization_config && !opt.quiet)
    std::fprintf(
        stderr,
        "nibble: warning: You passed `quantization_config` or equivalent parameters to `from_pretrained` but "
        "the model you're loading already has a `quantization_config` attribute. The `quantization_config` "
        "from the model will be used.\n");
  models::LlamaModel::LoadOptions lo;
  lo.quant = opt.quantization_config;
  lo.dtype = opt.dtype.value_or(checkpoint_dtype(im.config, cpath));
  lo.quiet = opt.quiet;
  im.model = std::make_unique<models::LlamaModel>(im.config, models::CheckpointSource(dir), lo);
  fill_info(im, lo.dtype);
  return m;
}

AutoModelForCausalLM AutoModelForCausalLM::from_config(const nlohmann::json& config,
                                                       const FromPretrainedOptions& opt, uint64_t seed) {
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  AutoModelForCausalLM m;
  Impl& im = *m.impl_;
  im.config = config;
  check_model_type(config, "config");
  models::LlamaModel::LoadOptions lo;
  lo.quant = opt.quantization_config;
  lo.dtype = opt.dtype.value_or(checkpoint_dtype(config, "config"));
  lo.quiet = opt.quiet;
  im.model = std::make_unique<models::LlamaModel>(config, models::RandomSource(config, lo.dtype, seed), lo);
  fill_info(im, lo.dtype);
  return m;
}

namespace {
void fill_info(AutoModelForCausalLM::Impl& im, DType dtype) {
  const auto& c = im.model->config();
  im.info.model_type = c.model_type;
  if (im.config.contains("architectures") && im.config["architectures"].is_array() &&
      !im.config["architectures"].empty())
    im.info.architecture = im.config["architectures"][0].get<std::string>();
  im.info.num_layers = c.layers;
  im.info.hidden_size = c.hidden;
  im.info.vocab_size = c.vocab;
  im.info.dtype = dtype;
  im.refresh_info();
}
}  // namespace

std::vector<float> AutoModelForCausalLM::forward(const std::vector<int32_t>& ids) const {
  auto cache = impl_->model->new_cache();
  std::vector<float> logits;
  impl_->model->forward(ids, cache, true, logits);
  return logits;
}

std::vector<int32_t> AutoModelForCausalLM::default_eos_token_ids() const {
  std::vector<int32_t> eos;
  for (const json* src : {&impl_->generation_config, &impl_->config}) {
    if (!src->is_object() || !src->contains("eos_token_id")) continue;
    const json& e = (*src)["eos_token_id"];
    if (e.is_number_integer()) eos.push_back(e.get<int32_t>());
    if (e.is_array())
      for (const auto& x : e) eos.push_back(x.get<int32_t>());
    if (!eos.empty()) break;
  }
  return eos;
}

std::vector<int32_t> AutoModelForCausalLM::generate(const std::vector<int32_t>& input_ids,
                                                    const GenerationConfig& cfg,
                                                    const std::function<void(int32_t)>& on_token) const {
  if (input_ids.empty()) throw ValueError("generate: input_ids is empty");
  if (cfg.max_new_tokens < 0) throw ValueError("max_new_tokens must be >= 0");
  const auto& model = *impl_->model;
  const std::vector<int32_t> eos = cfg.eos_token_id.empty() ? default_eos_token_ids() : cfg.eos_token_id;
  const int64_t V = model.config().vocab;
  std::mt19937_64 rng(cfg.seed);
  auto cache = model.new_cache();
  std::vector<int32_t> out = input_ids;
  std::vector<float> logits;
  model.forward(input_ids, cache, false, logits);
  for (int i = 0; i < cfg.max_new_tokens; ++i) {
    const int32_t next = cfg.do_sample
                             ? gen::sample(logits.data(), V, {cfg.temperature, cfg.top_k, cfg.top_p}, rng)
                             : gen::argmax(logits.data(), V);
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (cache.length >= model.config().max_positions) break;
    if (i + 1 < cfg.max_new_tokens) model.forward({next}, cache, false, logits);
  }
  return out;
}

void AutoModelForCausalLM::save_pretrained(const std::string& dir, const SavePretrainedOptions& opt) const {
  const Impl& im = *impl_;
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
  return impl_->model->config().max_positions;
}

}  // namespace nibble
