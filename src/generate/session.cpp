// Session (the KV cache between calls, the decode loop) and AutoModelForCausalLM's running half: forward
// and generate are one-shot sessions.
#include "nibble/session.h"

#include <algorithm>
#include <random>

#include "core/threads.h"
#include "generate/kv_cache.h"
#include "models/auto_model_impl.h"
#include "nibble/error.h"
#include "nibble/sampling.h"
#include "nn/linear.h"

namespace nibble {

namespace {
constexpr int64_t kDefaultContextCap = 8192;

int64_t default_context(const AutoModelForCausalLM& m) {
  return std::min<int64_t>(std::max<int64_t>(m.max_position_embeddings(), 1), kDefaultContextCap);
}
}  // namespace

struct Session::Impl {
  const AutoModelForCausalLM::Impl& model;
  int threads;
  generate::KVCache cache;
  nn::Workspace ws;
  std::vector<int32_t> tokens;
  int64_t cached = 0;         // tokens[0, cached) are in the cache
  std::vector<float> logits;  // next-token logits after tokens[cached - 1] (valid when cached == size)
  FinishReason finish = FinishReason::None;

  Impl(const AutoModelForCausalLM::Impl& m, int64_t ctx, int th)
      : model(m), threads(th), cache(m.model->num_layers(), m.model->kv_width(), ctx, m.model->kv_windows()) {
    tokens.reserve(static_cast<size_t>(ctx));  // no reallocation in the decode loop
    logits.reserve(static_cast<size_t>(m.model->vocab_size()));
  }

  // Runs tokens[cached, size) plus `ids`; the logits of positions first .. of that run into *all if given.
  void run(std::span<const int32_t> ids, std::vector<float>* all, int64_t first = 0) {
    // a model that must turn the cached positions otherwise for this call (Phi-3 longrope crossing its
    // original length) gets them all again, as transformers' generate recomputes its cache there
    const int64_t total = static_cast<int64_t>(tokens.size() + ids.size());
    const int64_t rerun =
        cached > 0 && total > cached && model.model->rotation_changes(cached, total) ? cached : 0;
    cached -= rerun;
    first += rerun;
    const int64_t pending = static_cast<int64_t>(tokens.size()) - cached;
    const int64_t n = pending + static_cast<int64_t>(ids.size());
    if (n == 0) return;
    if (cached + n > cache.capacity()) {
      cached += rerun;  // nothing ran: the session stays as it was
      throw ValueError("context full: " + std::to_string(cached + n) + " tokens do not fit in a context of " +
                       std::to_string(cache.capacity()));
    }
    const int64_t V = model.model->vocab_size();
    const size_t before = tokens.size();
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    const std::span<const int32_t> run_ids(tokens.data() + cached, static_cast<size_t>(n));
    const ThreadScope scope(threads);
    try {  // the model rejects bad ids (out of the vocabulary) before it writes the cache
      if (all) {
        all->resize(static_cast<size_t>((n - first) * V));
        model.model->forward(run_ids, cached, cache.layers(), ws, first, all->data());
        logits.assign(all->end() - V, all->end());
      } else {
        logits.resize(static_cast<size_t>(V));
        model.model->forward(run_ids, cached, cache.layers(), ws, n - 1, logits.data());
      }
    } catch (...) {
      tokens.resize(before);  // a rejected append leaves the session as it was
      cached += rerun;
      throw;
    }
    cached += n;
  }
};

Session::Session(const AutoModelForCausalLM& model, const SessionOptions& opt) {
  const int64_t ctx = opt.context_length > 0 ? opt.context_length : default_context(model);
  impl_ = std::make_unique<Impl>(*model.impl_, ctx, opt.threads > 0 ? opt.threads : model.threads());
}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

void Session::append(std::span<const int32_t> ids) {
  impl_->run(ids, nullptr);
}

std::vector<float> Session::append_all_logits(std::span<const int32_t> ids, int64_t first) {
  if (first < 0 || first >= static_cast<int64_t>(ids.size()))
    throw ValueError("append_all_logits: first " + std::to_string(first) + " is not in [0, " +
                     std::to_string(ids.size()) + ")");
  std::vector<float> all;
  // rows of generated-but-unrun tokens that run first are not the caller's
  const int64_t pending = length() - impl_->cached;
  impl_->run(ids, &all, pending + first);
  return all;
}

std::span<const float> Session::logits() {
  if (impl_->tokens.empty()) throw ValueError("Session::logits: the session holds no tokens");
  impl_->run({}, nullptr);
  return impl_->logits;
}

std::vector<int32_t> Session::generate(const GenerationConfig& cfg,
                                       const std::function<void(int32_t)>& on_token) {
  Impl& s = *impl_;
  if (s.tokens.empty()) throw ValueError("generate: the session holds no tokens (append a prompt first)");
  if (cfg.max_new_tokens < 0) throw ValueError("max_new_tokens must be >= 0");
  const std::vector<int32_t> eos = cfg.eos_token_id.empty() ? s.model.eos : cfg.eos_token_id;
  const int64_t V = s.model.model->vocab_size();
  std::mt19937_64 rng(cfg.seed);
  std::vector<int32_t> out;
  s.finish = FinishReason::Length;
  for (int i = 0; i < cfg.max_new_tokens; ++i) {
    if (length() > context_length()) break;  // the last chosen token cannot run: no logits after it
    const float* logits = this->logits().data();
    const int32_t next =
        cfg.do_sample ? sample(logits, V, {cfg.temperature, cfg.top_k, cfg.top_p}, rng) : argmax(logits, V);
    s.tokens.push_back(next);  // runs on the next step (or the next call), not now
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) {
      s.finish = FinishReason::Stop;
      break;
    }
    out.push_back(next);
    if (on_token) on_token(next);
  }
  return out;
}

void Session::push(int32_t id) {
  if (length() >= context_length())
    throw ValueError("context full: " + std::to_string(length() + 1) + " tokens do not fit in a context of " +
                     std::to_string(context_length()));
  impl_->tokens.push_back(id);
  impl_->finish = FinishReason::None;
}

void Session::step(std::span<Session* const> sessions) {
  if (sessions.empty()) return;
  const auto& model = sessions[0]->impl_->model;
  thread_local std::vector<Impl*> batch;  // sessions with queued tokens that run together
  thread_local std::vector<models::SequenceStep> steps;
  thread_local std::vector<float> logits;
  batch.clear();
  steps.clear();
  for (Session* s : sessions) {
    Impl& im = *s->impl_;
    if (&im.model != &model) throw ValueError("Session::step: the sessions do not share one model");
    for (const Impl* other : batch)
      if (other == &im) throw ValueError("Session::step: a session is listed twice");
    const int64_t size = static_cast<int64_t>(im.tokens.size());
    if (size > im.cache.capacity())
      throw ValueError("context full: " + std::to_string(size) + " tokens do not fit in a context of " +
                       std::to_string(im.cache.capacity()));
    if (size > im.cached) batch.push_back(&im);
  }
  const nn::RowInvariantScope invariant;
  const ThreadScope scope(sessions[0]->impl_->threads);
  // a session whose cached positions must turn otherwise (Phi-3 longrope) re-runs alone
  std::erase_if(batch, [](Impl* im) {
    const int64_t size = static_cast<int64_t>(im->tokens.size());
    if (!im->model.model->rotation_changes(im->cached, size)) return false;
    im->run({}, nullptr);
    return true;
  });
  if (batch.empty()) return;
  for (Impl* im : batch) {
    const std::span<const int32_t> ids(im->tokens.data() + im->cached,
                                       im->tokens.size() - static_cast<size_t>(im->cached));
    steps.push_back({ids, im->cached, im->cache.layers()});
  }
  const int64_t V = model.model->vocab_size();
  logits.resize(batch.size() * static_cast<size_t>(V));
  model.model->forward_batch(steps, batch[0]->ws, logits.data());
  for (size_t i = 0; i < batch.size(); ++i) {
    Impl& im = *batch[i];
    im.logits.assign(logits.begin() + static_cast<int64_t>(i) * V,
                     logits.begin() + static_cast<int64_t>(i + 1) * V);
    im.cached = static_cast<int64_t>(im.tokens.size());
  }
}

FinishReason Session::finish_reason() const {
  return impl_->finish;
}
const std::vector<int32_t>& Session::tokens() const {
  return impl_->tokens;
}
int64_t Session::length() const {
  return static_cast<int64_t>(impl_->tokens.size());
}
int64_t Session::context_length() const {
  return impl_->cache.capacity();
}

void Session::truncate(int64_t n) {
  if (n < 0 || n > length())
    throw ValueError("truncate: " + std::to_string(n) + " is outside [0, " + std::to_string(length()) + "]");
  impl_->tokens.resize(static_cast<size_t>(n));
  // cache rows past n are overwritten by what comes next; a window-bounded layer that no longer holds what
  // position n sees (it dropped them as the sequence grew) means running the n tokens again
  impl_->cached = impl_->cache.holds_prefix(std::min(impl_->cached, n)) ? std::min(impl_->cached, n) : 0;
  impl_->finish = FinishReason::None;
}

// AutoModelForCausalLM's running half.

size_t AutoModelForCausalLM::kv_cache_bytes(int64_t context_length) const {
  if (context_length <= 0)
    throw ValueError("kv_cache_bytes: the context length must be positive, got " +
                     std::to_string(context_length));
  const models::CausalLM& m = *impl_->model;
  return generate::KVCache::bytes_for(m.kv_width(), context_length, m.kv_windows(), m.num_layers());
}

std::vector<float> AutoModelForCausalLM::forward(const std::vector<int32_t>& ids) const {
  if (ids.empty()) throw ValueError("forward: ids is empty");
  Session s(*this, {.context_length = static_cast<int64_t>(ids.size())});
  return s.append_all_logits(ids);
}

std::vector<int32_t> AutoModelForCausalLM::generate(const std::vector<int32_t>& input_ids,
                                                    const GenerationConfig& cfg,
                                                    const std::function<void(int32_t)>& on_token) const {
  if (input_ids.empty()) throw ValueError("generate: input_ids is empty");
  if (cfg.max_new_tokens < 0) throw ValueError("max_new_tokens must be >= 0");
  if (static_cast<int64_t>(input_ids.size()) > max_position_embeddings())
    throw ValueError("the prompt has " + std::to_string(input_ids.size()) +
                     " tokens, more than the model's context of " +
                     std::to_string(max_position_embeddings()) + " positions (max_position_embeddings)");
  // a cache just big enough: the prompt plus what may be generated, within the model's positions
  const int64_t want = static_cast<int64_t>(input_ids.size()) + cfg.max_new_tokens;
  const int64_t ctx = std::max<int64_t>(static_cast<int64_t>(input_ids.size()),
                                        std::min<int64_t>(want, max_position_embeddings()));
  Session s(*this, {.context_length = ctx});
  s.append(input_ids);
  std::vector<int32_t> out = input_ids;
  const auto gen = s.generate(cfg, on_token);
  out.insert(out.end(), gen.begin(), gen.end());
  return out;
}

}  // namespace nibble
