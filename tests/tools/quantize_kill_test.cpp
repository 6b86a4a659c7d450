// `nibble quantize` under SIGKILL at many moments of a real run: the output directory is absent or complete
// and byte-identical to an uninterrupted run, a later run leaves no stray temporaries, and --overwrite
// always leaves the old or the new complete output in place. Also: identical input gives byte-identical
// output, and side files are written fresh (not read-only like the example model's files).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "kill_util.h"
#include "nibble/safetensors.h"
#include "test_util.h"

extern char** environ;

using namespace nibble;
namespace fs = std::filesystem;

namespace {

pid_t spawn_cli(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv_s{NIBBLE_CLI};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, NIBBLE_CLI, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(rc, 0) << std::strerror(rc);
  return pid;
}

// Runs to completion; returns the exit code, stderr in *err.
int run_cli(const std::vector<std::string>& args, const std::string& log, std::string* err = nullptr) {
  const pid_t pid = spawn_cli(args, log);
  const test::KillResult r = test::kill_when(pid, [](double) { return false; });
  if (err) *err = test::read_bytes(log);
  return r.exit_code;
}

// "" if the two directories hold the same files with the same bytes, else the first difference.
std::string diff_dirs(const std::map<std::string, std::string>& a,
                      const std::map<std::string, std::string>& b) {
  for (const auto& [n, bytes] : a) {
    auto it = b.find(n);
    if (it == b.end()) return n + " only in the first";
    if (it->second != bytes)
      return n + " differs (" + std::to_string(bytes.size()) + " vs " + std::to_string(it->second.size()) +
             " bytes)";
  }
  for (const auto& [n, bytes] : b)
    if (!a.count(n)) return n + " only in the second";
  return "";
}

// A llama-shaped fp32 checkpoint with random weights, large enough that quantizing it takes a while, plus a
// big tokenizer.json so that copying the side files is a phase a kill can land in.
void write_synthetic_llama(const std::string& dir, int layers, int hidden, int inter, int vocab,
                           size_t tokenizer_bytes) {
  fs::create_directories(dir);
  test::write_bytes(dir + "/config.json",
                    "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": " + std::to_string(hidden) +
                        ", \"intermediate_size\": " + std::to_string(inter) +
                        ", \"max_position_embeddings\": 256, \"model_type\": \"llama\", "
                        "\"num_attention_heads\": 8, \"num_hidden_layers\": " +
                        std::to_string(layers) +
                        ", \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, "
                        "\"tie_word_embeddings\": false, \"torch_dtype\": \"float32\", \"vocab_size\": " +
                        std::to_string(vocab) + "}\n");
  test::write_bytes(dir + "/generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n");
  test::write_bytes(dir + "/tokenizer.json", "{\"pad\": \"" + std::string(tokenizer_bytes, 'x') + "\"}\n");
  test::write_bytes(dir + "/tokenizer_config.json", "{}\n");
  uint64_t s = 0x9e3779b97f4a7c15ull;
  auto rnd = [&](Shape shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      x = static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) * (0.05f / (1 << 23));
    }
    return Tensor::from_vector(DType::Float32, shape, v);
  };
  NamedTensors t;
  t.emplace_back("model.embed_tokens.weight", rnd({vocab, hidden}));
  t.emplace_back("lm_head.weight", rnd({vocab, hidden}));
  t.emplace_back("model.norm.weight", rnd({hidden}));
  const int64_t kv = hidden / 2;
  for (int i = 0; i < layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    t.emplace_back(p + ".input_layernorm.weight", rnd({hidden}));
    t.emplace_back(p + ".post_attention_layernorm.weight", rnd({hidden}));
    t.emplace_back(p + ".self_attn.q_proj.weight", rnd({hidden, hidden}));
    t.emplace_back(p + ".self_attn.k_proj.weight", rnd({kv, hidden}));
    t.emplace_back(p + ".self_attn.v_proj.weight", rnd({kv, hidden}));
    t.emplace_back(p + ".self_attn.o_proj.weight", rnd({hidden, hidden}));
    t.emplace_back(p + ".mlp.gate_proj.weight", rnd({inter, hidden}));
    t.emplace_back(p + ".mlp.up_proj.weight", rnd({inter, hidden}));
    t.emplace_back(p + ".mlp.down_proj.weight", rnd({hidden, inter}));
  }
  save_safetensors(dir + "/model.safetensors", t, {{"format", "pt"}});
}

#if defined(__SANITIZE_ADDRESS__)
constexpr int kLayers = 6;  // the sanitized CLI is several times slower
#else
constexpr int kLayers = 10;
#endif

struct Trigger {
  std::string name;
  std::function<bool(const std::string& tmp, const std::string& out, double t)> when;
};

// Kill points: filesystem states of the run (polled), then fixed fractions of an uninterrupted run's time.
std::vector<Trigger> triggers(double T) {
  std::vector<Trigger> v = {
      {"at once", [](auto&, auto&, double) { return true; }},
      {"temp dir", [](auto& tmp, auto&, double) { return fs::exists(tmp); }},
      {"first spool", [](auto& tmp, auto&, double) { return fs::exists(tmp + "/.shard-0.spool"); }},
      {"third spool", [](auto& tmp, auto&, double) { return fs::exists(tmp + "/.shard-2.spool"); }},
      {"first shard file",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "model-00001"); }},
      {"second shard file",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "model-00002"); }},
      {"index",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "model.safetensors.index"); }},
      {"config.json", [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "config.json"); }},
      {"generation_config",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "generation_config.json"); }},
      {"tokenizer.json started",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "tokenizer.json.tmp."); }},
      {"tokenizer.json done", [](auto& tmp, auto&, double) { return fs::exists(tmp + "/tokenizer.json"); }},
      {"tokenizer_config",
       [](auto& tmp, auto&, double) { return test::has_file_starting(tmp, "tokenizer_config"); }},
      {"output appeared", [](auto&, auto& out, double) { return fs::exists(out); }},
  };
  for (const double f : {0.1, 0.3, 0.5, 0.7, 0.9, 1.05})
    v.push_back(
        {"t=" + std::to_string(f).substr(0, 4) + "T", [T, f](auto&, auto&, double t) { return t >= f * T; }});
  return v;
}

class QuantizeKill : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    write_synthetic_llama(*dir_ / "in", kLayers, 256, 768, 4096, 12u << 20);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::TempDir* dir_;
};
test::TempDir* QuantizeKill::dir_ = nullptr;

TEST_F(QuantizeKill, OutputAbsentOrCompleteAndNoTemporariesAccumulate) {
  const test::TempDir& d = *dir_;
  const std::vector<std::string> args = {
      "quantize", d / "in", "", "--quant-type", "nf4", "--double-quant", "--max-shard-size", "2MB", "-q"};
  auto with_out = [&](const std::string& out) {
    auto a = args;
    a[2] = out;
    return a;
  };
  // two uninterrupted runs: the reference bytes (identical both times) and the time scale for the kill
  // points (the second run's, with the input in the page cache like the runs that follow)
  std::string err;
  ASSERT_EQ(run_cli(with_out(d / "ref"), d / "ref.log", &err), 0) << err;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(run_cli(with_out(d / "ref2"), d / "ref.log", &err), 0) << err;
  const double T = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto ref = test::read_dir(d / "ref");
  EXPECT_EQ(diff_dirs(test::read_dir(d / "ref2"), ref), "");
  ASSERT_GT(ref.size(), 5u);  // several shards + index + config + side files
  ASSERT_TRUE(ref.count("model.safetensors.index.json"));
  ASSERT_EQ(run_cli({"info", d / "ref"}, d / "info.log", &err), 0) << err;  // loadable

  const std::string out = d / "out";
  int mid_write = 0, complete = 0;
  std::string hits;
  for (const Trigger& tr : triggers(T)) {
    SCOPED_TRACE(tr.name);
    const pid_t pid = spawn_cli(with_out(out), d / "run.log");
    const std::string tmp = test::tmp_of(out, pid);
    const test::KillResult r = test::kill_when(pid, [&](double t) { return tr.when(tmp, out, t); });
    if (!r.killed) {
      EXPECT_EQ(r.exit_code, 0) << test::read_bytes(d / "run.log");
    }
    const bool present = fs::exists(out);
    if (present) {
      EXPECT_EQ(diff_dirs(test::read_dir(out), ref), "");  // complete, and the same bytes as the reference
      ++complete;
    } else if (r.killed && fs::exists(tmp)) {
      ++mid_write;
      hits += " " + tr.name;
    }
    // the killed run's temporary at most: earlier runs' leftovers were removed by the runs after them
    const auto temps = test::temporaries_beside(out);
    EXPECT_LE(temps.size(), 1u);
    if (!temps.empty()) {
      EXPECT_EQ(temps[0], fs::path(tmp).filename().string());
    }
    fs::remove_all(out);
  }
  std::cout << "[ killed mid-write:" << hits << " ] " << mid_write << " mid-write, " << complete
            << " complete, run time " << T << " s\n";
  // the kills landed inside the write, not only before or after it
  EXPECT_GE(mid_write, 10);
  EXPECT_GE(complete, 1);

  ASSERT_EQ(run_cli(with_out(out), d / "run.log", &err), 0) << err;
  EXPECT_EQ(diff_dirs(test::read_dir(out), ref), "");
  EXPECT_TRUE(test::temporaries_beside(out).empty());
}

TEST_F(QuantizeKill, OverwriteLeavesOldOrNewNeverNeither) {
  const test::TempDir& d = *dir_;
  std::string err;
  // the existing output: another quantization of the same model
  ASSERT_EQ(run_cli({"quantize", d / "in", d / "old", "--quant-type", "fp4", "-q"}, d / "log", &err), 0)
      << err;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(run_cli({"quantize", d / "in", d / "new", "--quant-type", "nf4", "--max-shard-size", "2MB", "-q"},
                    d / "log", &err),
            0)
      << err;
  const double T = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto old_files = test::read_dir(d / "old"), new_files = test::read_dir(d / "new");
  ASSERT_NE(diff_dirs(old_files, new_files), "");

  const std::string out = d / "ow";
  // without --overwrite: refused, naming the directory and the flag
  fs::copy(d / "old", out);
  EXPECT_NE(run_cli({"quantize", d / "in", out, "-q"}, d / "log", &err), 0);
  EXPECT_NE(err.find(out + ": already exists and is not empty"), std::string::npos) << err;
  EXPECT_NE(err.find("--overwrite"), std::string::npos) << err;
  EXPECT_EQ(diff_dirs(test::read_dir(out), old_files), "");

  int old_seen = 0, new_seen = 0, mid_write = 0;
  for (const Trigger& tr : triggers(T)) {
    SCOPED_TRACE(tr.name);
    fs::remove_all(out);
    fs::copy(d / "old", out);
    const pid_t pid = spawn_cli(
        {"quantize", d / "in", out, "--quant-type", "nf4", "--max-shard-size", "2MB", "-q", "--overwrite"},
        d / "run.log");
    const std::string tmp = test::tmp_of(out, pid);
    // "output appeared" here means: the new output (the only one with an index) is in place
    const test::KillResult r = test::kill_when(pid, [&](double t) {
      return tr.name == "output appeared" ? fs::exists(out + "/model.safetensors.index.json")
                                          : tr.when(tmp, out, t);
    });
    if (!r.killed) {
      EXPECT_EQ(r.exit_code, 0) << test::read_bytes(d / "run.log");
    }
    const auto got = test::read_dir(out);
    const bool is_old = diff_dirs(got, old_files).empty(), is_new = diff_dirs(got, new_files).empty();
    EXPECT_TRUE(is_old || is_new) << "old: " << diff_dirs(got, old_files)
                                  << "; new: " << diff_dirs(got, new_files);
    old_seen += is_old;
    new_seen += is_new;
    mid_write += r.killed && is_old && fs::exists(tmp);
    EXPECT_LE(test::temporaries_beside(out).size(), 1u);
  }
  std::cout << "[ overwrite: " << old_seen << " old, " << new_seen << " new, " << mid_write
            << " mid-write ]\n";
  EXPECT_GE(mid_write, 8);
  EXPECT_GE(new_seen, 1);

  fs::remove_all(out);
  fs::copy(d / "old", out);
  ASSERT_EQ(run_cli({"quantize", d / "in", out, "--quant-type", "nf4", "--max-shard-size", "2MB", "-q",
                     "--overwrite"},
                    d / "log", &err),
            0)
      << err;
  EXPECT_EQ(diff_dirs(test::read_dir(out), new_files), "");
  EXPECT_TRUE(test::temporaries_beside(out).empty());
}

}  // namespace

TEST(QuantizeOutput, ByteIdenticalAcrossRuns) {
  test::TempDir d;
  for (const std::vector<std::string>& flags :
       std::vector<std::vector<std::string>>{{"--quant-type", "nf4", "--double-quant"},
                                             {"--quant-type", "fp4", "--blocksize", "128", "--dtype",
                                              "bfloat16", "--max-shard-size", "100KB"}}) {
    std::vector<std::string> a = {"quantize", test::example_model(), d / "a", "-q"}, b = a;
    b[2] = d / "b";
    a.insert(a.end(), flags.begin(), flags.end());
    b.insert(b.end(), flags.begin(), flags.end());
    std::string err;
    ASSERT_EQ(run_cli(a, d / "log", &err), 0) << err;
    ASSERT_EQ(run_cli(b, d / "log", &err), 0) << err;
    const auto fa = test::read_dir(d / "a"), fb = test::read_dir(d / "b");
    EXPECT_GE(fa.size(), 5u);
    EXPECT_EQ(diff_dirs(fa, fb), "");
    fs::remove_all(d / "a");
    fs::remove_all(d / "b");
  }
}

TEST(QuantizeOutput, FilesWrittenFreshNotReadOnly) {
  // the example model's files are read-only (0444); the output's must not be
  test::TempDir d;
  ASSERT_EQ(::chmod(d.str().c_str(), 0755), 0);
  const mode_t old_mask = ::umask(022);
  std::string err;
  const int rc = run_cli({"quantize", test::example_model(), d / "out", "-q"}, d / "log", &err);
  ::umask(old_mask);
  ASSERT_EQ(rc, 0) << err;
  struct stat st {};
  bool saw_readonly_source = false;
  for (const auto& e : fs::directory_iterator(d / "out")) {
    ASSERT_EQ(::stat(e.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u) << e.path();
    struct stat src {};
    if (::stat((test::example_model() + "/" + e.path().filename().string()).c_str(), &src) == 0 &&
        (src.st_mode & 0222) == 0)
      saw_readonly_source = true;
  }
  EXPECT_TRUE(saw_readonly_source);  // the test means something only if a source file was read-only
  ASSERT_EQ(::stat((d / "out").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST(QuantizeOutput, OverwriteRefusesWhatIsNotAnOutput) {
  test::TempDir d;
  std::string err;
  // the input directory itself
  fs::copy(test::example_model(), d / "in");
  for (const auto& e : fs::directory_iterator(d / "in"))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  const auto in_files = test::read_dir(d / "in");
  EXPECT_NE(run_cli({"quantize", d / "in", d / "in", "--overwrite", "-q"}, d / "log", &err), 0);
  EXPECT_NE(err.find("is the input directory"), std::string::npos) << err;
  EXPECT_EQ(diff_dirs(test::read_dir(d / "in"), in_files), "");
  // a regular file
  test::write_bytes(d / "file", "precious");
  EXPECT_NE(run_cli({"quantize", d / "in", d / "file", "--overwrite", "-q"}, d / "log", &err), 0);
  EXPECT_NE(err.find("not a directory"), std::string::npos) << err;
  EXPECT_EQ(test::read_bytes(d / "file"), "precious");
  // a directory that is not a model directory
  fs::create_directories(d / "docs");
  test::write_bytes(d / "docs/notes.txt", "mine");
  EXPECT_NE(run_cli({"quantize", d / "in", d / "docs", "--overwrite", "-q"}, d / "log", &err), 0);
  EXPECT_NE(err.find("has no config.json"), std::string::npos) << err;
  EXPECT_EQ(test::read_bytes(d / "docs/notes.txt"), "mine");
  for (const char* n : {"in", "file", "docs"}) EXPECT_TRUE(test::temporaries_beside(d / n).empty()) << n;
}
