// The server's generation engine: continuous batching over a fixed set of KV cache slots. Requests queue; a
// worker thread admits them into free slots (each prompt prefilled alone), then decodes every active slot
// together, one token per step (Session::step: one weight read for all), emitting text as it is decided.
// New requests join between steps and finished ones leave. With temperature 0 a response is bit-identical
// to the one it gets alone (the kernels' row-invariant mode).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "nibble/model.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"

namespace nibble::server {

struct SamplingOptions {
  int64_t max_tokens = -1;   // -1: until EOS, a stop string or the context's end
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;
  std::optional<uint64_t> seed;   // none: a random seed
  std::vector<std::string> stop;  // the text ends before the first occurrence of any of these
};

// One request's life: the engine writes, the HTTP handler reads (wait_event), either may cancel.
class Request {
 public:
  Request(std::vector<int32_t> prompt, SamplingOptions opt)
      : prompt_(std::move(prompt)), opt_(std::move(opt)) {}

  struct Event {
    std::string text;  // new text (may be empty on the final event)
    bool done = false;
    std::string finish_reason;  // "stop" / "length" when done
    std::string error;          // set when the request failed (done too)
  };
  // Blocks until there is new text or the end; returns everything since the last call.
  Event wait_event();
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt_.size()); }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  friend class Engine;
  void emit(const std::string& text);
  void finish(const std::string& reason, const std::string& error = "");

  const std::vector<int32_t> prompt_;
  const SamplingOptions opt_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> completion_tokens_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool done_ = false;
  std::string finish_reason_, error_;
};

struct EngineOptions {
  int max_batch = 8;           // slots: sequences decoded together
  int64_t context_length = 0;  // per slot; 0 = max_position_embeddings capped at 4096
};

class Engine {
 public:
  Engine(const AutoModelForCausalLM& model, const Tokenizer& tok, const EngineOptions& opt);
  ~Engine();  // stops the worker, cancelling what is in flight
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request (prompt already checked against context_length()).
  void submit(std::shared_ptr<Request> r);
  // Cancels everything queued or in flight (each ends with finish_reason "length") and stops the worker.
  void shutdown();
  int64_t context_length() const { return ctx_; }
  int max_batch() const { return static_cast<int>(slots_.size()); }
  int64_t steps() const { return steps_; }            // batched decode steps run (for tests and stats)
  int64_t max_active() const { return max_active_; }  // the most sequences one step has decoded
  int64_t cancelled() const { return cancelled_; }    // requests dropped because their client left

 private:
  struct Slot;
  void work();
  void admit(Slot& s, std::shared_ptr<Request> r);
  // Picks the slot's next token from its session's logits; returns false when the request ended.
  bool choose(Slot& s);
  void release(Slot& s, const std::string& reason, const std::string& error = "");

  const Tokenizer& tok_;
  int64_t ctx_;
  std::vector<int32_t> eos_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;
  bool stopping_ = false;
  std::atomic<int64_t> steps_{0}, max_active_{0}, cancelled_{0};
  std::thread worker_;
};

}  // namespace nibble::server
