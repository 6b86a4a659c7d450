// nibble::Server over real HTTP on a loopback port (cpp-httplib's client): OpenAI's response shapes,
// streaming that adds up to the non-streamed text, stop strings, the error object for each kind of bad
// request (the server keeps serving after every one), chat through the model's template, a client that goes
// away mid- stream, and continuous batching: concurrent greedy requests answer exactly what they answer alone
// while the engine decodes several of them per step.
#include "nibble/server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "nibble/chat_template.h"
#include "nibble/model.h"
#include "nibble/sampling.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"
#include "test_util.h"

using namespace nibble;
using json = nlohmann::json;

namespace {
// The example model with a chat template that also rejects a conversation opened by the assistant.
const std::string& chat_model_dir() {
  static test::TempDir dir;
  static const std::string path = test::write_chat_model(
      dir.str(),
      std::string(
          "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations must start with "
          "a user or system message') }}{% endif %}") +
          test::kSimpleChatTemplate);
  return path;
}

struct Fixture {
  AutoModelForCausalLM model;
  Tokenizer tok;
  ChatTemplate tmpl;
  std::unique_ptr<Server> srv;
  std::thread th;
  explicit Fixture(int max_batch = 8, int64_t ctx = 256)
      : model(AutoModelForCausalLM::from_pretrained(chat_model_dir(), {.quiet = true})),
        tok(Tokenizer::from_pretrained(chat_model_dir())),
        tmpl(ChatTemplate::from_pretrained(chat_model_dir())) {
    srv = std::make_unique<Server>(
        model, tok, &tmpl,
        ServerOptions{.port = 0, .model_id = "tiny", .max_batch = max_batch, .context_length = ctx});
    srv->listen();
    th = std::thread([this] { srv->run(); });
  }
  ~Fixture() {
    srv->stop();
    th.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", srv->port());
    c.set_read_timeout(120, 0);
    return c;
  }
  json post(const std::string& path, const json& body, int want_status = 200) const {
    auto c = client();
    auto res = c.Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(res) << "no response";
    if (!res) return {};
    EXPECT_EQ(res->status, want_status) << res->body;
    return json::parse(res->body);
  }
};

// data: lines of a server-sent event stream; [DONE] must be the last
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  size_t p = 0;
  bool done = false;
  while (p < body.size()) {
    const size_t e = body.find("\n\n", p);
    EXPECT_NE(e, std::string::npos) << "unterminated event";
    if (e == std::string::npos) break;
    const std::string ev = body.substr(p, e - p);
    p = e + 2;
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    EXPECT_FALSE(done) << "event after [DONE]";
    if (ev == "data: [DONE]")
      done = true;
    else
      out.push_back(json::parse(ev.substr(6)));
  }
  EXPECT_TRUE(done) << "no [DONE]";
  return out;
}

Fixture& shared() {
  static Fixture f;
  return f;
}
}  // namespace

TEST(Server, HealthAndModels) {
  auto c = shared().client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const json j = json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
}

TEST(Server, CompletionGreedyAsTheModelDecodesIt) {
  const Fixture& f = shared();
  const json r =
      f.post("/v1/completions",
             {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 12}, {"temperature", 0}});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "tiny");
  EXPECT_EQ(r["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(r["choices"].size(), 1u);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  const auto prompt = f.tok.encode("Once upon a time");
  EXPECT_EQ(r["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(r["usage"]["completion_tokens"], 12);
  EXPECT_EQ(r["usage"]["total_tokens"], prompt.size() + 12);
  // the same 12 tokens picked by a Session stepped as the engine steps it
  Session s(f.model, {.context_length = 256});
  s.append(prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < 12; ++i) {
    if (i > 0) {
      Session* one[] = {&s};
      Session::step(one);
    }
    const auto l = s.logits();
    out.push_back(argmax(l.data(), static_cast<int64_t>(l.size())));
    s.push(out.back());
  }
  std::string want;
  StreamDecoder d(f.tok, prompt);
  for (int32_t id : out) want += d.put(id);
  want += d.flush();
  EXPECT_EQ(r["choices"][0]["text"], want);
}

TEST(Server, StreamAddsUpToTheResponse) {
  const Fixture& f = shared();
  for (bool chat : {false, true}) {
    json body{{"max_tokens", 15}, {"temperature", 0}};
    if (chat)
      body["messages"] = {{{"role", "user"}, {"content", "Tell me a story about a cat."}}};
    else
      body["prompt"] = "The little dog";
    const char* path = chat ? "/v1/chat/completions" : "/v1/completions";
    const json whole = f.post(path, body);
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto c = f.client();
    auto res = c.Post(path, body.dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    const auto evs = sse_events(res->body);
    ASSERT_GE(evs.size(), 3u);
    std::string text;
    std::string finish;
    for (size_t i = 0; i + 1 < evs.size(); ++i) {
      const json& e = evs[i];
      EXPECT_EQ(e["object"], chat ? "chat.completion.chunk" : "text_completion");
      EXPECT_EQ(e["id"], evs[0]["id"]);
      const json& ch = e["choices"][0];
      if (chat) {
        if (i == 0) {
          EXPECT_EQ(ch["delta"]["role"], "assistant");
        }
        if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
      } else {
        text += ch["text"].get<std::string>();
      }
      if (!ch["finish_reason"].is_null()) {
        EXPECT_EQ(i + 2, evs.size()) << "finish_reason before the last choice chunk";
        finish = ch["finish_reason"];
      }
    }
    // include_usage: a last chunk with no choices and the usage
    EXPECT_TRUE(evs.back()["choices"].empty());
    EXPECT_EQ(evs.back()["usage"], whole["usage"]);
    EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
    EXPECT_EQ(text, chat ? whole["choices"][0]["message"]["content"] : whole["choices"][0]["text"]);
  }
}

TEST(Server, ChatRendersTheModelsTemplate) {
  const Fixture& f = shared();
  const json messages = {{{"role", "system"}, {"content", "You tell stories."}},
                         {{"role", "user"}, {"content", "A story about a frog."}}};
  const json r = f.post("/v1/chat/completions",
                        {{"messages", messages}, {"max_completion_tokens", 5}, {"temperature", 0}});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["usage"]["completion_tokens"], 5);
  // the prompt is the rendered template, its bos_token text encoded as the one special token
  const std::string text = f.tmpl.render(messages, true);
  ASSERT_EQ(
      text.rfind("<|start_story|>system: You tell stories.\nuser: A story about a frog.\nassistant:", 0), 0u)
      << text;
  const auto ids = f.tok.encode(text, false);
  EXPECT_EQ(ids[0], f.tok.bos_token_id().value());
  EXPECT_EQ(r["usage"]["prompt_tokens"], ids.size());
  // a message list the template rejects: 400 with raise_exception's text
  const json bad =
      f.post("/v1/chat/completions", {{"messages", {{{"role", "assistant"}, {"content", "hi"}}}}}, 400);
  EXPECT_NE(bad["error"]["message"].get<std::string>().find(
                "Conversations must start with a user or system message"),
            std::string::npos)
      << bad;
  // text parts are joined as one string
  const json parts = f.post(
      "/v1/chat/completions",
      {{"messages",
        {{{"role", "user"},
          {"content",
           {{{"type", "text"}, {"text", "A story about "}}, {{"type", "text"}, {"text", "a frog."}}}}}}},
       {"max_tokens", 1},
       {"temperature", 0}});
  EXPECT_EQ(
      parts["usage"]["prompt_tokens"],
      f.tok.encode(f.tmpl.render(json{{{"role", "user"}, {"content", "A story about a frog."}}}, true), false)
          .size());
}

TEST(Server, StopStringsEndTheTextBeforeThem) {
  const Fixture& f = shared();
  const json base{{"prompt", "Once upon a time"}, {"max_tokens", 30}, {"temperature", 0}};
  const std::string full = f.post("/v1/completions", base)["choices"][0]["text"];
  ASSERT_GT(full.size(), 20u);
  // a stop string that starts inside the text: the response is the text before it, finish_reason "stop"
  const std::string stop = full.substr(10, 6);
  const size_t at = full.find(stop);
  json body = base;
  body["stop"] = {"never appears", stop};
  const json r = f.post("/v1/completions", body);
  EXPECT_EQ(r["choices"][0]["text"], full.substr(0, at));
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  body["stream"] = true;
  auto c = f.client();
  auto res = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  std::string text;
  for (const auto& e : sse_events(res->body)) text += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, full.substr(0, at));  // no piece of the stop string leaked into the stream
}

TEST(Server, BadRequestsGetOpenAIErrorsAndTheServerKeepsServing) {
  const Fixture& f = shared();
  auto c = f.client();
  struct Bad {
    std::string path, body, param;
  };
  const std::string ok_chat = R"("messages": [{"role": "user", "content": "hi"}])";
  const std::vector<Bad> cases{
      {"/v1/completions", "{not json", ""},
      {"/v1/completions", "[1, 2]", ""},
      {"/v1/completions", "{}", "prompt"},
      {"/v1/completions", R"({"prompt": 5})", "prompt"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": -1})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": "ten"})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 1.5})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "a", "temperature": -0.5})", "temperature"},
      {"/v1/completions", R"({"prompt": "a", "temperature": 3})", "temperature"},
      {"/v1/completions", R"({"prompt": "a", "top_p": 1.5})", "top_p"},
      {"/v1/completions", R"({"prompt": "a", "stop": 7})", "stop"},
      {"/v1/completions", R"({"prompt": "a", "stop": ["a", 1]})", "stop"},
      {"/v1/completions", R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})", "stop"},
      {"/v1/completions", R"({"prompt": "a", "n": 2})", "n"},
      {"/v1/completions", R"({"prompt": "a", "stream": "yes"})", "stream"},
      {"/v1/completions", R"({"prompt": "a", "seed": "x"})", "seed"},
      {"/v1/completions", R"({"prompt": "a", "model": 3})", "model"},
      {"/v1/completions", R"({"prompt": "a", "presence_penalty": 0.5})", "presence_penalty"},
      {"/v1/completions", R"({"prompt": "a", "stream_options": {"include_usage": true}})", "stream_options"},
      {"/v1/chat/completions", "{}", "messages"},
      {"/v1/chat/completions", R"({"messages": []})", "messages"},
      {"/v1/chat/completions", R"({"messages": ["hi"]})", "messages[0]"},
      {"/v1/chat/completions", R"({"messages": [{"content": "hi"}]})", "messages[0].role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "hi"}]})", "messages[0].role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content"},
      {"/v1/chat/completions", "{" + ok_chat + R"(, "tools": [{"type": "function"}]})", "tools"},
      {"/v1/chat/completions", "{" + ok_chat + R"(, "response_format": {"type": 5}})", "response_format"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": [{"type": 3, "text": "x"}]}]})",
       "messages[0].content"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
       "messages[0].content"},
      // longer than the 256-token context
      {"/v1/completions", json{{"prompt", std::string(3000, 'x') + " once upon a time"}}.dump(), "prompt"},
  };
  for (const auto& b : cases) {
    SCOPED_TRACE(b.path + " " + b.body.substr(0, 120));
    auto res = c.Post(b.path.c_str(), b.body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400);
    const json e = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(e.is_object()) << res->body;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(e["error"]["message"].is_string() && !e["error"]["message"].get<std::string>().empty());
    EXPECT_EQ(e["error"]["param"], b.param.empty() ? json(nullptr) : json(b.param));
    EXPECT_TRUE(e["error"].contains("code"));
  }
  auto nf = c.Post("/v1/embeddings", "{}", "application/json");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_EQ(json::parse(nf->body)["error"]["message"], "Invalid URL (POST /v1/embeddings)");
  // still serving
  EXPECT_EQ(f.post("/v1/completions", {{"prompt", "a"}, {"max_tokens", 2}})["usage"]["completion_tokens"], 2);
  // max_tokens 0: nothing generated, finish_reason length
  const json zero = f.post("/v1/completions", {{"prompt", "a"}, {"max_tokens", 0}});
  EXPECT_EQ(zero["choices"][0]["text"], "");
  EXPECT_EQ(zero["choices"][0]["finish_reason"], "length");
}

TEST(Server, ConcurrentGreedyRequestsAnswerAsAloneWhileBatched) {
  Fixture f(8);
  const std::vector<std::string> prompts{"Once upon a time", "The cat",     "Lily and Tom went",
                                         "One day, a bird",  "The sun was", "A little boy named",
                                         "There was a big",  "Sam liked"};
  auto body = [&](size_t i) { return json{{"prompt", prompts[i]}, {"max_tokens", 40}, {"temperature", 0}}; };
  std::vector<json> alone;
  for (size_t i = 0; i < prompts.size(); ++i) alone.push_back(f.post("/v1/completions", body(i)));
  EXPECT_EQ(f.srv->stats().max_batch_seen, 1);
  std::vector<std::future<json>> fut;
  for (size_t i = 0; i < prompts.size(); ++i)
    fut.push_back(std::async(std::launch::async, [&, i] { return f.post("/v1/completions", body(i)); }));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const json r = fut[i].get();
    EXPECT_EQ(r["choices"][0]["text"], alone[i]["choices"][0]["text"]) << prompts[i];
    EXPECT_EQ(r["usage"], alone[i]["usage"]);
  }
  EXPECT_GT(f.srv->stats().max_batch_seen, 1) << "the concurrent requests were never decoded together";
}

TEST(Server, AClientThatLeavesFreesItsSlot) {
  Fixture f(1, 512);  // one slot: the next request can only run once the abandoned one is gone
  {
    httplib::Client c("127.0.0.1", f.srv->port());
    int chunks = 0;
    httplib::Headers h;
    const json body{{"prompt", "Once upon a time"}, {"max_tokens", 100000}, {"stream", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };  // hang up
    c.send(req);
  }
  const json r = f.post("/v1/completions", {{"prompt", "The cat"}, {"max_tokens", 3}, {"temperature", 0}});
  EXPECT_EQ(r["usage"]["completion_tokens"], 3);
  EXPECT_EQ(f.srv->stats().cancelled, 1) << "the abandoned stream ran to its end instead of being dropped";
}
