// The evaluator: jinja2's runtime semantics (Undefined, scoping, loops, macros, filters, tests) with Python's
// value semantics (truthiness, str(), ==, <, int/float arithmetic) and the sandbox's limits.
#include "chat/jinja.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "chat/jinja_ast.h"
#include "chat/jinja_text.h"
#include "chat/jinja_value.h"
#include "core/python_json.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"

namespace nibble::chat::jinja {

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;
  Value* find(const std::string& n) {
    for (Scope* s = this; s; s = s->parent.get())
      for (auto& [k, v] : s->vars)
        if (k == n) return &v;
    return nullptr;
  }
  void set(const std::string& n, Value v) {
    for (auto& [k, old] : vars)
      if (k == n) {
        old = std::move(v);
        return;
      }
    vars.emplace_back(n, std::move(v));
  }
};
using ScopeP = std::shared_ptr<Scope>;

struct Ctx {
  const Program* prog = nullptr;
  Limits limits;
  size_t steps = 0;
  int depth = 0;
  int line = 0;
  std::string* out = nullptr;
  const std::string* top = nullptr;  // the rendered text (out, outside captures)
  // where {% generation %} blocks wrote into top (null: not tracked)
  std::vector<std::pair<size_t, size_t>>* generation = nullptr;
  // every namespace() of this render: the only mutable objects, so the only way to a reference cycle
  // (`{% set ns.self = ns %}`); render() empties them at its end so that cycles are freed
  std::vector<std::shared_ptr<Dict>> namespaces;

  [[noreturn]] void fail(const std::string& what) const {
    throw ValueError(prog->name + " line " + std::to_string(line) + ": " + what);
  }
  void step() {
    if (++steps > limits.max_steps)
      fail("the template ran too long (" + std::to_string(limits.max_steps) + " steps)");
  }
  void check_size(size_t n) const {
    if (n > limits.max_output)
      fail("the output is too large (over " + std::to_string(limits.max_output) + " bytes)");
  }
  void emit(const std::string& s) {
    out->append(s);
    check_size(out->size());
  }
};

namespace {

enum class Flow { Normal, Break, Continue };

constexpr int kMaxValueDepth = 200;

// ---------------------------------------------------------------- basic conversions

const char* type_name(const Value& v) {
  switch (v.t) {
    case T::Undef:
      return "Undefined";
    case T::None:
      return "NoneType";
    case T::Bool:
      return "bool";
    case T::Int:
      return "int";
    case T::Float:
      return "float";
    case T::Str:
      return "str";
    case T::List:
      return v.tuple ? "tuple" : "list";
    case T::Dict:
      return v.ns ? "Namespace" : "dict";
    case T::Func:
      return "function";
  }
  return "object";
}

std::string float_str(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  return python_float_repr(f);
}

bool truthy(const Value& v) {
  switch (v.t) {
    case T::Undef:
    case T::None:
      return false;
    case T::Bool:
      return v.b;
    case T::Int:
      return v.i != 0;
    case T::Float:
      return v.f != 0;
    case T::Str:
      return !v.s.empty();
    case T::List:
      return !v.l->empty();
    case T::Dict:
      return v.ns || !v.d->kv.empty();
    case T::Func:
      return true;
  }
  return false;
}

void repr_into(Ctx& c, const Value& v, std::string& out, int depth);

void str_into(Ctx& c, const Value& v, std::string& out, int depth) {
  switch (v.t) {
    case T::Undef:
      return;
    case T::None:
      out += "None";
      return;
    case T::Bool:
      out += v.b ? "True" : "False";
      return;
    case T::Int:
      out += std::to_string(v.i);
      return;
    case T::Float:
      out += float_str(v.f);
      return;
    case T::Str:
      out += v.s;
      return;
    default:
      repr_into(c, v, out, depth);
  }
}

void repr_into(Ctx& c, const Value& v, std::string& out, int depth) {
  if (depth > kMaxValueDepth) c.fail("a value nests too deeply (or contains itself)");
  c.check_size(out.size());
  switch (v.t) {
    case T::Undef:
      out += "Undefined";
      return;
    case T::Str:
      out += v.markup ? "Markup(" + py_repr(v.s) + ")" : py_repr(v.s);
      return;
    case T::List: {
      out += v.tuple ? "(" : "[";
      for (size_t i = 0; i < v.l->size(); ++i) {
        if (i) out += ", ";
        repr_into(c, (*v.l)[i], out, depth + 1);
      }
      if (v.tuple && v.l->size() == 1) out += ",";
      out += v.tuple ? ")" : "]";
      return;
    }
    case T::Dict: {
      if (v.ns) out += "<Namespace ";
      out += "{";
      bool first = true;
      for (const auto& [k, x] : v.d->kv) {
        if (!first) out += ", ";
        first = false;
        out += py_repr(k);
        out += ": ";
        repr_into(c, x, out, depth + 1);
      }
      out += "}";
      if (v.ns) out += ">";
      return;
    }
    case T::Func:
      out += "<function " + v.fn->name + ">";
      return;
    default:
      str_into(c, v, out, depth);
  }
}

std::string to_str(Ctx& c, const Value& v) {
  if (v.t == T::Str) return v.s;
  std::string s;
  str_into(c, v, s, 0);
  return s;
}

Value from_json(Ctx& c, const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxValueDepth) c.fail("a template variable nests too deeply");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return Value::real(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::real(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& x : j) l.push_back(from_json(c, x, depth + 1));
      return Value::list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = Value::dict();
      for (const auto& [k, x] : j.items()) d.d->set(k, from_json(c, x, depth + 1));
      return d;
    }
    default:
      return Value::none();
  }
}

// ---------------------------------------------------------------- json.dumps (transformers' tojson)

struct JsonOpts {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  const std::vector<uint32_t> cps = decode_utf8(s);
  char buf[16];
  for (uint32_t c : cps) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
          if (c >= 0x10000) {
            const uint32_t v = c - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
          }
          out += buf;
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += '"';
}

void json_dump(Ctx& c, const Value& v, const JsonOpts& o, int level, std::string& out) {
  if (level > kMaxValueDepth) c.fail("tojson: Circular reference detected (or a value nests too deeply)");
  c.check_size(out.size());
  auto newline = [&](int lv) {
    out += '\n';
    for (int i = 0; i < lv; ++i) out += o.indent;
  };
  switch (v.t) {
    case T::None:
      out += "null";
      return;
    case T::Bool:
      out += v.b ? "true" : "false";
      return;
    case T::Int:
      out += std::to_string(v.i);
      return;
    case T::Float:
      out += python_float_repr(v.f);
      return;
    case T::Str:
      json_string(v.s, o.ensure_ascii, out);
      return;
    case T::List: {
      if (v.l->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.l->size(); ++i) {
        if (i) out += o.item_sep;
        if (o.has_indent) newline(level + 1);
        json_dump(c, (*v.l)[i], o, level + 1, out);
      }
      if (o.has_indent) newline(level);
      out += ']';
      return;
    }
    case T::Dict: {
      if (v.ns) c.fail("tojson: Object of type Namespace is not JSON serializable");
      if (v.d->kv.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.d->kv) items.push_back(&kv);
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += o.item_sep;
        first = false;
        if (o.has_indent) newline(level + 1);
        json_string(kv->first, o.ensure_ascii, out);
        out += o.key_sep;
        json_dump(c, kv->second, o, level + 1, out);
      }
      if (o.has_indent) newline(level);
      out += '}';
      return;
    }
    default:
      c.fail(std::string("tojson: Object of type ") + type_name(v) + " is not JSON serializable");
  }
}

// ---------------------------------------------------------------- comparisons and arithmetic

bool py_eq(Ctx& c, const Value& a, const Value& b, int depth = 0) {
  if (depth > kMaxValueDepth) c.fail("a value nests too deeply (or contains itself)");
  if (a.is_number() && b.is_number()) {
    if (a.t == T::Float || b.t == T::Float) {
      const double x = a.t == T::Float ? a.f : a.t == T::Bool ? a.b : static_cast<double>(a.i);
      const double y = b.t == T::Float ? b.f : b.t == T::Bool ? b.b : static_cast<double>(b.i);
      return x == y;
    }
    const int64_t x = a.t == T::Bool ? a.b : a.i, y = b.t == T::Bool ? b.b : b.i;
    return x == y;
  }
  if (a.t != b.t) return false;
  switch (a.t) {
    case T::Undef:
    case T::None:
      return true;
    case T::Str:
      return a.s == b.s;
    case T::List: {
      if (a.tuple != b.tuple || a.l->size() != b.l->size()) return false;
      for (size_t i = 0; i < a.l->size(); ++i)
        if (!py_eq(c, (*a.l)[i], (*b.l)[i], depth + 1)) return false;
      return true;
    }
    case T::Dict: {
      if (a.ns || b.ns) return a.d == b.d;
      if (a.d->kv.size() != b.d->kv.size()) return false;
      for (const auto& [k, v] : a.d->kv) {
        const Value* o = b.d->find(k);
        if (!o || !py_eq(c, v, *o, depth + 1)) return false;
      }
      return true;
    }
    case T::Func:
      return a.fn == b.fn;
    default:
      return false;
  }
}

double as_double(const Value& v) {
  return v.t == T::Float ? v.f : v.t == T::Bool ? v.b : static_cast<double>(v.i);
}
int64_t as_int(const Value& v) {
  return v.t == T::Bool ? v.b : v.i;
}

// -1, 0, 1 for a < b, ==, >; TypeError for unorderable types
int py_cmp(Ctx& c, const Value& a, const Value& b, const char* op, int depth = 0) {
  if (depth > kMaxValueDepth) c.fail("a value nests too deeply");
  if (a.is_number() && b.is_number()) {
    if (a.t == T::Float || b.t == T::Float) {
      const double x = as_double(a), y = as_double(b);
      if (std::isnan(x) || std::isnan(y)) return 2;  // every comparison false
      return x < y ? -1 : x > y ? 1 : 0;
    }
    const int64_t x = as_int(a), y = as_int(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.t == T::Str && b.t == T::Str) {
    const int r = a.s.compare(b.s);  // UTF-8 byte order is code point order
    return r < 0 ? -1 : r > 0 ? 1 : 0;
  }
  if (a.t == T::List && b.t == T::List && a.tuple == b.tuple) {
    const size_t n = std::min(a.l->size(), b.l->size());
    for (size_t i = 0; i < n; ++i) {
      if (py_eq(c, (*a.l)[i], (*b.l)[i], depth + 1)) continue;
      return py_cmp(c, (*a.l)[i], (*b.l)[i], op, depth + 1);
    }
    return a.l->size() < b.l->size() ? -1 : a.l->size() > b.l->size() ? 1 : 0;
  }
  c.fail(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" +
         type_name(b) + "'");
}

bool py_contains(Ctx& c, const Value& container, const Value& item) {
  switch (container.t) {
    case T::Str:
      if (item.t != T::Str)
        c.fail(std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case T::List:
      for (const auto& x : *container.l)
        if (py_eq(c, x, item)) return true;
      return false;
    case T::Dict:
      if (container.ns) c.fail("argument of type 'Namespace' is not iterable");
      return item.t == T::Str && container.d->find(item.s) != nullptr;
    case T::Undef:
      return false;
    default:
      c.fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

Value checked_int(Ctx& c, bool overflow, int64_t r) {
  if (overflow) c.fail("integer overflow (nibble's template integers are 64-bit)");
  return Value::integer(r);
}

Value arith(Ctx& c, const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = to_str(c, a);
    s += to_str(c, b);
    c.check_size(s.size());
    return Value::str(std::move(s));
  }
  if (a.is_undef() || b.is_undef()) {
    const Value& u = a.is_undef() ? a : b;
    c.fail(u.s.empty() ? "Undefined in arithmetic" : u.s);
  }
  if (a.is_number() && b.is_number()) {
    const bool fl = a.t == T::Float || b.t == T::Float;
    if (op == "/") {
      const double y = as_double(b);
      if (y == 0) c.fail(fl ? "float division by zero" : "division by zero");
      return Value::real(as_double(a) / y);
    }
    if (fl) {
      const double x = as_double(a), y = as_double(b);
      if (op == "+") return Value::real(x + y);
      if (op == "-") return Value::real(x - y);
      if (op == "*") return Value::real(x * y);
      if (op == "**") {
        if (x == 0 && y < 0) c.fail("0.0 cannot be raised to a negative power");
        return Value::real(std::pow(x, y));
      }
      if (y == 0) c.fail(op == "//" ? "float floor division by zero" : "float modulo");
      if (op == "//") return Value::real(std::floor(x / y));
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::real(m);
    }
    const int64_t x = as_int(a), y = as_int(b);
    int64_t r = 0;
    if (op == "+") {
      const bool overflow = __builtin_add_overflow(x, y, &r);
      return checked_int(c, overflow, r);
    }
    if (op == "-") {
      const bool overflow = __builtin_sub_overflow(x, y, &r);
      return checked_int(c, overflow, r);
    }
    if (op == "*") {
      const bool overflow = __builtin_mul_overflow(x, y, &r);
      return checked_int(c, overflow, r);
    }
    if (op == "**") {
      if (y < 0) return Value::real(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t acc = 1;
      for (int64_t k = 0; k < y; ++k) {
        if (__builtin_mul_overflow(acc, x, &acc))
          c.fail("integer overflow (nibble's template integers are 64-bit)");
        if (acc == 0 || acc == 1) break;
        if (acc == -1) {
          acc = ((y - k - 1) % 2 == 0) ? -1 : 1;
          break;
        }
      }
      return Value::integer(acc);
    }
    if (y == 0) c.fail(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
    if (x == std::numeric_limits<int64_t>::min() && y == -1) c.fail("integer overflow");
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      --q;
      m += y;
    }
    return Value::integer(op == "//" ? q : m);
  }
  if (op == "+") {
    if (a.t == T::Str && b.t == T::Str) {
      c.check_size(a.s.size() + b.s.size());
      // markupsafe: Markup + str escapes the str
      return Value::str(a.s + b.s, a.markup || b.markup);
    }
    if (a.t == T::List && b.t == T::List && a.tuple == b.tuple) {
      c.check_size((a.l->size() + b.l->size()) * 8);
      List l = *a.l;
      l.insert(l.end(), b.l->begin(), b.l->end());
      return Value::list(std::move(l), a.tuple);
    }
  }
  if (op == "*") {
    const Value* seq = (a.t == T::Str || a.t == T::List)   ? &a
                       : (b.t == T::Str || b.t == T::List) ? &b
                                                           : nullptr;
    const Value* n = seq == &a ? &b : &a;
    if (seq && (n->t == T::Int || n->t == T::Bool)) {
      const int64_t k = std::max<int64_t>(0, as_int(*n));
      if (seq->t == T::Str) {
        if (k > 0 && seq->s.size() > c.limits.max_output / static_cast<uint64_t>(k))
          c.check_size(c.limits.max_output + 1);
        std::string s;
        for (int64_t i = 0; i < k; ++i) s += seq->s;
        return Value::str(std::move(s));
      }
      if (k > 0 && seq->l->size() > c.limits.max_output / 8 / static_cast<uint64_t>(k))
        c.check_size(c.limits.max_output + 1);
      List l;
      for (int64_t i = 0; i < k; ++i) l.insert(l.end(), seq->l->begin(), seq->l->end());
      return Value::list(std::move(l), seq->tuple);
    }
  }
  if (op == "%" && a.t == T::Str) c.fail("printf-style string formatting ('%') is not supported");
  c.fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&#34;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += ch;
    }
  }
  return o;
}

// markupsafe's Markup + str: the plain operand is escaped
Value add(Ctx& c, const Value& a, const Value& b) {
  if (a.t == T::Str && b.t == T::Str && a.markup != b.markup) {
    std::string s = (a.markup ? a.s : html_escape(a.s)) + (b.markup ? b.s : html_escape(b.s));
    c.check_size(s.size());
    return Value::str(std::move(s), true);
  }
  return arith(c, "+", a, b);
}

// ---------------------------------------------------------------- iteration, indexing

List iterate(Ctx& c, const Value& v) {
  switch (v.t) {
    case T::Undef:
      return {};
    case T::List:
      return *v.l;
    case T::Dict: {
      if (v.ns) c.fail("'Namespace' object is not iterable");
      List keys;
      for (const auto& kv : v.d->kv) keys.push_back(Value::str(kv.first));
      return keys;
    }
    case T::Str: {
      List chars;
      for (uint32_t cp : decode_utf8(v.s)) {
        std::string s;
        append_utf8(s, cp);
        chars.push_back(Value::str(std::move(s)));
      }
      return chars;
    }
    default:
      c.fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

int64_t length(Ctx& c, const Value& v) {
  switch (v.t) {
    case T::Undef:
      return 0;
    case T::Str:
      return static_cast<int64_t>(count_code_points(v.s));
    case T::List:
      return static_cast<int64_t>(v.l->size());
    case T::Dict:
      if (!v.ns) return static_cast<int64_t>(v.d->kv.size());
      [[fallthrough]];
    default:
      c.fail(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

Value undefined_attr(const Value& obj, const std::string& attr) {
  std::string what = obj.t == T::None ? "None" : std::string("'") + type_name(obj) + " object'";
  return Value::undef(what + " has no attribute '" + attr + "'");
}

[[noreturn]] void fail_undefined(Ctx& c, const Value& u) {
  c.fail(u.s.empty() ? "undefined value" : u.s);
}

Value get_item(Ctx& c, const Value& obj, const Value& key);

Value get_index(const List& l, int64_t i) {
  const auto n = static_cast<int64_t>(l.size());
  if (i < 0) i += n;
  if (i < 0 || i >= n) return Value::undef("list index out of range");
  return l[static_cast<size_t>(i)];
}

// Python slice indices for a sequence of length n
std::vector<size_t> slice_indices(Ctx& c, int64_t n, const Value* start, const Value* stop,
                                  const Value* step) {
  auto as_idx = [&](const Value* v) -> std::optional<int64_t> {
    if (!v || v->t == T::None || v->t == T::Undef) return std::nullopt;
    if (v->t != T::Int && v->t != T::Bool) c.fail("slice indices must be integers or None");
    return as_int(*v);
  };
  const int64_t st = as_idx(step).value_or(1);
  if (st == 0) c.fail("slice step cannot be zero");
  std::vector<size_t> idx;
  auto clamp = [&](std::optional<int64_t> x, int64_t def, int64_t lo, int64_t hi) {
    if (!x) return def;
    int64_t v = *x;
    if (v < 0) v += n;
    return std::clamp(v, lo, hi);
  };
  if (st > 0) {
    const int64_t b = clamp(as_idx(start), 0, 0, n), e = clamp(as_idx(stop), n, 0, n);
    for (int64_t i = b; i < e; i += st) idx.push_back(static_cast<size_t>(i));
  } else {
    const int64_t b = clamp(as_idx(start), n - 1, -1, n - 1), e = clamp(as_idx(stop), -1, -1, n - 1);
    for (int64_t i = b; i > e; i += st) idx.push_back(static_cast<size_t>(i));
  }
  return idx;
}

Value do_slice(Ctx& c, const Value& obj, const Value* start, const Value* stop, const Value* step) {
  if (obj.t == T::List) {
    List out;
    for (size_t i : slice_indices(c, static_cast<int64_t>(obj.l->size()), start, stop, step))
      out.push_back((*obj.l)[i]);
    return Value::list(std::move(out), obj.tuple);
  }
  if (obj.t == T::Str) {
    const std::vector<uint32_t> cps = decode_utf8(obj.s);
    std::vector<uint32_t> out;
    for (size_t i : slice_indices(c, static_cast<int64_t>(cps.size()), start, stop, step))
      out.push_back(cps[i]);
    return Value::str(encode_utf8(out));
  }
  if (obj.t == T::Undef) fail_undefined(c, obj);
  return Value::undef(std::string("'") + type_name(obj) + "' object is not subscriptable");
}

Value method(Ctx& c, const Value& obj, const std::string& name);

// jinja2's getattr(obj, name): the attribute (a method), then the item
Value get_attr(Ctx& c, const Value& obj, const std::string& name) {
  if (obj.t == T::Undef) fail_undefined(c, obj);
  if (obj.t == T::Dict && obj.ns) {
    if (const Value* v = obj.d->find(name)) return *v;
    return undefined_attr(obj, name);
  }
  Value m = method(c, obj, name);
  if (!m.is_undef()) return m;
  if (obj.t == T::Dict) {
    if (const Value* v = obj.d->find(name)) return *v;
    return undefined_attr(obj, name);
  }
  return undefined_attr(obj, name);
}

// jinja2's getitem(obj, key): the item, then the attribute
Value get_item(Ctx& c, const Value& obj, const Value& key) {
  switch (obj.t) {
    case T::Undef:
      fail_undefined(c, obj);
    case T::Dict:
      if (obj.ns) break;
      if (key.t == T::Str) {
        if (const Value* v = obj.d->find(key.s)) return *v;
        Value m = method(c, obj, key.s);
        if (!m.is_undef()) return m;
        return undefined_attr(obj, key.s);
      }
      return Value::undef("'dict object' has no attribute " + to_str(c, key));
    case T::List:
      if (key.t == T::Int || key.t == T::Bool) return get_index(*obj.l, as_int(key));
      break;
    case T::Str:
      if (key.t == T::Int || key.t == T::Bool) {
        const std::vector<uint32_t> cps = decode_utf8(obj.s);
        const auto n = static_cast<int64_t>(cps.size());
        int64_t i = as_int(key);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undef("string index out of range");
        std::string s;
        append_utf8(s, cps[static_cast<size_t>(i)]);
        return Value::str(std::move(s));
      }
      break;
    default:
      break;
  }
  if (key.t == T::Str) return get_attr(c, obj, key.s);
  return Value::undef(std::string("'") + type_name(obj) + " object' has no attribute " + to_str(c, key));
}

// ---------------------------------------------------------------- arguments

struct ArgReader {
  Ctx& c;
  Args& a;
  const char* fname;
  // positional i, or keyword `name`; null if absent
  const Value* get(size_t i, const char* name) const {
    if (i < a.pos.size()) return &a.pos[i];
    for (const auto& [k, v] : a.kw)
      if (k == name) return &v;
    return nullptr;
  }
  Value get_or(size_t i, const char* name, Value def) const {
    const Value* v = get(i, name);
    return v ? *v : std::move(def);
  }
  std::string str(size_t i, const char* name, const std::string& def) const {
    const Value* v = get(i, name);
    if (!v) return def;
    return to_str(c, *v);
  }
  int64_t integer(size_t i, const char* name, int64_t def) const {
    const Value* v = get(i, name);
    if (!v || v->t == T::None) return def;
    if (v->t != T::Int && v->t != T::Bool) c.fail(std::string(fname) + ": an integer argument is required");
    return as_int(*v);
  }
  bool boolean(size_t i, const char* name, bool def) const {
    const Value* v = get(i, name);
    return v ? truthy(*v) : def;
  }
  void max_pos(size_t n) const {
    if (a.pos.size() > n)
      c.fail(std::string(fname) + "() takes at most " + std::to_string(n) + " positional arguments");
  }
};

// ---------------------------------------------------------------- string methods

std::vector<std::string> split_ws(const std::string& s, int64_t maxsplit) {
  std::vector<std::string> out;
  const std::vector<uint32_t> cps = decode_utf8(s);
  size_t i = 0;
  const size_t n = cps.size();
  while (true) {
    while (i < n && is_py_space(cps[i])) ++i;
    if (i >= n) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
      size_t e = n;
      while (e > i && is_py_space(cps[e - 1])) --e;
      out.push_back(encode_utf8(std::vector<uint32_t>(cps.begin() + static_cast<std::ptrdiff_t>(i),
                                                      cps.begin() + static_cast<std::ptrdiff_t>(e))));
      break;
    }
    size_t j = i;
    while (j < n && !is_py_space(cps[j])) ++j;
    out.push_back(encode_utf8(std::vector<uint32_t>(cps.begin() + static_cast<std::ptrdiff_t>(i),
                                                    cps.begin() + static_cast<std::ptrdiff_t>(j))));
    i = j;
  }
  return out;
}

std::vector<std::string> split_sep(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t p = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t q = s.find(sep, p);
    if (q == std::string::npos) break;
    out.push_back(s.substr(p, q - p));
    p = q + sep.size();
  }
  out.push_back(s.substr(p));
  return out;
}

std::vector<std::string> rsplit_sep(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    if (end < sep.size()) break;
    const size_t q = s.rfind(sep, end - sep.size());
    if (q == std::string::npos) break;
    out.push_back(s.substr(q + sep.size(), end - q - sep.size()));
    end = q;
  }
  out.push_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& nw, int64_t count,
                       Ctx& c) {
  std::string out;
  if (old.empty()) {
    // Python inserts `nw` between every code point (and at both ends)
    const std::vector<uint32_t> cps = decode_utf8(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += nw;
        ++done;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
      c.check_size(out.size());
    }
    return out;
  }
  size_t p = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t q = s.find(old, p);
    if (q == std::string::npos) break;
    out.append(s, p, q - p);
    out += nw;
    c.check_size(out.size());
    p = q + old.size();
    ++done;
  }
  out.append(s, p, std::string::npos);
  return out;
}

Value list_of_strs(const std::vector<std::string>& v) {
  List l;
  for (const auto& s : v) l.push_back(Value::str(s));
  return Value::list(std::move(l));
}

bool prefix_test(Ctx& c, const std::string& s, const Value& arg, bool start) {
  auto one = [&](const Value& p) {
    if (p.t != T::Str)
      c.fail(std::string(start ? "startswith" : "endswith") + " first arg must be str or a tuple of str");
    if (p.s.size() > s.size()) return false;
    return start ? s.compare(0, p.s.size(), p.s) == 0
                 : s.compare(s.size() - p.s.size(), p.s.size(), p.s) == 0;
  };
  if (arg.t == T::List && arg.tuple) {
    for (const auto& p : *arg.l)
      if (one(p)) return true;
    return false;
  }
  return one(arg);
}

std::string str_format(Ctx& c, const std::string& fmt, Args& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char ch = fmt[i];
    if (ch == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (ch == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (ch == '{') {
      const size_t e = fmt.find('}', i);
      if (e == std::string::npos) c.fail("str.format: Single '{' encountered in format string");
      const std::string field = fmt.substr(i + 1, e - i - 1);
      if (field.find_first_of(":!.[") != std::string::npos)
        c.fail("str.format: format specs and conversions are not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= a.pos.size()) c.fail("str.format: Replacement index out of range");
        v = &a.pos[auto_idx++];
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        const size_t k = std::stoul(field.substr(0, 9));
        if (k >= a.pos.size()) c.fail("str.format: Replacement index out of range");
        v = &a.pos[k];
      } else {
        for (const auto& [k, x] : a.kw)
          if (k == field) v = &x;
        if (!v) c.fail("str.format: KeyError '" + field + "'");
      }
      out += to_str(c, *v);
      c.check_size(out.size());
      i = e;
    } else if (ch == '}') {
      c.fail("str.format: Single '}' encountered in format string");
    } else {
      out += ch;
    }
  }
  return out;
}

Value bound(const std::string& name, std::function<Value(Ctx&, Args&)> f) {
  return Value::func(name, std::move(f));
}

Value str_method(const Value& obj, const std::string& name) {
  const std::string s = obj.s;
  auto strip = [s, name](bool l, bool r) {
    return bound(name, [s, l, r, name](Ctx& c, Args& a) {
      ArgReader ar{c, a, name.c_str()};
      const Value* ch = ar.get(0, "chars");
      if (ch && ch->t != T::None && ch->t != T::Str) c.fail(name + " arg must be None or str");
      return Value::str(py_strip(s, ch && ch->t == T::Str ? &ch->s : nullptr, l, r));
    });
  };
  if (name == "strip") return strip(true, true);
  if (name == "lstrip") return strip(true, false);
  if (name == "rstrip") return strip(false, true);
  if (name == "upper") return bound(name, [s](Ctx&, Args&) { return Value::str(py_upper(s)); });
  if (name == "lower") return bound(name, [s](Ctx&, Args&) { return Value::str(py_lower(s)); });
  if (name == "title") return bound(name, [s](Ctx&, Args&) { return Value::str(py_title(s)); });
  if (name == "capitalize") return bound(name, [s](Ctx&, Args&) { return Value::str(py_capitalize(s)); });
  if (name == "startswith" || name == "endswith") {
    const bool start = name == "startswith";
    return bound(name, [s, start, name](Ctx& c, Args& a) {
      if (a.pos.empty()) c.fail(name + "() takes at least 1 argument (0 given)");
      return Value::boolean(prefix_test(c, s, a.pos[0], start));
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool r = name == "rsplit";
    return bound(name, [s, r, name](Ctx& c, Args& a) {
      ArgReader ar{c, a, name.c_str()};
      const Value sep = ar.get_or(0, "sep", Value::none());
      const int64_t maxsplit = ar.integer(1, "maxsplit", -1);
      if (sep.t == T::None || sep.t == T::Undef) {
        if (r && maxsplit >= 0) c.fail("rsplit() without a separator and with maxsplit is not supported");
        return list_of_strs(split_ws(s, maxsplit));
      }
      if (sep.t != T::Str) c.fail("must be str or None, not " + std::string(type_name(sep)));
      if (sep.s.empty()) c.fail("empty separator");
      return list_of_strs(r ? rsplit_sep(s, sep.s, maxsplit) : split_sep(s, sep.s, maxsplit));
    });
  }
  if (name == "splitlines") return bound(name, [s](Ctx&, Args&) { return list_of_strs(py_splitlines(s)); });
  if (name == "replace") {
    return bound(name, [s](Ctx& c, Args& a) {
      ArgReader ar{c, a, "replace"};
      if (a.pos.size() < 2) c.fail("replace() takes at least 2 arguments");
      if (a.pos[0].t != T::Str || a.pos[1].t != T::Str) c.fail("replace() arguments must be str");
      return Value::str(py_replace(s, a.pos[0].s, a.pos[1].s, ar.integer(2, "count", -1), c));
    });
  }
  if (name == "join") {
    return bound(name, [s](Ctx& c, Args& a) {
      if (a.pos.size() != 1) c.fail("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(c, a.pos[0])) {
        if (x.t != T::Str)
          c.fail(std::string("sequence item: expected str instance, ") + type_name(x) + " found");
        if (!first) out += s;
        first = false;
        out += x.s;
        c.check_size(out.size());
      }
      return Value::str(std::move(out));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return bound(name, [s, name](Ctx& c, Args& a) {
      if (a.pos.empty() || a.pos[0].t != T::Str) c.fail(name + "() argument must be str");
      const std::string& sub = a.pos[0].s;
      if (name == "count") {
        if (sub.empty()) return Value::integer(static_cast<int64_t>(count_code_points(s)) + 1);
        int64_t n = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
        return Value::integer(n);
      }
      const size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
      if (p == std::string::npos) {
        if (name == "index" || name == "rindex") c.fail("substring not found");
        return Value::integer(-1);
      }
      return Value::integer(static_cast<int64_t>(count_code_points(std::string_view(s).substr(0, p))));
    });
  }
  if (name == "format") return bound(name, [s](Ctx& c, Args& a) { return Value::str(str_format(c, s, a)); });
  if (name == "isdigit") return bound(name, [s](Ctx&, Args&) { return Value::boolean(py_isdigit(s)); });
  if (name == "isalpha") return bound(name, [s](Ctx&, Args&) { return Value::boolean(py_isalpha(s)); });
  if (name == "isalnum") return bound(name, [s](Ctx&, Args&) { return Value::boolean(py_isalnum(s)); });
  if (name == "isspace") return bound(name, [s](Ctx&, Args&) { return Value::boolean(all_ws(s)); });
  if (name == "isupper") return bound(name, [s](Ctx&, Args&) { return Value::boolean(py_isupper(s)); });
  if (name == "islower") return bound(name, [s](Ctx&, Args&) { return Value::boolean(py_islower(s)); });
  return Value::undef();
}

Value method(Ctx& c, const Value& obj, const std::string& name) {
  (void)c;
  if (!name.empty() && name[0] == '_') return Value::undef("access to attribute '" + name + "' is unsafe");
  if (obj.t == T::Str) return str_method(obj, name);
  if (obj.t == T::Dict && !obj.ns) {
    const auto d = obj.d;
    if (name == "items")
      return bound(name, [d](Ctx&, Args&) {
        List l;
        for (const auto& [k, v] : d->kv) l.push_back(Value::list({Value::str(k), v}, true));
        return Value::list(std::move(l));
      });
    if (name == "keys")
      return bound(name, [d](Ctx&, Args&) {
        List l;
        for (const auto& kv : d->kv) l.push_back(Value::str(kv.first));
        return Value::list(std::move(l));
      });
    if (name == "values")
      return bound(name, [d](Ctx&, Args&) {
        List l;
        for (const auto& kv : d->kv) l.push_back(kv.second);
        return Value::list(std::move(l));
      });
    if (name == "get")
      return bound(name, [d](Ctx& c2, Args& a) {
        if (a.pos.empty() || a.pos.size() > 2) c2.fail("get expected 1 or 2 arguments");
        if (a.pos[0].t == T::Str)
          if (const Value* v = d->find(a.pos[0].s)) return *v;
        return a.pos.size() > 1 ? a.pos[1] : Value::none();
      });
    if (name == "copy")
      return bound(name, [obj](Ctx&, Args&) {
        Value v = Value::dict();
        *v.d = *obj.d;
        return v;
      });
  }
  if (obj.t == T::List) {
    const auto l = obj.l;
    if (name == "index" || name == "count")
      return bound(name, [l, name](Ctx& c2, Args& a) {
        if (a.pos.size() != 1) c2.fail(name + "() takes exactly one argument");
        int64_t n = 0;
        for (size_t i = 0; i < l->size(); ++i)
          if (py_eq(c2, (*l)[i], a.pos[0])) {
            if (name == "index") return Value::integer(static_cast<int64_t>(i));
            ++n;
          }
        if (name == "index") c2.fail("value is not in list");
        return Value::integer(n);
      });
  }
  return Value::undef();
}

// ---------------------------------------------------------------- filters and tests

Value call_value(Ctx& c, const Value& f, Args& a);
Value apply_filter(Ctx& c, const std::string& name, const Value& v, Args& a);
bool apply_test(Ctx& c, const std::string& name, const Value& v, Args& a);

Value attr_path(Ctx& c, const Value& v, const std::string& path) {
  Value cur = v;
  size_t p = 0;
  while (true) {
    const size_t q = path.find('.', p);
    const std::string part = path.substr(p, q == std::string::npos ? std::string::npos : q - p);
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char d) { return d >= '0' && d <= '9'; });
    if (cur.t == T::Undef) return cur;
    cur = digits && part.size() < 10 ? get_item(c, cur, Value::integer(std::stoll(part)))
                                     : get_item(c, cur, Value::str(part));
    if (q == std::string::npos) return cur;
    p = q + 1;
  }
}

// sort key for sort/unique/dictsort: lowercased strings unless case_sensitive
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.t == T::Str) return Value::str(py_lower(v.s));
  return v;
}

Value apply_filter(Ctx& c, const std::string& name, const Value& v, Args& a) {
  ArgReader ar{c, a, name.c_str()};
  if (name == "tojson") {
    JsonOpts o;
    o.ensure_ascii = ar.boolean(0, "ensure_ascii", false);
    const Value* ind = ar.get(1, "indent");
    if (ind && ind->t != T::None) {
      o.has_indent = true;
      if (ind->t == T::Str) {
        o.indent = ind->s;
      } else if (ind->t == T::Int || ind->t == T::Bool) {
        o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(as_int(*ind), 0, 1000)), ' ');
      } else {
        c.fail("tojson: indent must be an int or a str");
      }
      o.item_sep = ",";
    }
    const Value* sep = ar.get(2, "separators");
    if (sep && sep->t != T::None) {
      if (sep->t != T::List || sep->l->size() != 2 || (*sep->l)[0].t != T::Str || (*sep->l)[1].t != T::Str)
        c.fail("tojson: separators must be a (item_separator, key_separator) pair of strings");
      o.item_sep = (*sep->l)[0].s;
      o.key_sep = (*sep->l)[1].s;
    }
    o.sort_keys = ar.boolean(3, "sort_keys", false);
    std::string out;
    json_dump(c, v, o, 0, out);
    return Value::str(std::move(out));
  }
  if (name == "trim") {
    const Value* ch = ar.get(0, "chars");
    const std::string s = to_str(c, v);
    if (ch && ch->t != T::None && ch->t != T::Str) c.fail("trim: chars must be None or str");
    return Value::str(py_strip(s, ch && ch->t == T::Str ? &ch->s : nullptr, true, true), v.markup);
  }
  if (name == "length" || name == "count") return Value::integer(length(c, v));
  if (name == "upper") return Value::str(py_upper(to_str(c, v)));
  if (name == "lower") return Value::str(py_lower(to_str(c, v)));
  if (name == "capitalize") return Value::str(py_capitalize(to_str(c, v)));
  if (name == "title") {
    // jinja2: "".join(w[0].upper() + w[1:].lower() for w in re.split(r"([-\s({\[<]+)", s) if w)
    const std::vector<uint32_t> cps = decode_utf8(to_str(c, v));
    std::string out;
    bool word_start = true;
    for (uint32_t cp : cps) {
      const bool sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || is_py_space(cp);
      std::string one;
      append_utf8(one, cp);
      if (sep) {
        out += one;
        word_start = true;
      } else {
        out += word_start ? py_upper(one) : py_lower(one);
        word_start = false;
      }
    }
    return Value::str(std::move(out));
  }
  if (name == "default" || name == "d") {
    const bool boolean = ar.boolean(1, "boolean", false);
    if (v.is_undef() || (boolean && !truthy(v))) return ar.get_or(0, "default_value", Value::str(""));
    return v;
  }
  if (name == "join") {
    const std::string sep = ar.str(0, "d", "");
    const Value* attr = ar.get(1, "attribute");
    std::string out;
    bool first = true;
    bool markup = false;
    for (const auto& x0 : iterate(c, v)) {
      const Value x = attr ? attr_path(c, x0, to_str(c, *attr)) : x0;
      if (!first) out += sep;
      first = false;
      markup = markup || x.markup;
      out += to_str(c, x);
      c.check_size(out.size());
    }
    return Value::str(std::move(out));
  }
  if (name == "first" || name == "last") {
    if (name == "last" && v.t == T::Str) {
      const std::vector<uint32_t> cps = decode_utf8(v.s);
      if (cps.empty()) return Value::undef("No last item, sequence was empty.");
      std::string s;
      append_utf8(s, cps.back());
      return Value::str(std::move(s));
    }
    const List l = iterate(c, v);
    if (l.empty()) return Value::undef(std::string("No ") + name + " item, sequence was empty.");
    return name == "first" ? l.front() : l.back();
  }
  if (name == "items") {
    if (v.is_undef()) return Value::list();
    if (v.t != T::Dict || v.ns) c.fail("items: can only get item pairs from a mapping.");
    List l;
    for (const auto& [k, x] : v.d->kv) l.push_back(Value::list({Value::str(k), x}, true));
    return Value::list(std::move(l));
  }
  if (name == "list") return Value::list(iterate(c, v));
  if (name == "string") return v.t == T::Str ? v : Value::str(to_str(c, v));
  if (name == "safe") return Value::str(to_str(c, v), true);
  if (name == "escape" || name == "e" || name == "forceescape") {
    if (v.t == T::Str && v.markup && name != "forceescape") return v;
    return Value::str(html_escape(to_str(c, v)), true);
  }
  if (name == "int") {
    const int64_t def = ar.integer(0, "default", 0);
    const int64_t base = ar.integer(1, "base", 10);
    if (v.t == T::Int || v.t == T::Bool) return Value::integer(as_int(v));
    if (v.t == T::Float) {
      if (!std::isfinite(v.f) || std::fabs(v.f) > 9.2e18) return Value::integer(def);
      return Value::integer(static_cast<int64_t>(v.f));
    }
    if (v.t == T::Str) {
      std::string s = py_strip(v.s, nullptr, true, true);
      std::string t;
      for (size_t i = 0; i < s.size(); ++i)
        if (!(s[i] == '_' && i > 0 && i + 1 < s.size() &&
              std::isalnum(static_cast<unsigned char>(s[i - 1])) &&
              std::isalnum(static_cast<unsigned char>(s[i + 1]))))
          t += s[i];
      if (!t.empty() && base >= 2 && base <= 36) {
        size_t i = (t[0] == '+' || t[0] == '-') ? 1 : 0;
        size_t digits_from = i;
        int64_t b = base;
        if (t.size() > i + 1 && t[i] == '0') {
          const char x = static_cast<char>(t[i + 1] | 0x20);
          if ((x == 'x' && b == 16) || (x == 'o' && b == 8) || (x == 'b' && b == 2)) digits_from = i + 2;
        }
        bool ok = digits_from < t.size();
        __int128 acc = 0;
        for (size_t k = digits_from; ok && k < t.size(); ++k) {
          const char ch = t[k];
          const int d = std::isdigit(static_cast<unsigned char>(ch))   ? ch - '0'
                        : std::isalpha(static_cast<unsigned char>(ch)) ? (ch | 0x20) - 'a' + 10
                                                                       : 99;
          if (d >= b) ok = false;
          acc = acc * b + d;
          if (acc > static_cast<__int128>(std::numeric_limits<int64_t>::max()))
            c.fail("int: integer overflow");
        }
        if (ok) return Value::integer(static_cast<int64_t>(t[0] == '-' ? -acc : acc));
      }
      // "42.23"|int gives 42
      char* end = nullptr;
      const double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == 0 && std::isfinite(f) && std::fabs(f) < 9.2e18 &&
          s.find_first_of("xXpP") == std::string::npos)
        return Value::integer(static_cast<int64_t>(f));
    }
    return Value::integer(def);
  }
  if (name == "float") {
    const Value def = ar.get_or(0, "default", Value::real(0.0));
    if (v.is_number()) return Value::real(as_double(v));
    if (v.t == T::Str) {
      const std::string s = py_strip(v.s, nullptr, true, true);
      char* end = nullptr;
      const double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == 0 && s.find_first_of("xXpP") == std::string::npos)
        return Value::real(f);
    }
    return def;
  }
  if (name == "abs") {
    if (v.t == T::Float) return Value::real(std::fabs(v.f));
    if (v.t == T::Int || v.t == T::Bool) {
      if (as_int(v) == std::numeric_limits<int64_t>::min()) c.fail("integer overflow");
      return Value::integer(std::llabs(as_int(v)));
    }
    c.fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
  }
  if (name == "round") {
    const int64_t prec = ar.integer(0, "precision", 0);
    const std::string method = ar.str(1, "method", "common");
    if (!v.is_number()) c.fail("round: a number is required");
    if (method == "common" && (v.t == T::Int || v.t == T::Bool) && prec >= 0)
      return Value::integer(as_int(v));
    const double x = as_double(v);
    const double p = std::pow(10.0, static_cast<double>(std::clamp<int64_t>(prec, -300, 300)));
    if (method == "ceil") return Value::real(std::ceil(x * p) / p);
    if (method == "floor") return Value::real(std::floor(x * p) / p);
    if (method != "common") c.fail("method must be 'common', 'ceil' or 'floor'");
    // Python's round(x, n): correctly rounded, halves to even; via the shortest decimal repr
    if (!std::isfinite(x)) return Value::real(x);
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::clamp<int64_t>(prec, 0, 300)), x);
    if (prec >= 0) {
      // printf rounds the exact binary value half-to-even, as Python's round does
      return Value::real(std::strtod(buf, nullptr));
    }
    const double r = std::nearbyint(x * p) / p;
    return Value::real(r);
  }
  if (name == "replace") {
    if (a.pos.size() < 2) c.fail("replace filter takes at least 2 arguments");
    const std::string s = to_str(c, v);
    return Value::str(py_replace(s, to_str(c, a.pos[0]), to_str(c, a.pos[1]), ar.integer(2, "count", -1), c));
  }
  if (name == "reverse") {
    if (v.t == T::Str) {
      std::vector<uint32_t> cps = decode_utf8(v.s);
      std::reverse(cps.begin(), cps.end());
      return Value::str(encode_utf8(cps));
    }
    List l = iterate(c, v);
    std::reverse(l.begin(), l.end());
    return Value::list(std::move(l));
  }
  if (name == "sort" || name == "unique" || name == "dictsort" || name == "min" || name == "max") {
    const bool dictsort = name == "dictsort";
    const bool reverse = ar.boolean(dictsort ? 2 : 0, "reverse", false) && (name == "sort" || dictsort);
    const bool cs = ar.boolean(dictsort ? 0 : name == "sort" ? 1 : 0, "case_sensitive", false);
    const Value* attr = dictsort ? nullptr : ar.get(name == "sort" ? 2 : 1, "attribute");
    List l;
    int by = 0;
    if (dictsort) {
      if (v.t != T::Dict || v.ns) c.fail("dictsort: you can only sort a mapping");
      for (const auto& [k, x] : v.d->kv) l.push_back(Value::list({Value::str(k), x}, true));
      const std::string b = ar.str(1, "by", "key");
      if (b == "value")
        by = 1;
      else if (b != "key")
        c.fail("You can only sort by either 'key' or 'value'");
    } else {
      l = iterate(c, v);
    }
    auto key = [&](const Value& x) {
      Value k = dictsort ? (*x.l)[static_cast<size_t>(by)] : attr ? attr_path(c, x, to_str(c, *attr)) : x;
      return sort_key(k, cs);
    };
    if (name == "unique") {
      List out;
      std::vector<Value> seen;
      for (const auto& x : l) {
        const Value k = key(x);
        bool dup = false;
        for (const auto& s : seen)
          if (py_eq(c, s, k)) dup = true;
        if (!dup) {
          seen.push_back(k);
          out.push_back(x);
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "min" || name == "max") {
      if (l.empty())
        return Value::undef(std::string("No ") + (name == "min" ? "smallest" : "largest") +
                            " item, sequence was empty.");
      size_t best = 0;
      for (size_t i = 1; i < l.size(); ++i) {
        const int r = py_cmp(c, key(l[i]), key(l[best]), "<");
        if ((name == "min" && r == -1) || (name == "max" && r == 1)) best = i;
      }
      return l[best];
    }
    std::vector<Value> keys;
    for (const auto& x : l) keys.push_back(key(x));
    std::vector<size_t> idx(l.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](size_t x, size_t y) {
      const int r = py_cmp(c, keys[x], keys[y], "<");
      return reverse ? r == 1 : r == -1;
    });
    List out;
    for (size_t i : idx) out.push_back(l[i]);
    return Value::list(std::move(out));
  }
  if (name == "map") {
    List out;
    if (!truthy(v)) return Value::list();  // jinja2: `if value: for item in value: ...`
    const Value* attr = nullptr;
    for (const auto& [k, x] : a.kw)
      if (k == "attribute") attr = &x;
    if (attr) {
      const Value* def = nullptr;
      for (const auto& [k, x] : a.kw)
        if (k == "default") def = &x;
      for (const auto& x : iterate(c, v)) {
        Value r = attr_path(c, x, to_str(c, *attr));
        if (r.is_undef() && def) r = *def;
        out.push_back(r);
      }
      return Value::list(std::move(out));
    }
    if (a.pos.empty()) c.fail("map requires a filter argument");
    const std::string f = to_str(c, a.pos[0]);
    Args rest{std::vector<Value>(a.pos.begin() + 1, a.pos.end()), a.kw};
    for (const auto& x : iterate(c, v)) out.push_back(apply_filter(c, f, x, rest));
    return Value::list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool attr = name == "selectattr" || name == "rejectattr";
    const bool want = name == "select" || name == "selectattr";
    size_t i = 0;
    std::string attr_name;
    if (attr) {
      if (a.pos.empty()) c.fail(name + ": missing attribute");
      attr_name = to_str(c, a.pos[i++]);
    }
    std::string test;
    if (i < a.pos.size()) test = to_str(c, a.pos[i++]);
    Args rest{std::vector<Value>(a.pos.begin() + static_cast<std::ptrdiff_t>(i), a.pos.end()), a.kw};
    List out;
    if (!truthy(v)) return Value::list();  // jinja2: `if value: for item in value: ...`
    for (const auto& x : iterate(c, v)) {
      const Value item = attr ? attr_path(c, x, attr_name) : x;
      const bool ok = test.empty() ? truthy(item) : apply_test(c, test, item, rest);
      if (ok == want) out.push_back(x);
    }
    return Value::list(std::move(out));
  }
  if (name == "indent") {
    const Value w = ar.get_or(0, "width", Value::integer(4));
    const bool first = ar.boolean(1, "first", false);
    const bool blank = ar.boolean(2, "blank", false);
    std::string ind = w.t == T::Str
                          ? w.s
                          : std::string(static_cast<size_t>(std::clamp<int64_t>(
                                            w.t == T::Int || w.t == T::Bool ? as_int(w) : 4, 0, 1000)),
                                        ' ');
    std::string s = to_str(c, v) + "\n";
    const std::vector<std::string> lines = py_splitlines(s);
    std::string rv;
    if (blank) {
      for (size_t k = 0; k < lines.size(); ++k) {
        if (k) rv += "\n" + ind;
        rv += lines[k];
      }
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t k = 1; k < lines.size(); ++k) {
        rv += "\n";
        if (!lines[k].empty()) rv += ind;
        rv += lines[k];
        c.check_size(rv.size());
      }
    }
    if (first) rv = ind + rv;
    return Value::str(std::move(rv), v.markup);
  }
  if (name == "sum") {
    const Value* attr = ar.get(0, "attribute");
    Value acc = ar.get_or(1, "start", Value::integer(0));
    for (const auto& x : iterate(c, v))
      acc = arith(c, "+", acc, attr ? attr_path(c, x, to_str(c, *attr)) : x);
    return acc;
  }
  if (name == "attr") {
    if (a.pos.empty()) c.fail("attr: missing name");
    return get_attr(c, v, to_str(c, a.pos[0]));
  }
  if (name == "batch") {
    const int64_t n = ar.integer(0, "linecount", 1);
    if (n <= 0) c.fail("batch: linecount must be positive");
    const Value* fill = ar.get(1, "fill_with");
    List out, cur;
    for (const auto& x : iterate(c, v)) {
      cur.push_back(x);
      if (static_cast<int64_t>(cur.size()) == n) {
        out.push_back(Value::list(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (fill)
        while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
      out.push_back(Value::list(std::move(cur)));
    }
    return Value::list(std::move(out));
  }
  if (name == "wordcount") return Value::integer(static_cast<int64_t>(split_ws(to_str(c, v), -1).size()));
  if (name == "center") {
    const int64_t width = ar.integer(0, "width", 80);
    const std::vector<uint32_t> cps = decode_utf8(to_str(c, v));
    const int64_t n = static_cast<int64_t>(cps.size());
    if (width <= n) return Value::str(to_str(c, v));
    c.check_size(static_cast<size_t>(std::min<int64_t>(width, 1 << 30)));
    const int64_t pad = width - n, left = pad / 2 + (pad & width & 1);
    return Value::str(std::string(static_cast<size_t>(left), ' ') + to_str(c, v) +
                      std::string(static_cast<size_t>(pad - left), ' '));
  }
  if (name == "format") return Value::str(str_format(c, to_str(c, v), a));
  c.fail("no filter named '" + name + "'");
}

bool apply_test(Ctx& c, const std::string& name, const Value& v, Args& a) {
  auto arg = [&]() -> const Value& {
    if (a.pos.empty()) c.fail("test '" + name + "' needs an argument");
    return a.pos[0];
  };
  if (name == "defined") return !v.is_undef();
  if (name == "undefined") return v.is_undef();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_str();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.t == T::Int;
  if (name == "float") return v.t == T::Float;
  if (name == "boolean") return v.t == T::Bool;
  if (name == "true") return v.t == T::Bool && v.b;
  if (name == "false") return v.t == T::Bool && !v.b;
  if (name == "mapping") return v.t == T::Dict && !v.ns;
  if (name == "sequence") return v.t == T::Str || v.t == T::List || (v.t == T::Dict && !v.ns);
  if (name == "iterable") return v.t == T::Str || v.t == T::List || (v.t == T::Dict && !v.ns) || v.is_undef();
  if (name == "callable") return v.t == T::Func;
  if (name == "even" || name == "odd") {
    if (v.t != T::Int && v.t != T::Bool) c.fail("not all arguments converted during string formatting");
    const bool even = as_int(v) % 2 == 0;
    return name == "even" ? even : !even;
  }
  if (name == "divisibleby") {
    const Value& d = arg();
    if (!v.is_number() || !d.is_number()) c.fail("divisibleby needs numbers");
    return truthy(arith(c, "%", v, d)) == false;
  }
  if (name == "eq" || name == "equalto" || name == "==") return py_eq(c, v, arg());
  if (name == "ne" || name == "!=") return !py_eq(c, v, arg());
  if (name == "lt" || name == "lessthan" || name == "<") return py_cmp(c, v, arg(), "<") == -1;
  if (name == "le" || name == "<=") {
    const int r = py_cmp(c, v, arg(), "<=");
    return r == -1 || r == 0;
  }
  if (name == "gt" || name == "greaterthan" || name == ">") return py_cmp(c, v, arg(), ">") == 1;
  if (name == "ge" || name == ">=") {
    const int r = py_cmp(c, v, arg(), ">=");
    return r == 1 || r == 0;
  }
  if (name == "in") return py_contains(c, arg(), v);
  if (name == "sameas") {
    const Value& o = arg();
    if (v.t != o.t) return false;
    switch (v.t) {
      case T::List:
        return v.l == o.l;
      case T::Dict:
        return v.d == o.d;
      case T::Func:
        return v.fn == o.fn;
      default:
        return py_eq(c, v, o);  // None, True, False, small ints and interned strings
    }
  }
  if (name == "lower") return v.is_str() && py_lower(v.s) == v.s;
  if (name == "upper") return v.is_str() && py_upper(v.s) == v.s;
  if (name == "escaped") return v.is_str() && v.markup;
  c.fail("no test named '" + name + "'");
}

// ---------------------------------------------------------------- the interpreter

class Interp {
 public:
  explicit Interp(Ctx& c) : c_(c) {}

  Flow exec_body(const Body& body, const ScopeP& sc) {
    for (const auto& s : body) {
      const Flow f = exec(*s, sc);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Value eval(const Expr& e, const ScopeP& sc) {
    c_.line = e.line;
    switch (e.k) {
      case Expr::Lit:
        return e.lit;
      case Expr::Name: {
        if (Value* v = sc->find(e.name)) return *v;
        return Value::undef("'" + e.name + "' is undefined");
      }
      case Expr::ListLit:
      case Expr::TupleLit: {
        List l;
        for (const auto& x : e.a) l.push_back(eval(*x, sc));
        return Value::list(std::move(l), e.k == Expr::TupleLit);
      }
      case Expr::DictLit: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.a.size(); i += 2) {
          const Value k = eval(*e.a[i], sc);
          if (k.t != T::Str) {
            c_.line = e.line;
            c_.fail("dict keys other than strings are not supported");
          }
          d.d->set(k.s, eval(*e.a[i + 1], sc));
        }
        return d;
      }
      case Expr::Attr: {
        const Value o = eval(*e.a[0], sc);
        c_.line = e.line;
        return get_attr(c_, o, e.name);
      }
      case Expr::Item: {
        const Value o = eval(*e.a[0], sc);
        const Value k = eval(*e.a[1], sc);
        c_.line = e.line;
        return get_item(c_, o, k);
      }
      case Expr::Slice: {
        const Value o = eval(*e.a[0], sc);
        Value parts[3];
        const Value* p[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i)
          if (e.a[static_cast<size_t>(i) + 1]) {
            parts[i] = eval(*e.a[static_cast<size_t>(i) + 1], sc);
            p[i] = &parts[i];
          }
        c_.line = e.line;
        return do_slice(c_, o, p[0], p[1], p[2]);
      }
      case Expr::Call: {
        const Value f = eval(*e.a[0], sc);
        Args a = eval_args(e, sc);
        c_.line = e.line;
        return call_value(c_, f, a);
      }
      case Expr::Filter: {
        const Value v = e.a[0] ? eval(*e.a[0], sc) : filter_input_;
        Args a = eval_args(e, sc);
        c_.line = e.line;
        return apply_filter(c_, e.name, v, a);
      }
      case Expr::Test: {
        const Value v = eval(*e.a[0], sc);
        Args a = eval_args(e, sc);
        c_.line = e.line;
        return Value::boolean(apply_test(c_, e.name, v, a) != e.negate);
      }
      case Expr::Not:
        return Value::boolean(!truthy(eval(*e.a[0], sc)));
      case Expr::Neg:
      case Expr::Pos: {
        const Value v = eval(*e.a[0], sc);
        c_.line = e.line;
        if (v.t == T::Float) return Value::real(e.k == Expr::Neg ? -v.f : v.f);
        if (v.t == T::Int || v.t == T::Bool) {
          if (e.k == Expr::Pos) return Value::integer(as_int(v));
          if (as_int(v) == std::numeric_limits<int64_t>::min()) c_.fail("integer overflow");
          return Value::integer(-as_int(v));
        }
        if (v.is_undef()) fail_undefined(c_, v);
        c_.fail(std::string("bad operand type for unary ") + (e.k == Expr::Neg ? "-" : "+") + ": '" +
                type_name(v) + "'");
      }
      case Expr::Bin: {
        const Value l = eval(*e.a[0], sc);
        const Value r = eval(*e.a[1], sc);
        c_.line = e.line;
        if (e.name == "+") return add(c_, l, r);
        return arith(c_, e.name, l, r);
      }
      case Expr::Compare: {
        Value l = eval(*e.a[0], sc);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.a[i + 1], sc);
          c_.line = e.line;
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "==") {
            ok = py_eq(c_, l, r);
          } else if (op == "!=") {
            ok = !py_eq(c_, l, r);
          } else if (op == "in") {
            ok = py_contains(c_, r, l);
          } else if (op == "notin") {
            ok = !py_contains(c_, r, l);
          } else {
            const int k = py_cmp(c_, l, r, op.c_str());
            ok = op == "<"    ? k == -1
                 : op == ">"  ? k == 1
                 : op == "<=" ? (k == -1 || k == 0)
                              : (k == 1 || k == 0);
          }
          if (!ok) return Value::boolean(false);
          l = std::move(r);
        }
        return Value::boolean(true);
      }
      case Expr::And: {
        Value l = eval(*e.a[0], sc);
        if (!truthy(l)) return l;
        return eval(*e.a[1], sc);
      }
      case Expr::Or: {
        Value l = eval(*e.a[0], sc);
        if (truthy(l)) return l;
        return eval(*e.a[1], sc);
      }
      case Expr::Cond: {
        if (truthy(eval(*e.a[1], sc))) return eval(*e.a[0], sc);
        if (e.a[2]) return eval(*e.a[2], sc);
        return Value::undef("the inline if-expression on line " + std::to_string(e.line) +
                            " evaluated to false and no else section was defined.");
      }
    }
    return Value::undef();
  }

 private:
  Args eval_args(const Expr& e, const ScopeP& sc) {
    Args a;
    for (size_t i = 1; i < e.a.size(); ++i) a.pos.push_back(eval(*e.a[i], sc));
    for (const auto& [k, x] : e.kw) a.kw.emplace_back(k, eval(*x, sc));
    return a;
  }

  void assign(const std::vector<std::string>& targets, const Value& v, const ScopeP& sc) {
    if (targets.size() == 1) {
      assign_one(targets[0], v, sc);
      return;
    }
    const List items = iterate(c_, v);
    if (items.size() != targets.size())
      c_.fail(std::string(items.size() > targets.size() ? "too many values to unpack (expected "
                                                        : "not enough values to unpack (expected ") +
              std::to_string(targets.size()) + ", got " + std::to_string(items.size()) + ")");
    for (size_t i = 0; i < targets.size(); ++i) assign_one(targets[i], items[i], sc);
  }

  void assign_one(const std::string& t, const Value& v, const ScopeP& sc) {
    const size_t dot = t.find('.');
    if (dot == std::string::npos) {
      sc->set(t, v);
      return;
    }
    const std::string obj = t.substr(0, dot), attr = t.substr(dot + 1);
    Value* o = sc->find(obj);
    if (!o || o->t != T::Dict || !o->ns) c_.fail("cannot assign attribute on non-namespace object");
    if (!attr.empty() && attr[0] == '_')
      c_.fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + attr +
              "'. Please rename the attribute.");
    o->d->set(attr, v);
  }

  std::string capture(const Body& body, const ScopeP& sc) {
    std::string buf;
    std::string* saved = c_.out;
    c_.out = &buf;
    try {
      exec_body(body, sc);
    } catch (...) {
      c_.out = saved;
      throw;
    }
    c_.out = saved;
    return buf;
  }

  Value make_macro(const Stmt& s, const ScopeP& defining) {
    const Stmt* sp = &s;
    std::weak_ptr<Scope> weak = defining;  // the macro lives in that scope: avoid a reference cycle
    return Value::func(s.name, [this, sp, weak](Ctx& c, Args& a) -> Value {
      ScopeP parent = weak.lock();
      if (!parent) c.fail("macro '" + sp->name + "' called after its scope ended");
      return call_macro(*sp, parent, a, nullptr);
    });
  }

  Value call_macro(const Stmt& s, const ScopeP& parent, Args& a, const Value* caller) {
    if (++c_.depth > c_.limits.max_call_depth) {
      --c_.depth;
      c_.fail("maximum recursion depth exceeded (" + std::to_string(c_.limits.max_call_depth) +
              " nested calls)");
    }
    struct Guard {
      Ctx& c;
      ~Guard() { --c.depth; }
    } guard{c_};
    c_.step();
    auto sc = std::make_shared<Scope>();
    sc->parent = parent;
    List varargs;
    for (size_t i = 0; i < a.pos.size(); ++i) {
      if (i < s.params.size())
        sc->set(s.params[i].first, a.pos[i]);
      else
        varargs.push_back(a.pos[i]);
    }
    Value kwargs = Value::dict();
    for (auto& [k, v] : a.kw) {
      if (k == "caller" && v.t == T::Func && v.fn->name == "caller") {
        sc->set("caller", v);
        continue;
      }
      bool param = false;
      for (const auto& p : s.params)
        if (p.first == k) param = true;
      if (param)
        sc->set(k, v);
      else
        kwargs.d->set(k, v);
    }
    for (size_t i = 0; i < s.params.size(); ++i) {
      bool given = i < a.pos.size();
      for (const auto& kv : a.kw)
        if (kv.first == s.params[i].first) given = true;
      if (given) continue;
      if (s.params[i].second)
        sc->set(s.params[i].first, eval(*s.params[i].second, sc));
      else
        sc->set(s.params[i].first, Value::undef("parameter '" + s.params[i].first + "' was not provided"));
    }
    sc->set("varargs", Value::list(std::move(varargs), true));
    sc->set("kwargs", kwargs);
    if (caller) sc->set("caller", *caller);
    std::string body = capture(s.bodies[0], sc);
    return Value::str(std::move(body));  // Markup only under autoescape
  }

  Flow exec(const Stmt& s, const ScopeP& sc) {
    c_.line = s.line;
    c_.step();
    switch (s.k) {
      case Stmt::Text:
        c_.emit(s.text);
        return Flow::Normal;
      case Stmt::Output: {
        const Value v = eval(*s.e[0], sc);
        if (v.t == T::Str)
          c_.emit(v.s);
        else
          c_.emit(to_str(c_, v));
        return Flow::Normal;
      }
      case Stmt::If:
        for (size_t i = 0; i < s.e.size(); ++i)
          if (truthy(eval(*s.e[i], sc))) return exec_body(s.bodies[i], sc);
        if (s.bodies.size() > s.e.size()) return exec_body(s.bodies.back(), sc);
        return Flow::Normal;
      case Stmt::For:
        return exec_for(s, sc);
      case Stmt::Set:
        assign(s.targets, eval(*s.e[0], sc), sc);
        return Flow::Normal;
      case Stmt::SetBlock: {
        std::string text = capture(s.bodies[0], sc);
        Value v = Value::str(std::move(text));
        if (s.filter_set) {
          const Value saved = filter_input_;
          filter_input_ = v;
          v = eval(*s.e[0], sc);
          filter_input_ = saved;
        }
        assign_one(s.targets[0], v, sc);
        return Flow::Normal;
      }
      case Stmt::Macro:
        sc->set(s.name, make_macro(s, sc));
        return Flow::Normal;
      case Stmt::CallBlock: {
        const Expr& call = *s.e[0];
        const Value f = eval(*call.a[0], sc);
        Args a = eval_args(call, sc);
        const Stmt* sp = &s;
        std::weak_ptr<Scope> weak = sc;
        Value caller = Value::func("caller", [this, sp, weak](Ctx& c, Args& ca) -> Value {
          ScopeP parent = weak.lock();
          if (!parent) c.fail("caller() called after its scope ended");
          return call_block_body(*sp, parent, ca);
        });
        a.kw.emplace_back("caller", caller);
        c_.line = s.line;
        c_.emit(to_str(c_, call_value(c_, f, a)));
        return Flow::Normal;
      }
      case Stmt::FilterBlock: {
        const Value saved = filter_input_;
        filter_input_ = Value::str(capture(s.bodies[0], sc));
        const Value v = eval(*s.e[0], sc);
        filter_input_ = saved;
        c_.emit(to_str(c_, v));
        return Flow::Normal;
      }
      case Stmt::Break:
        return Flow::Break;
      case Stmt::Continue:
        return Flow::Continue;
      case Stmt::Scope: {
        if (s.generation && c_.generation && c_.out == c_.top) {
          const size_t begin = c_.out->size();
          const Flow f = exec_body(s.bodies[0], sc);
          c_.generation->emplace_back(begin, c_.out->size());
          return f;
        }
        if (!s.new_scope) return exec_body(s.bodies[0], sc);
        auto inner = std::make_shared<Scope>();
        inner->parent = sc;
        for (size_t i = 0; i < s.targets.size(); ++i) inner->set(s.targets[i], eval(*s.e[i], sc));
        return exec_body(s.bodies[0], inner);
      }
    }
    return Flow::Normal;
  }

  Value call_block_body(const Stmt& s, const ScopeP& parent, Args& a) {
    if (++c_.depth > c_.limits.max_call_depth) {
      --c_.depth;
      c_.fail("maximum recursion depth exceeded");
    }
    struct Guard {
      Ctx& c;
      ~Guard() { --c.depth; }
    } guard{c_};
    auto sc = std::make_shared<Scope>();
    sc->parent = parent;
    for (size_t i = 0; i < s.params.size(); ++i) {
      if (i < a.pos.size())
        sc->set(s.params[i].first, a.pos[i]);
      else if (s.params[i].second)
        sc->set(s.params[i].first, eval(*s.params[i].second, sc));
      else
        sc->set(s.params[i].first, Value::undef("parameter '" + s.params[i].first + "' was not provided"));
    }
    return Value::str(capture(s.bodies[0], sc));
  }

  Flow exec_for(const Stmt& s, const ScopeP& sc) {
    const Value seq = eval(*s.e[0], sc);
    c_.line = s.line;
    List items = iterate(c_, seq);
    if (s.filter_set) {
      List kept;
      for (const auto& x : items) {
        auto fs = std::make_shared<Scope>();
        fs->parent = sc;
        assign(s.targets, x, fs);
        c_.step();
        if (truthy(eval(*s.e[1], fs))) kept.push_back(x);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(s.bodies[1], sc);
    const auto n = static_cast<int64_t>(items.size());
    Value loop = Value::dict();
    for (int64_t i = 0; i < n; ++i) {
      c_.step();
      auto it = std::make_shared<Scope>();
      it->parent = sc;
      Dict& d = *loop.d;
      d.kv.clear();
      d.set("index", Value::integer(i + 1));
      d.set("index0", Value::integer(i));
      d.set("revindex", Value::integer(n - i));
      d.set("revindex0", Value::integer(n - i - 1));
      d.set("first", Value::boolean(i == 0));
      d.set("last", Value::boolean(i == n - 1));
      d.set("length", Value::integer(n));
      d.set("depth", Value::integer(1));
      d.set("depth0", Value::integer(0));
      d.set("previtem",
            i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undef("there is no previous item"));
      d.set("nextitem",
            i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undef("there is no next item"));
      d.set("cycle", Value::func("cycle", [i](Ctx& c, Args& a) {
              if (a.pos.empty()) c.fail("no items for cycling given");
              return a.pos[static_cast<size_t>(i) % a.pos.size()];
            }));
      // a fresh loop object per iteration, so one captured in a namespace keeps its values
      Value this_loop = Value::dict();
      *this_loop.d = d;
      it->set("loop", this_loop);
      assign(s.targets, items[static_cast<size_t>(i)], it);
      const Flow f = exec_body(s.bodies[0], it);
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Ctx& c_;
  Value filter_input_;
};

Value call_value(Ctx& c, const Value& f, Args& a) {
  if (f.t == T::Func) {
    c.step();
    return f.fn->call(c, a);
  }
  if (f.is_undef()) fail_undefined(c, f);
  c.fail(std::string("'") + type_name(f) + "' object is not callable");
}

std::string strftime_now(Ctx& c, const std::string& fmt) {
  if (fmt.size() > 256) c.fail("strftime_now: the format is too long");
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  std::string buf(1024, '\0');
  const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  if (n == 0 && !fmt.empty()) return "";
  buf.resize(n);
  return buf;
}

void add_globals(Scope& g) {
  g.set("raise_exception", Value::func("raise_exception", [](Ctx& c, Args& a) -> Value {
          if (a.pos.empty()) c.fail("raise_exception() missing 1 required positional argument: 'message'");
          throw ChatTemplateError(to_str(c, a.pos[0]));
        }));
  g.set("strftime_now", Value::func("strftime_now", [](Ctx& c, Args& a) {
          if (a.pos.empty()) c.fail("strftime_now() missing 1 required positional argument: 'format'");
          return Value::str(strftime_now(c, to_str(c, a.pos[0])));
        }));
  g.set("range", Value::func("range", [](Ctx& c, Args& a) {
          if (a.pos.empty() || a.pos.size() > 3) c.fail("range expected 1 to 3 arguments");
          for (const auto& x : a.pos)
            if (x.t != T::Int && x.t != T::Bool)
              c.fail(std::string("'") + type_name(x) + "' object cannot be interpreted as an integer");
          int64_t start = 0, stop, step = 1;
          if (a.pos.size() == 1) {
            stop = as_int(a.pos[0]);
          } else {
            start = as_int(a.pos[0]);
            stop = as_int(a.pos[1]);
            if (a.pos.size() == 3) step = as_int(a.pos[2]);
          }
          if (step == 0) c.fail("range() arg 3 must not be zero");
          const __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop;
          const __int128 count = span <= 0 ? 0
                                           : (span + (step > 0 ? step : -(__int128)step) - 1) /
                                                 (step > 0 ? step : -(__int128)step);
          if (count > 100000)
            c.fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
          List l;
          for (__int128 k = 0; k < count; ++k)
            l.push_back(Value::integer(static_cast<int64_t>(start + k * step)));
          return Value::list(std::move(l));
        }));
  g.set("namespace", Value::func("namespace", [](Ctx& c, Args& a) {
          Value ns = Value::dict();
          ns.ns = true;
          c.namespaces.push_back(ns.d);
          for (const auto& p : a.pos) {
            if (p.t != T::Dict || p.ns) c.fail("namespace() takes a mapping as positional argument");
            for (const auto& [k, v] : p.d->kv) ns.d->set(k, v);
          }
          for (const auto& [k, v] : a.kw) {
            if (!k.empty() && k[0] == '_')
              c.fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                     k + "'. Please rename the attribute.");
            ns.d->set(k, v);
          }
          return ns;
        }));
  g.set("dict", Value::func("dict", [](Ctx& c, Args& a) {
          Value d = Value::dict();
          for (const auto& p : a.pos) {
            if (p.t == T::Dict && !p.ns) {
              for (const auto& [k, v] : p.d->kv) d.d->set(k, v);
            } else {
              for (const auto& kv : iterate(c, p)) {
                if (kv.t != T::List || kv.l->size() != 2 || (*kv.l)[0].t != T::Str)
                  c.fail("dict(): each item must be a (str key, value) pair");
                d.d->set((*kv.l)[0].s, (*kv.l)[1]);
              }
            }
          }
          for (const auto& [k, v] : a.kw) d.d->set(k, v);
          return d;
        }));
}

}  // namespace

std::string render(const Program& program, const nlohmann::ordered_json& vars, const Limits& limits,
                   std::vector<std::pair<size_t, size_t>>* generation) {
  Ctx c;
  c.prog = &program;
  c.limits = limits;
  std::string out;
  c.out = &out;
  c.top = &out;
  c.generation = generation;
  auto globals = std::make_shared<Scope>();
  add_globals(*globals);
  auto top = std::make_shared<Scope>();
  top->parent = globals;
  if (!vars.is_object()) c.fail("the template variables must be an object");
  for (const auto& [k, v] : vars.items()) top->set(k, from_json(c, v, 0));
  Interp in(c);
  struct BreakCycles {
    Ctx& c;
    ~BreakCycles() {
      for (auto& d : c.namespaces) d->kv.clear();
    }
  } break_cycles{c};
  try {
    const Flow f = in.exec_body(program.body, top);
    (void)f;
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw ValueError(program.name + ": out of memory while rendering");
  } catch (const std::exception& e) {
    throw ValueError(program.name + " line " + std::to_string(c.line) + ": " + e.what());
  }
  return out;
}

bool has_generation(const Program& program) {
  return program.has_generation;
}

}  // namespace nibble::chat::jinja
