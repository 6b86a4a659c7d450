// Subcommand registration: each add_* adds one subcommand (its own file) with a callback that runs it.
#pragma once
#include <CLI/CLI.hpp>

namespace nibble::cli {
void add_quantize(CLI::App& app);
void add_config(CLI::App& app);
void add_generate(CLI::App& app);
void add_info(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_bench(CLI::App& app);
inline void register_all(CLI::App& app) {
  add_generate(app);
  add_quantize(app);
  add_info(app);
  add_perplexity(app);
  add_bench(app);
  add_config(app);
}
}  // namespace nibble::cli
