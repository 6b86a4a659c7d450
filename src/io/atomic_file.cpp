#include "io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "nibble/error.h"

namespace nibble {
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_force_rename_aside{false};

std::string errno_text(int e) {
  return std::strerror(e);
}

std::string parent_of(const std::string& path) {
  const fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

// Makes a rename or a new entry in dir durable. Best effort: some filesystems refuse fsync on a directory.
void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

bool pid_alive(long pid) {
  if (pid <= 0 || pid > 0x3fffffff) return false;
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return true;
  return errno != ESRCH;  // EPERM: alive, owned by someone else
}

// "<base>.tmp.<digits>" or "<base>.old.<digits>" -> the pid, else -1.
long temporary_pid(const std::string& name, const std::string& base, bool& is_old) {
  for (const bool old : {false, true}) {
    const std::string prefix = base + (old ? ".old." : ".tmp.");
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return -1;
    is_old = old;
    return std::stol(digits);
  }
  return -1;
}

// An open descriptor holding the entry's flock if its writer is gone, else -1.
int lock_if_abandoned(const std::string& full, long pid) {
  if (pid != static_cast<long>(::getpid()) && pid_alive(pid)) return -1;
  struct stat st;
  if (::lstat(full.c_str(), &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return -1;
  const int fd = ::open(full.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -1;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {  // a writer holds it (another pid namespace, or this process)
    ::close(fd);
    return -1;
  }
  return fd;
}

// A directory nibble may replace with overwrite: plain files only, holding `marker` if one is given.
void check_replaceable(const std::string& dir, const std::string& marker) {
  bool has_marker = marker.empty();
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto st = it->symlink_status(ec);
    const std::string name = it->path().filename().string();
    if (!fs::is_regular_file(st))
      throw IoError(dir + ": not replaced: --overwrite replaces only a directory of plain files (a model " +
                    "directory), and '" + name + "' is " +
                    (fs::is_directory(st) ? "a directory"
                     : fs::is_symlink(st) ? "a symbolic link"
                                          : "not a file"));
    if (name == marker) has_marker = true;
  }
  if (ec) throw IoError(dir + ": cannot list: " + ec.message());
  if (!has_marker)
    throw IoError(dir + ": not replaced: it has no " + marker +
                  ", so it is not a model directory nibble would have written");
}

// The output must not be the directory being read, nor contain it.
void check_not_source(const std::string& dir, const std::string& source) {
  if (source.empty()) return;
  std::error_code ec;
  if (!fs::exists(source, ec)) return;
  if (fs::equivalent(dir, source, ec))
    throw IoError(dir + ": is the input directory; write the output to a new directory");
  std::error_code ec2;
  const fs::path d = fs::weakly_canonical(dir, ec), s = fs::weakly_canonical(source, ec2);
  if (ec || ec2) return;
  auto di = d.begin(), si = s.begin();
  for (; di != d.end() && si != s.end() && *di == *si; ++di, ++si) {
  }
  if (di == d.end())
    throw IoError(dir + ": contains the input directory " + source + "; write the output elsewhere");
}

}  // namespace

void detail::force_rename_aside(bool on) {
  g_force_rename_aside = on;
}

int remove_stale_temporaries(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const std::string base = fs::path(p).filename().string();
  const std::string parent = parent_of(p);
  if (base.empty() || base == "." || base == "..") return 0;
  struct Found {
    std::string name;
    long pid;
    bool old;
  };
  std::vector<Found> found;
  std::error_code ec;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    bool old = false;
    const std::string name = it->path().filename().string();
    const long pid = temporary_pid(name, base, old);
    if (pid > 0) found.push_back({name, pid, old});
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.name < b.name; });
  int n = 0;
  for (const auto& [name, pid, old] : found) {
    const std::string full = (fs::path(parent) / name).string();
    const int fd = lock_if_abandoned(full, pid);
    if (fd < 0) continue;
    struct stat st;
    if (old && ::lstat(p.c_str(), &st) != 0 && errno == ENOENT && ::rename(full.c_str(), p.c_str()) == 0) {
      fsync_dir(parent);  // an overwrite died between moving the old output aside and moving the new in
    } else {
      fs::remove_all(full, ec);
    }
    ::close(fd);
    ++n;
  }
  return n;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  remove_stale_temporaries(path_);
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    const int e = errno;
    throw IoError(path_ + ": cannot create " + tmp_ + ": " +
                  (e == EEXIST ? "another writer in this process is using it" : errno_text(e)));
  }
  ::flock(fd, LOCK_EX | LOCK_NB);  // marks it in use for remove_stale_temporaries; released at close
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    const int e = errno;
    ::close(fd);
    std::remove(tmp_.c_str());
    throw IoError(path_ + ": cannot open " + tmp_ + ": " + errno_text(e));
  }
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::remove(tmp_.c_str());
    std::fclose(f_);
  }
}

void AtomicFile::commit() {
  // data on disk before the name: after a power loss the file is the old one or the complete new one
  const bool flushed = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  int e = errno;
  const bool closed = std::fclose(f_) == 0;
  if (flushed && !closed) e = errno;
  f_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tmp_.c_str());
    throw IoError(path_ + ": write failed: " + errno_text(e));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e2 = errno;
    std::remove(tmp_.c_str());
    throw IoError(path_ + ": cannot rename " + tmp_ + " into place: " + errno_text(e2));
  }
  fsync_dir(parent_of(path_));
}

AtomicDir::AtomicDir(std::string dir, AtomicDirOptions opt) : dir_(std::move(dir)), opt_(std::move(opt)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  remove_stale_temporaries(dir_);
  struct stat st;
  if (::lstat(dir_.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode))
      throw IoError(dir_ + ": is a symbolic link; give the output as a path that is not one");
    if (!S_ISDIR(st.st_mode))
      throw IoError(dir_ + ": exists and is not a directory; choose a new output path");
    check_not_source(dir_, opt_.source);
    std::error_code ec;
    if (!fs::is_empty(dir_, ec)) {
      if (!opt_.overwrite)
        throw IoError(dir_ +
                      ": already exists and is not empty; choose a new output path, or pass --overwrite to "
                      "replace it (the old directory stays until the new one is complete)");
      check_replaceable(dir_, opt_.marker);
    }
  }
  tmp_ = dir_ + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::create_directories(parent_of(dir_), ec);
  if (::mkdir(tmp_.c_str(), 0777) != 0) {
    const int e = errno;
    throw IoError(tmp_ + ": cannot create directory: " +
                  (e == EEXIST ? "another writer in this process is using it" : errno_text(e)));
  }
  lock_fd_ = ::open(tmp_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock_fd_ >= 0) ::flock(lock_fd_, LOCK_EX | LOCK_NB);
}

AtomicDir::~AtomicDir() {
  if (!done_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void AtomicDir::commit() {
  if (lock_fd_ >= 0 && ::fsync(lock_fd_) != 0 && errno != EINVAL)
    throw IoError(tmp_ + ": fsync failed: " + errno_text(errno));
  const std::string parent = parent_of(dir_);
  std::error_code ec;
  struct stat st;
  const bool exists = ::lstat(dir_.c_str(), &st) == 0;
  if (exists && (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode)))
    throw IoError(dir_ + ": appeared while writing and is not a directory; not replaced");
  if (exists && !fs::is_empty(dir_, ec)) {
    if (!opt_.overwrite) throw IoError(dir_ + ": appeared while writing and is not empty; not replaced");
    check_replaceable(dir_, opt_.marker);
    const bool swapped = !g_force_rename_aside &&
                         ::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) == 0;
    if (swapped) {
      // the new output is in place; the old one now sits at tmp_, removed below (or by the next run if
      // killed)
      done_ = true;
      fsync_dir(parent);
      fs::remove_all(tmp_, ec);
      return;
    }
    const int e = g_force_rename_aside ? EINVAL : errno;
    if (e != EINVAL && e != ENOSYS && e != EOPNOTSUPP)
      throw IoError(dir_ + ": cannot swap the finished output into place: " + errno_text(e));
    // No RENAME_EXCHANGE on this filesystem: move the old output aside, then the new one in. A kill between
    // the two renames leaves dir absent, the old output at "<dir>.old.<pid>" and the new at tmp_; the next
    // writer of dir renames the old one back (remove_stale_temporaries).
    const std::string aside = dir_ + ".old." + std::to_string(::getpid());
    if (::rename(dir_.c_str(), aside.c_str()) != 0)
      throw IoError(dir_ + ": cannot move the old output aside: " + errno_text(errno));
    if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
      const int e2 = errno;
      ::rename(aside.c_str(), dir_.c_str());
      throw IoError(dir_ + ": cannot move the finished output into place: " + errno_text(e2));
    }
    done_ = true;
    fsync_dir(parent);
    fs::remove_all(aside, ec);
    return;
  }
  // absent or an empty directory, which rename() replaces atomically
  if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
    const int e = errno;
    throw IoError(dir_ + ": cannot move the finished output into place: " +
                  (e == ENOTEMPTY || e == EEXIST ? std::string("it appeared while writing; not replaced")
                                                 : errno_text(e)));
  }
  done_ = true;
  fsync_dir(parent);
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f.get()) != text.size())
    throw IoError(path + ": write failed: " + std::strerror(errno));
  f.commit();
}

void copy_file_contents(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw IoError(from + ": cannot open: " + std::strerror(errno));
  AtomicFile out(to);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    if (n > 0 && std::fwrite(buf.data(), 1, n, out.get()) != n)
      throw IoError(to + ": write failed: " + std::strerror(errno));
  }
  if (in.bad()) throw IoError(from + ": read failed");
  out.commit();
}

}  // namespace nibble
