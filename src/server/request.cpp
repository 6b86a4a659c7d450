#include "server/request.h"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace nibble::server {

using json = nlohmann::ordered_json;

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

namespace {

// obj[key] is the string `want` (false for a non-object, a missing key or a value of another type)
bool string_is(const json& obj, const char* key, const std::string& want) {
  if (!obj.is_object()) return false;
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() && it->get_ref<const std::string&>() == want;
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
  if (const json* v = field(body, "response_format"); v && !string_is(*v, "type", "text"))
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
  if (!mt) mt = integer(body, "max_tokens", 0);
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

// OpenAI message content: a string, or text parts joined into one (absent or null content stays as given: the
// template sees what transformers would pass it)
std::optional<json> message_content(const json& m, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  const auto it = m.find("content");
  if (it == m.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return *it;
  if (!it->is_array()) throw BadRequest{"'" + where + "' must be a string or an array of text parts", where};
  std::string text;
  for (const auto& part : *it) {
    if (!string_is(part, "type", "text") || !part.contains("text") || !part["text"].is_string())
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
    if (auto c = message_content(m, i)) msg["content"] = std::move(*c);
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

ParsedRequest parse_request(const std::string& text, bool chat) {
  const json body = json::parse(text, nullptr, false);
  if (body.is_discarded())
    throw BadRequest{"We could not parse the JSON body of your request: it is not valid JSON", ""};
  if (!body.is_object())
    throw BadRequest{"The request body must be a JSON object, got " + type_name(body), ""};
  const Parsed p = parse_common(body, chat);
  ParsedRequest r{p.sampling, p.stream, p.include_usage, {}, {}};
  if (chat) {
    r.messages = parse_messages(body);
    return r;
  }
  const json* pr = field(body, "prompt");
  if (!pr) throw BadRequest{"'prompt' is required", "prompt"};
  if (pr->is_array() && pr->size() == 1 && (*pr)[0].is_string()) pr = &(*pr)[0];
  if (!pr->is_string())
    throw BadRequest{"'prompt' must be a string (or an array holding one string), got " + type_name(*pr),
                     "prompt"};
  r.prompt = pr->get<std::string>();
  return r;
}

}  // namespace nibble::server
