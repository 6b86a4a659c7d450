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

namespace nibble {

using json = nlohmann::ordered_json;

namespace {

// A request the client got wrong: answered 400 with OpenAI's error object.
struct BadRequest {
  std::string message;
  std::string param;  // the field at fault ("" = none)
  int status = 400;
};

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

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a number";
    default:
      return "an integer";
  }
}

// body[key] if present and not null
const json* field(const json& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* key, double def, double lo, double hi) {
  const json* v = field(body, key);
  if (!v) return def;
  if (!v->is_number())
    throw BadRequest{std::string("'") + key + "' must be a number, got " + type_name(*v), key};
  const double d = v->get<double>();
  if (!(d >= lo && d <= hi))
    throw BadRequest{std::string("'") + key + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() +
                         "], got " + v->dump(),
                     key};
  return d;
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t lo) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer())
    throw BadRequest{std::string("'") + key + "' must be an integer, got " + type_name(*v), key};
  if (v->is_number_unsigned()) return static_cast<int64_t>(std::min<uint64_t>(v->get<uint64_t>(), INT64_MAX));
  const auto i = v->get<int64_t>();
  if (i < lo)
    throw BadRequest{
        std::string("'") + key + "' must be >= " + std::to_string(lo) + ", got " + std::to_string(i), key};
  return i;
}

bool boolean(const json& body, const char* key, bool def) {
  const json* v = field(body, key);
  if (!v) return def;
  if (!v->is_boolean())
    throw BadRequest{std::string("'") + key + "' must be a boolean, got " + type_name(*v), key};
  return v->get<bool>();
}

// Fields nibble does not implement: refused when set to anything but their no-op value, never ignored.
void refuse_unsupported(const json& body) {
  auto nonzero = [&](const char* k) {
    const json* v = field(body, k);
    return v && !(v->is_number() && v->get<double>() == 0);
  };
  for (const char* k : {"frequency_penalty", "presence_penalty"})
    if (nonzero(k)) throw BadRequest{std::string("'") + k + "' is not supported by this server (use 0)", k};
  if (const json* v = field(body, "logprobs"); v && !(v->is_boolean() && !v->get<bool>()))
    throw BadRequest{"'logprobs' is not supported by this server", "logprobs"};
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    throw BadRequest{"'logit_bias' is not supported by this server", "logit_bias"};
  if (const json* v = field(body, "tools"); v && !(v->is_array() && v->empty()))
    throw BadRequest{"'tools' is not supported by this server", "tools"};
  if (const json* v = field(body, "response_format");
      v && !(v->is_object() && v->value("type", std::string()) == "text"))
    throw BadRequest{"'response_format' other than {\"type\": \"text\"} is not supported by this server",
                     "response_format"};
  if (const json* v = field(body, "echo"); v && !(v->is_boolean() && !v->get<bool>()))
    throw BadRequest{"'echo' is not supported by this server", "echo"};
  if (const json* v = field(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    throw BadRequest{"'suffix' is not supported by this server", "suffix"};
  for (const char* k : {"n", "best_of"})
    if (const auto n = integer(body, k, 1); n && *n != 1)
      throw BadRequest{
          std::string("'") + k + "' must be 1 (one choice per request), got " + std::to_string(*n), k};
}

struct Parsed {
  server::SamplingOptions sampling;
  bool stream = false, include_usage = false;
};

Parsed parse_common(const json& body, bool chat) {
  Parsed p;
  if (const json* m = field(body, "model"); m && !m->is_string())
    throw BadRequest{"'model' must be a string, got " + type_name(*m), "model"};
  refuse_unsupported(body);
  // max_completion_tokens replaces max_tokens in OpenAI's chat API; completions default to 16 as OpenAI's
  std::optional<int64_t> mt = integer(body, "max_completion_tokens", 0);
  const char* mt_key = "max_completion_tokens";
  if (!mt) {
    mt = integer(body, "max_tokens", 0);
    mt_key = "max_tokens";
  }
  (void)mt_key;
  p.sampling.max_tokens = mt ? *mt : chat ? -1 : 16;
  p.sampling.temperature = static_cast<float>(number(body, "temperature", 1.0, 0.0, 2.0));
  p.sampling.top_p = static_cast<float>(number(body, "top_p", 1.0, 0.0, 1.0));
  if (p.sampling.top_p == 0) p.sampling.top_p = 1e-6f;  // the most likely token only
  if (const json* s = field(body, "seed")) {
    if (!s->is_number_integer()) throw BadRequest{"'seed' must be an integer, got " + type_name(*s), "seed"};
    p.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  }
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      p.sampling.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 4)
        throw BadRequest{"'stop' holds at most 4 strings, got " + std::to_string(s->size()), "stop"};
      for (const auto& x : *s) {
        if (!x.is_string()) throw BadRequest{"'stop' must hold strings, got " + type_name(x), "stop"};
        p.sampling.stop.push_back(x.get<std::string>());
      }
    } else {
      throw BadRequest{"'stop' must be a string or an array of strings, got " + type_name(*s), "stop"};
    }
    std::erase_if(p.sampling.stop, [](const std::string& x) { return x.empty(); });
  }
  p.stream = boolean(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw BadRequest{"'stream_options' must be an object", "stream_options"};
    if (!p.stream)
      throw BadRequest{"'stream_options' is only allowed when 'stream' is true", "stream_options"};
    p.include_usage = boolean(*so, "include_usage", false);
  }
  return p;
}

// OpenAI message content: a string, or text parts joined
json message_content(const json& m, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  const auto it = m.find("content");
  if (it == m.end() || it->is_null()) return "";
  if (it->is_string()) return *it;
  if (!it->is_array()) throw BadRequest{"'" + where + "' must be a string or an array of text parts", where};
  std::string text;
  for (const auto& part : *it) {
    if (!part.is_object() || part.value("type", std::string()) != "text" || !part.contains("text") ||
        !part["text"].is_string())
      throw BadRequest{
          "'" + where + "' parts must be {\"type\": \"text\", \"text\": ...} (no images or audio here)",
          where};
    text += part["text"].get<std::string>();
  }
  return text;
}

json parse_messages(const json& body) {
  const json* ms = field(body, "messages");
  if (!ms) throw BadRequest{"'messages' is required", "messages"};
  if (!ms->is_array() || ms->empty())
    throw BadRequest{"'messages' must be a non-empty array of messages", "messages"};
  json out = json::array();
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw BadRequest{"'" + where + "' must be an object", where};
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      throw BadRequest{"'" + where + ".role' must be a string", where + ".role"};
    const auto r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "developer" && r != "tool")
      throw BadRequest{
          "'" + where + ".role' must be system, developer, user, assistant or tool, got '" + r + "'",
          where + ".role"};
    json msg = m;  // other fields (name, ...) pass through to the template
    msg["content"] = message_content(m, i);
    out.push_back(std::move(msg));
  }
  return out;
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
    // SO_REUSEADDR (restart while old connections linger) but not httplib's default SO_REUSEPORT, with which a
    // second server on the same port would silently share its connections instead of failing to start
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
      const json body = json::parse(req.body, nullptr, false);
      if (body.is_discarded())
        throw BadRequest{"We could not parse the JSON body of your request: it is not valid JSON", ""};
      if (!body.is_object())
        throw BadRequest{"The request body must be a JSON object, got " + type_name(body), ""};
      Parsed p = parse_common(body, chat);
      std::vector<int32_t> ids;
      if (chat) {
        const json messages = parse_messages(body);
        if (!tmpl)
          throw BadRequest{
              "this model has no chat template (tokenizer_config.json has no chat_template); use "
              "/v1/completions",
              "messages"};
        std::string text;
        try {
          text = tmpl->render(messages, true);
        } catch (const Error& e) {
          throw BadRequest{std::string("the chat template rejected the messages: ") + e.what(), "messages"};
        }
        ids = tok.encode(text, false);  // as apply_chat_template(tokenize=True): the template holds BOS
      } else {
        const json* pr = field(body, "prompt");
        if (!pr) throw BadRequest{"'prompt' is required", "prompt"};
        if (pr->is_array() && pr->size() == 1 && (*pr)[0].is_string()) pr = &(*pr)[0];
        if (!pr->is_string())
          throw BadRequest{
              "'prompt' must be a string (or an array holding one string), got " + type_name(*pr), "prompt"};
        ids = tok.encode(pr->get<std::string>(), true);
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
      send_error(res, e.status, e.message, e.param);
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
