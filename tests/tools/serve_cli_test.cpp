// nibble serve and nibble chat as processes: serve prints where it listens, answers, and exits 0 on SIGINT
// and SIGTERM even with a request in flight; a port in use is a clear error; chat keeps the history across
// turns (the template sees every earlier turn), /reset forgets it, /exit quits, and a model without a chat
// template is refused with a message naming the files looked at.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "nibble/chat_template.h"
#include "nibble/model.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;
using json = nlohmann::json;

namespace {
std::string chat_model(const test::TempDir& d) {
  return test::write_chat_model(d.str(), test::kSimpleChatTemplate);
}

struct Child {
  pid_t pid = -1;
  int out = -1;  // its stdout
};

Child spawn(const std::vector<std::string>& args, const std::string& err_path) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    const int e = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(e, 2);
    close(p[0]);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(p[1]);
  return {pid, p[0]};
}

std::string read_line(int fd) {
  std::string s;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') s += c;
  return s;
}

// Exit status, or -1 if it is still running after `seconds` (then it is killed).
int wait_exit(pid_t pid, int seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

int port_of(const std::string& line) {
  const size_t p = line.rfind(':');
  return p == std::string::npos ? -1 : std::atoi(line.c_str() + p + 1);
}
}  // namespace

TEST(ServeCli, ListensAnswersAndExitsZeroOnSignals) {
  for (int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGTERM");
    test::TempDir d;
    Child c = spawn({NIBBLE_CLI, "serve", test::example_model(), "--port", "0", "--max-batch", "2", "-q"},
                    d / "err");
    const std::string line = read_line(c.out);
    ASSERT_NE(line.find("listening on http://127.0.0.1:"), std::string::npos) << line;
    const int port = port_of(line);
    httplib::Client cl("127.0.0.1", port);
    cl.set_read_timeout(60, 0);
    auto h = cl.Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);
    // a long request in flight when the signal comes: it ends (the server does not wait for 500 tokens)
    auto inflight = std::async(std::launch::async, [port] {
      httplib::Client c2("127.0.0.1", port);
      c2.set_read_timeout(60, 0);
      auto r = c2.Post("/v1/completions",
                       R"({"prompt": "Once upon a time", "max_tokens": 100000, "stream": true})",
                       "application/json");
      return r ? r->body : std::string("no response");
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    kill(c.pid, sig);
    EXPECT_EQ(wait_exit(c.pid, 30), 0) << test::read_bytes(d / "err");
    ASSERT_EQ(inflight.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    inflight.get();
    close(c.out);
  }
}

TEST(ServeCli, PortInUseIsAClearError) {
  httplib::Server taken;
  const int port = taken.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  test::TempDir d;
  Child c =
      spawn({NIBBLE_CLI, "serve", test::example_model(), "--port", std::to_string(port), "-q"}, d / "err");
  EXPECT_EQ(wait_exit(c.pid, 60), 1);
  const std::string err = test::read_bytes(d / "err");
  EXPECT_NE(err.find("cannot listen on 127.0.0.1:" + std::to_string(port)), std::string::npos) << err;
  close(c.out);
}

TEST(ChatCli, KeepsHistoryResetsAndExits) {
  test::TempDir d;
  const std::string dir = chat_model(d);
  test::write_bytes(d / "in", "Tell me about a cat.\nAnd then?\n/reset\nAnd then?\n/exit\nnever read\n");
  const int rc = std::system((std::string(NIBBLE_CLI) + " chat " + dir + " -n 8 -q <" + (d / "in") + " >" +
                              (d / "out") + " 2>" + (d / "err"))
                                 .c_str());
  ASSERT_EQ(WEXITSTATUS(rc), 0) << test::read_bytes(d / "err");
  // expected replies: the template over the whole history, greedy, 8 tokens, in one Session whose cache
  // keeps the shared prefix (as the chat command runs it)
  const auto model = AutoModelForCausalLM::from_pretrained(dir, {.quiet = true});
  const auto tok = Tokenizer::from_pretrained(dir);
  const auto tmpl = ChatTemplate::from_pretrained(dir);
  Session s(model);
  auto reply = [&](const nlohmann::ordered_json& msgs) {
    const auto ids = tok.encode(tmpl.render(msgs, true), false);
    int64_t same = 0;
    while (same < s.length() && same < static_cast<int64_t>(ids.size()) - 1 &&
           s.tokens()[static_cast<size_t>(same)] == ids[static_cast<size_t>(same)])
      ++same;
    s.truncate(same);
    s.append(std::span(ids).subspan(static_cast<size_t>(same)));
    StreamDecoder dec(tok, ids);
    std::string text;
    for (int32_t id : s.generate({.max_new_tokens = 8})) text += dec.put(id);
    return text + dec.flush();
  };
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  msgs.push_back({{"role", "user"}, {"content", "Tell me about a cat."}});
  const std::string r1 = reply(msgs);
  msgs.push_back({{"role", "assistant"}, {"content", r1}});
  msgs.push_back({{"role", "user"}, {"content", "And then?"}});
  const std::string r2 = reply(msgs);
  s.reset();
  const std::string r3 = reply(nlohmann::ordered_json::array({{{"role", "user"}, {"content", "And then?"}}}));
  EXPECT_NE(r2, r3) << "history made no difference: the test cannot tell history from none";
  EXPECT_EQ(test::read_bytes(d / "out"), r1 + "\n" + r2 + "\n" + r3 + "\n");
}

TEST(ChatCli, ModelWithoutTemplateIsRefused) {
  test::TempDir d;
  const int rc = std::system((std::string(NIBBLE_CLI) + " chat " + test::example_model() +
                              " -q </dev/null >" + (d / "out") + " 2>" + (d / "err"))
                                 .c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 1);
  const std::string err = test::read_bytes(d / "err");
  EXPECT_NE(err.find("chat template"), std::string::npos) << err;
  EXPECT_NE(err.find("tokenizer_config.json"), std::string::npos) << err;
}
