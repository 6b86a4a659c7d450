// nibble: the command-line tool. Each subcommand lives in its own file and registers itself here.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "commands.h"
#include "nibble/error.h"

namespace {
// An error message as one line: control characters from hostile files (a token with a newline) escaped.
std::string one_line(const char* what) {
  std::string out;
  for (const char* p = what; *p; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nibble: bitsandbytes-compatible 4-bit quantization and inference for HuggingFace models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "nibble 0.1.0");
  nibble::cli::register_all(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "nibble: error: %s\n", one_line(e.what()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble: error: %s\n", one_line(e.what()).c_str());
    return 1;
  }
  return 0;
}
