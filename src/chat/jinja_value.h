// The values a template computes with: Python's None, bool, int, float, str, list/tuple, dict, jinja2's
// Undefined and namespace, and callables (macros, globals, bound methods). Lists, dicts and namespaces are
// shared by reference, as in Python.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nibble/error.h"

namespace nibble::chat::jinja {

struct Value;
struct Dict;
struct Func;
struct Ctx;
using List = std::vector<Value>;

enum class T : uint8_t { Undef, None, Bool, Int, Float, Str, List, Dict, Func };

struct Value {
  T t = T::Undef;
  bool b = false;       // Bool
  bool tuple = false;   // List: a Python tuple (printed "(a, b)")
  bool markup = false;  // Str: a markupsafe.Markup (|safe, |escape)
  bool ns = false;      // Dict: a jinja2 namespace() (attributes, not items)
  int64_t i = 0;
  double f = 0;
  uint16_t depth = 0;  // List: levels of nested lists/dicts (bounded, so destruction recurses boundedly)
  std::string s;       // Str; for Undef, why it is undefined ("'x' is undefined")
  std::shared_ptr<List> l;
  std::shared_ptr<Dict> d;
  std::shared_ptr<Func> fn;

  static Value undef(std::string why = {}) {
    Value v;
    v.s = std::move(why);
    return v;
  }
  static Value none() {
    Value v;
    v.t = T::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.t = T::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.t = T::Int;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.t = T::Float;
    v.f = x;
    return v;
  }
  static Value str(std::string x, bool markup = false) {
    Value v;
    v.t = T::Str;
    v.s = std::move(x);
    v.markup = markup;
    return v;
  }
  static Value list(List items = {}, bool tuple = false) {
    Value v;
    v.t = T::List;
    v.depth = static_cast<uint16_t>(1 + max_depth(items));
    v.l = std::make_shared<List>(std::move(items));
    v.tuple = tuple;
    return v;
  }
  static Value dict();
  static Value func(std::string name, std::function<Value(Ctx&, struct Args&)> call);

  static constexpr int kMaxDepth = 256;
  static int depth_of(const Value& v);
  static int max_depth(const List& items) {
    int d = 0;
    for (const auto& x : items) d = std::max(d, depth_of(x));
    if (d >= kMaxDepth) throw ValueError("chat template: a list or dict nests more than 256 levels deep");
    return d;
  }

  bool is_undef() const { return t == T::Undef; }
  bool is_none() const { return t == T::None; }
  bool is_str() const { return t == T::Str; }
  bool is_list() const { return t == T::List; }
  bool is_dict() const { return t == T::Dict; }
  bool is_number() const { return t == T::Int || t == T::Float || t == T::Bool; }
};

// A Python dict with string keys, in insertion order.
struct Dict {
  std::vector<std::pair<std::string, Value>> kv;
  int child_depth = 0;  // deepest value ever set (a namespace's may have been replaced since)
  const Value* find(const std::string& k) const {
    for (const auto& [key, v] : kv)
      if (key == k) return &v;
    return nullptr;
  }
  void set(const std::string& k, Value v) {
    child_depth = std::max(child_depth, Value::depth_of(v));
    if (child_depth >= Value::kMaxDepth)
      throw ValueError("chat template: a list or dict nests more than 256 levels deep");
    for (auto& [key, old] : kv)
      if (key == k) {
        old = std::move(v);
        return;
      }
    kv.emplace_back(k, std::move(v));
  }
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Func {
  std::string name;
  std::function<Value(Ctx&, Args&)> call;
};

// namespaces count as one level: they are emptied at the end of a render (jinja.cpp), not destroyed nested
inline int Value::depth_of(const Value& v) {
  if (v.t == T::List) return v.depth;
  if (v.t == T::Dict) return v.ns ? 1 : 1 + v.d->child_depth;
  return 0;
}

inline Value Value::dict() {
  Value v;
  v.t = T::Dict;
  v.d = std::make_shared<Dict>();
  return v;
}
inline Value Value::func(std::string name, std::function<Value(Ctx&, Args&)> call) {
  Value v;
  v.t = T::Func;
  v.fn = std::make_shared<Func>(Func{std::move(name), std::move(call)});
  return v;
}

}  // namespace nibble::chat::jinja
