// Lexer and parser: jinja2's lexer rules (trim_blocks, lstrip_blocks, whitespace control, raw blocks, a
// single trailing newline dropped) and its expression grammar and precedence.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "chat/jinja.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_text.h"
#include "nibble/error.h"

namespace nibble::chat::jinja {
namespace {

struct Tok {
  enum K { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Str, Int, Float, Op, Eof } k;
  std::string v;
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;
};

class Lexer {
 public:
  Lexer(std::string src, std::string name) : src_(std::move(src)), name_(std::move(name)) {}

  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < src_.size(); ++i) {
      if (src_[i] == '\n') {
        ++line;
        col = 1;
      } else if ((static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80) {
        ++col;
      }
    }
    throw FormatError(name_ + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + what);
  }

  const std::string& source() const { return src_; }

  std::vector<Tok> run() {
    // newlines as jinja2 normalizes them: \r\n and \r become \n; one trailing newline is dropped
    std::string s;
    s.reserve(src_.size());
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\r') {
        s += '\n';
        if (i + 1 < src_.size() && src_[i + 1] == '\n') ++i;
      } else {
        s += src_[i];
      }
    }
    if (!s.empty() && s.back() == '\n') s.pop_back();
    src_ = std::move(s);
    if (!valid_utf8(src_)) fail(0, "the template is not valid UTF-8");
    const size_t n = src_.size();
    size_t pos = 0;
    bool line_starting = true;
    while (pos < n) {
      size_t q = pos;
      int kind = 0;  // 1 var, 2 block, 3 comment
      for (; q + 1 < n; ++q) {
        if (src_[q] != '{') continue;
        const char c = src_[q + 1];
        if (c == '{') kind = 1;
        if (c == '%') kind = 2;
        if (c == '#') kind = 3;
        if (kind) break;
      }
      if (!kind) {
        push(Tok::Data, src_.substr(pos), pos);
        break;
      }
      std::string text = src_.substr(pos, q - pos);
      const char sign = q + 2 < n && (src_[q + 2] == '-' || src_[q + 2] == '+') ? src_[q + 2] : 0;
      // a raw block: {% raw %} ... {% endraw %}
      size_t raw_end = 0;
      const bool raw = kind == 2 && match_word_tag(q, "raw", &raw_end);
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+' && kind != 1) {
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            all_ws(std::string_view(text).substr(l_pos)))
          text.resize(l_pos);
      }
      if (!text.empty()) push(Tok::Data, text, pos);
      if (raw) {
        pos = lex_raw(q, raw_end, line_starting);
        continue;
      }
      size_t p = q + 2 + (sign ? 1 : 0);
      if (kind == 3) {
        const size_t e = src_.find("#}", p);
        if (e == std::string::npos) fail(q, "Missing end of comment tag");
        pos = e + 2;
        line_starting = false;
        if (e > p && src_[e - 1] == '-' && e - 1 >= p) {
          pos = skip_ws(pos);
          line_starting = pos > e + 2 && src_[pos - 1] == '\n';
        } else if (!(e > p && src_[e - 1] == '+') && pos < n && src_[pos] == '\n') {
          ++pos;
          line_starting = true;
        }
        continue;
      }
      push(kind == 1 ? Tok::VarBegin : Tok::BlockBegin, "", q);
      pos = lex_tag(p, kind == 2, q, line_starting);
    }
    push(Tok::Eof, "", n);
    return std::move(toks_);
  }

 private:
  void push(Tok::K k, std::string v, size_t pos) { toks_.push_back(Tok{k, std::move(v), 0, 0, pos}); }

  size_t skip_ws(size_t p) const {
    while (p < src_.size()) {
      const size_t l = ws_len(src_, p);
      if (!l) break;
      p += l;
    }
    return p;
  }

  // At src_[q] == '{%': is it `{%[-+]? word [-+]?%}`? *end: past the tag's `%}`.
  bool match_word_tag(size_t q, const char* word, size_t* end) const {
    size_t p = q + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    p = skip_ws(p);
    const size_t wl = std::strlen(word);
    if (src_.compare(p, wl, word) != 0) return false;
    p += wl;
    if (p < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_'))
      return false;
    p = skip_ws(p);
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    if (src_.compare(p, 2, "%}") != 0) return false;
    *end = p + 2;
    return true;
  }

  size_t lex_raw(size_t q, size_t after_begin, bool& line_starting) {
    // {% raw -%} strips the whitespace after it; {% raw %} keeps even a newline (jinja2's rule)
    size_t p = after_begin;
    if (src_[after_begin - 3] == '-') p = skip_ws(p);
    for (size_t s = p; s + 1 < src_.size(); ++s) {
      if (src_[s] != '{' || src_[s + 1] != '%') continue;
      size_t end = 0;
      if (!match_word_tag(s, "endraw", &end)) continue;
      std::string text = src_.substr(p, s - p);
      const char sign = src_[s + 2] == '-' || src_[s + 2] == '+' ? src_[s + 2] : 0;
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+') {
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            all_ws(std::string_view(text).substr(l_pos)))
          text.resize(l_pos);
      }
      if (!text.empty()) push(Tok::Data, text, p);
      const char close_sign = src_[end - 3];
      line_starting = false;
      if (close_sign == '-') {
        const size_t e = skip_ws(end);
        line_starting = e > end && src_[e - 1] == '\n';
        return e;
      }
      if (close_sign != '+' && end < src_.size() && src_[end] == '\n') {
        line_starting = true;
        return end + 1;
      }
      return end;
    }
    fail(q, "Missing end of raw directive");
  }

  // Tokens of one {{ }} or {% %} tag from p; returns the position after its end (and trimmed whitespace).
  size_t lex_tag(size_t p, bool block, size_t begin, bool& line_starting) {
    const size_t n = src_.size();
    std::vector<char> balance;
    while (true) {
      while (p < n) {
        const size_t l = ws_len(src_, p);
        if (!l) break;
        p += l;
      }
      if (p >= n)
        fail(begin, block ? "unexpected end of template (an unclosed '{%' tag)"
                          : "unexpected end of template (an unclosed '{{' tag)");
      if (balance.empty()) {
        const char* close = block ? "%}" : "}}";
        if (src_[p] == '-' && src_.compare(p + 1, 2, close) == 0) {
          push(block ? Tok::BlockEnd : Tok::VarEnd, "", p);
          const size_t e = skip_ws(p + 3);
          line_starting = e > p + 3 && src_[e - 1] == '\n';
          return e;
        }
        if (block && src_[p] == '+' && src_.compare(p + 1, 2, close) == 0) {
          push(Tok::BlockEnd, "", p);
          line_starting = false;
          return p + 3;
        }
        if (src_.compare(p, 2, close) == 0) {
          push(block ? Tok::BlockEnd : Tok::VarEnd, "", p);
          line_starting = false;
          if (block && p + 2 < n && src_[p + 2] == '\n') {
            line_starting = true;
            return p + 3;
          }
          return p + 2;
        }
      }
      const char c = src_[p];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        push(Tok::Name, src_.substr(p, e - p), p);
        p = e;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        p = lex_number(p);
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                    "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
        const char* op = nullptr;
        for (const char* o : ops)
          if (src_.compare(p, std::strlen(o), o) == 0) {
            op = o;
            break;
          }
        if (!op) fail(p, std::string("unexpected char '") + c + "'");
        const std::string o(op);
        if (o == "(" || o == "[" || o == "{") {
          balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
        } else if (o == ")" || o == "]" || o == "}") {
          if (balance.empty()) fail(p, "unexpected '" + o + "'");
          if (balance.back() != o[0]) fail(p, "unexpected '" + o + "', expected '" + balance.back() + "'");
          balance.pop_back();
        }
        push(Tok::Op, o, p);
        p += o.size();
      }
    }
  }

  size_t lex_string(size_t p) {
    const char q = src_[p];
    std::string out;
    size_t i = p + 1;
    const size_t n = src_.size();
    while (true) {
      if (i >= n) fail(p, std::string("unexpected char '") + q + "'");
      const char c = src_[i];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++i;
        continue;
      }
      if (i + 1 >= n) fail(p, std::string("unexpected char '") + q + "'");
      const char e = src_[i + 1];
      i += 2;
      auto hex = [&](int digits) -> uint32_t {
        uint32_t v = 0;
        for (int d = 0; d < digits; ++d, ++i) {
          if (i >= n || !std::isxdigit(static_cast<unsigned char>(src_[i])))
            fail(p, "invalid \\x, \\u or \\U escape in a string");
          const char h = src_[i];
          v = v * 16 + static_cast<uint32_t>(
                           std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        return v;
      };
      switch (e) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
          append_utf8(out, hex(2));
          break;
        case 'u':
        case 'U': {
          const uint32_t cp = hex(e == 'u' ? 4 : 8);
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
            fail(p, "a string escape is not a Unicode scalar");
          append_utf8(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int d = 0; d < 2 && i < n && src_[i] >= '0' && src_[i] <= '7'; ++d, ++i)
              v = v * 8 + static_cast<uint32_t>(src_[i] - '0');
            append_utf8(out, v);
          } else {
            out += '\\';  // unknown escapes stay as written, as Python's unicode-escape keeps them
            --i;
          }
      }
    }
    push(Tok::Str, out, p);
    return i + 1;
  }

  size_t lex_number(size_t p) {
    const size_t n = src_.size();
    auto digits = [&](size_t i) {  // (\d+_)*\d+ from i; returns the end or i when none
      size_t e = i;
      while (e < n && std::isdigit(static_cast<unsigned char>(src_[e]))) {
        ++e;
        if (e + 1 < n && src_[e] == '_' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) ++e;
      }
      return e;
    };
    auto clean = [](std::string s) {
      std::string o;
      for (char c : s)
        if (c != '_') o += c;
      return o;
    };
    const bool after_dot = p > 0 && src_[p - 1] == '.';
    const char x = p + 1 < n ? static_cast<char>(src_[p + 1] | 0x20) : 0;
    if (src_[p] == '0' && (x == 'b' || x == 'o' || x == 'x')) {
      const int base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
      size_t e = p + 2;
      uint64_t v = 0;
      bool any = false;
      while (e < n) {
        char c = src_[e];
        if (c == '_' && e + 1 < n) {
          ++e;
          c = src_[e];
        }
        int d = std::isdigit(static_cast<unsigned char>(c))    ? c - '0'
                : std::isxdigit(static_cast<unsigned char>(c)) ? (c | 0x20) - 'a' + 10
                                                               : 99;
        if (d >= base) break;
        if (v > (uint64_t{1} << 62)) fail(p, "integer literal too large");
        v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
        any = true;
        ++e;
      }
      if (any) {
        toks_.push_back(Tok{Tok::Int, "", static_cast<int64_t>(v), 0, p});
        return e;
      }
    }
    size_t e = digits(p);
    if (!after_dot) {
      size_t f = e;
      bool is_float = false;
      if (f < n && src_[f] == '.' && f + 1 < n && std::isdigit(static_cast<unsigned char>(src_[f + 1]))) {
        f = digits(f + 1);
        is_float = true;
      }
      if (f < n && (src_[f] | 0x20) == 'e') {
        size_t g = f + 1;
        if (g < n && (src_[g] == '+' || src_[g] == '-')) ++g;
        if (g < n && std::isdigit(static_cast<unsigned char>(src_[g]))) {
          f = digits(g);
          is_float = true;
        }
      }
      if (is_float) {
        const std::string t = clean(src_.substr(p, f - p));
        toks_.push_back(Tok{Tok::Float, t, 0, std::strtod(t.c_str(), nullptr), p});
        return f;
      }
    }
    const std::string t = clean(src_.substr(p, e - p));
    if (t.size() > 1 && t[0] == '0' && t.find_first_not_of('0') != std::string::npos) {
      // "0123" is not a jinja2 integer: 0 then 123
      toks_.push_back(Tok{Tok::Int, "0", 0, 0, p});
      return p + 1;
    }
    if (t.size() > 18) fail(p, "integer literal too large");
    toks_.push_back(Tok{Tok::Int, t, std::stoll(t), 0, p});
    return e;
  }

  std::string src_, name_;
  std::vector<Tok> toks_;
};

class Parser {
 public:
  Parser(Lexer& lx, std::vector<Tok> toks) : lx_(lx), t_(std::move(toks)) {}

  Body parse_template() {
    Body b = parse_body({});
    if (cur().k != Tok::Eof) fail("unexpected tag");
    return b;
  }
  bool has_generation() const { return has_generation_; }

 private:
  bool has_generation_ = false;
  static constexpr int kMaxDepth = 100;
  static constexpr int kMaxExprDepth = 256;

  const Tok& cur() const { return t_[p_]; }
  const Tok& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  [[noreturn]] void fail(const std::string& what) const { lx_.fail(cur().pos, what); }
  std::pair<int, int> where(size_t pos) const {
    int line = 1, col = 1;
    const std::string& s = lx_.source();
    for (size_t i = 0; i < pos && i < s.size(); ++i) {
      if (s[i] == '\n') {
        ++line;
        col = 1;
      } else if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
        ++col;
      }
    }
    return {line, col};
  }
  bool is_op(const char* o) const { return cur().k == Tok::Op && cur().v == o; }
  bool is_name(const char* n) const { return cur().k == Tok::Name && cur().v == n; }
  void expect_op(const char* o) {
    if (!is_op(o)) fail(std::string("expected '") + o + "'" + describe_cur());
    ++p_;
  }
  std::string describe_cur() const {
    switch (cur().k) {
      case Tok::Eof:
        return ", got end of template";
      case Tok::BlockEnd:
        return ", got end of statement block";
      case Tok::VarEnd:
        return ", got end of print statement";
      case Tok::Name:
      case Tok::Op:
        return ", got '" + cur().v + "'";
      default:
        return "";
    }
  }
  std::string expect_name() {
    if (cur().k != Tok::Name) fail("expected a name" + describe_cur());
    return t_[p_++].v;
  }
  void expect_block_end() {
    if (cur().k != Tok::BlockEnd) fail("expected end of statement block" + describe_cur());
    ++p_;
  }

  struct Depth {
    Parser& p;
    explicit Depth(Parser& pp) : p(pp) {
      if (++p.depth_ > kMaxDepth) p.fail("the template nests too deeply");
    }
    ~Depth() { --p.depth_; }
  };

  // n's depth from its children's; FormatError past kMaxExprDepth (a chain like 1+1+1+... nests without
  // recursing in the parser)
  ExprP deep(ExprP n) {
    int d = 0;
    for (const auto& c : n->a)
      if (c) d = std::max(d, c->depth);
    for (const auto& kv : n->kw)
      if (kv.second) d = std::max(d, kv.second->depth);
    n->depth = d + 1;
    if (n->depth > kMaxExprDepth) fail("the expression nests too deeply");
    return n;
  }

  ExprP node(Expr::K k, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    std::tie(e->line, e->col) = where(pos);
    return e;
  }
  StmtP stmt(Stmt::K k, size_t pos) {
    auto s = std::make_unique<Stmt>();
    s->k = k;
    std::tie(s->line, s->col) = where(pos);
    return s;
  }

  // Statements until a block tag whose name is in `ends` (left unconsumed: p_ at its name) or the end.
  Body parse_body(const std::vector<std::string>& ends) {
    Depth d(*this);
    Body body;
    while (true) {
      const Tok& tk = cur();
      if (tk.k == Tok::Eof) {
        if (!ends.empty()) fail("unexpected end of template, expected '" + ends[0] + "'");
        return body;
      }
      if (tk.k == Tok::Data) {
        auto s = stmt(Stmt::Text, tk.pos);
        s->text = tk.v;
        body.push_back(std::move(s));
        ++p_;
      } else if (tk.k == Tok::VarBegin) {
        ++p_;
        auto s = stmt(Stmt::Output, tk.pos);
        s->e.push_back(parse_tuple(true));
        if (cur().k != Tok::VarEnd) fail("expected end of print statement" + describe_cur());
        ++p_;
        body.push_back(std::move(s));
      } else if (tk.k == Tok::BlockBegin) {
        ++p_;
        if (cur().k != Tok::Name) fail("tag name expected");
        for (const auto& e : ends)
          if (cur().v == e) return body;
        body.push_back(parse_statement());
      } else {
        fail("unexpected token");
      }
    }
  }

  void end_tag(const char* name) {  // at `name` of {% name %}
    if (!is_name(name)) fail(std::string("expected '") + name + "'");
    ++p_;
    expect_block_end();
  }

  StmtP parse_statement() {
    const Tok& tk = cur();
    const std::string& w = tk.v;
    const size_t pos = tk.pos;
    if (w == "if") {
      ++p_;
      auto s = stmt(Stmt::If, pos);
      s->e.push_back(parse_tuple(false));
      expect_block_end();
      while (true) {
        s->bodies.push_back(parse_body({"elif", "else", "endif"}));
        if (is_name("elif")) {
          ++p_;
          s->e.push_back(parse_tuple(false));
          expect_block_end();
        } else if (is_name("else")) {
          ++p_;
          expect_block_end();
          s->bodies.push_back(parse_body({"endif"}));
          end_tag("endif");
          break;
        } else {
          end_tag("endif");
          break;
        }
      }
      return s;
    }
    if (w == "for") {
      ++p_;
      auto s = stmt(Stmt::For, pos);
      parse_targets(s->targets, false);
      if (!is_name("in")) fail("expected 'in'" + describe_cur());
      ++p_;
      s->e.push_back(parse_tuple(false, /*no_condexpr=*/true));
      if (is_name("if")) {
        ++p_;
        s->e.push_back(parse_expression(true));
        s->filter_set = true;
      }
      if (is_name("recursive")) fail("recursive loops are not supported");
      expect_block_end();
      s->bodies.push_back(parse_body({"endfor", "else"}));
      if (is_name("else")) {
        ++p_;
        expect_block_end();
        s->bodies.push_back(parse_body({"endfor"}));
      } else {
        s->bodies.emplace_back();
      }
      end_tag("endfor");
      return s;
    }
    if (w == "set") {
      ++p_;
      std::vector<std::string> targets;
      parse_targets(targets, true);
      if (is_op("=")) {
        ++p_;
        auto s = stmt(Stmt::Set, pos);
        s->targets = std::move(targets);
        s->e.push_back(parse_tuple(true));
        expect_block_end();
        return s;
      }
      if (targets.size() != 1 || targets[0].find('.') != std::string::npos)
        fail("expected '='" + describe_cur());
      auto s = stmt(Stmt::SetBlock, pos);
      s->targets = std::move(targets);
      if (is_op("|")) {
        s->e.push_back(parse_filter_chain(nullptr));
        s->filter_set = true;
      }
      expect_block_end();
      s->bodies.push_back(parse_body({"endset"}));
      end_tag("endset");
      return s;
    }
    if (w == "macro") {
      ++p_;
      auto s = stmt(Stmt::Macro, pos);
      s->name = expect_name();
      parse_params(s->params);
      expect_block_end();
      s->bodies.push_back(parse_body({"endmacro"}));
      end_tag("endmacro");
      return s;
    }
    if (w == "call") {
      ++p_;
      auto s = stmt(Stmt::CallBlock, pos);
      if (is_op("(")) parse_params(s->params);
      s->e.push_back(parse_expression(true));
      if (s->e[0]->k != Expr::Call) fail("expected call");
      expect_block_end();
      s->bodies.push_back(parse_body({"endcall"}));
      end_tag("endcall");
      return s;
    }
    if (w == "filter") {
      ++p_;
      auto s = stmt(Stmt::FilterBlock, pos);
      s->e.push_back(parse_filter_chain(nullptr, /*first_without_bar=*/true));
      expect_block_end();
      s->bodies.push_back(parse_body({"endfilter"}));
      end_tag("endfilter");
      return s;
    }
    if (w == "break" || w == "continue") {
      ++p_;
      expect_block_end();
      return stmt(w == "break" ? Stmt::Break : Stmt::Continue, pos);
    }
    if (w == "generation") {
      ++p_;
      auto s = stmt(Stmt::Scope, pos);
      s->generation = true;
      has_generation_ = true;
      expect_block_end();
      s->bodies.push_back(parse_body({"endgeneration"}));
      end_tag("endgeneration");
      return s;
    }
    if (w == "with") {
      ++p_;
      auto s = stmt(Stmt::Scope, pos);
      s->new_scope = true;
      while (cur().k != Tok::BlockEnd) {
        if (!s->targets.empty()) expect_op(",");
        s->targets.push_back(expect_name());
        expect_op("=");
        s->e.push_back(parse_expression(true));
      }
      expect_block_end();
      s->bodies.push_back(parse_body({"endwith"}));
      end_tag("endwith");
      return s;
    }
    fail("Encountered unknown tag '" + w + "'.");
  }

  // for / set targets: name, name, ... (set also name.attr)
  void parse_targets(std::vector<std::string>& out, bool allow_attr) {
    const bool paren = is_op("(");
    if (paren) ++p_;
    while (true) {
      std::string n = expect_name();
      if (allow_attr && is_op(".")) {
        ++p_;
        n += '.';
        n += expect_name();
      }
      out.push_back(n);
      if (!is_op(",")) break;
      ++p_;
      if (cur().k != Tok::Name) break;
    }
    if (paren) expect_op(")");
  }

  void parse_params(std::vector<std::pair<std::string, ExprP>>& params) {
    expect_op("(");
    while (!is_op(")")) {
      if (!params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string n = expect_name();
      ExprP def;
      if (is_op("=")) {
        ++p_;
        def = parse_expression(true);
      } else {
        for (const auto& q : params)
          if (q.second) fail("non-default argument follows default argument");
      }
      params.emplace_back(std::move(n), std::move(def));
    }
    ++p_;
  }

  // expr, expr, ... (a tuple when there is a comma)
  ExprP parse_tuple(bool with_condexpr, bool no_condexpr = false) {
    const size_t pos = cur().pos;
    auto one = [&] { return no_condexpr ? parse_or() : parse_expression(with_condexpr); };
    ExprP first = one();
    if (!is_op(",")) return first;
    auto t = node(Expr::TupleLit, pos);
    t->a.push_back(std::move(first));
    while (is_op(",")) {
      ++p_;
      if (cur().k == Tok::VarEnd || cur().k == Tok::BlockEnd || is_op(")") || is_name("if") || is_name("in"))
        break;
      t->a.push_back(one());
    }
    return deep(std::move(t));
  }

  ExprP parse_expression(bool with_condexpr = true) {
    Depth d(*this);
    if (!with_condexpr) return parse_or();
    const size_t pos = cur().pos;
    ExprP e = parse_or();
    while (is_name("if")) {
      ++p_;
      auto c = node(Expr::Cond, pos);
      c->a.push_back(std::move(e));
      c->a.push_back(parse_or());
      if (is_name("else")) {
        ++p_;
        c->a.push_back(parse_expression(true));
      } else {
        c->a.push_back(nullptr);
      }
      e = deep(std::move(c));
    }
    return e;
  }

  ExprP parse_or() {
    const size_t pos = cur().pos;
    ExprP l = parse_and();
    while (is_name("or")) {
      ++p_;
      auto n = node(Expr::Or, pos);
      n->a.push_back(std::move(l));
      n->a.push_back(parse_and());
      l = deep(std::move(n));
    }
    return l;
  }
  ExprP parse_and() {
    const size_t pos = cur().pos;
    ExprP l = parse_not();
    while (is_name("and")) {
      ++p_;
      auto n = node(Expr::And, pos);
      n->a.push_back(std::move(l));
      n->a.push_back(parse_not());
      l = deep(std::move(n));
    }
    return l;
  }
  ExprP parse_not() {
    Depth d(*this);
    if (is_name("not")) {
      const size_t pos = cur().pos;
      ++p_;
      auto n = node(Expr::Not, pos);
      n->a.push_back(parse_not());
      return deep(std::move(n));
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const size_t pos = cur().pos;
    ExprP e = parse_math1();
    ExprP c;
    while (true) {
      std::string op;
      if (cur().k == Tok::Op && (cur().v == "==" || cur().v == "!=" || cur().v == "<" || cur().v == ">" ||
                                 cur().v == "<=" || cur().v == ">=")) {
        op = cur().v;
        ++p_;
      } else if (is_name("in")) {
        op = "in";
        ++p_;
      } else if (is_name("not") && peek().k == Tok::Name && peek().v == "in") {
        op = "notin";
        p_ += 2;
      } else {
        break;
      }
      if (!c) {
        c = node(Expr::Compare, pos);
        c->a.push_back(std::move(e));
      }
      c->ops.push_back(op);
      c->a.push_back(parse_math1());
      c = deep(std::move(c));
    }
    return c ? std::move(c) : std::move(e);
  }
  ExprP bin(const std::string& op, ExprP l, ExprP r, size_t pos) {
    auto n = node(Expr::Bin, pos);
    n->name = op;
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return deep(std::move(n));
  }
  ExprP parse_math1() {
    const size_t pos = cur().pos;
    ExprP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = t_[p_++].v;
      l = bin(op, std::move(l), parse_concat(), pos);
    }
    return l;
  }
  ExprP parse_concat() {
    const size_t pos = cur().pos;
    ExprP l = parse_math2();
    while (is_op("~")) {
      ++p_;
      l = bin("~", std::move(l), parse_math2(), pos);
    }
    return l;
  }
  ExprP parse_math2() {
    const size_t pos = cur().pos;
    ExprP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = t_[p_++].v;
      l = bin(op, std::move(l), parse_pow(), pos);
    }
    return l;
  }
  ExprP parse_pow() {
    const size_t pos = cur().pos;
    ExprP l = parse_unary(true);
    while (is_op("**")) {
      ++p_;
      l = bin("**", std::move(l), parse_unary(true), pos);
    }
    return l;
  }
  ExprP parse_unary(bool with_filter) {
    Depth d(*this);
    const size_t pos = cur().pos;
    ExprP n;
    if (is_op("-") || is_op("+")) {
      const bool neg = cur().v == "-";
      ++p_;
      n = node(neg ? Expr::Neg : Expr::Pos, pos);
      n->a.push_back(parse_unary(false));
      n = deep(std::move(n));
    } else {
      n = parse_primary();
    }
    n = parse_postfix(std::move(n));
    if (with_filter) n = parse_filter_expr(std::move(n));
    return n;
  }

  ExprP parse_primary() {
    const Tok& tk = cur();
    const size_t pos = tk.pos;
    if (tk.k == Tok::Name) {
      ++p_;
      const std::string& v = tk.v;
      auto n = node(Expr::Lit, pos);
      if (v == "true" || v == "True") {
        n->lit = Value::boolean(true);
      } else if (v == "false" || v == "False") {
        n->lit = Value::boolean(false);
      } else if (v == "none" || v == "None") {
        n->lit = Value::none();
      } else {
        n->k = Expr::Name;
        n->name = v;
      }
      return n;
    }
    if (tk.k == Tok::Str) {
      std::string s;
      while (cur().k == Tok::Str) s += t_[p_++].v;  // adjacent literals concatenate
      auto n = node(Expr::Lit, pos);
      n->lit = Value::str(std::move(s));
      return n;
    }
    if (tk.k == Tok::Int || tk.k == Tok::Float) {
      ++p_;
      auto n = node(Expr::Lit, pos);
      n->lit = tk.k == Tok::Int ? Value::integer(tk.i) : Value::real(tk.f);
      return n;
    }
    if (is_op("(")) {
      ++p_;
      if (is_op(")")) {
        ++p_;
        return node(Expr::TupleLit, pos);
      }
      ExprP e = parse_tuple(true);
      if (e->k == Expr::TupleLit) e->line = where(pos).first;
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++p_;
      auto n = node(Expr::ListLit, pos);
      while (!is_op("]")) {
        if (!n->a.empty()) expect_op(",");
        if (is_op("]")) break;
        n->a.push_back(parse_expression(true));
      }
      ++p_;
      return deep(std::move(n));
    }
    if (is_op("{")) {
      ++p_;
      auto n = node(Expr::DictLit, pos);
      while (!is_op("}")) {
        if (!n->a.empty()) expect_op(",");
        if (is_op("}")) break;
        n->a.push_back(parse_expression(true));
        expect_op(":");
        n->a.push_back(parse_expression(true));
      }
      ++p_;
      return deep(std::move(n));
    }
    fail("unexpected " + std::string(tk.k == Tok::Eof        ? "end of template"
                                     : tk.k == Tok::BlockEnd ? "end of statement block"
                                     : tk.k == Tok::VarEnd   ? "end of print statement"
                                                             : "'" + tk.v + "'"));
  }

  ExprP parse_postfix(ExprP n) {
    int guard = 0;
    while (true) {
      if (++guard > 10000) fail("too many postfix operators");
      const size_t pos = cur().pos;
      if (is_op(".")) {
        ++p_;
        if (cur().k == Tok::Name) {
          auto a = node(Expr::Attr, pos);
          a->name = t_[p_++].v;
          a->a.push_back(std::move(n));
          n = deep(std::move(a));
        } else if (cur().k == Tok::Int) {
          auto a = node(Expr::Item, pos);
          auto idx = node(Expr::Lit, cur().pos);
          idx->lit = Value::integer(t_[p_++].i);
          a->a.push_back(std::move(n));
          a->a.push_back(std::move(idx));
          n = deep(std::move(a));
        } else {
          fail("expected name or number");
        }
      } else if (is_op("[")) {
        ++p_;
        n = parse_subscript(std::move(n), pos);
      } else if (is_op("(")) {
        n = parse_call(std::move(n), pos);
      } else {
        return n;
      }
    }
  }

  ExprP parse_subscript(ExprP obj, size_t pos) {
    Depth d(*this);
    ExprP parts[3];
    bool slice = false;
    int k = 0;
    while (!is_op("]")) {
      if (is_op(":")) {
        slice = true;
        if (++k > 2) fail("invalid slice");
        ++p_;
        continue;
      }
      if (parts[k]) fail("expected ']'" + describe_cur());
      parts[k] = parse_expression(true);
      if (!slice && is_op(",")) {  // x[a, b]: a tuple key
        auto t = node(Expr::TupleLit, pos);
        t->a.push_back(std::move(parts[0]));
        while (is_op(",")) {
          ++p_;
          if (is_op("]")) break;
          t->a.push_back(parse_expression(true));
        }
        parts[0] = deep(std::move(t));
      }
    }
    ++p_;
    if (!slice) {
      if (!parts[0]) fail("expected an expression in '[]'");
      auto n = node(Expr::Item, pos);
      n->a.push_back(std::move(obj));
      n->a.push_back(std::move(parts[0]));
      return deep(std::move(n));
    }
    auto n = node(Expr::Slice, pos);
    n->a.push_back(std::move(obj));
    for (auto& p : parts) n->a.push_back(std::move(p));
    return deep(std::move(n));
  }

  ExprP parse_call(ExprP callee, size_t pos) {
    Depth d(*this);
    auto n = node(Expr::Call, pos);
    n->a.push_back(std::move(callee));
    parse_args_after_first(*n);
    return deep(std::move(n));
  }

  // arguments of a call/filter/test node whose a[0] is the callee or operand
  void parse_args_after_first(Expr& n) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) fail("*args and **kwargs in calls are not supported");
      if (cur().k == Tok::Name && peek().k == Tok::Op && peek().v == "=") {
        std::string k = t_[p_].v;
        p_ += 2;
        n.kw.emplace_back(std::move(k), parse_expression(true));
      } else {
        if (!n.kw.empty()) fail("positional argument follows keyword argument");
        n.a.push_back(parse_expression(true));
      }
    }
    ++p_;
  }

  ExprP parse_filter_one(ExprP operand, size_t pos) {
    auto f = node(Expr::Filter, pos);
    f->name = expect_name();
    while (is_op(".")) {
      ++p_;
      f->name += '.';
      f->name += expect_name();
    }
    f->a.push_back(std::move(operand));
    if (is_op("(")) parse_args_after_first(*f);
    return deep(std::move(f));
  }

  ExprP parse_filter_chain(ExprP operand, bool first_without_bar = false) {
    const size_t pos = cur().pos;
    if (first_without_bar) operand = parse_filter_one(std::move(operand), pos);
    while (is_op("|")) {
      ++p_;
      operand = parse_filter_one(std::move(operand), pos);
    }
    return operand;
  }

  ExprP parse_filter_expr(ExprP n) {
    int guard = 0;
    while (true) {
      if (++guard > 10000) fail("too many filters");
      const size_t pos = cur().pos;
      if (is_op("|")) {
        ++p_;
        n = parse_filter_one(std::move(n), pos);
      } else if (is_name("is")) {
        ++p_;
        auto t = node(Expr::Test, pos);
        if (is_name("not")) {
          ++p_;
          t->negate = true;
        }
        t->name = expect_name();
        while (is_op(".")) {
          ++p_;
          t->name += '.';
          t->name += expect_name();
        }
        t->a.push_back(std::move(n));
        if (is_op("(")) {
          parse_args_after_first(*t);
        } else if ((cur().k == Tok::Name || cur().k == Tok::Str || cur().k == Tok::Int ||
                    cur().k == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("You cannot chain multiple tests with is");
          ExprP arg = parse_primary();
          t->a.push_back(parse_postfix(std::move(arg)));
        }
        n = deep(std::move(t));
      } else if (is_op("(")) {
        n = parse_call(std::move(n), pos);
      } else {
        return n;
      }
    }
  }

  Lexer& lx_;
  std::vector<Tok> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

}  // namespace

std::shared_ptr<const Program> parse(const std::string& source, const std::string& name) {
  Lexer lx(source, name);
  std::vector<Tok> toks = lx.run();
  Parser p(lx, std::move(toks));
  auto prog = std::make_shared<Program>();
  prog->name = name;
  prog->body = p.parse_template();
  prog->has_generation = p.has_generation();
  return prog;
}

}  // namespace nibble::chat::jinja
