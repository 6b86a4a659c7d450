// The engine with a model whose vocabulary is larger than its tokenizer's (padded embeddings, or a synthetic
// model served with another model's tokenizer): ids the tokenizer has no token for decode as U+FFFD, the
// request runs to max_tokens instead of failing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "nibble/model.h"
#include "nibble/sampling.h"
#include "nibble/session.h"
#include "nibble/tokenizer.h"
#include "server/engine.h"
#include "test_util.h"

using namespace nibble;

TEST(ServerEngine, IdsPastTheTokenizersVocabDecodeAsReplacementCharacters) {
  const Tokenizer tok = Tokenizer::from_pretrained(test::example_model());
  const int32_t V = 2 * tok.vocab_size();
  const nlohmann::json cfg = {{"model_type", "llama"},
                              {"architectures", {"LlamaForCausalLM"}},
                              {"hidden_size", 64},
                              {"intermediate_size", 128},
                              {"num_attention_heads", 4},
                              {"num_key_value_heads", 2},
                              {"num_hidden_layers", 1},
                              {"vocab_size", V},
                              {"max_position_embeddings", 256},
                              {"rms_norm_eps", 1e-5},
                              {"tie_word_embeddings", false},
                              {"torch_dtype", "float32"}};
  const auto model = AutoModelForCausalLM::from_config(cfg, {.quiet = true}, 3);
  const std::vector<int32_t> prompt = tok.encode("Once upon a time");
  constexpr int kN = 24;
  // the greedy ids, stepped as the engine steps them (prompt alone, then one queued token per step)
  Session s(model, {.context_length = 256});
  s.append(prompt);
  int past = 0;
  for (int i = 0; i < kN; ++i) {
    const auto logits = s.logits();
    const int32_t id = argmax(logits.data(), static_cast<int64_t>(logits.size()));
    ASSERT_NE(std::optional<int32_t>(id), tok.eos_token_id()) << "the precondition: no EOS in " << kN;
    past += id >= tok.vocab_size() ? 1 : 0;
    s.push(id);
    Session* one = &s;
    Session::step({&one, 1});
  }
  ASSERT_GT(past, 0) << "the precondition: some greedy ids are past the tokenizer's vocabulary";
  ASSERT_LT(past, kN) << "the precondition: some are not";

  server::SamplingOptions opt;
  opt.max_tokens = kN;
  opt.temperature = 0;
  server::Engine engine(model, tok, {.max_batch = 2, .context_length = 256});
  auto r = std::make_shared<server::Request>(prompt, opt);
  engine.submit(r);
  std::string text;
  server::Request::Event e;
  do {
    e = r->wait_event();
    text += e.text;
  } while (!e.done);
  EXPECT_EQ(e.error, "");
  EXPECT_EQ(e.finish_reason, "length");
  EXPECT_EQ(r->completion_tokens(), kN);
  int replacements = 0;
  for (size_t p = text.find("\xef\xbf\xbd"); p != std::string::npos; p = text.find("\xef\xbf\xbd", p + 3))
    ++replacements;
  EXPECT_GE(replacements, past) << text;
}
