"""Golden token ids of chat prompts: transformers' apply_chat_template(messages, add_generation_prompt=True,
tokenize=True) on the example model's tokenizer (tinystories-656k) extended with two special tokens, so the
rendered text holds added-token strings (<|im_start|>, <|im_end|>) and the tokenizer's own BOS/EOS strings that
must each encode as one token, with text around them as ordinary pieces.

Run once with transformers 5.x + tokenizers (tests/golden/chat_ids/versions.json records them):
  python tests/golden/make_chat_ids_golden.py /work/shared/models/tinystories-656k
Writes tests/golden/chat_ids/chat_ids.json: the added_tokens entries to append to the tokenizer.json (as
transformers saved them), the templates, and per case the messages, the rendered text and the ids.
"""
import json
import os
import sys

import tokenizers
import transformers

from chat_golden_common import BOS_EOS_TEMPLATE, extended_tokenizer, qwen25_template

here = os.path.dirname(os.path.abspath(__file__))
model = sys.argv[1]
tok, added = extended_tokenizer(model)

templates = {
    # Qwen2.5's published template (ChatML): <|im_start|>/<|im_end|> around each turn, a default system prompt
    "qwen2.5": qwen25_template(),
    # BOS and EOS strings of the tokenizer written by the template, Llama-2 style
    "bos-eos": BOS_EOS_TEMPLATE,
}
conversations = [
    [{"role": "user", "content": "Tell me a story about a cat."}],
    [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "A dog and a ball."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Once upon a time, there was a frog."},
     {"role": "user", "content": "What did the frog do?  "}],
    [{"role": "user", "content": "Spaces  and\nnew lines\n\nand <|im_end|> typed by the user, héllo ✓"}],
]
cases = []
for name, t in templates.items():
    if name == "bos-eos":
        convs = [c for c in conversations if c[0]["role"] != "system"]
    else:
        convs = conversations
    for msgs in convs:
        text = tok.apply_chat_template(msgs, chat_template=t, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(msgs, chat_template=t, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        cases.append({"template": name, "messages": msgs, "text": text, "ids": list(map(int, ids))})

out = {"added_tokens": added, "templates": templates, "cases": cases}
with open(os.path.join(here, "chat_ids", "chat_ids.json"), "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
with open(os.path.join(here, "chat_ids", "versions.json"), "w") as f:
    json.dump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}, f, indent=1)
print(len(cases), "cases")
