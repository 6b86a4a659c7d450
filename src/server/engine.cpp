#include "server/engine.h"

#include <algorithm>
#include <random>

#include "nibble/error.h"
#include "nibble/sampling.h"

namespace nibble::server {

Request::Event Request::wait_event() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !pending_.empty() || done_; });
  Event e{std::move(pending_), done_, finish_reason_, error_};
  pending_.clear();
  return e;
}

void Request::emit(const std::string& text) {
  if (text.empty()) return;
  {
    const std::lock_guard lock(mu_);
    pending_ += text;
  }
  cv_.notify_all();
}

void Request::finish(const std::string& reason, const std::string& error) {
  {
    const std::lock_guard lock(mu_);
    done_ = true;
    finish_reason_ = reason;
    error_ = error;
  }
  cv_.notify_all();
}

struct Engine::Slot {
  Session session;
  std::shared_ptr<Request> req;
  std::optional<StreamDecoder> dec;
  std::mt19937_64 rng;
  std::string text;  // the completion decoded so far
  size_t sent = 0;   // bytes of it already emitted
  int64_t generated = 0;
  Slot(const AutoModelForCausalLM& m, int64_t ctx) : session(m, {.context_length = ctx}) {}
};

namespace {
constexpr int64_t kDefaultContextCap = 4096;

// Length of the longest suffix of text (starting at or after `from`) that is a proper prefix of a stop
// string: text that may still turn into a stop string and is held back.
size_t held_back(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& st : stops)
    for (size_t n = std::min(st.size() - 1, text.size() - from); n > hold; --n)
      if (text.compare(text.size() - n, n, st, 0, n) == 0) {
        hold = n;
        break;
      }
  return hold;
}
}  // namespace

Engine::Engine(const AutoModelForCausalLM& model, const Tokenizer& tok, const EngineOptions& opt)
    : tok_(tok), eos_(model.default_eos_token_ids()) {
  if (opt.max_batch < 1) throw ValueError("max_batch must be >= 1, got " + std::to_string(opt.max_batch));
  if (opt.context_length < 0)
    throw ValueError("the context length must be >= 0, got " + std::to_string(opt.context_length));
  ctx_ = opt.context_length > 0
             ? opt.context_length
             : std::min(std::max<int64_t>(model.max_position_embeddings(), 1), kDefaultContextCap);
  if (const auto e = tok.eos_token_id(); e && std::find(eos_.begin(), eos_.end(), *e) == eos_.end())
    eos_.push_back(*e);
  for (int i = 0; i < opt.max_batch; ++i) slots_.push_back(std::make_unique<Slot>(model, ctx_));
  worker_ = std::thread([this] { work(); });
}

Engine::~Engine() {
  shutdown();
}

void Engine::submit(std::shared_ptr<Request> r) {
  {
    const std::lock_guard lock(mu_);
    if (stopping_) {
      r->finish("", "the server is shutting down");
      return;
    }
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
}

void Engine::shutdown() {
  {
    const std::lock_guard lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    for (auto& r : queue_) r->finish("", "the server is shutting down");
    queue_.clear();
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  for (auto& s : slots_)
    if (s->req) release(*s, "", "the server is shutting down");
}

void Engine::release(Slot& s, const std::string& reason, const std::string& error) {
  if (error.empty() && s.sent < s.text.size()) s.req->emit(s.text.substr(s.sent));
  s.req->finish(reason, error);
  s.req.reset();
  s.dec.reset();
}

void Engine::admit(Slot& s, std::shared_ptr<Request> r) {
  s.req = std::move(r);
  s.text.clear();
  s.sent = 0;
  s.generated = 0;
  s.rng.seed(s.req->opt_.seed ? *s.req->opt_.seed : std::random_device{}());
  s.session.reset();
  s.session.append(s.req->prompt_);  // the prompt runs alone: what it gets does not depend on the others
  s.dec.emplace(tok_, s.req->prompt_);
}

bool Engine::choose(Slot& s) {
  Request& r = *s.req;
  const SamplingOptions& o = r.opt_;
  if (o.max_tokens >= 0 && s.generated >= o.max_tokens) {
    release(s, "length");
    return false;
  }
  const auto logits = s.session.logits();
  const auto V = static_cast<int64_t>(logits.size());
  const int32_t id = o.temperature == 0 ? argmax(logits.data(), V)
                                        : sample(logits.data(), V, {o.temperature, 0, o.top_p}, s.rng);
  if (std::find(eos_.begin(), eos_.end(), id) != eos_.end()) {
    s.text += s.dec->flush();
    release(s, "stop");
    return false;
  }
  ++s.generated;
  r.completion_tokens_ = s.generated;
  if (id < tok_.vocab_size()) {
    s.text += s.dec->put(id);
  } else {
    // an id the tokenizer has no token for (a model whose embedding rows outnumber the tokenizer's vocab,
    // padded or random): U+FFFD after what the decoder holds
    s.text += s.dec->flush();
    s.text += "\xef\xbf\xbd";
  }
  const bool last = (o.max_tokens >= 0 && s.generated >= o.max_tokens) || s.session.length() >= ctx_;
  if (last) s.text += s.dec->flush();
  // the earliest stop string in the text not yet emitted (it may begin in the held-back part)
  size_t cut = std::string::npos;
  for (const auto& st : o.stop) {
    const size_t p = s.text.find(st, s.sent);
    if (p != std::string::npos) cut = std::min(cut, p);
  }
  if (cut != std::string::npos) {
    s.text.resize(cut);
    release(s, "stop");
    return false;
  }
  if (last) {
    release(s, "length");
    return false;
  }
  const size_t safe = s.text.size() - held_back(s.text, s.sent, o.stop);
  if (safe > s.sent) {
    r.emit(s.text.substr(s.sent, safe - s.sent));
    s.sent = safe;
  }
  s.session.push(id);
  return true;
}

void Engine::work() {
  std::vector<Session*> batch;
  std::vector<Slot*> stepping;
  int64_t active = 0;
  for (;;) {
    std::vector<std::pair<Slot*, std::shared_ptr<Request>>> joining;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || active > 0; });
      if (stopping_) return;
      for (auto& s : slots_)
        if (!s->req && !queue_.empty()) {
          joining.emplace_back(s.get(), std::move(queue_.front()));
          queue_.pop_front();
        }
    }
    for (auto& [s, r] : joining) {
      if (r->cancelled()) {
        ++cancelled_;
        r->finish("", "cancelled");
        continue;
      }
      try {
        admit(*s, std::move(r));
        choose(*s);
      } catch (const Error& e) {
        release(*s, "", e.what());
      }
    }
    batch.clear();
    stepping.clear();
    for (auto& s : slots_) {
      if (!s->req) continue;
      if (s->req->cancelled()) {
        ++cancelled_;
        release(*s, "", "cancelled");
        continue;
      }
      batch.push_back(&s->session);
      stepping.push_back(s.get());
    }
    active = static_cast<int64_t>(batch.size());
    if (batch.empty()) continue;
    try {
      Session::step(batch);
      ++steps_;
      max_active_ = std::max<int64_t>(max_active_, active);
      for (Slot* s : stepping) choose(*s);
    } catch (const Error& e) {
      for (Slot* s : stepping)
        if (s->req) release(*s, "", e.what());
    }
    active = 0;
    for (auto& s : slots_) active += s->req ? 1 : 0;
  }
}

}  // namespace nibble::server
