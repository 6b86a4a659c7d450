"""nibble serve as a stock OpenAI client sees it: the official `openai` package (PyPI) talks to the real server
process unchanged - models.list, chat completions (plain and streamed, with usage), text completions, stop
strings, a 400 raised as openai.BadRequestError with the field named - then SIGTERM ends it with exit code 0.

Usage: openai_client_test.py NIBBLE_CLI MODEL_DIR   (exit 77 = skipped: no `openai` module in this python)
Everything is bounded in time; the server is killed by PID whatever happens.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

try:
    import openai
except ImportError:
    print("skipped: the openai package is not installed in", sys.executable)
    sys.exit(77)

cli, model = sys.argv[1], sys.argv[2]

# the example model with a chat template beside it (it ships none)
tmp = tempfile.mkdtemp(prefix="nibble-openai-")
for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
    os.symlink(os.path.join(model, f), os.path.join(tmp, f))
with open(os.path.join(model, "tokenizer_config.json")) as f:
    cfg = json.load(f)
cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] | trim }}\n"
                        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f)

srv = subprocess.Popen([cli, "serve", tmp, "--port", "0", "--alias", "tiny", "-q"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


try:
    line = srv.stdout.readline()
    m = re.search(r"listening on (http://[\d.]+:\d+)", line)
    assert m, "no 'listening on' line: %r" % line
    client = openai.OpenAI(base_url=m.group(1) + "/v1", api_key="none", timeout=60, max_retries=0)

    models = client.models.list()
    check([x.id for x in models.data] == ["tiny"], "models.list ids: %r" % [x.id for x in models.data])

    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A story about a cat."}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat response shape")
    text = r.choices[0].message.content
    check(isinstance(text, str) and len(text) > 0, "chat text")
    check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason %r" % r.choices[0].finish_reason)
    check(r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
          "chat usage %r" % r.usage)

    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(streamed == text, "streamed chat %r != %r" % (streamed, text))
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens,
          "stream usage")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == [r.choices[0].finish_reason], "stream finish_reason %r" % finishes)

    c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0)
    check(c.object == "text_completion" and c.usage.completion_tokens == 20 and c.choices[0].finish_reason == "length",
          "completion %r" % c)
    full = c.choices[0].text
    stop = full[8:12]
    cs = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0, stop=[stop])
    check(cs.choices[0].text == full[:full.find(stop)] and cs.choices[0].finish_reason == "stop",
          "stop string: %r (stop %r in %r)" % (cs.choices[0].text, stop, full))
    streamed = "".join(x.choices[0].text for x in client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0, stream=True))
    check(streamed == full, "streamed completion %r != %r" % (streamed, full))

    # seeded sampling repeats itself
    a = client.completions.create(model="tiny", prompt="The dog", max_tokens=15, temperature=0.9, seed=7)
    b = client.completions.create(model="tiny", prompt="The dog", max_tokens=15, temperature=0.9, seed=7)
    check(a.choices[0].text == b.choices[0].text, "same seed, other text")

    try:
        client.chat.completions.create(model="tiny", messages=msgs, temperature=-1)
        check(False, "temperature -1 accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "temperature" in str(e), "400 names the field: %s" % e)
    try:
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
        check(False, "max_tokens -3 accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "max_tokens" in str(e), "400 names max_tokens: %s" % e)
    # still serving after the errors
    check(client.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2,
          "serves after errors")

    srv.send_signal(signal.SIGTERM)
    try:
        code = srv.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    check(code == 0, "exit code after SIGTERM: %r" % code)
finally:
    if srv.poll() is None:
        srv.kill()
        srv.wait()
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("openai client: all checks passed (openai %s)" % openai.__version__)
