// A Jinja2 subset for Hugging Face chat templates, rendering as transformers' apply_chat_template does:
// jinja2's ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols,
// generation]) with transformers' tojson filter and its raise_exception / strftime_now / namespace / dict
// globals.
//
// parse() throws FormatError("<name>:<line>:<column>: ...") for templates that do not parse. render() throws
// ChatTemplateError (raise_exception's message, verbatim), or ValueError("<name> line <n>: ...") for runtime
// errors (undefined calls, wrong types, limits); never another exception type, and every loop, recursion and
// output size is bounded by Limits so hostile templates end.
#pragma once
#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace nibble::chat::jinja {

struct Program;  // a parsed template (immutable; shareable between threads)

struct Limits {
  size_t max_output = size_t{64} << 20;  // bytes of rendered text and of any one string value
  size_t max_steps = size_t{50} << 20;   // loop iterations + calls + statements executed
  int max_call_depth = 200;              // macro and recursion depth
};

std::shared_ptr<const Program> parse(const std::string& source, const std::string& name);

// `vars`: the template's variables (an object). Keys keep their order (ordered_json), as Python dicts do.
// `generation`, if given, receives the [begin, end) byte ranges of the output that {% generation %} blocks
// wrote (outside captures such as set blocks and macro calls), in order: transformers'
// return_assistant_tokens_mask spans.
std::string render(const Program& program, const nlohmann::ordered_json& vars, const Limits& limits = {},
                   std::vector<std::pair<size_t, size_t>>* generation = nullptr);

// Whether the template holds a {% generation %} block.
bool has_generation(const Program& program);

}  // namespace nibble::chat::jinja
