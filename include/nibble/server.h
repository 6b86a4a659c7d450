// An OpenAI-compatible HTTP server over one loaded model: GET /health, GET /v1/models, POST /v1/completions
// and POST /v1/chat/completions (streaming as server-sent events), with continuous batching of concurrent
// requests (see docs/DESIGN-NOTES.md, "serve").
//
//   nibble::Server srv(model, tok, &chat_template, {.port = 8080, .model_id = "my-model"});
//   srv.listen();  // binds; srv.port() is the port
//   srv.run();     // serves until srv.stop() (from another thread or a signal watcher)
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "nibble/model.h"
#include "nibble/tokenizer.h"

namespace nibble {

class ChatTemplate;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (port() tells which)
  std::string model_id = "model";  // GET /v1/models' id and the "model" field of responses
  int max_batch = 8;               // sequences decoded together (one KV cache slot each)
  int64_t context_length = 0;      // per sequence; 0 = max_position_embeddings capped at 4096
  int http_threads = 64;           // connections served at once (each waits on its request)
};

class Server {
 public:
  // chat_template may be null (then /v1/chat/completions answers 400). model, tok and chat_template must
  // outlive the server.
  Server(const AutoModelForCausalLM& model, const Tokenizer& tok, const ChatTemplate* chat_template,
         const ServerOptions& opt);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; IoError if it cannot.
  void listen();
  int port() const;
  // Serves until stop(); returns after in-flight requests were ended.
  void run();
  // Thread-safe: stops accepting, ends in-flight requests (an error "the server is shutting down"), makes
  // run() return.
  void stop();

  struct Stats {
    int64_t decode_steps = 0;    // batched decode steps run
    int64_t max_batch_seen = 0;  // the most sequences one step decoded together
    int64_t cancelled = 0;       // requests dropped because their client went away
  };
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
