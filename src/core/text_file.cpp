#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "nibble/error.h"
#include "nibble/files.h"

namespace nibble {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(path + ": read failed: " + std::strerror(errno));
  return ss.str();
}

}  // namespace nibble
