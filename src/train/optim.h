// Optimizers, learning-rate schedules and gradient clipping over LoRA parameters, as torch.optim and
// transformers' get_scheduler compute them (float32 state, the same operation order).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nibble/tensor.h"
#include "train/lora_model.h"

namespace nibble::train {

// transformers' get_scheduler(name, num_warmup_steps, num_training_steps): the multiplier of the base
// learning rate at optimizer step `step` (0 for the first step).
double schedule_factor(const std::string& name, int64_t step, int64_t warmup, int64_t total);
void check_scheduler_name(const std::string& name);

// torch.nn.utils.clip_grad_norm_: the total norm (of the per-tensor norms) before clipping; when max_norm > 0
// every gradient is multiplied by min(1, max_norm / (total + 1e-6)).
double clip_grad_norm(std::vector<LoraModule>& modules, double max_norm);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every module's A and B from their gradients at learning rate lr.
  virtual void step(std::vector<LoraModule>& modules, double lr) = 0;
  // State for a resumable checkpoint (tensors named "<module>.<A|B>.<state>"), and back.
  virtual NamedTensors state() const = 0;
  virtual void load_state(const NamedTensors& state) = 0;
};

struct OptimizerOptions {
  // adamw_torch (torch.optim.AdamW), sgd (torch.optim.SGD), adamw_8bit / paged_adamw_8bit (bitsandbytes'
  // AdamW with 8-bit blockwise state)
  std::string name = "adamw_torch";
  double weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};
std::unique_ptr<Optimizer> make_optimizer(const OptimizerOptions& o, const std::vector<LoraModule>& modules);

}  // namespace nibble::train
