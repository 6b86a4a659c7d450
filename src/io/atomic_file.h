// Writing without losing what the user had: files and directories are written under a temporary name
// beside their destination and renamed into place only when complete.
#pragma once
#include <cstdio>
#include <string>

namespace nibble {

// A file opened for writing at "<path>.tmp.<pid>"; commit() flushes and renames it to path. If commit() is
// never reached (an exception), the destructor removes the temporary file and path is untouched.
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

// A directory built at "<dir>.tmp.<pid>" and renamed to dir by commit(). The destination must not exist or
// be an empty directory: nibble never replaces a user's files. Removed if commit() is not reached.
class AtomicDir {
 public:
  explicit AtomicDir(std::string dir);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  const std::string& path() const { return tmp_; }  // where to write meanwhile
  void commit();

 private:
  std::string dir_, tmp_;
  bool done_ = false;
};

// Atomic (temporary file + rename).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace nibble
