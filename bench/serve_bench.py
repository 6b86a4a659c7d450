#!/usr/bin/env python3
"""Continuous-batching throughput of `nibble serve`: aggregate decode tokens/s with C concurrent streaming
clients (Python 3 standard library only).

Starts `NIBBLE serve SERVE_ARGS... --port 0`, waits for /health, sends one warm-up request, then for each
concurrency C runs C clients at once, each streaming one POST /v1/completions (temperature 0, max_tokens N,
a prompt of its own, usage requested through stream_options.include_usage). Per C it reports:

  agg tok/s     sum of usage.completion_tokens / (last response's end - first request's start)
  TTFT          mean time from a request's start to its first text chunk
  stream tok/s  mean over the streams of completion_tokens / (its end - its start)
  vs C=1        agg tok/s / agg tok/s at C=1 (when C=1 is measured)

With --repeat R each concurrency runs R times (distinct prompts each time) and the run with the median
aggregate tok/s is reported. Finally the server is stopped with SIGTERM and must exit with code 0.

  bench/serve_bench.py -- build/release/nibble /work/shared/models/tinystories-656k -t 2
  bench/serve_bench.py --max-tokens 64 --json out.json -- build/release/nibble --synthetic llama-7b \\
      --layers 4 --tokenizer /work/shared/models/tinystories-656k --load-in-4bit --quant-type nf4 \\
      --double-quant --compute-dtype bfloat16 --max-batch 16 -t 2
"""
import argparse
import http.client
import json
import signal
import subprocess
import sys
import threading
import time

SUBJECTS = ["a little girl", "a small dog", "a brave boy", "an old cat", "a happy bird", "a big bear",
            "a tiny fish", "a kind frog", "a red fox", "a sleepy owl", "a shy rabbit", "a funny duck",
            "a young prince", "a curious mouse", "a strong horse", "a lazy lion", "a clever monkey",
            "a gentle cow", "a fast turtle", "a silly goat"]
PLACES = ["in the park", "near the sea", "in a big forest", "on a farm", "in a small town", "by the river"]


def prompt(i):
    # ends mid-sentence, so that a story model does not end its text at once
    return f"Once upon a time, {SUBJECTS[i % len(SUBJECTS)]} {PLACES[(i // len(SUBJECTS)) % len(PLACES)]} wanted to"


def stream_completion(host, port, body, timeout):
    """One streaming completion: (start, first text time or None, end, completion_tokens, text)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
    first = None
    tokens = None
    text = []
    done = False
    for raw in resp:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(f"server error: {ev['error']}")
        for ch in ev.get("choices", []):
            if ch.get("text"):
                if first is None:
                    first = time.perf_counter()
                text.append(ch["text"])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    end = time.perf_counter()
    conn.close()
    if not done or tokens is None:
        raise RuntimeError("the stream ended without usage and [DONE]")
    return start, first, end, tokens, "".join(text)


def run_level(host, port, c, max_tokens, offset, timeout):
    barrier = threading.Barrier(c)
    results = [None] * c
    errors = []

    def client(i):
        body = {"prompt": prompt(offset + i), "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        barrier.wait()
        try:
            results[i] = stream_completion(host, port, body, timeout)
        except Exception as e:  # reported after all threads end
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"C={c}: {errors[0]}")
    t0 = min(r[0] for r in results)
    t1 = max(r[2] for r in results)
    tokens = sum(r[3] for r in results)
    ttft = [(r[1] if r[1] is not None else r[2]) - r[0] for r in results]
    per_stream = [r[3] / (r[2] - r[0]) for r in results]
    return {"concurrency": c, "completion_tokens": tokens, "wall_s": t1 - t0,
            "aggregate_tok_s": tokens / (t1 - t0), "mean_ttft_s": sum(ttft) / c,
            "mean_stream_tok_s": sum(per_stream) / c}


def start_server(cmd, timeout):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    marker = "listening on http://"
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited (code {proc.wait()}) before listening")
        if marker in line:
            addr = line.split(marker, 1)[1].strip()
            host, port = addr.rsplit(":", 1)
            break
        if time.time() > deadline:
            raise RuntimeError("the server did not say where it listens")
    # the server prints nothing more on stdout; keep the pipe drained anyway
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    port = int(port)
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, host, port
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("/health did not answer 200")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts (default 1,4,8,16)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default 64)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per concurrency; the one with the median aggregate tok/s is reported (default 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the server / a response")
    ap.add_argument("command", nargs=argparse.REMAINDER,
                    help="-- NIBBLE [serve arguments...] (serve and --port 0 are added)")
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the nibble binary and serve's arguments after --")
    levels = [int(x) for x in a.concurrency.split(",") if x]
    cmd = [cmd[0], "serve"] + cmd[1:] + ["--port", "0"]
    print("server:", " ".join(cmd), file=sys.stderr)
    proc, host, port = start_server(cmd, a.timeout)
    rows = []
    try:
        run_level(host, port, 1, min(a.max_tokens, 16), 10_000, a.timeout)  # warm-up
        offset = 0
        for c in levels:
            runs = []
            for _ in range(a.repeat):
                runs.append(run_level(host, port, c, a.max_tokens, offset, a.timeout))
                offset += c
            runs.sort(key=lambda r: r["aggregate_tok_s"])
            rows.append(runs[len(runs) // 2])
            rows[-1]["runs_aggregate_tok_s"] = [r["aggregate_tok_s"] for r in runs]
            print(f"C={c}: {rows[-1]['aggregate_tok_s']:.1f} tok/s", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    base = next((r["aggregate_tok_s"] for r in rows if r["concurrency"] == 1), None)
    for r in rows:
        r["vs_c1"] = r["aggregate_tok_s"] / base if base else None
    print(f"{'clients':>7} {'tokens':>7} {'wall s':>8} {'agg tok/s':>10} {'TTFT ms':>8} {'stream tok/s':>12}"
          f" {'vs C=1':>7}")
    for r in rows:
        ratio = f"{r['vs_c1']:.2f}x" if r["vs_c1"] else "-"
        print(f"{r['concurrency']:>7} {r['completion_tokens']:>7} {r['wall_s']:>8.2f} {r['aggregate_tok_s']:>10.1f}"
              f" {1000 * r['mean_ttft_s']:>8.0f} {r['mean_stream_tok_s']:>12.1f} {ratio:>7}")
    if a.json:
        out = json.dumps({"command": cmd, "max_tokens": a.max_tokens, "server_exit_code": code,
                          "results": rows}, indent=2)
        if a.json == "-":
            print(out)
        else:
            with open(a.json, "w") as f:
                f.write(out + "\n")
    if code != 0:
        print(f"serve_bench: the server exited with code {code} after SIGTERM", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
