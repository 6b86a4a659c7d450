"""What the chat golden scripts (make_chat_ids_golden.py, make_chat_finetune_golden.py) share: the example
model's tokenizer extended with <|im_start|>/<|im_end|> as added special tokens, and the templates they render."""
import json
import os
import tempfile

from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

# BOS and EOS strings of the tokenizer written by the template, Llama-2 style
BOS_EOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }} "
                    "[/INST]{% else %} {{ m['content'] | trim }}{{ eos_token }}{% endif %}{% endfor %}")


def extended_tokenizer(model):
    """The tokenizer with the two added tokens, and their added_tokens entries as transformers saves them (the C++
    tests append these to the model's tokenizer.json)."""
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        with open(os.path.join(d, "tokenizer.json")) as f:
            saved = json.load(f)
    with open(os.path.join(model, "tokenizer.json")) as f:
        orig = json.load(f)
    have = {a["id"] for a in orig["added_tokens"]}
    added = [a for a in saved["added_tokens"] if a["id"] not in have]
    assert [a["content"] for a in added] == ["<|im_start|>", "<|im_end|>"], added
    return tok, added


def qwen25_template():
    """Qwen2.5's published template (ChatML: <|im_start|>/<|im_end|> around each turn, a default system prompt)."""
    with open(os.path.join(HERE, "chat_templates", "Qwen-Qwen2.5-7B-Instruct.jinja")) as f:
        return f.read()
