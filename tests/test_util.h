// Helpers shared by the tests: temporary directories, raw file writing, paths to data, comparing logits.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>

namespace nibble::test {

// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("nibble-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

#ifdef NIBBLE_CLI
// The nibble CLI run with `args` (a shell command line's tail): exit code, stdout, stderr.
struct CliResult {
  int code;
  std::string out, err;
};
inline CliResult run_cli(const std::string& args) {
  TempDir d;
  const int rc =
      std::system((std::string(NIBBLE_CLI) + " " + args + " >" + (d / "o") + " 2>" + (d / "e")).c_str());
  return {WEXITSTATUS(rc), read_bytes(d / "o"), read_bytes(d / "e")};
}
#endif

inline std::string shared_dir() {
  return NIBBLE_SHARED_DIR;
}
inline std::string golden_dir() {
  return NIBBLE_TEST_DATA;
}
inline std::string example_model() {
  return shared_dir() + "/models/tinystories-656k";
}

// A plain chat template for the example model (which ships none): "role: content" lines after BOS, then
// "assistant:".
inline const char* kSimpleChatTemplate =
    "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] | trim }}\n{% endfor %}{% if "
    "add_generation_prompt %}assistant:{% endif %}";

// Makes `dir` the example model with a chat template: its weights and tokenizer symlinked, its
// tokenizer_config.json copied with "chat_template" set. Returns dir.
inline std::string write_chat_model(const std::string& dir, const std::string& chat_template) {
  namespace fs = std::filesystem;
  const fs::path src = example_model();
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
    fs::create_symlink(src / f, fs::path(dir) / f);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(src / "tokenizer_config.json"));
  cfg["chat_template"] = chat_template;
  std::ofstream(fs::path(dir) / "tokenizer_config.json") << cfg.dump();
  return dir;
}

// Largest |a[i] - b[i]|; different sizes are a test failure (compared over the shorter).
inline double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

}  // namespace nibble::test
