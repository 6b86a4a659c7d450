#include "train/adapter_io.h"

#include <filesystem>
#include <set>

#include "core/python_json.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_field.h"
#include "nibble/error.h"
#include "nibble/safetensors.h"

namespace nibble::train {
namespace fs = std::filesystem;

std::string adapter_config_json(const LoraModel& lm, const std::string& base_model) {
  const LoraSpec& s = lm.spec();
  nlohmann::json targets = nlohmann::json::array();
  if (s.target_modules.size() == 1 && s.target_modules[0] == "all-linear") {
    // the layers' own names, as peft resolves "all-linear" to a set of suffixes
    std::set<std::string> names;
    for (const auto& m : lm.modules()) names.insert(m.name.substr(m.name.rfind('.') + 1));
    for (const auto& n : names) targets.push_back(n);
  } else {
    for (const auto& t : s.target_modules) targets.push_back(t);
  }
  // the fields of peft's LoraConfig that every peft since 0.7 knows, with peft's defaults where nibble has
  // no such option
  nlohmann::json j = {{"alpha_pattern", nlohmann::json::object()},
                      {"auto_mapping", nullptr},
                      {"base_model_name_or_path", base_model},
                      {"bias", "none"},
                      {"fan_in_fan_out", false},
                      {"inference_mode", true},
                      {"init_lora_weights", true},
                      {"layer_replication", nullptr},
                      {"layers_pattern", nullptr},
                      {"layers_to_transform", nullptr},
                      {"loftq_config", nlohmann::json::object()},
                      {"lora_alpha", s.alpha},
                      {"lora_dropout", s.dropout},
                      {"megatron_config", nullptr},
                      {"megatron_core", "megatron.core"},
                      {"modules_to_save", nullptr},
                      {"peft_type", "LORA"},
                      {"r", s.r},
                      {"rank_pattern", nlohmann::json::object()},
                      {"revision", nullptr},
                      {"target_modules", targets},
                      {"task_type", "CAUSAL_LM"},
                      {"use_dora", false},
                      {"use_rslora", false}};
  // lora_alpha is an int in peft's config when it is a whole number
  if (s.alpha == static_cast<double>(static_cast<int64_t>(s.alpha)))
    j["lora_alpha"] = static_cast<int64_t>(s.alpha);
  return python_json_dumps(j, 2, true);
}

namespace {
void write_files(const LoraModel& lm, const std::string& dir, const std::string& base_model,
                 const SaveAdapterOptions& opt) {
  NamedTensors t;
  for (const auto& m : lm.modules()) {
    const nn::LoraLinear& L = *m.lin;
    t.emplace_back(models::peft_lora_key(m.name, 'A'),
                   Tensor::from_vector(DType::Float32, {L.r, L.in_features}, L.A));
    t.emplace_back(models::peft_lora_key(m.name, 'B'),
                   Tensor::from_vector(DType::Float32, {L.out_features, L.r}, L.B));
  }
  save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), t);
  if (opt.optimizer) {
    save_safetensors((fs::path(dir) / "optimizer.safetensors").string(), opt.optimizer->state());
    nlohmann::ordered_json st;
    st["global_step"] = opt.step;
    write_text_file((fs::path(dir) / "trainer_state.json").string(), python_json_dumps(st, 2) + "\n");
  }
  // the config last: a reader looks for it first
  write_text_file((fs::path(dir) / "adapter_config.json").string(), adapter_config_json(lm, base_model));
}
}  // namespace

void save_adapter(const LoraModel& lm, const std::string& dir, const std::string& base_model,
                  const SaveAdapterOptions& opt) {
  if (opt.into_existing) {
    fs::create_directories(dir);
    write_files(lm, dir, base_model, opt);
    return;
  }
  AtomicDir out(dir, {.overwrite = opt.overwrite, .marker = "adapter_config.json", .source = {}});
  write_files(lm, out.path(), base_model, opt);
  out.commit();
}

int64_t load_adapter_into(LoraModel& lm, const models::LoraAdapter& a, Optimizer* opt) {
  std::set<std::string> want, have;
  for (const auto& m : lm.modules()) want.insert(m.name);
  for (const auto& m : a.modules) have.insert(m.name);
  if (want != have) {
    for (const auto& n : have)
      if (!want.count(n))
        throw FormatError(a.dir + ": the adapter adapts '" + n + "', which the training does not target");
    for (const auto& n : want)
      if (!have.count(n)) throw FormatError(a.dir + ": the adapter has no weights for '" + n + "'");
  }
  for (auto& m : lm.modules())
    for (const auto& am : a.modules) {
      if (am.name != m.name) continue;
      nn::LoraLinear& L = *m.lin;
      if (am.r != L.r || am.A.dim(1) != L.in_features || am.B.dim(0) != L.out_features)
        throw FormatError(a.dir + ": module '" + m.name + "': lora_A " + shape_str(am.A.shape()) +
                          " and lora_B " + shape_str(am.B.shape()) +
                          " do not fit r = " + std::to_string(L.r) + " over a " +
                          std::to_string(L.out_features) + " x " + std::to_string(L.in_features) + " layer");
      L.A = am.A.to_float_vector();
      L.B = am.B.to_float_vector();
    }
  const fs::path os = fs::path(a.dir) / "optimizer.safetensors", ts = fs::path(a.dir) / "trainer_state.json";
  if (!fs::exists(os) || !fs::exists(ts)) return 0;
  const auto state = read_json_file(ts.string());
  const int64_t step = jsonf::get_int(state, "global_step", jsonf::JsonPath(ts.string()), {0, INT64_MAX});
  if (opt) {
    const SafetensorsFile f = SafetensorsFile::open(os.string());
    NamedTensors t;
    for (const auto& info : f.tensors()) t.emplace_back(info.name, f.get(info.name));
    opt->load_state(t);
  }
  return step;
}

}  // namespace nibble::train
