// The parsed form of a template (jinja_parse.cpp builds it, jinja.cpp runs it).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_value.h"

namespace nibble::chat::jinja {

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum K {
    Lit,      // lit
    Name,     // name
    ListLit,  // a...
    TupleLit,
    DictLit,  // a: key, value, key, value...
    Attr,     // a[0].name
    Item,     // a[0][a[1]]
    Slice,    // a[0][a[1]:a[2]:a[3]] (null parts omitted)
    Call,     // a[0](a[1..], kw)
    Filter,   // a[0]|name(a[1..], kw); a[0] null in a filter block
    Test,     // a[0] is [not] name(a[1..], kw)
    Not,
    Neg,
    Pos,
    Bin,      // a[0] op a[1]: + - * / // % ** ~
    Compare,  // a[0] ops[0] a[1] ops[1] a[2] ...
    And,
    Or,
    Cond,  // a[0] if a[1] else a[2] (a[2] null: undefined)
  };
  K k;
  int line = 0, col = 0;
  int depth = 1;  // of this subtree (the parser bounds it, so evaluation and destruction recurse boundedly)
  Value lit;
  std::string name;     // Name / Attr / Filter / Test; Bin: the operator
  bool negate = false;  // Test: `is not`
  std::vector<ExprP> a;
  std::vector<std::string> ops;  // Compare
  std::vector<std::pair<std::string, ExprP>> kw;
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

struct Stmt {
  enum K {
    Text,         // text
    Output,       // {{ e[0] }}
    If,           // e: conditions; bodies: one per condition, plus the else body if any
    For,          // targets in e[0] [if e[1]]; bodies[0] body, bodies[1] else
    Set,          // targets (name or name.attr) = e[0]
    SetBlock,     // targets[0] = rendered bodies[0] (| e[0] filter chain if any)
    Macro,        // name(params = defaults) bodies[0]
    CallBlock,    // {% call(params) e[0] %} bodies[0]: caller()
    FilterBlock,  // e[0] filter chain over bodies[0]
    Break,
    Continue,
    Scope,  // generation / with blocks: bodies[0] (with: targets = e)
  };
  K k;
  int line = 0, col = 0;
  std::string text, name;
  std::vector<ExprP> e;
  std::vector<Body> bodies;
  std::vector<std::string> targets;
  std::vector<std::pair<std::string, ExprP>> params;  // macro / call parameters and their defaults (or null)
  bool filter_set = false;                            // SetBlock / For: e[1] present
  bool new_scope = false;                             // Scope: a `with` block
  bool generation = false;                            // Scope: a `generation` block
};

struct Program {
  std::string name;
  Body body;
  bool has_generation = false;  // holds a {% generation %} block
};

}  // namespace nibble::chat::jinja
