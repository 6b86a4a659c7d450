#!/usr/bin/env python3
"""Golden data for nibble's chat templates (tests/chat/chat_template_test.cpp), made by transformers itself.

  tests/golden/chat_templates/*.jinja   real models' chat templates (their published text), taken from the
                                        llama.cpp repository: models/templates/*.jinja and the inline templates
                                        of tests/test-chat-template.cpp (`--extract LLAMA_CPP_GIT_DIR` copies
                                        them and writes sources.json: file, model name, bos/eos tokens)
  tests/golden/chat_templates/expected.json
      "conversations": the message lists, by name
      "cases":  each template over many conversations (system or not, multi-turn, assistant last, unicode,
                tools, reasoning, conversations the template rejects), add_generation_prompt both ways, rendered
                exactly as tokenizer.apply_chat_template(..., tokenize=False) renders: the same normalization
                (_normalize_chat_messages), the special-token kwargs and transformers.utils.chat_template_utils.
                render_jinja_template (transformers' sandboxed jinja2 environment, its tojson, raise_exception).
                A rejected conversation records raise_exception's message ("raise") or another error ("error").
      "engine": small templates exercising one engine feature each, rendered by the same compiled environment
                (transformers' _compile_jinja_template), so every expectation is jinja2's.

Usage: /tmp/venv-golden/bin/python tests/golden/make_chat_template_golden.py [--extract LLAMA_CPP_GIT_DIR]
(transformers 5.24.0, jinja2 3.1.6)
"""
import argparse
import json
import os
import re
import subprocess
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

try:
    from transformers.utils.chat_template_utils import _normalize_chat_messages
except ImportError:  # older transformers
    _normalize_chat_messages = None

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "chat_templates")

# models/templates files taken (duplicates of these in llama.cpp's folder are left out), with their tokenizer's
# bos/eos tokens
MODEL_TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": ("<|begin_of_text|>", "<|im_end|>"),
    "fireworks-ai-llama-3-firefunction-v2": ("<|begin_of_text|>", "<|eot_id|>"),
    "meetkai-functionary-medium-v3.1": ("<|begin_of_text|>", "<|eot_id|>"),
    "meetkai-functionary-medium-v3.2": ("<|begin_of_text|>", "<|eot_id|>"),
    "CohereForAI-c4ai-command-r-plus-tool_use": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
}


C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def c_unescape(raw):
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\":
            out.append(C_ESCAPES[raw[i + 1]])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def c_string_literals(text, pos):
    """Adjacent C string literals (optionally u8-prefixed) from text[pos:]: (decoded value, end)."""
    out = []
    while True:
        m = re.compile(r'\s*(?:u8)?"').match(text, pos)
        if not m:
            break
        i = m.end()
        buf = []
        while text[i] != '"':
            if text[i] == "\\":
                buf.append(text[i : i + 2])
                i += 2
            else:
                buf.append(text[i])
                i += 1
        out.append(c_unescape("".join(buf)))
        pos = i + 1
    return ("".join(out) if out else None), pos


def extract(git_dir):
    os.makedirs(OUT, exist_ok=True)
    sources = []
    for name, (bos, eos) in MODEL_TEMPLATES.items():
        text = subprocess.run(
            ["git", "-C", git_dir, "show", f"HEAD:models/templates/{name}.jinja"],
            check=True,
            capture_output=True,
        ).stdout.decode("utf-8")
        with open(os.path.join(OUT, name + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(text)
        tokens = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
        sources.append({"file": name + ".jinja", "model": name, "special_tokens": tokens, "from": "models/templates"})
    cpp = subprocess.run(
        ["git", "-C", git_dir, "show", "HEAD:tests/test-chat-template.cpp"], check=True, capture_output=True
    ).stdout.decode("utf-8")
    for m in re.finditer(r"/\* \.name= \*/", cpp):
        name, p = c_string_literals(cpp, m.end())
        t = re.compile(r"\s*,(?:\s*//[^\n]*)*\s*/\* \.template_str= \*/").match(cpp, p)
        template, p = c_string_literals(cpp, t.end())
        block_end = cpp.find("\n        },", p)
        block = cpp[p:block_end]
        tokens = {"bos_token": "", "eos_token": ""}  # llama.cpp's test passes "" unless the case sets them
        for key in ("bos_token", "eos_token"):
            k = re.search(r"/\* \." + key + r"= \*/", block)
            if k:
                v, _ = c_string_literals(block, k.end())
                tokens[key] = v
        slug = "inline-" + re.sub(r"[^A-Za-z0-9.]+", "-", name.split(" (")[0]).strip("-")
        if any(s["file"] == slug + ".jinja" for s in sources):
            slug += "-" + str(len(sources))
        with open(os.path.join(OUT, slug + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(template)
        sources.append({"file": slug + ".jinja", "model": name, "special_tokens": tokens,
                        "from": "tests/test-chat-template.cpp"})
    with open(os.path.join(OUT, "sources.json"), "w", encoding="utf-8") as f:
        json.dump(sources, f, indent=1, ensure_ascii=False)
        f.write("\n")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TOOL_CALL = {"id": "call12345", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": {"city": "Paris", "unit": "celsius"}}}

SYS = {"role": "system", "content": "You are a helpful assistant"}
U1 = {"role": "user", "content": "Hello"}
A1 = {"role": "assistant", "content": "Hi there"}
U2 = {"role": "user", "content": "Who are you"}
A2 = {"role": "assistant", "content": "   I am an assistant   "}
U3 = {"role": "user", "content": "Another question"}

CONVERSATIONS = {
    "user": [U1],
    "system_user": [SYS, U1],
    "multi_turn": [SYS, U1, A1, U2, A2, U3],
    "multi_turn_no_system": [U1, A1, U2, A2, U3],
    "assistant_last": [SYS, U1, A1],
    "unicode": [
        {"role": "system", "content": "Tu es un assistant 😀 — réponds en français"},
        {"role": "user", "content": "Café 模型 ünïcödé\n\ttabs and \"quotes\" 'single' \\ backslash {{ not a tag }}"},
        {"role": "assistant", "content": "Ещё 🎉\n"},
        {"role": "user", "content": "  padded  "},
    ],
    "not_alternating": [U1, U2],
    "assistant_first": [A1, U1],
    "reasoning": [U1, {"role": "assistant", "content": "Hi there", "reasoning_content": "The user greets me."}, U2],
    "null_fields": [U1, {"role": "assistant", "content": "Hi there", "tool_calls": None}, U2],
}
TOOL_CONVERSATIONS = {
    "tools_user": ([U1], {"tools": [WEATHER_TOOL]}),
    "tool_call_roundtrip": (
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "name": "get_weather", "tool_call_id": "call12345", "content": "22 degrees"},
        ],
        {"tools": [WEATHER_TOOL]},
    ),
    "tool_call_string_arguments": (
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{**TOOL_CALL, "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "name": "get_weather", "tool_call_id": "call12345", "content": "22 degrees"},
            {"role": "assistant", "content": "It is 22 degrees in Paris."},
            {"role": "user", "content": "Thanks!"},
        ],
        {"tools": [WEATHER_TOOL]},
    ),
}
# tool_use templates that iterate `tools` unconditionally: one conversation without tools (an error), then tools
TOOLS_REQUIRED = {
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
}
# variables a template needs besides the standard ones
TEMPLATE_EXTRA = {
    "inline-ai-sage-GigaChat-20B-A3B-instruct.jinja": {
        "additional_special_tokens": ["<|message_sep|>", "<|role_sep|>", "<|file_start|>", "<|file_end|>"]},
    "fireworks-ai-llama-3-firefunction-v2.jinja": {
        "functions": json.dumps([WEATHER_TOOL["function"]], indent=2), "datetime": "2024-07-26"},
}
TOOL_TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "fireworks-ai-llama-3-firefunction-v2.jinja",
    "meetkai-functionary-medium-v3.1.jinja",
    "meetkai-functionary-medium-v3.2.jinja",
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
}
# templates that print today's date unless given one: pass it, so the output is reproducible
DATE_EXTRA = {"date_string": "26 Jul 2024"}


def is_raise(e):
    return type(e) is jinja2.exceptions.TemplateError


def render_like_apply_chat_template(template, messages, add_generation_prompt, special_tokens, extra):
    # tokenizer_utils_base.apply_chat_template(tokenize=False): normalize, kwargs over the special tokens, then
    # render_jinja_template (tools/documents are named arguments there)
    extra = dict(extra)
    tools = extra.pop("tools", None)
    documents = extra.pop("documents", None)
    conversation = _normalize_chat_messages(messages) if _normalize_chat_messages else messages
    template_kwargs = {**special_tokens, **extra}
    rendered, _ = render_jinja_template(
        conversations=[conversation],
        tools=tools,
        documents=documents,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    )
    return rendered[0]


def outcome(fn):
    try:
        return {"expected": fn()}
    except Exception as e:  # noqa: BLE001 - the golden records what transformers raised
        if is_raise(e):
            return {"raise": str(e)}
        return {"error": type(e).__name__, "message": str(e)}


# ---------------------------------------------------------------------------------------------- engine snippets
# (template, variables): each rendered by transformers' compiled environment
ENGINE = [
    # whitespace: trim_blocks, lstrip_blocks, -/+ markers, comments, trailing newline
    ("a\n{% if true %}\n  b\n{% endif %}\nc\n", {}),
    ("  {% if true %}x{% endif %}  \n  {{ 'y' }}  \n", {}),
    ("a  {%- if true -%}  b  {%- endif -%}  c", {}),
    ("a\n  {%+ if true %}b{% endif +%}\nc", {}),
    ("x {#- comment -#} y\n  {# c2 #}\nz", {}),
    ("{{- '  a  ' -}}\n\n{{ 'b' }}\n\n", {}),
    ("line1\r\nline2\rline3\n\n", {}),
    ("{% raw %}{{ not evaluated }}{% endraw %}|{%- raw -%}  {% x %}  {%- endraw -%}|", {}),
    ("{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n", {}),
    ("{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}", {}),
    # literals and printing (Python str())
    ("{{ 1 }} {{ 1.0 }} {{ 1.5e3 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e-7 }} {{ -0.0 }} {{ 10 / 4 }} {{ 3 // 2 }}", {}),
    ("{{ true }} {{ none }} {{ None }} {{ [1, 'a', none, true, 1.5] }} {{ {'k': 'v', 'n': 2} }} {{ (1,) }} {{ (1, 'b') }}", {}),
    ("{{ \"it's\" }} {{ ['it\\'s', \"q\\\"\", 'tab\\t', 'nl\\n', 'é😀'] }}", {}),
    ("{{ 'a' 'b' }} {{ '\\x41\\u00e9\\n\\\\' }} {{ 0x1F }} {{ 1_000 }}", {}),
    # arithmetic
    ("{{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ -7 // 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 % 2 }} {{ -2 ** 2 }}", {}),
    ("{{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ [1] * 3 }} {{ [1, 2] + [3] }} {{ 'a' ~ 1 ~ none ~ true }}", {}),
    ("{{ 1 + true }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", {}),
    # logic, membership, conditional expressions
    ("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not [] }} {{ 'a' in 'cat' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }}", {}),
    ("{{ 'yes' if x else 'no' }} {{ 'a' if false }}|{{ x if x is defined else 'undef' }}", {"x": 0}),
    # undefined
    ("[{{ nope }}] {{ nope is defined }} {{ nope is undefined }} {{ nope | default('d') }} {{ not nope }} {{ nope | length }}", {}),
    ("{{ m.missing is defined }} {{ m.missing | default('x') }} [{{ m.missing }}] {{ m['k'] }} {{ m.k }}", {"m": {"k": "v"}}),
    ("{% for x in nope %}{{ x }}{% else %}empty{% endfor %} {{ '' | default('d', true) }} {{ 0 | d('z', boolean=true) }}", {}),
    # tests
    ("{{ 1 is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is sequence }} {{ 'a' is iterable }} {{ true is boolean }}", {}),
    ("{{ none is none }} {{ 1 is none }} {{ 2 is even }} {{ 3 is odd }} {{ 1 is eq 1 }} {{ 1 is equalto(2) }} {{ true is true }} {{ 0 is false }} {{ 1 is not none }}", {}),
    ("{{ 6 is divisibleby 3 }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ x is sameas x }} {{ f is callable }} {{ 3 is gt 2 }} {{ 3 is in [3] }}", {"x": [1], "f": None}),
    # filters
    ("{{ '  a b  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'aBc dEf' | upper }}|{{ 'aBc' | lower }}|{{ 'hello wORLD' | capitalize }}|{{ 'hello wORLD-x(y' | title }}", {}),
    ("{{ [1, 2, 3] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ 'abc' | first }} {{ 'abc' | last }}", {}),
    ("{{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join }} {{ users | map(attribute='name') | join('/') }} {{ users | join(',', attribute='name') }}", {"users": [{"name": "ann"}, {"name": "bob"}]}),
    ("{{ d | items | list }} {% for k, v in d | items %}{{ k }}={{ v }};{% endfor %} {% for k, v in d.items() %}{{ k }}:{{ v }},{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{{ d | dictsort }} {{ d | dictsort(by='value') }} {{ d | dictsort(reverse=true) }} {{ d.keys() | list }} {{ d.values() | list }}", {"d": {"b": 1, "a": 2, "C": 0}}),
    ("{{ 'abc' | list }} {{ 12 | string }} {{ '42' | int + 1 }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ '0x1A' | int(0, 16) }} {{ 3 | float }} {{ '2.5' | float }} {{ 2.7 | int }}", {}),
    ("{{ -3 | abs }} {{ (-3) | abs }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ 2.9 | round(method='floor') }} {{ 7 | round }}", {}),
    ("{{ 'aXbXc' | replace('X', '-') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'abc' | reverse }} {{ [1, 2, 3] | reverse | list }}", {}),
    ("{{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} {{ [3, 1, 2] | sort(reverse=true) }} {{ users | sort(attribute='age') | map(attribute='name') | list }}", {"users": [{"name": "a", "age": 3}, {"name": "b", "age": 1}]}),
    ("{{ ['a', 'A', 'b', 'a'] | unique | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('odd') | list }} {{ [0, 1, '', 'x'] | select | list }}", {}),
    ("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ msgs | rejectattr('role', 'eq', 'user') | list | length }} {{ msgs | selectattr('tool') | list }}", {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": 1}]}),
    ("{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width='> ', blank=true) }}|{{ 'x' | indent(first=true) }}", {}),
    ("{{ '<a & \"b\">' | e }} {{ '<b>' | escape }} {{ '<b>' | safe }} {{ ('<b>' | safe) + '<i>' }}", {}),
    ("{{ [1, 2, 3] | sum }} {{ [1, 5, 3] | max }} {{ [4, 2, 8] | min }} {{ 'a b  c' | wordcount }} {{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ '%s!' | format('hi') if false else 'fmt' }}", {}),
    # transformers' tojson
    ("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}|{{ d | tojson(separators=(',', ':')) }}|{{ 'é😀<>&\\'' | tojson }}|{{ 'é' | tojson(ensure_ascii=true) }}", {"d": {"z": [1, 2.5, None, True, "s\n\"q\""], "a": {}, "m": []}}),
    ("{{ [] | tojson(indent=4) }} {{ {'a': [1, {'b': none}]} | tojson(indent=4) }} {{ 1e100 | tojson }} {{ 3 | tojson }} {{ (1, 2) | tojson }}", {}),
    # string methods
    ("{{ '  x  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}", {}),
    ("{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello world'.title() }} {{ 'a-b'.replace('-', '+') }} {{ '-'.join(['a', 'b']) }} {{ '{} and {}'.format(1, 'x') }} {{ 'hello'.capitalize() }} {{ 'abcabc'.find('c') }} {{ 'a\\nb'.splitlines() }} {{ 'x.y.z'.rsplit('.', 1) }}", {}),
    # slicing and indexing
    ("{{ 'abcdef'[1:3] }} {{ 'abcdef'[-2:] }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[::2] }} {{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3, 4][:-1] }} {{ [1, 2, 3][-1] }} {{ 'héllo'[1] }} {{ [1, 2, 3][5] is defined }}", {}),
    ("{{ messages[0]['content'] }} {{ messages[-1].role }} {{ messages[1:] | length }} {{ messages.0.role }}", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
    # loops
    ("{% for x in items %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("{% for x in items %}{{ loop.previtem | default('-') }}{{ x }}{{ loop.nextitem | default('-') }} {% endfor %}{% for x in items %}{{ loop.cycle('o', 'e') }}{% endfor %}", {"items": ["a", "b", "c"]}),
    ("{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %} {% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}{% for x in {'k1': 1, 'k2': 2} %}{{ x }}{% endfor %} {% for c in 'ab' %}{{ c }}.{% endfor %} {{ range(2, 10, 3) | list }} {{ range(3, 0, -1) | list }}", {}),
    ("{% for i in [1, 2] %}{% for j in [3, 4] %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    # scoping: set, namespace, block set
    ("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }} {% endfor %}{{ x }}", {}),
    ("{% set ns = namespace(found=false, n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }} {% set t = (3, 4) %}{% set c, d = t %}{{ c }}{{ d }} {% set blk %}  inner {{ a }}  {% endset %}[{{ blk }}] {% set up | upper %}shout{% endset %}{{ up }}", {}),
    ("{% if true %}{% set inside = 'visible' %}{% endif %}{{ inside }} {% for i in [1] %}{% set loopvar = 'x' %}{% endfor %}[{{ loopvar }}]", {}),
    # macros and call blocks
    ("{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', greeting='Hi') }} {{ greet('C', 'Yo') }}", {}),
    ("{% macro outer() %}[{{ caller() }}]{% endmacro %}{% call outer() %}inside{% endcall %} {% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, k=3) }}", {}),
    ("{% macro rec(n) %}{{ n }}{% if n > 0 %}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }} {% set g = 'global' %}{% macro show() %}{{ g }}{% endmacro %}{{ show() }}", {}),
    # dict / filter blocks / with / generation
    ("{{ dict(a=1, b='x') }} {{ dict([('k', 2)]) }} {% filter upper %}loud {{ 'text' }}{% endfilter %} {% with w = 5 %}{{ w }}{% endwith %}[{{ w }}]", {}),
    ("{% for m in messages %}{% generation %}<{{ m }}>{% endgeneration %}{% endfor %}", {"messages": ["a", "b"]}),
    # dict methods
    ("{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d['a'] }} {{ d.a }} {{ d | length }}", {"d": {"a": 1}}),
    # errors jinja2 raises at render time
    ("{{ raise_exception('Custom: ' ~ 42) }}", {}),
    ("{{ nope.attr }}", {}),
    ("{{ nope() }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 1 < 'a' }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{{ [1].append(2) }}", {}),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", {}),
    ("{{ range(200000) | length }}", {}),
    # errors jinja2 raises when parsing
    ("{% if x %}no end", {}),
    ("{{ 1 + }}", {}),
    ("{% endfor %}", {}),
    ("{% unknown_tag %}", {}),
    ("{{ 'unterminated }}", {}),
    ("{# unterminated comment", {}),
    ("{{ (1, 2 }}", {}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extract", metavar="LLAMA_CPP_GIT_DIR")
    args = ap.parse_args()
    if args.extract:
        extract(args.extract)
    with open(os.path.join(OUT, "sources.json"), encoding="utf-8") as f:
        sources = json.load(f)
    cases = []
    conversations = {n: c for n, c in CONVERSATIONS.items()}
    conversations.update({n: c for n, (c, _) in TOOL_CONVERSATIONS.items()})
    for s in sources:
        with open(os.path.join(OUT, s["file"]), encoding="utf-8", newline="") as f:
            template = f.read()
        tokens = s["special_tokens"]
        runs = [(n, {}) for n in CONVERSATIONS]
        if s["file"] in TOOLS_REQUIRED:
            runs = [("user", {})]
        if s["file"] in TOOL_TEMPLATES:
            runs += [(n, dict(e)) for n, (_, e) in TOOL_CONVERSATIONS.items()]
        for name, extra in runs:
            conversation = conversations[name]
            extra = {**DATE_EXTRA, **TEMPLATE_EXTRA.get(s["file"], {}), **extra}
            for agp in (True, False):
                r = outcome(lambda: render_like_apply_chat_template(template, conversation, agp, tokens, extra))
                cases.append({"template": s["file"], "conversation": name, "add_generation_prompt": agp,
                              "extra": extra, **r})
    engine = []
    for source, variables in ENGINE:
        def run():
            return _compile_jinja_template(source).render(**variables)

        try:
            r = {"expected": run()}
        except jinja2.exceptions.TemplateSyntaxError as e:
            r = {"syntax_error": str(e), "line": e.lineno}
        except Exception as e:  # noqa: BLE001
            r = {"raise": str(e)} if is_raise(e) else {"error": type(e).__name__, "message": str(e)}
        engine.append({"source": source, "vars": variables, **r})
    doc = {
        "generator": "tests/golden/make_chat_template_golden.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "conversations": conversations,
        "cases": cases,
        "engine": engine,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=None, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n_raise = sum("raise" in c for c in cases)
    n_err = sum("error" in c for c in cases)
    print(f"{len(cases)} cases ({n_raise} raise_exception, {n_err} other errors), {len(engine)} engine snippets",
          file=sys.stderr)


if __name__ == "__main__":
    main()
