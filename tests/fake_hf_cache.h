// A HuggingFace hub cache laid out as huggingface_hub writes it, for tests of model ids:
//   <root>/models--ORG--NAME/blobs/<hash>            the files' bytes
//   <root>/models--ORG--NAME/snapshots/<commit>/<f>  relative symlinks ../../blobs/<hash>
//   <root>/models--ORG--NAME/refs/<branch>           the commit hash, no trailing newline
// and an environment-variable guard that restores the variable at scope exit.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "test_util.h"

namespace nibble::test {

// Sets (value) or unsets (nullopt) an environment variable; restores its old state at scope exit.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_.c_str(), old_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Every variable that picks the hub cache directory, cleared (so the machine's own settings do not leak in).
struct ClearHubEnv {
  ScopedEnv a{"HF_HUB_CACHE", std::nullopt}, b{"HUGGINGFACE_HUB_CACHE", std::nullopt},
      c{"HF_HOME", std::nullopt}, d{"XDG_CACHE_HOME", std::nullopt};
};

// A fake 40-hex commit hash (the n-th).
inline std::string fake_commit(int n) {
  std::string s = std::to_string(n);
  return std::string(40 - s.size(), 'a') + s;
}

// Adds snapshot `commit` of repo `id` ("ORG/NAME") under cache root `root`, holding the files of directory
// `from` (each copied once into blobs/ and linked from the snapshot), and writes refs/<ref> (if ref is not
// empty) holding the commit. Returns the snapshot directory.
inline std::string add_cached_snapshot(const std::string& root, const std::string& id,
                                       const std::string& from, const std::string& commit,
                                       const std::string& ref = "main") {
  namespace fs = std::filesystem;
  std::string folder = "models";
  for (size_t i = 0, j = 0; i <= id.size(); i = j + 1) {
    j = id.find('/', i);
    if (j == std::string::npos) j = id.size();
    folder += "--" + id.substr(i, j - i);
  }
  const fs::path repo = fs::path(root) / folder;
  const fs::path snap = repo / "snapshots" / commit;
  fs::create_directories(repo / "blobs");
  fs::create_directories(snap);
  for (const auto& e : fs::directory_iterator(from)) {
    char hex[17];  // a 64-hex blob name, distinct per (commit, file)
    std::snprintf(hex, sizeof hex, "%016zx",
                  std::hash<std::string>{}(commit + "/" + e.path().filename().string()));
    const std::string blob = std::string(hex) + hex + hex + hex;
    fs::copy_file(e.path(), repo / "blobs" / blob, fs::copy_options::overwrite_existing);
    fs::create_symlink(fs::path("../../blobs") / blob, snap / e.path().filename());
  }
  if (!ref.empty()) {
    fs::create_directories((repo / "refs" / ref).parent_path());
    write_bytes((repo / "refs" / ref).string(), commit);
  }
  return snap.string();
}

}  // namespace nibble::test
