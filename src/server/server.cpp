// nibble::Server: OpenAI's HTTP API (field for field where nibble supports the feature, a 400 naming the
// field where it does not) over server::Engine, on cpp-httplib.
#include "nibble/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "server/engine.h"
#include "server/request.h"

namespace nibble {

using json = nlohmann::ordered_json;

using server::BadRequest;

namespace {

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
                const std::string& type = "invalid_request_error") {
  json e{{"message", message},
         {"type", type},
         {"param", param.empty() ? json(nullptr) : json(param)},
         {"code", nullptr}};
  res.status = status;
  res.set_content(json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace),
                  "application/json");
}

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx%04llx", prefix, static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(counter++ & 0xffff));
  return buf;
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

struct Server::Impl {
  const AutoModelForCausalLM& model;
  const Tokenizer& tok;
  const ChatTemplate* tmpl;
  ServerOptions opt;
  server::Engine engine;
  httplib::Server http;
  int port = -1;

  Impl(const AutoModelForCausalLM& m, const Tokenizer& t, const ChatTemplate* c, const ServerOptions& o)
      : model(m),
        tok(t),
        tmpl(c),
        opt(o),
        engine(m, t, {.max_batch = o.max_batch, .context_length = o.context_length}) {
    const int threads = std::max(4, o.http_threads);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_payload_max_length(16u << 20);
    // SO_REUSEADDR (restart while old connections linger) but not httplib's default SO_REUSEPORT, with which
    // a second server on the same port would silently share its connections instead of failing to start
    http.set_socket_options([](socket_t sock) {
      const int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const json j{{"object", "list"},
                   {"data", json::array({{{"id", opt.model_id},
                                          {"object", "model"},
                                          {"created", static_cast<int64_t>(std::time(nullptr))},
                                          {"owned_by", "nibble"}}})}};
      res.set_content(j.dump(), "application/json");
    });
    http.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404)
        send_error(res, 404, "Invalid URL (" + req.method + " " + req.path + ")");
      else if (res.body.empty())
        send_error(res, res.status, "HTTP error " + std::to_string(res.status));
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, 500, what, "", "server_error");
    });
  }

  void handle(const httplib::Request& req, httplib::Response& res, bool chat) {
    try {
      server::ParsedRequest p = server::parse_request(req.body, chat);
      std::vector<int32_t> ids;
      if (chat) {
        if (!tmpl)
          throw BadRequest{
              "this model has no chat template (tokenizer_config.json has no chat_template); use "
              "/v1/completions",
              "messages"};
        std::string text;
        try {
          text = tmpl->render(p.messages, true);
        } catch (const Error& e) {
          throw BadRequest{std::string("the chat template rejected the messages: ") + e.what(), "messages"};
        }
        ids = tok.encode(text, false);  // as apply_chat_template(tokenize=True): the template holds BOS
      } else {
        ids = tok.encode(p.prompt, true);
      }
      if (ids.empty()) throw BadRequest{"the prompt is empty", chat ? "messages" : "prompt"};
      if (static_cast<int64_t>(ids.size()) >= engine.context_length())
        throw BadRequest{"the prompt has " + std::to_string(ids.size()) +
                             " tokens; this server's context is " + std::to_string(engine.context_length()) +
                             " tokens (prompt and completion together)",
                         chat ? "messages" : "prompt"};
      auto r = std::make_shared<server::Request>(std::move(ids), p.sampling);
      const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
      const auto created = static_cast<int64_t>(std::time(nullptr));
      engine.submit(r);
      if (p.stream)
        stream(res, r, id, created, chat, p.include_usage);
      else
        respond(res, r, id, created, chat);
    } catch (const BadRequest& e) {
      send_error(res, 400, e.what(), e.param());
    } catch (const Error& e) {
      send_error(res, 400, e.what());
    }
  }

  json usage(const server::Request& r) const {
    return {{"prompt_tokens", r.prompt_tokens()},
            {"completion_tokens", r.completion_tokens()},
            {"total_tokens", r.prompt_tokens() + r.completion_tokens()}};
  }

  void respond(httplib::Response& res, const std::shared_ptr<server::Request>& r, const std::string& id,
               int64_t created, bool chat) {
    std::string text;
    for (;;) {
      auto e = r->wait_event();
      text += e.text;
      if (!e.done) continue;
      if (!e.error.empty()) {
        send_error(res, 503, e.error, "", "server_error");
        return;
      }
      json choice{{"index", 0}, {"finish_reason", e.finish_reason}, {"logprobs", nullptr}};
      if (chat)
        choice["message"] = {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}};
      else
        choice["text"] = text;
      const json j{{"id", id},
                   {"object", chat ? "chat.completion" : "text_completion"},
                   {"created", created},
                   {"model", opt.model_id},
                   {"choices", json::array({choice})},
                   {"usage", usage(*r)}};
      res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
      return;
    }
  }

  void stream(httplib::Response& res, const std::shared_ptr<server::Request>& r, const std::string& id,
              int64_t created, bool chat, bool include_usage) {
    res.set_header("Cache-Control", "no-cache");
    auto chunk = [this, id, created, chat](json choice) {
      return json{{"id", id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", opt.model_id},
                  {"choices", json::array({std::move(choice)})}};
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, r, chunk, chat, include_usage, started = false](size_t, httplib::DataSink& sink) mutable {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          if (chat && !started) {
            started = true;
            if (!write(sse(chunk({{"index", 0},
                                  {"delta", {{"role", "assistant"}, {"content", ""}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}))))
              return false;
          }
          const auto e = r->wait_event();
          if (!e.text.empty()) {
            json c{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
            if (chat)
              c["delta"] = {{"content", e.text}};
            else
              c["text"] = e.text;
            if (!write(sse(chunk(c)))) return false;
          }
          if (!e.done) return true;
          if (!e.error.empty()) {
            write(sse(json{
                {"error",
                 {{"message", e.error}, {"type", "server_error"}, {"param", nullptr}, {"code", nullptr}}}}));
          } else {
            json c{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", e.finish_reason}};
            if (chat)
              c["delta"] = json::object();
            else
              c["text"] = "";
            if (!write(sse(chunk(c)))) return false;
            if (include_usage) {
              json u = chunk(nullptr);
              u["choices"] = json::array();
              u["usage"] = usage(*r);
              if (!write(sse(u))) return false;
            }
          }
          write("data: [DONE]\n\n");
          sink.done();
          return true;
        },
        [r](bool success) {
          if (!success) r->cancel();  // the client went away: free its slot
        });
  }
};

Server::Server(const AutoModelForCausalLM& model, const Tokenizer& tok, const ChatTemplate* chat_template,
               const ServerOptions& opt)
    : impl_(std::make_unique<Impl>(model, tok, chat_template, opt)) {}

Server::~Server() {
  stop();
}

void Server::listen() {
  Impl& s = *impl_;
  if (s.opt.port < 0 || s.opt.port > 65535)
    throw ValueError("port must be in [0, 65535], got " + std::to_string(s.opt.port));
  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
  } else {
    s.port = s.http.bind_to_port(s.opt.host, s.opt.port) ? s.opt.port : -1;
  }
  if (s.port < 0)
    throw IoError("cannot listen on " + s.opt.host + ":" + std::to_string(s.opt.port) +
                  " (address in use, or not an address of this machine)");
}

int Server::port() const {
  return impl_->port;
}

void Server::run() {
  if (impl_->port < 0) listen();
  impl_->http.listen_after_bind();
}

Server::Stats Server::stats() const {
  return {impl_->engine.steps(), impl_->engine.max_active(), impl_->engine.cancelled()};
}

void Server::stop() {
  impl_->engine.shutdown();
  impl_->http.stop();
}

}  // namespace nibble
