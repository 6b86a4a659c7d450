// AutoModelForCausalLM's state, shared by its loading half (src/models/auto_model.cpp) and its running half
// (src/generate: forward, generate, Session).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/causal_lm.h"
#include "nibble/model.h"

namespace nibble {

struct AutoModelForCausalLM::Impl {
  std::string dir;  // empty for from_config
  nlohmann::json config;
  std::vector<int32_t> eos;  // generation_config.json's eos_token_id, else config.json's (checked at load)
  std::unique_ptr<models::CausalLM> model;
  ModelInfo info;
  int threads = 0;  // 0 = OpenMP's default
  void refresh_info() {
    info.quantization_config = model->quantization_config();
    info.num_parameters = model->num_parameters();
  }
};

struct ModelAccess {
  static AutoModelForCausalLM::Impl& impl(AutoModelForCausalLM& m) { return *m.impl_; }
};

}  // namespace nibble
