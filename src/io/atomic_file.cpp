#include "io/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nibble/error.h"

namespace nibble {
namespace fs = std::filesystem;

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw IoError(path_ + ": cannot create " + tmp_ + ": " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void AtomicFile::commit() {
  const bool flushed = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  const int e = errno;
  const bool closed = std::fclose(f_) == 0;
  f_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tmp_.c_str());
    throw IoError(path_ + ": write failed: " + std::strerror(e));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e2 = errno;
    std::remove(tmp_.c_str());
    throw IoError(path_ + ": cannot rename " + tmp_ + " into place: " + std::strerror(e2));
  }
}

AtomicDir::AtomicDir(std::string dir) : dir_(std::move(dir)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  std::error_code ec;
  if (fs::exists(dir_, ec) && !(fs::is_directory(dir_, ec) && fs::is_empty(dir_, ec)))
    throw IoError(dir_ + ": already exists and is not an empty directory; choose a new output path");
  tmp_ = dir_ + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp_, ec);
  if (!fs::create_directories(tmp_, ec) || ec)
    throw IoError(tmp_ + ": cannot create directory: " + ec.message());
}

AtomicDir::~AtomicDir() {
  if (!done_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicDir::commit() {
  std::error_code ec;
  if (fs::is_directory(dir_, ec) && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
  fs::rename(tmp_, dir_, ec);
  if (ec) throw IoError(dir_ + ": cannot move finished output into place: " + ec.message());
  done_ = true;
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f.get()) != text.size())
    throw IoError(path + ": write failed: " + std::strerror(errno));
  f.commit();
}

}  // namespace nibble
