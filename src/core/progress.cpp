#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace nibble {

Progress::Progress(std::string label, int64_t total, bool quiet)
    : label_(std::move(label)), total_(total), quiet_(quiet || !::isatty(STDERR_FILENO)) {
  start_ = last_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  finish();
}

void Progress::advance(int64_t n, const std::string& item) {
  done_ += n;
  item_ = item;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ > std::chrono::milliseconds(100) || done_ >= total_) {
    last_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final) {
  if (quiet_) return;
  constexpr int kWidth = 30;
  const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  const int fill = static_cast<int>(frac * kWidth);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string bar(static_cast<size_t>(fill), '#');
  bar.resize(kWidth, ' ');
  std::string item = item_.size() > 40 ? "..." + item_.substr(item_.size() - 37) : item_;
  std::fprintf(stderr, "\r%s [%s] %lld/%lld %.1fs %-40s", label_.c_str(), bar.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), secs,
               final ? "" : item.c_str());
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace nibble
