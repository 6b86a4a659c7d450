// Writing without losing what the user had: files and directories are written under a temporary name
// beside their destination and renamed into place only when complete, so a crash or SIGKILL at any moment
// leaves the old state or the new one, plus at most a stale temporary that the next write removes.
#pragma once
#include <cstdio>
#include <string>

namespace nibble {

// A file opened for writing at "<path>.tmp.<pid>"; commit() flushes, fsyncs and renames it to path, then
// fsyncs the containing directory. If commit() is never reached (an exception), the destructor removes the
// temporary file and path is untouched. The file is created fresh (mode 0666 less the umask).
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  std::FILE* get() { return f_; }
  void commit();

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
};

struct AtomicDirOptions {
  // Replace an existing non-empty directory; the old one stays in place until the new one is complete and
  // is then swapped out atomically (renameat2 RENAME_EXCHANGE) and removed. Without it such a directory is
  // an error.
  bool overwrite = false;
  // overwrite replaces only a directory of plain files that holds this file (e.g. "config.json"): what
  // nibble would have written, not a home directory typed by mistake. Empty = any directory of plain files.
  std::string marker;
  // A directory being read (the input checkpoint): the output must not be it, nor contain it.
  std::string source;
};

// A directory built at "<dir>.tmp.<pid>" and renamed to dir by commit(). The destination must not exist, or
// be an empty directory, or (with overwrite) a directory AtomicDirOptions allows replacing; it is never a
// regular file or a symbolic link. Removed if commit() is not reached. The constructor first removes stale
// temporaries of dir left by processes that died (see remove_stale_temporaries).
class AtomicDir {
 public:
  explicit AtomicDir(std::string dir, AtomicDirOptions opt = {});
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  const std::string& path() const { return tmp_; }  // where to write meanwhile
  void commit();

 private:
  std::string dir_, tmp_;
  AtomicDirOptions opt_;
  int lock_fd_ = -1;  // the temporary directory, open and flock()ed while this writer lives
  bool done_ = false;
};

// Removes "<path>.tmp.<pid>" (and "<path>.old.<pid>", the rename-aside of an overwrite) entries beside path
// whose writer is gone: the pid is not a live process and no process holds the entry's flock (writers keep
// one; a live pid is never touched, so a recycled pid only delays the cleanup). An ".old" entry is the
// user's previous output, moved aside by an overwrite that died before the new one took its place: if path
// does not exist it is renamed back to path rather than removed. Returns how many entries were removed or
// restored.
int remove_stale_temporaries(const std::string& path);

namespace detail {
// Tests only: commit() takes the rename-aside path as on a filesystem without RENAME_EXCHANGE.
void force_rename_aside(bool on);
}  // namespace detail
// Atomic (temporary file + rename).
void write_text_file(const std::string& path, const std::string& text);
// Copies from's bytes into a new file at `to` (atomic, fresh mode: the source's permission bits, e.g. a
// read-only cache, are not carried over).
void copy_file_contents(const std::string& from, const std::string& to);

}  // namespace nibble
