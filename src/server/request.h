// The body of an OpenAI request checked as OpenAI checks it: every field's type and range, unsupported
// options refused (never ignored), messages / prompt pulled out. Separate from the HTTP layer so that it can
// be fuzzed (fuzz/fuzz_openai_request.cpp) and tested without sockets.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "nibble/error.h"
#include "server/engine.h"

namespace nibble::server {

// A request the client got wrong: answered 400 with OpenAI's error object, `param` naming the field at fault
// ("" = none).
class BadRequest : public ValueError {
 public:
  BadRequest(const std::string& message, std::string param) : ValueError(message), param_(std::move(param)) {}
  const std::string& param() const { return param_; }

 private:
  std::string param_;
};

struct ParsedRequest {
  SamplingOptions sampling;
  bool stream = false, include_usage = false;
  nlohmann::ordered_json messages;  // chat: the messages, content as strings
  std::string prompt;               // completions
};

// A /v1/chat/completions (chat) or /v1/completions body; BadRequest for anything OpenAI would reject or
// nibble does not support.
ParsedRequest parse_request(const std::string& body, bool chat);

// "a string", "an integer", ... for error messages.
std::string type_name(const nlohmann::ordered_json& v);

}  // namespace nibble::server
