// save_pretrained under SIGKILL: no CLI command saves a model, so a forked child of this test calls it and
// is killed at several moments. The directory is absent or complete (byte-identical to an uninterrupted
// save); with overwrite it is always the old or the new save; leftovers never accumulate.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "kill_util.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr int kLayers = 6;
#else
constexpr int kLayers = 10;
#endif

nlohmann::json llama_config() {
  return nlohmann::json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 256,
    "intermediate_size": 768, "max_position_embeddings": 256, "model_type": "llama", "num_attention_heads": 8,
    "num_hidden_layers": )" + std::to_string(kLayers) +
                               R"(, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "float32", "vocab_size": 4096})");
}

// "" if equal, else the first difference
std::string diff_dirs(const std::map<std::string, std::string>& a,
                      const std::map<std::string, std::string>& b) {
  for (const auto& [n, bytes] : a)
    if (!b.count(n) || b.at(n) != bytes) return n;
  for (const auto& [n, bytes] : b)
    if (!a.count(n)) return n;
  return "";
}

pid_t save_in_child(const AutoModelForCausalLM& m, const std::string& dir, bool overwrite) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    try {
      m.save_pretrained(dir, {.overwrite = overwrite});
    } catch (...) {
      ::_exit(1);
    }
    ::_exit(0);
  }
  return pid;
}

struct Trigger {
  std::string name;
  std::function<bool(const std::string& tmp, double t)> when;
};

std::vector<Trigger> triggers(double T) {
  std::vector<Trigger> v = {
      {"at once", [](auto&, double) { return true; }},
      {"temp dir", [](auto& tmp, double) { return fs::exists(tmp); }},
      {"spool", [](auto& tmp, double) { return fs::exists(tmp + "/.shard-0.spool"); }},
      {"safetensors", [](auto& tmp, double) { return test::has_file_starting(tmp, "model.safetensors"); }},
      {"config.json", [](auto& tmp, double) { return test::has_file_starting(tmp, "config.json"); }},
  };
  for (const double f : {0.1, 0.3, 0.5, 0.7, 0.9, 1.05})
    v.push_back(
        {"t=" + std::to_string(f).substr(0, 4) + "T", [T, f](auto&, double t) { return t >= f * T; }});
  return v;
}

}  // namespace

TEST(SavePretrainedKill, AbsentOrCompleteAndOverwriteOldOrNew) {
  FromPretrainedOptions o;
  o.quiet = true;
  const auto a = AutoModelForCausalLM::from_config(llama_config(), o, 1);
  const auto b = AutoModelForCausalLM::from_config(llama_config(), o, 2);
  test::TempDir d;
  const auto t0 = std::chrono::steady_clock::now();
  a.save_pretrained(d / "ref_a");
  const double T = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  b.save_pretrained(d / "ref_b");
  const auto ref_a = test::read_dir(d / "ref_a"), ref_b = test::read_dir(d / "ref_b");
  ASSERT_NE(diff_dirs(ref_a, ref_b), "");
  // identical model, identical bytes
  a.save_pretrained(d / "again");
  EXPECT_EQ(diff_dirs(test::read_dir(d / "again"), ref_a), "");
  // a non-empty directory is not replaced unless asked
  try {
    b.save_pretrained(d / "again");
    ADD_FAILURE() << "saved over a non-empty directory";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(diff_dirs(test::read_dir(d / "again"), ref_a), "");

  const std::string out = d / "out";
  for (const bool overwrite : {false, true}) {
    int mid_write = 0, complete = 0;
    for (const Trigger& tr : triggers(T)) {
      SCOPED_TRACE(tr.name + (overwrite ? " (overwrite)" : ""));
      fs::remove_all(out);
      if (overwrite) fs::copy(d / "ref_b", out);
      const pid_t pid = save_in_child(a, out, overwrite);
      const std::string tmp = test::tmp_of(out, pid);
      const test::KillResult r = test::kill_when(pid, [&](double t) { return tr.when(tmp, t); });
      if (!r.killed) {
        EXPECT_EQ(r.exit_code, 0);
      }
      const auto got = test::read_dir(out);
      if (overwrite) {
        EXPECT_TRUE(diff_dirs(got, ref_a).empty() || diff_dirs(got, ref_b).empty());
        mid_write += r.killed && diff_dirs(got, ref_b).empty() && fs::exists(tmp);
      } else if (fs::exists(out)) {
        EXPECT_EQ(diff_dirs(got, ref_a), "");
        ++complete;
      } else {
        mid_write += r.killed && fs::exists(tmp);
      }
      EXPECT_LE(test::temporaries_beside(out).size(), 1u);
    }
    std::cout << "[ save_pretrained" << (overwrite ? " --overwrite" : "") << ": " << mid_write
              << " killed mid-write, run time " << T << " s ]\n";
    EXPECT_GE(mid_write, 4);  // at least the four filesystem-state kill points land inside the save
    fs::remove_all(out);
    if (overwrite) fs::copy(d / "ref_b", out);
    a.save_pretrained(out, {.overwrite = overwrite});
    EXPECT_EQ(diff_dirs(test::read_dir(out), ref_a), "");
    EXPECT_TRUE(test::temporaries_beside(out).empty());
  }
}

TEST(SavePretrained, NotIntoTheDirectoryItCameFrom) {
  test::TempDir d;
  fs::copy(test::example_model(), d / "m");
  for (const auto& e : fs::directory_iterator(d / "m"))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  FromPretrainedOptions o;
  o.quiet = true;
  const auto m = AutoModelForCausalLM::from_pretrained(d / "m", o);
  const auto before = test::read_dir(d / "m");
  try {
    m.save_pretrained(d / "m", {.overwrite = true});
    ADD_FAILURE() << "saved over its own source";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("is the input directory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(diff_dirs(test::read_dir(d / "m"), before), "");
  // a model built in memory has no side files to copy, whatever the working directory holds
  const auto r = AutoModelForCausalLM::from_config(
      nlohmann::json::parse(test::read_bytes(test::example_model() + "/config.json")), o, 3);
  const fs::path cwd = fs::current_path();
  fs::current_path(d / "m");  // holds tokenizer.json and generation_config.json
  r.save_pretrained(d / "r");
  fs::current_path(cwd);
  EXPECT_FALSE(fs::exists(d / "r/tokenizer.json"));
  EXPECT_TRUE(fs::exists(d / "r/config.json"));
}
