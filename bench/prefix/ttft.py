#!/usr/bin/env python3
"""bench/prefix/ttft.py: TTFT with a shared system prompt, prefix caching on against off.

Starts tandemd twice on the same cores (--enable-prefix-caching=true, then =false) and sends
chat requests one at a time that share one long system prompt (--system-tokens, 1,000 by
default, cut from bench/data/corpus.txt) and differ in a short question. The first request of
each server computes the system prompt; the later ones, with caching on, find it cached. Prints
the median TTFT (streamed, to the first token) of the later requests for each server, their
ratio, the cold first request, and the server's hit counters.

  bench/prefix/ttft.py [--runs 9] [--system-tokens 1000] [--threads 2] [--tandemd PATH]
                       [--model PATH] [--markdown]
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUESTIONS = ["What is the main idea?", "Summarize it in one line.", "Who is speaking?",
             "Name one place mentioned.", "What happens next?", "Is the tone formal?",
             "Give it a title.", "What year might it be?", "List two objects in it.",
             "Who would read this?", "Translate the first word.", "What is missing?"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port):
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
    return out


def count_tokens(port, text):
    body = json.dumps({"model": "m", "prompt": text}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return len(json.loads(r.read())["tokens"])


def system_prompt(port, n_tokens):
    """The corpus cut to about n_tokens tokens (by the server's own tokenizer)."""
    with open(os.path.join(ROOT, "bench", "data", "corpus.txt")) as f:
        words = f.read().split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words within n_tokens
        mid = (lo + hi + 1) // 2
        if count_tokens(port, " ".join(words[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def ttft(port, system, question):
    body = json.dumps({"model": "m", "max_tokens": 2, "temperature": 0, "stream": True,
                       "messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": question}]})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    for line in r:
        if first is None and line.startswith(b"data: {") and b'"content"' in line:
            first = time.perf_counter()
    c.close()
    if first is None:
        raise RuntimeError("no token streamed")
    return first - t0


def run(a, caching, system_text):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="tandem-prefix-", suffix=".log", delete=False)
    cmd = [a.tandemd, "--model", a.model, "--served-model-name", "m", "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", "-1", "--threads", str(a.threads),
           "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
           f"--enable-prefix-caching={'true' if caching else 'false'}", "--log-level", "warn"]
    if a.pin:
        cmd = ["taskset", "-c", f"0-{a.threads - 1}"] + cmd
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"tandemd did not start; see {log.name}")
                time.sleep(0.1)
        if system_text is None:
            system_text = system_prompt(port, a.system_tokens)
        cold = ttft(port, system_text, "Read this.")
        warm = [ttft(port, system_text, QUESTIONS[i % len(QUESTIONS)]) for i in range(a.runs)]
        m = metrics(port)
        return system_text, cold, warm, m
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tandemd", default=os.path.join(ROOT, "build", "bin", "tandemd"))
    p.add_argument("--model",
                   default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server to cores 0..threads-1 with taskset")
    p.add_argument("--markdown", action="store_true", help="print a RESULTS.md table row")
    a = p.parse_args()
    system_text = None
    results = {}
    for caching in (True, False):
        system_text, cold, warm, m = run(a, caching, system_text)
        results[caching] = (cold, warm, m)
        print(f"prefix caching {'on ' if caching else 'off'}: cold TTFT {cold * 1e3:.1f} ms, "
              f"median of {len(warm)} later {statistics.median(warm) * 1e3:.1f} ms "
              f"(min {min(warm) * 1e3:.1f}, max {max(warm) * 1e3:.1f}); hit tokens "
              f"{m.get('tandem:prefix_cache_hit_tokens_total', 0):.0f} of "
              f"{m.get('tandem:prefix_cache_queried_tokens_total', 0):.0f}")
    on, off = statistics.median(results[True][1]), statistics.median(results[False][1])
    print(f"TTFT with the system prompt cached: {off / on:.1f}x lower "
          f"({off * 1e3:.1f} ms without caching, {on * 1e3:.1f} ms with)")
    if a.markdown:
        print(f"| {a.system_tokens} | {a.threads} | {results[True][0] * 1e3:.1f} | "
              f"{on * 1e3:.1f} | {off * 1e3:.1f} | **{off / on:.1f}x** |")


if __name__ == "__main__":
    main()
