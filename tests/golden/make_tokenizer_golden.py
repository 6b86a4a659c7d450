#!/usr/bin/env python3
"""Golden token ids from HF `tokenizers` for nibble's tokenizer tests.

Run once:  pip install tokenizers && python3 tests/golden/make_tokenizer_golden.py [path/to/example/tokenizer.json]
Trains two small byte-level BPE tokenizers on a fixed corpus (GPT-2 style: ByteLevel pre-tokenizer with its
regex; Llama-3/Qwen2 style: NFC, Split on the Llama-3 regex, ByteLevel without regex, BOS template), saves
them next to this script, and records encode/decode results for a test corpus on them and on the example
model's sentencepiece-style tokenizer.
"""
import json
import pathlib
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = pathlib.Path(__file__).parent
EXAMPLE = sys.argv[1] if len(sys.argv) > 1 else str(HERE / "../../../shared/models/tinystories-656k/tokenizer.json")

TRAIN = [
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her dog.",
    "The quick brown fox jumps over the lazy dog. 1234567890 numbers and more numbers 42, 3.14159!",
    "Café, naïve, résumé, jalapeño, Übermaß, façade — accents everywhere.",
    "机器学习模型 量化 四位 测试 中文 日本語のテキスト 한국어 텍스트",
    "Emoji: 😀 🎉 👍🏽 🇫🇷 and symbols ∑ ∫ √ ≈ ≠ ≤ ≥ © ® ™",
    "def f(x):\n    return x * 2  # code\n\tindented\r\nwindows line",
    "It's, I'm, you're, we've, they'll, he'd — contractions.",
] * 20

TEST = [
    "Once upon a time", "Hello, world!", "  leading spaces", "trailing spaces   ", "multiple   inner    spaces",
    "tabs\tand\nnewlines\r\n", "Café crème brûlée", "naïve résumé", "机器学习", "日本語とEnglish混在",
    "emoji 😀 and 👍🏽 and 🇫🇷", "It's a test, isn't it? They'll see.", "numbers 1234567 and 3.14159",
    "", " ", "a", "UPPER lower MiXeD", "<|start_story|>Once upon a time<|end_story|>", "x" * 50,
    "Ω≈ç√∫˜µ≤≥÷", "zero\u200bwidth", "e\u0301 combining", "\u00e9 precomposed", "tab\tsep\tvalues",
    "new\n\n\nlines", "ümlaut Ölbaum", "ends with emoji 🎉", "mixed 中文 and English text 123",
]


def gpt2_style():
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(TRAIN, trainer)
    return t


def llama3_style():
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(TRAIN, trainer)
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return t


def cases(t):
    # skip_special_tokens as transformers applies it (tokenizers 0.23's own flag leaves these in): the special
    # added tokens are dropped before the decoder runs.
    special = {i for i, a in t.get_added_tokens_decoder().items() if a.special}
    out = []
    for text in TEST:
        ids = t.encode(text).ids
        out.append({"text": text, "ids": ids, "ids_no_special": t.encode(text, add_special_tokens=False).ids,
                    "decoded": t.decode([i for i in ids if i not in special]),
                    "decoded_with_special": t.decode(ids, skip_special_tokens=False)})
    return out


def main():
    result = {"tokenizers_version": tokenizers.__version__, "tokenizers": []}
    result["tokenizers"].append({"file": "example", "cases": cases(Tokenizer.from_file(EXAMPLE))})
    for name, make in [("bytelevel_gpt2_tokenizer.json", gpt2_style), ("bytelevel_llama3_tokenizer.json", llama3_style)]:
        t = make()
        t.save(str(HERE / name))
        result["tokenizers"].append({"file": name, "cases": cases(t)})
    (HERE / "tokenizer_golden.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print("wrote tokenizer_golden.json")


if __name__ == "__main__":
    main()
