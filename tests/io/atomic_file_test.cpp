// AtomicFile / AtomicDir: what they refuse, how --overwrite swaps, and which leftovers of dead writers the
// next writer removes (and which it must leave alone).
#include "io/atomic_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <filesystem>

#include "kill_util.h"
#include "nibble/error.h"
#include "test_util.h"

using namespace nibble;
namespace fs = std::filesystem;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

void make_model_dir(const std::string& dir, const std::string& tag) {
  fs::create_directories(dir);
  test::write_bytes(dir + "/config.json", "{\"tag\": \"" + tag + "\"}");
  test::write_bytes(dir + "/model.safetensors", "weights " + tag);
}

void write_new(const std::string& dir, const std::string& tag, AtomicDirOptions opt = {}) {
  AtomicDir d(dir, std::move(opt));
  write_text_file(d.path() + "/config.json", "{\"tag\": \"" + tag + "\"}");
  write_text_file(d.path() + "/model.safetensors", "weights " + tag);
  d.commit();
}

AtomicDirOptions opts(bool overwrite, std::string marker = "", std::string source = "") {
  AtomicDirOptions o;
  o.overwrite = overwrite;
  o.marker = std::move(marker);
  o.source = std::move(source);
  return o;
}

mode_t mode_of(const std::string& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 07777;
}

struct Umask {
  mode_t old;
  explicit Umask(mode_t m) : old(::umask(m)) {}
  ~Umask() { ::umask(old); }
};
}  // namespace

TEST(AtomicDir, AppearsOnlyOnCommitAndLeavesNoTemporaries) {
  test::TempDir d;
  const std::string out = d / "out";
  {
    AtomicDir a(out);
    write_text_file(a.path() + "/config.json", "{}");
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(fs::exists(a.path() + "/config.json"));
    a.commit();
  }
  EXPECT_EQ(test::read_bytes(out + "/config.json"), "{}");
  EXPECT_TRUE(test::temporaries_beside(out).empty());
  {  // no commit (an exception): nothing appears, nothing stays
    AtomicDir a(d / "never");
    write_text_file(a.path() + "/x", "1");
  }
  EXPECT_FALSE(fs::exists(d / "never"));
  EXPECT_TRUE(test::temporaries_beside(d / "never").empty());
  // an existing empty directory is replaced without asking
  fs::create_directories(d / "empty");
  write_new(d / "empty", "e");
  EXPECT_EQ(test::read_bytes(d / "empty/model.safetensors"), "weights e");
}

TEST(AtomicDir, RefusesWhatItMustNotReplace) {
  test::TempDir d;
  make_model_dir(d / "old", "old");
  std::string e = error_of([&] { write_new(d / "old", "new"); });
  EXPECT_NE(e.find(d / "old"), std::string::npos) << e;
  EXPECT_NE(e.find("--overwrite"), std::string::npos) << e;
  EXPECT_EQ(test::read_bytes(d / "old/model.safetensors"), "weights old");

  test::write_bytes(d / "file", "precious");
  for (const bool ow : {false, true}) {
    e = error_of([&] { write_new(d / "file", "new", opts(ow)); });
    EXPECT_NE(e.find("is not a directory"), std::string::npos) << e;
    EXPECT_EQ(test::read_bytes(d / "file"), "precious");
  }
  fs::create_directory_symlink(d / "old", d / "link");
  e = error_of([&] { write_new(d / "link", "new", opts(true, "config.json")); });
  EXPECT_NE(e.find("symbolic link"), std::string::npos) << e;

  // overwrite replaces only a directory of plain files holding the marker
  fs::create_directories(d / "home/sub");
  test::write_bytes(d / "home/config.json", "{}");
  e = error_of([&] { write_new(d / "home", "new", opts(true, "config.json")); });
  EXPECT_NE(e.find("'sub' is a directory"), std::string::npos) << e;
  fs::create_directories(d / "notes");
  test::write_bytes(d / "notes/todo.txt", "mine");
  e = error_of([&] { write_new(d / "notes", "new", opts(true, "config.json")); });
  EXPECT_NE(e.find("has no config.json"), std::string::npos) << e;
  EXPECT_EQ(test::read_bytes(d / "notes/todo.txt"), "mine");

  // never the input, nor a directory holding it
  e = error_of([&] { write_new(d / "old", "new", opts(true, "", d / "old/")); });
  EXPECT_NE(e.find("is the input directory"), std::string::npos) << e;
  make_model_dir(d / "outer", "outer");
  make_model_dir(d / "outer/in", "in");
  e = error_of([&] { write_new(d / "outer", "new", opts(true, "", d / "outer/in")); });
  EXPECT_NE(e.find("contains the input directory"), std::string::npos) << e;
  EXPECT_EQ(test::read_bytes(d / "old/model.safetensors"), "weights old");
  for (const char* n : {"old", "file", "link", "home", "notes", "outer"})
    EXPECT_TRUE(test::temporaries_beside(d / n).empty()) << n;
}

TEST(AtomicDir, OverwriteSwapsInTheCompleteNewDirectory) {
  for (const bool aside : {false, true}) {
    detail::force_rename_aside(aside);
    test::TempDir d;
    const std::string out = d / "out";
    make_model_dir(out, "old");
    test::write_bytes(out + "/only-old.txt", "x");
    {
      AtomicDir a(out, opts(true, "config.json"));
      write_text_file(a.path() + "/config.json", "{\"tag\": \"new\"}");
      write_text_file(a.path() + "/model.safetensors", "weights new");
      EXPECT_EQ(test::read_bytes(out + "/model.safetensors"), "weights old");  // untouched until commit
      a.commit();
    }
    detail::force_rename_aside(false);
    EXPECT_EQ(test::read_dir(out), (std::map<std::string, std::string>{{"config.json", "{\"tag\": \"new\"}"},
                                                                       {"model.safetensors", "weights new"}}))
        << "rename-aside: " << aside;
    EXPECT_TRUE(test::temporaries_beside(out).empty()) << "rename-aside: " << aside;
  }
}

TEST(AtomicDir, StaleTemporariesOfDeadWritersOnly) {
  test::TempDir d;
  const std::string out = d / "out";
  const pid_t dead1 = test::dead_pid(), dead2 = test::dead_pid(), dead3 = test::dead_pid();
  make_model_dir(test::tmp_of(out, dead1), "half-written");
  test::write_bytes(test::tmp_of(out, dead2), "a stale file temporary");
  // a live writer (here: a sleeping child) keeps its temporary
  const pid_t live = ::fork();
  if (live == 0) {
    ::pause();
    ::_exit(0);
  }
  make_model_dir(test::tmp_of(out, live), "live");
  // a writer we cannot see as a process (another pid namespace) but that holds the flock keeps it too
  make_model_dir(test::tmp_of(out, dead3), "locked");
  const int lock = ::open(test::tmp_of(out, dead3).c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(lock, 0);
  ASSERT_EQ(::flock(lock, LOCK_EX | LOCK_NB), 0);
  // names that are not out's temporaries
  make_model_dir(d / "out2.tmp.1", "other");
  make_model_dir(d / "out.tmp.x1", "other");

  write_new(out, "new");
  EXPECT_FALSE(fs::exists(test::tmp_of(out, dead1)));
  EXPECT_FALSE(fs::exists(test::tmp_of(out, dead2)));
  EXPECT_EQ(test::read_bytes(test::tmp_of(out, live) + "/model.safetensors"), "weights live");
  EXPECT_EQ(test::read_bytes(test::tmp_of(out, dead3) + "/model.safetensors"), "weights locked");
  EXPECT_TRUE(fs::exists(d / "out2.tmp.1/config.json"));
  EXPECT_TRUE(fs::exists(d / "out.tmp.x1/config.json"));
  EXPECT_EQ(test::read_bytes(out + "/model.safetensors"), "weights new");

  // once the writers are gone, the next writer of out removes theirs
  ::close(lock);
  ::kill(live, SIGKILL);
  ::waitpid(live, nullptr, 0);
  EXPECT_EQ(remove_stale_temporaries(out), 2);
  EXPECT_EQ(test::temporaries_beside(out), std::vector<std::string>{"out.tmp.x1"});
}

TEST(AtomicDir, OverwriteKilledBetweenRenamesRestoresTheOldOutput) {
  // The rename-aside fallback killed after moving the old output aside: out is absent, the old output is at
  // out.old.<pid>, the new one at out.tmp.<pid>. The next writer puts the old one back.
  test::TempDir d;
  const std::string out = d / "out";
  const pid_t dead = test::dead_pid();
  make_model_dir(out + ".old." + std::to_string(dead), "old");
  make_model_dir(test::tmp_of(out, dead), "new");
  EXPECT_EQ(remove_stale_temporaries(out), 2);
  EXPECT_EQ(test::read_bytes(out + "/model.safetensors"), "weights old");
  EXPECT_TRUE(test::temporaries_beside(out).empty());
  // with out present, a stale ".old" is just removed
  make_model_dir(out + ".old." + std::to_string(dead), "older");
  EXPECT_EQ(remove_stale_temporaries(out), 1);
  EXPECT_EQ(test::read_bytes(out + "/model.safetensors"), "weights old");
  EXPECT_TRUE(test::temporaries_beside(out).empty());
}

TEST(AtomicFile, FreshModeAndStaleTemporaries) {
  const Umask um(022);
  test::TempDir d;
  const std::string src = d / "src.json", dst = d / "dst.json";
  test::write_bytes(src, "{\"a\": 1}");
  ::chmod(src.c_str(), 0444);
  const pid_t dead = test::dead_pid();
  test::write_bytes(test::tmp_of(dst, dead), "stale");
  copy_file_contents(src, dst);
  EXPECT_EQ(test::read_bytes(dst), "{\"a\": 1}");
  EXPECT_EQ(mode_of(dst), 0644u);
  EXPECT_TRUE(test::temporaries_beside(dst).empty());
  // replacing a read-only file gives a fresh one too
  ::chmod(dst.c_str(), 0400);
  write_text_file(dst, "new");
  EXPECT_EQ(test::read_bytes(dst), "new");
  EXPECT_EQ(mode_of(dst), 0644u);
  EXPECT_NE(error_of([&] { copy_file_contents(d / "missing", d / "x"); }).find("missing"), std::string::npos);
  EXPECT_FALSE(fs::exists(d / "x"));
}
