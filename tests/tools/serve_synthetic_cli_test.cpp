// nibble serve end to end: which model to serve (a directory or --synthetic SHAPE, which needs --tokenizer),
// and a synthetic model served over HTTP, stopped by SIGTERM with exit code 0.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

using namespace nibble;
using json = nlohmann::json;

namespace {
using Out = test::CliResult;
Out nibble_cli(const std::string& args) {
  return test::run_cli(args);
}
// A child process killed (SIGKILL) and reaped at scope exit unless reaped before.
struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};
}  // namespace

TEST(ServeSyntheticCli, ModelOrSyntheticWithATokenizer) {
  const std::string model = test::example_model();
  Out r = nibble_cli("serve --synthetic tiny --port 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--synthetic needs --tokenizer DIR"), std::string::npos) << r.err;
  r = nibble_cli("serve --port 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("give a MODEL directory or --synthetic SHAPE"), std::string::npos) << r.err;
  r = nibble_cli("serve " + model + " --synthetic tiny --tokenizer " + model + " --port 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("give a MODEL directory or --synthetic SHAPE"), std::string::npos) << r.err;
  r = nibble_cli("serve --synthetic llama-1b --tokenizer " + model + " --port 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown shape 'llama-1b'"), std::string::npos) << r.err;
}

TEST(ServeSyntheticCli, SyntheticModelServesCompletionsAndStopsOnSigterm) {
  const std::string cmd = std::string(NIBBLE_CLI) + " serve --synthetic tiny --layers 1 --tokenizer " +
                          test::example_model() + " --port 0 -t 1 -q --load-in-4bit --quant-type nf4";
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  Child child;
  const pid_t pid = child.pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  // the first line says where it listens: "... listening on http://127.0.0.1:PORT"
  std::string line;
  char c = 0;
  while (::read(pipefd[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(pipefd[0]);
  const size_t at = line.rfind(':');
  ASSERT_NE(line.find("serving synthetic-tiny"), std::string::npos) << line;
  ASSERT_NE(at, std::string::npos) << line;
  const int port = std::atoi(line.c_str() + at + 1);
  ASSERT_GT(port, 0) << line;
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  const json req = {{"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0}};
  auto res = cli.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["model"], "synthetic-tiny");
  // random weights: greedy runs until max_tokens unless it picks the tokenizer's EOS
  const int64_t n = j["usage"]["completion_tokens"];
  const std::string reason = j["choices"][0]["finish_reason"];
  EXPECT_TRUE((n == 6 && reason == "length") || (n < 6 && reason == "stop")) << res->body;
  // greedy is deterministic: the same request answers the same text
  auto again = cli.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(json::parse(again->body)["choices"][0]["text"], j["choices"][0]["text"]);
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  child.pid = -1;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}
