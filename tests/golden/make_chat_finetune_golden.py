"""Golden token ids and loss targets of chat training data ({"messages": [...]} lines of `nibble finetune --data
FILE.jsonl`), made with transformers on the example model's tokenizer extended with <|im_start|>/<|im_end|>
(as make_chat_ids_golden.py does):

- a template with {% generation %} blocks: transformers' apply_chat_template(messages, tokenize=True,
  return_dict=True, return_assistant_tokens_mask=True) - its input_ids and assistant_masks; where a block
  starts or ends inside a token (transformers then marks that token), the case records "error": nibble refuses
  it rather than guess;
- templates without: TRL's prompt-completion rule (trl.SFTTrainer's tokenize step for prompt/completion
  data), applied to each assistant message i in turn: prompt_ids = apply_chat_template(messages[:i],
  add_generation_prompt=True, tokenize=True), ids_i = apply_chat_template(messages[:i + 1], tokenize=True),
  the tokens ids_i[len(prompt_ids):] are targets; the ids are apply_chat_template(messages, tokenize=True).
  Where prompt_ids is not a prefix of ids_i (TRL warns: "Mismatch between tokenized prompt and the start of
  tokenized prompt+completion") or ids_i not a prefix of the ids, the case records "error": nibble refuses it.

Run once with transformers 5.x + tokenizers (tests/golden/chat_finetune/versions.json records them):
  python tests/golden/make_chat_finetune_golden.py /work/shared/models/tinystories-656k
Writes tests/golden/chat_finetune/chat_finetune.json.
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
    # Qwen2.5's published template (ChatML, a default system prompt), no generation blocks
    "qwen2.5": qwen25_template(),
    # ChatML with the assistant's content and end-of-turn token in a generation block (as the templates that
    # support assistant_only_loss mark them)
    "chatml-generation": "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
                         "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
                         "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                         "{% endif %}",
    # Llama-2 style: BOS and EOS strings written by the template, the answer after " "
    "bos-eos": BOS_EOS_TEMPLATE,
}
conversations = [
    [{"role": "user", "content": "Tell me a story about a cat."},
     {"role": "assistant", "content": "Once upon a time, there was a cat named Tom."}],
    [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "A dog and a ball."},
     {"role": "assistant", "content": "The dog ran after the ball. He was happy."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! Do you want a story?"},
     {"role": "user", "content": "Yes, about a frog."},
     {"role": "assistant", "content": "Once upon a time, a frog lived in a pond."}],
    [{"role": "user", "content": "Spaces  and\nnew lines"}, {"role": "assistant", "content": "  Sure:\n\nthe end  "}],
    # ends with the user: the last turn has no target
    [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three"}],
]


def ids_of(msgs, t, gen):
    r = tok.apply_chat_template(msgs, chat_template=t, add_generation_prompt=gen, tokenize=True, return_dict=True)
    return list(map(int, r["input_ids"]))


cases = []
for name, t in templates.items():
    convs = [c for c in conversations if not (name == "bos-eos" and c[0]["role"] == "system")]
    for msgs in convs:
        text = tok.apply_chat_template(msgs, chat_template=t, tokenize=False)
        case = {"template": name, "messages": msgs, "text": text}
        if name == "chatml-generation":
            r = tok.apply_chat_template(msgs, chat_template=t, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
            case["ids"] = list(map(int, r["input_ids"]))
            case["targets"] = list(map(int, r["assistant_masks"]))
            # where a generation block starts or ends inside a token, transformers marks that whole token (its
            # char_to_token); nibble refuses such a conversation instead (it does not guess which side the token
            # belongs to). The blocks' text is each assistant content + <|im_end|>, after its header.
            offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            assert [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]] == case["ids"]
            bounds = {a for a, _ in offsets} | {b for _, b in offsets}
            cursor = 0
            for m in msgs:
                if m["role"] != "assistant":
                    continue
                head = "<|im_start|>assistant\n"
                at = text.index(head + m["content"] + "<|im_end|>", cursor) + len(head)
                cursor = at + len(m["content"]) + len("<|im_end|>")
                if at not in bounds or cursor not in bounds:
                    case["error"] = "generation block boundary inside a token"
                    break
        else:
            ids = ids_of(msgs, t, False)
            targets = [0] * len(ids)
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                prompt = ids_of(msgs[:i], t, True)
                full = ids_of(msgs[:i + 1], t, False)
                if full[:len(prompt)] != prompt or ids[:len(full)] != full:
                    case["error"] = "message %d: not a token prefix" % i
                    break
                for k in range(len(prompt), len(full)):
                    targets[k] = 1
            if "error" not in case:
                case["ids"] = ids
                case["targets"] = targets
        cases.append(case)

out = {"added_tokens": added, "templates": templates, "cases": cases}
os.makedirs(os.path.join(here, "chat_finetune"), exist_ok=True)
with open(os.path.join(here, "chat_finetune", "chat_finetune.json"), "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
with open(os.path.join(here, "chat_finetune", "versions.json"), "w") as f:
    json.dump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}, f, indent=1)
print(len(cases), "cases,", sum("error" in c for c in cases), "refused")
