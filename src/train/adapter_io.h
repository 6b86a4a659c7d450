// A LoraModel's adapter written as peft's save_pretrained writes it (adapter_config.json +
// adapter_model.safetensors, float32 weights under base_model.model.<module>.lora_{A,B}.weight), resumable
// training checkpoints beside it, and an adapter read back into a LoraModel.
#pragma once
#include <cstdint>
#include <string>

#include "models/lora_adapter.h"
#include "train/lora_model.h"
#include "train/optim.h"

namespace nibble::train {

struct SaveAdapterOptions {
  bool overwrite = false;
  // a training checkpoint: also the optimizer's state (optimizer.safetensors) and the step
  // (trainer_state.json)
  const Optimizer* optimizer = nullptr;
  int64_t step = 0;
  // write the files into an existing directory (one file at a time, each atomically) instead of building a
  // new directory and swapping it in: the final adapter beside the checkpoint-N directories of a run
  bool into_existing = false;
};

// peft's adapter_config.json for this model's adapter (keys sorted, indent 2, as peft writes it).
std::string adapter_config_json(const LoraModel& lm, const std::string& base_model);

void save_adapter(const LoraModel& lm, const std::string& dir, const std::string& base_model,
                  const SaveAdapterOptions& opt = {});

// Copies an adapter's weights into lm, whose adapted modules and ranks must be the adapter's (FormatError
// naming the module otherwise); a checkpoint's optimizer state goes into `opt` (if given). Returns the
// checkpoint's step (0 for a plain adapter).
int64_t load_adapter_into(LoraModel& lm, const models::LoraAdapter& adapter, Optimizer* opt);

}  // namespace nibble::train
