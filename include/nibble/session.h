// Session: a conversation with a loaded model that keeps its KV cache between calls, so appending a turn or
// generating more costs only the new tokens (no re-prefill). Each session owns its cache and scratch; many
// sessions may share one model (one thread per session at a time; a Session itself is not thread-safe).
//
//   nibble::Session s(model, {.context_length = 4096});
//   s.append(tok.encode("Once upon a time"));
//   auto more = s.generate({.max_new_tokens = 20});          // continues from the cache
//   s.append(tok.encode(" The end.", false));                // the next turn: only these tokens run
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "nibble/model.h"

namespace nibble {

struct SessionOptions {
  // Positions the KV cache holds; 0 = the model's max_position_embeddings capped at 8192. Its memory is
  // reserved up front and touched only as positions fill. A sliding-window layer (Mistral, Qwen2 with
  // use_sliding_window, Gemma 2/3's local layers, Phi-3) holds only about 1.25 x its window, however long the
  // context.
  int64_t context_length = 0;
  int threads = 0;  // 0 = the model's setting (FromPretrainedOptions::threads)
};

enum class FinishReason { None, Stop, Length };  // as OpenAI's finish_reason: "stop" (EOS) / "length"

class Session {
 public:
  explicit Session(const AutoModelForCausalLM& model, const SessionOptions& opt = {});
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  // Runs `ids` after what the session holds. ValueError if they do not fit in the context.
  void append(std::span<const int32_t> ids);
  // Like append, returning the logits of the appended positions first .. ids.size() - 1 ([ids.size() -
  // first, vocab] row-major; all of them by default). The positions run in one call either way (LLM.int8
  // decides its outlier columns per call), only the returned rows are computed by the output layer.
  std::vector<float> append_all_logits(std::span<const int32_t> ids, int64_t first = 0);
  // Next-token logits after the last token (runs a generated-but-not-yet-run token first if needed).
  std::span<const float> logits();
  // Generates up to cfg.max_new_tokens from the current state and returns them (an EOS token ends generation
  // and is recorded in tokens() but not returned); on_token sees each new id as it is chosen. Stops early,
  // with finish_reason() Length, when the context is full.
  std::vector<int32_t> generate(const GenerationConfig& cfg = {},
                                const std::function<void(int32_t)>& on_token = {});
  FinishReason finish_reason() const;

  // Queues `id` as the next token without running it: it runs with the next logits(), append(), generate()
  // or Session::step (for callers that pick tokens themselves, as the server does). ValueError if the
  // context has no room for it.
  void push(int32_t id);
  // Runs every session's queued tokens in one batched forward (continuous batching: the linear layers read
  // each weight once for all sessions; attention runs per session over its own cache); afterwards each
  // session's logits() are ready. The sessions must share one model and be distinct. Runs in the kernels'
  // row-invariant mode, so each session gets the same bits whether it steps alone or beside others (except
  // LLM.int8 with a threshold > 0, whose outlier columns are chosen over all rows of a call, as in
  // bitsandbytes). ValueError, before anything runs, if a session's tokens do not fit in its context.
  static void step(std::span<Session* const> sessions);

  const std::vector<int32_t>& tokens() const;  // everything appended or generated, in order
  int64_t length() const;                      // tokens().size()
  int64_t context_length() const;
  // Keeps the first n tokens and their cache (rewind to a shared prefix); reset() = truncate(0).
  void truncate(int64_t n);
  void reset() { truncate(0); }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
