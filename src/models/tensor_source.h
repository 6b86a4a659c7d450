// Where a model's tensors come from: a checkpoint on disk, or random weights generated on demand
// (AutoModelForCausalLM::from_config, used by `nibble bench --synthetic`).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "nibble/safetensors.h"

namespace nibble::models {

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool contains(const std::string& name) const = 0;
  virtual Tensor get(const std::string& name) const = 0;
  // Names the file (or source) holding `name`, for error messages.
  virtual std::string where(const std::string& name) const = 0;
  virtual std::string label() const = 0;
  // The caller is done with `name`: drop it from resident memory if possible.
  virtual void release(const std::string&) const {}
};

class CheckpointSource final : public TensorSource {
 public:
  explicit CheckpointSource(const std::string& dir) : ck_(Checkpoint::open(dir)) {}
  bool contains(const std::string& n) const override { return ck_.contains(n); }
  Tensor get(const std::string& n) const override { return ck_.get(n); }
  std::string where(const std::string& n) const override {
    return ck_.contains(n) ? ck_.file_of(n) : ck_.dir();
  }
  std::string label() const override { return ck_.dir(); }
  void release(const std::string& n) const override { ck_.release(n); }

 private:
  Checkpoint ck_;
};

// Random weights of the shapes a llama-family config implies, in `dtype`; norms are 1.0. Linear weights are
// roughly N(0, 0.02)-scaled so quantization sees realistic magnitudes.
class RandomSource final : public TensorSource {
 public:
  RandomSource(const nlohmann::json& config, DType dtype, uint64_t seed);
  bool contains(const std::string& n) const override;
  Tensor get(const std::string& n) const override;
  std::string where(const std::string&) const override { return "random weights"; }
  std::string label() const override { return "random weights"; }

 private:
  Shape shape_of(const std::string& n) const;
  nlohmann::json config_;
  DType dtype_;
  uint64_t seed_;
};

}  // namespace nibble::models
