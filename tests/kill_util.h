// Helpers for the kill tests: run a writer in a child process, SIGKILL it when a filesystem condition shows
// up (or after a delay), and compare output directories file by file.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace nibble::test {

// Every file of a directory (names sorted) -> its bytes; empty if dir does not exist.
inline std::map<std::string, std::string> read_dir(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);  // one read per file (read_bytes goes char by char)
    std::string bytes(std::filesystem::file_size(e.path()), '\0');
    f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out[e.path().filename().string()] = std::move(bytes);
  }
  return out;
}

// Entries beside `path` named "<name>.tmp.*" or "<name>.old.*": temporaries of writers of path.
inline std::vector<std::string> temporaries_beside(const std::string& path) {
  const std::filesystem::path p(path);
  const std::string base = p.filename().string();
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(p.parent_path())) {
    const std::string n = e.path().filename().string();
    if (n.rfind(base + ".tmp.", 0) == 0 || n.rfind(base + ".old.", 0) == 0) out.push_back(n);
  }
  return out;
}

// The temporary directory "<path>.tmp.<pid>" of writer pid.
inline std::string tmp_of(const std::string& path, pid_t pid) {
  return path + ".tmp." + std::to_string(pid);
}

inline bool has_file_starting(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().rfind(prefix, 0) == 0) return true;
  return false;
}

struct KillResult {
  bool killed = false;  // SIGKILL was sent before the child exited on its own
  int exit_code = -1;   // when it exited on its own
};

// Waits until `when(seconds since start)` is true, then SIGKILLs pid; or until pid exits. Reaps pid.
inline KillResult kill_when(pid_t pid, const std::function<bool(double)>& when, double timeout_s = 300) {
  const auto t0 = std::chrono::steady_clock::now();
  KillResult r;
  int status = 0;
  for (;;) {
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (when(t) || t > timeout_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
      if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
      return r;
    }
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return r;
    }
    std::this_thread::yield();
  }
}

// A process id that is certainly not alive: a child that exited and was reaped.
inline pid_t dead_pid() {
  const pid_t p = ::fork();
  if (p == 0) ::_exit(0);
  ::waitpid(p, nullptr, 0);
  return p;
}

}  // namespace nibble::test
