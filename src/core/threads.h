// A per-model / per-session thread count applied only while that model or session runs: sets OpenMP's
// thread count for the calling thread's parallel regions and restores the previous value on scope exit, so
// two models with different settings (or the embedding application's own OpenMP use) do not interfere.
#pragma once
#include <omp.h>

namespace nibble {

class ThreadScope {
 public:
  explicit ThreadScope(int threads) : previous_(omp_get_max_threads()), active_(threads > 0) {
    if (active_) omp_set_num_threads(threads);
  }
  ~ThreadScope() {
    if (active_) omp_set_num_threads(previous_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int previous_;
  bool active_;
};

}  // namespace nibble
