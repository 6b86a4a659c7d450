// A progress bar on stderr for work a user waits for (quantizing, loading). Silent when quiet or when
// stderr is not a terminal... unless forced, so logs stay clean.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace nibble {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool quiet);
  ~Progress();
  void advance(int64_t n = 1, const std::string& item = "");
  void finish();

 private:
  void draw(bool final);
  std::string label_;
  int64_t total_, done_ = 0;
  bool quiet_, finished_ = false;
  std::string item_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace nibble
