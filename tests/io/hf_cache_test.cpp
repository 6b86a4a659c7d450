// Model ids resolved offline in a HuggingFace hub cache laid out as huggingface_hub writes it (refs/,
// snapshots/ of symlinks into blobs/): which cache directory, which revision, what wins over an id, and the
// errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <vector>

#include "fake_hf_cache.h"
#include "nibble/error.h"
#include "nibble/hub.h"
#include "nibble/model.h"
#include "nibble/quantize_checkpoint.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
// The message of the nibble::Error that f throws (a failure if it throws none, or another type than E).
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Runs with the working directory changed, restoring it at scope exit.
class ScopedCwd {
 public:
  explicit ScopedCwd(const std::string& dir) : old_(fs::current_path()) { fs::current_path(dir); }
  ~ScopedCwd() { fs::current_path(old_); }
  ScopedCwd(const ScopedCwd&) = delete;
  ScopedCwd& operator=(const ScopedCwd&) = delete;

 private:
  fs::path old_;
};
}  // namespace

TEST(HfCache, IdResolvesThroughRefsMainToTheSnapshot) {
  test::ClearHubEnv clear;
  test::TempDir root;
  const std::string snap =
      test::add_cached_snapshot(root.str(), "org/name", test::example_model(), test::fake_commit(1));
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  EXPECT_EQ(hf_hub_cache_dir(), root.str());
  EXPECT_EQ(resolve_model_path("org/name"), root / ("models--org--name/snapshots/" + test::fake_commit(1)));
  EXPECT_EQ(resolve_model_path("org/name"), snap);
  // the snapshot holds symbolic links into blobs/, as huggingface_hub writes it
  EXPECT_TRUE(fs::is_symlink(fs::path(snap) / "model.safetensors"));
  // an id without an organisation ("gpt2") is models--gpt2
  test::add_cached_snapshot(root.str(), "solo", test::example_model(), test::fake_commit(9));
  EXPECT_EQ(resolve_model_path("solo"), root / ("models--solo/snapshots/" + test::fake_commit(9)));
}

TEST(HfCache, RevisionByRefNameOrCommitHash) {
  test::ClearHubEnv clear;
  test::TempDir root;
  const std::string c1 = test::fake_commit(1), c2 = test::fake_commit(2);
  const std::string s1 = test::add_cached_snapshot(root.str(), "org/name", test::example_model(), c1, "main");
  const std::string s2 = test::add_cached_snapshot(root.str(), "org/name", test::example_model(), c2, "v2");
  // a ref whose name holds '/' (a pull request's ref, a branch "feature/x") lives in refs/ subfolders
  test::write_bytes(root / "models--org--name/refs/feature", "");  // a stray file must not confuse the lookup
  fs::create_directories(root / "models--org--name/refs/refs/pr");
  test::write_bytes(root / "models--org--name/refs/refs/pr/1",
                    c2 + "\n");  // a newline at the end is tolerated
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  EXPECT_EQ(resolve_model_path("org/name"), s1);
  EXPECT_EQ(resolve_model_path("org/name@main"), s1);
  EXPECT_EQ(resolve_model_path("org/name@v2"), s2);
  EXPECT_EQ(resolve_model_path("org/name@refs/pr/1"), s2);
  EXPECT_EQ(resolve_model_path("org/name@" + c2), s2);  // a commit hash: snapshots/<hash> directly
  EXPECT_EQ(resolve_model_path("org/name@" + c1), s1);
  const std::string e = error_of<IoError>([&] { resolve_model_path("org/name@v3"); });
  EXPECT_TRUE(has(e, "revision 'v3' is not in the HuggingFace cache")) << e;
  EXPECT_TRUE(has(e, root / "models--org--name/refs/v3")) << e;
  EXPECT_TRUE(has(e, c1) && has(e, c2)) << e;  // lists the snapshots it has
  EXPECT_TRUE(has(e, "huggingface-cli download org/name --revision v3")) << e;
}

TEST(HfCache, CacheDirectoryFromTheEnvironmentAsHuggingfaceHub) {
  test::ClearHubEnv clear;
  test::TempDir a, b;
  const std::string in_hub_cache =
      test::add_cached_snapshot(a.str(), "org/name", test::example_model(), test::fake_commit(1));
  const std::string in_home =
      test::add_cached_snapshot(b / "hub", "org/name", test::example_model(), test::fake_commit(2));
  test::ScopedEnv home("HF_HOME", b.str());
  EXPECT_EQ(hf_hub_cache_dir(), b / "hub");  // HF_HOME/hub when HF_HUB_CACHE is unset
  EXPECT_EQ(resolve_model_path("org/name"), in_home);
  {
    test::ScopedEnv hub("HF_HUB_CACHE", a.str());  // HF_HUB_CACHE beats HF_HOME
    EXPECT_EQ(hf_hub_cache_dir(), a.str());
    EXPECT_EQ(resolve_model_path("org/name"), in_hub_cache);
  }
  {
    test::ScopedEnv legacy("HUGGINGFACE_HUB_CACHE",
                           a.str());  // the legacy name, still read, also beats HF_HOME
    EXPECT_EQ(resolve_model_path("org/name"), in_hub_cache);
    test::ScopedEnv hub("HF_HUB_CACHE", b / "hub");  // and loses to HF_HUB_CACHE
    EXPECT_EQ(resolve_model_path("org/name"), in_home);
  }
  {
    test::ScopedEnv empty("HF_HUB_CACHE", "");  // set but empty counts as unset
    EXPECT_EQ(hf_hub_cache_dir(), b / "hub");
  }
}

TEST(HfCache, DefaultCacheUnderXdgCacheHomeThenHome) {
  test::ClearHubEnv clear;
  test::TempDir h;
  test::ScopedEnv home("HOME", h.str());
  EXPECT_EQ(hf_hub_cache_dir(), h / ".cache/huggingface/hub");
  {
    test::ScopedEnv hf_home("HF_HOME", "~/hf");  // expanded as os.path.expanduser does
    EXPECT_EQ(hf_hub_cache_dir(), h / "hf/hub");
  }
  test::ScopedEnv xdg("XDG_CACHE_HOME", h / "xdg");
  EXPECT_EQ(hf_hub_cache_dir(), h / "xdg/huggingface/hub");
  const std::string snap = test::add_cached_snapshot(h / "xdg/huggingface/hub", "org/name",
                                                     test::example_model(), test::fake_commit(3));
  EXPECT_EQ(resolve_model_path("org/name"), snap);
}

TEST(HfCache, AnExistingPathWinsOverAnId) {
  test::ClearHubEnv clear;
  test::TempDir root, work;
  test::add_cached_snapshot(root.str(), "org/name", test::example_model(), test::fake_commit(1));
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  fs::create_directories(work / "org/name");
  const ScopedCwd cwd(work.str());
  EXPECT_EQ(resolve_model_path("org/name"), "org/name");  // the relative directory, not the cache
  EXPECT_EQ(resolve_model_path(test::example_model()), test::example_model());
  // an existing directory that is not a model stays the model-directory error, not a cache lookup
  const std::string e = error_of<FormatError>([] { AutoModelForCausalLM::from_pretrained("org/name"); });
  EXPECT_TRUE(has(e, "org/name: no config.json")) << e;
}

TEST(HfCache, MissingIdSaysWhereItLookedAndThatNibbleDoesNotDownload) {
  test::ClearHubEnv clear;
  test::TempDir root;
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  for (const auto& load : std::vector<std::function<void()>>{
           [] { resolve_model_path("org/missing"); },
           [] { AutoModelForCausalLM::from_pretrained("org/missing", {.quiet = true}); },
           [] { Tokenizer::from_pretrained("org/missing"); },
           [&] { quantize_checkpoint("org/missing", root / "out", {}); }}) {
    const std::string e = error_of<IoError>(load);
    EXPECT_TRUE(has(e, "org/missing: no such model directory, and not in the HuggingFace cache")) << e;
    EXPECT_TRUE(has(e, root / "models--org--missing")) << e;
    EXPECT_TRUE(has(e, "from $HF_HUB_CACHE")) << e;
    EXPECT_TRUE(has(e, "nibble does not download")) << e;
    EXPECT_TRUE(has(e, "`huggingface-cli download org/missing`")) << e;
  }
  EXPECT_FALSE(fs::exists(root / "out"));
}

TEST(HfCache, MalformedIdsAreRejected) {
  test::ClearHubEnv clear;
  test::TempDir root;
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  // spelled as a path: the plain model-directory error
  for (const std::string name : {"/nonexistent/model", "/name", "./org/name", "../org/name", "~/models/x"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(error_of<IoError>([&] { resolve_model_path(name); }), name + ": no such model directory");
  }
  // not an id (and no such path): the model-directory error, saying why it is not an id either
  const std::vector<std::pair<std::string, std::string>> bad{
      {"", "is empty"},
      {"a/b/c", "has more than one '/'"},
      {"org/..", "contains '..'"},
      {"org/na..me", "contains '..'"},
      {"org/", "has an empty part"},
      {"org//name", "has more than one '/'"},
      {"org--x/name", "contains '--'"},
      {"org/name.git", "ends with '.git'"},
      {"-org/name", "starting or ending with '-' or '.'"},
      {"org/name.", "starting or ending with '-' or '.'"},
      {"org/na me", "characters other than"},
      {"org/" + std::string(97, 'x'), "longer than 96"}};
  for (const auto& [name, why] : bad) {
    SCOPED_TRACE(name);
    const std::string e = error_of<IoError>([&] { resolve_model_path(name); });
    EXPECT_EQ(e.rfind(name + ": no such model directory (nor a HuggingFace model id", 0), 0u) << e;
    EXPECT_TRUE(has(e, why)) << e;
  }
  // a valid id with a revision that would leave refs/ or snapshots/
  for (const auto& rev : {"", "../../../etc", "/etc", "a//b", "refs/./main", "v1/.."}) {
    SCOPED_TRACE(rev);
    const std::string e = error_of<ValueError>([&] { resolve_model_path(std::string("org/name@") + rev); });
    EXPECT_TRUE(has(e, std::string("invalid revision '") + rev + "'")) << e;
  }
}

TEST(HfCache, DamagedCacheErrorsNameTheFile) {
  test::ClearHubEnv clear;
  test::TempDir root;
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  const std::string c1 = test::fake_commit(1);
  test::add_cached_snapshot(root.str(), "org/name", test::example_model(), c1, "");
  const std::string ref = root / "models--org--name/refs/main";
  // no refs/main: says so and lists the snapshots there are
  std::string e = error_of<IoError>([] { resolve_model_path("org/name"); });
  EXPECT_TRUE(has(e, "no " + ref) && has(e, "snapshots: " + c1)) << e;
  fs::create_directories(fs::path(ref).parent_path());
  for (const std::string& bad :
       std::vector<std::string>{"", "\n", "..", "abc/def", "abc def", std::string(2000, 'a')}) {
    SCOPED_TRACE(bad);
    test::write_bytes(ref, bad);
    e = error_of<FormatError>([] { resolve_model_path("org/name"); });
    EXPECT_EQ(e.rfind(ref + ": does not hold a commit hash", 0), 0u) << e;
  }
  // a hash whose snapshot is gone
  test::write_bytes(ref, test::fake_commit(7));
  e = error_of<IoError>([] { resolve_model_path("org/name"); });
  EXPECT_EQ(e.rfind(ref + ": names commit " + test::fake_commit(7), 0), 0u) << e;
  EXPECT_TRUE(has(e, root / ("models--org--name/snapshots/" + test::fake_commit(7)) + " does not exist"))
      << e;
  test::write_bytes(ref, c1 + "\r\n");
  EXPECT_EQ(resolve_model_path("org/name"), root / ("models--org--name/snapshots/" + c1));
}

TEST(HfCache, FromPretrainedByIdLoadsTheSnapshotThroughItsSymlinks) {
  test::ClearHubEnv clear;
  test::TempDir root, out;
  const std::string snap =
      test::add_cached_snapshot(root.str(), "org/name", test::example_model(), test::fake_commit(1));
  test::ScopedEnv cache("HF_HUB_CACHE", root.str());
  const auto by_id = AutoModelForCausalLM::from_pretrained("org/name", {.quiet = true});
  const auto by_dir = AutoModelForCausalLM::from_pretrained(test::example_model(), {.quiet = true});
  const Tokenizer tok_id = Tokenizer::from_pretrained("org/name");
  const Tokenizer tok_dir = Tokenizer::from_pretrained(test::example_model());
  const std::vector<int32_t> ids = tok_dir.encode("Once upon a time there was a little dog");
  EXPECT_EQ(tok_id.encode("Once upon a time there was a little dog"), ids);
  EXPECT_EQ(tok_id.bos_token_id(), tok_dir.bos_token_id());
  const auto a = by_id.forward(ids), b = by_dir.forward(ids);
  ASSERT_EQ(a.size(), ids.size() * static_cast<size_t>(by_dir.info().vocab_size));
  EXPECT_EQ(test::max_abs_diff(a, b), 0.0);  // the same bytes, read through blobs/ symlinks
  EXPECT_EQ(by_id.default_eos_token_ids(), by_dir.default_eos_token_ids());  // generation_config.json read
  // save_pretrained still refuses to write into the directory it came from (the resolved snapshot)
  const std::string e = error_of<IoError>([&] { by_id.save_pretrained(snap, {.overwrite = true}); });
  EXPECT_TRUE(has(e, "input directory")) << e;
  // quantize by id: the output is a plain path, of regular files (the side files copied, not linked)
  const QuantizeReport r = quantize_checkpoint("org/name", out / "q", {.quiet = true});
  EXPECT_GT(r.quantized_tensors, 0);
  for (const char* f : {"config.json", "tokenizer.json", "model.safetensors"}) {
    SCOPED_TRACE(f);
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(fs::path(out / "q") / f)));
  }
  const auto q = AutoModelForCausalLM::from_pretrained(out / "q", {.quiet = true});
  EXPECT_TRUE(q.info().quantization_config.has_value());
}
