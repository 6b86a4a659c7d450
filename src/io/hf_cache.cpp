// Model ids resolved offline in the HuggingFace cache, by huggingface_hub's rules (constants.py for the cache
// directory, file_download.py's repo_folder_name / try_to_load_from_cache for the layout, validate_repo_id
// for what an id is).
#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <vector>

#include "nibble/error.h"
#include "nibble/files.h"
#include "nibble/hub.h"

namespace nibble {
namespace fs = std::filesystem;

namespace {

// An environment variable, empty if unset or set to "".
std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string home_dir() {
  std::string h = env("HOME");
  if (!h.empty()) return h;
  if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return pw->pw_dir;
  throw IoError("cannot find the HuggingFace cache: HOME is not set (set HF_HUB_CACHE or HF_HOME)");
}

// os.path.expanduser for "~" and "~/..." (what a quoted variable may hold).
std::string expand_user(const std::string& p) {
  if (p == "~" || p.starts_with("~/")) return home_dir() + p.substr(1);
  return p;
}

// The cache directory and the variable it came from (for error messages).
std::pair<std::string, std::string> cache_dir_and_origin() {
  if (std::string v = env("HF_HUB_CACHE"); !v.empty()) return {expand_user(v), "from $HF_HUB_CACHE"};
  if (std::string v = env("HUGGINGFACE_HUB_CACHE"); !v.empty())
    return {expand_user(v), "from $HUGGINGFACE_HUB_CACHE"};
  if (std::string v = env("HF_HOME"); !v.empty())
    return {(fs::path(expand_user(v)) / "hub").string(), "from $HF_HOME"};
  if (std::string v = env("XDG_CACHE_HOME"); !v.empty())
    return {(fs::path(expand_user(v)) / "huggingface" / "hub").string(), "from $XDG_CACHE_HOME"};
  return {(fs::path(home_dir()) / ".cache" / "huggingface" / "hub").string(),
          "the default (set HF_HUB_CACHE or HF_HOME to look elsewhere)"};
}

bool word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// huggingface_hub's validate_repo_id: "NAME" or "NAMESPACE/NAME", each 1..96 of [A-Za-z0-9_.-] starting and
// ending with [A-Za-z0-9_], no "--" or "..", not ending in ".git". Empty if valid, else why not.
std::string repo_id_problem(std::string_view id) {
  if (id.empty()) return "is empty";
  if (id.front() == '/') return "is an absolute path";
  const size_t slash = id.find('/');
  if (slash != std::string_view::npos && id.find('/', slash + 1) != std::string_view::npos)
    return "has more than one '/'";
  if (id.find("..") != std::string_view::npos) return "contains '..'";
  if (id.find("--") != std::string_view::npos) return "contains '--'";
  if (id.ends_with(".git")) return "ends with '.git'";
  std::vector<std::string_view> parts{id.substr(0, slash)};
  if (slash != std::string_view::npos) parts.push_back(id.substr(slash + 1));
  for (std::string_view part : parts) {
    if (part.empty()) return "has an empty part";
    if (part.size() > 96) return "has a part longer than 96 characters";
    for (char c : part)
      if (!word_char(c) && c != '-' && c != '.')
        return "has characters other than letters, digits, '-', '_' and '.'";
    if (!word_char(part.front()) || !word_char(part.back()))
      return "has a part starting or ending with '-' or '.'";
  }
  return "";
}

// A revision is a path under refs/ (branch names may hold '/') or a snapshot directory name.
std::string revision_problem(std::string_view rev) {
  if (rev.empty()) return "is empty";
  if (rev.front() == '/') return "is an absolute path";
  size_t start = 0;
  while (true) {
    const size_t end = rev.find('/', start);
    const std::string_view part =
        rev.substr(start, end == std::string_view::npos ? rev.size() - start : end - start);
    if (part.empty()) return "has an empty path component";
    if (part == "." || part == "..") return "has a '.' or '..' component";
    if (end == std::string_view::npos) return "";
    start = end + 1;
  }
}

std::string download_hint(const std::string& repo, const std::string& rev) {
  std::string cmd = "huggingface-cli download " + repo + (rev.empty() ? "" : " --revision " + rev);
  return "nibble does not download models: `" + cmd +
         "` fetches it into the cache (or pass a model directory)";
}

std::string list_dir(const fs::path& d) {
  std::error_code ec;
  std::string s;
  for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec))
    s += (s.empty() ? "" : ", ") + it->path().filename().string();
  return s.empty() ? "none" : s;
}

}  // namespace

std::string hf_hub_cache_dir() {
  return cache_dir_and_origin().first;
}

std::string resolve_model_path(const std::string& name_or_path) {
  std::error_code ec;
  if (fs::exists(name_or_path, ec)) return name_or_path;  // a path the user can see wins over an id
  // spelled as a path (absolute, ./ ../ ~): never an id, so the plain error
  if (name_or_path.starts_with('/') || name_or_path.starts_with("./") || name_or_path.starts_with("../") ||
      name_or_path.starts_with('~') || name_or_path == "." || name_or_path == "..")
    throw IoError(name_or_path + ": no such model directory");
  const size_t at = name_or_path.find('@');
  const std::string repo = name_or_path.substr(0, at);
  const bool has_rev = at != std::string::npos;
  const std::string rev = has_rev ? name_or_path.substr(at + 1) : "";
  if (const std::string why = repo_id_problem(repo); !why.empty())
    throw IoError(name_or_path +
                  ": no such model directory (nor a HuggingFace model id ORG/NAME[@REVISION]: '" + repo +
                  "' " + why + ")");
  if (has_rev)
    if (const std::string why = revision_problem(rev); !why.empty())
      throw ValueError(name_or_path + ": invalid revision '" + rev + "' (" + why +
                       "); expected a branch, tag or commit hash");

  const auto [cache, origin] = cache_dir_and_origin();
  std::string folder = "models--";  // repo_folder_name: "models--ORG--NAME"
  for (char c : repo) folder += c == '/' ? std::string("--") : std::string(1, c);
  const fs::path repo_dir = fs::path(cache) / folder;
  if (!fs::is_directory(repo_dir, ec))
    throw IoError(name_or_path + ": no such model directory, and not in the HuggingFace cache (looked for " +
                  repo_dir.string() + "; cache " + cache + ", " + origin + "). " + download_hint(repo, rev));

  const std::string wanted = has_rev ? rev : "main";
  const fs::path ref_file = repo_dir / "refs" / wanted;
  const fs::path snapshots = repo_dir / "snapshots";
  std::string commit;
  if (fs::is_regular_file(ref_file, ec)) {
    if (fs::file_size(ref_file, ec) > 1024)  // a hash is 40 characters: not a file to read whole
      throw FormatError(ref_file.string() + ": does not hold a commit hash (" +
                        std::to_string(fs::file_size(ref_file, ec)) + " bytes)");
    std::string text = read_text_file(ref_file.string());
    while (!text.empty() &&
           (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' || text.back() == '\t'))
      text.pop_back();  // huggingface_hub writes the hash without a newline; tolerate one
    const bool ok = !text.empty() && text != "." && text != ".." &&
                    text.find_first_of("/\\ \t\r\n") == std::string::npos &&
                    text.find('\0') == std::string::npos;
    if (!ok)
      throw FormatError(ref_file.string() +
                        ": does not hold a commit hash (the HuggingFace cache is damaged; " +
                        download_hint(repo, rev) + ")");
    commit = text;
  } else if (fs::is_directory(snapshots / wanted, ec)) {
    commit = wanted;  // a commit hash (or any snapshot name), as try_to_load_from_cache takes it
  } else {
    throw IoError(name_or_path + ": revision '" + wanted + "' is not in the HuggingFace cache (no " +
                  ref_file.string() + ", no " + (snapshots / wanted).string() +
                  "; refs: " + list_dir(repo_dir / "refs") + "; snapshots: " + list_dir(snapshots) + "). " +
                  download_hint(repo, rev));
  }
  const fs::path snapshot = snapshots / commit;
  if (!fs::is_directory(snapshot, ec))
    throw IoError(ref_file.string() + ": names commit " + commit + " but " + snapshot.string() +
                  " does not exist (an incomplete or pruned download; " + download_hint(repo, rev) + ")");
  return snapshot.string();
}

}  // namespace nibble
