// Subcommand registration: each add_* adds one subcommand (its own file) with a callback that runs it.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace nibble::cli {
void add_quantize(CLI::App& app);
void add_config(CLI::App& app);
void add_generate(CLI::App& app);
void add_info(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_bench(CLI::App& app);
void add_serve(CLI::App& app);
void add_chat(CLI::App& app);
void add_finetune(CLI::App& app);
void add_merge(CLI::App& app);
// "avx2 x14, reference x1": the kernel paths of AutoModelForCausalLM::kernel_paths and their layer counts.
inline std::string describe_kernels(const std::vector<std::pair<std::string, int64_t>>& paths) {
  std::string s;
  for (const auto& [path, n] : paths) s += (s.empty() ? "" : ", ") + path + " x" + std::to_string(n);
  return s;
}

inline void register_all(CLI::App& app) {
  add_generate(app);
  add_quantize(app);
  add_info(app);
  add_perplexity(app);
  add_bench(app);
  add_config(app);
  add_serve(app);
  add_chat(app);
  add_finetune(app);
  add_merge(app);
}
}  // namespace nibble::cli
