#!/usr/bin/env python3
"""bench/cluster/prefix_routing.py: multi-turn conversations on a cluster with two prefill
workers, prefix-aware placement on against off (the router's --prefix-aware-routing).

Starts a router, --prefill-workers prefill workers and one decode worker (one core each; the
workers start one after another, so each profiles its latency model alone), then runs
--conversations conversations of --turns turns, --clients at a time. Each conversation opens
with a system prompt of its own (--system-words words cut from bench/data/corpus.txt at an
offset of its own), and each turn sends the whole history so far (system prompt, earlier
questions and answers) plus a new question, streamed, max_tokens --answer-tokens. A turn after
the first finds its conversation's history in the prefix cache of the prefill worker that ran
the previous turn, if it goes there.

Prints, per mode and repetition, the median and p90 TTFT of the turns after the first, the
share of their prompt tokens the caches gave (usage.prompt_tokens_details.cached_tokens), and
the router's predicted against reported hit tokens; then the medians over --reps repetitions
and the on/off ratios. Modes alternate (on, off, on, off, ...) on fresh clusters.

  bench/cluster/prefix_routing.py [--reps 3] [--conversations 8] [--turns 6] [--clients 4]
      [--system-words 600] [--answer-tokens 16] [--prefill-workers 2]
      [--prefill-kv-memory 1GiB] [--tandemd PATH] [--model PATH]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import time

from handover import ROOT, free_port, metrics, stop_all, wait_ready

QUESTIONS = ["What is the main idea so far?", "Who is speaking here, and to whom?",
             "Name one place that was mentioned.", "What might happen next?",
             "Is the tone formal or not?", "Give the passage a short title.",
             "List two objects that appear in it.", "What is left unexplained?"]


def chat(port, messages, max_tokens):
    """One streamed chat request: (TTFT seconds, answer text, usage)."""
    body = json.dumps({"model": "m", "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]}")
    ttft, text, usage = None, "", None
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            piece = ch.get("delta", {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece
    c.close()
    if ttft is None or usage is None:
        raise RuntimeError("no token or no usage streamed")
    return ttft, text, usage


def conversation(port, a, i, words):
    start = (i * 997) % max(1, len(words) - a.system_words)
    system = f"Conversation {i}. Read the passage and answer briefly. " + \
        " ".join(words[start:start + a.system_words])
    messages = [{"role": "system", "content": system}]
    later = []  # (ttft, prompt tokens, cached tokens) of turns after the first
    for t in range(a.turns):
        messages.append({"role": "user", "content": QUESTIONS[(i + t) % len(QUESTIONS)]})
        ttft, answer, usage = chat(port, messages, a.answer_tokens)
        messages.append({"role": "assistant", "content": answer})
        if t > 0:
            later.append((ttft, usage["prompt_tokens"],
                          usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)))
    return later


def run_mode(a, aware, words):
    common = [a.tandemd, "--model", a.model, "--served-model-name", "m", "--host", "127.0.0.1",
              "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--grpc-port", "-1", "--threads", "1",
              "--log-level", "warn"]
    cport = free_port()
    rport = free_port()
    logs = tempfile.mkdtemp(prefix="tandem-prefix-routing-")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [*common, "--role", "router", "--port", str(rport), "--cluster-port", str(cport),
             f"--prefix-aware-routing={'true' if aware else 'false'}"],
            stdout=open(f"{logs}/router.log", "w"), stderr=subprocess.STDOUT))
        roles = ["prefill"] * a.prefill_workers + ["decode"]
        for n, role in enumerate(roles):
            port = free_port()
            extra = ["--kv-cache-memory", a.prefill_kv_memory] if role == "prefill" else []
            procs.append(subprocess.Popen(
                [*common, "--role", role, "--port", str(port), "--router", f"127.0.0.1:{cport}",
                 "--cluster-port", "0", *extra],
                stdout=open(f"{logs}/{role}{n}.log", "w"), stderr=subprocess.STDOUT))
            wait_ready(f"http://127.0.0.1:{port}", timeout=300)  # profiled alone
        wait_ready(f"http://127.0.0.1:{rport}")
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(a.clients) as pool:
            futures = [pool.submit(conversation, rport, a, i, words)
                       for i in range(a.conversations)]
            later = [x for f in futures for x in f.result()]
        wall = time.perf_counter() - t0
        m = metrics(f"http://127.0.0.1:{rport}")
        ttfts = sorted(x[0] * 1000 for x in later)
        return {
            "median": statistics.median(ttfts),
            "p90": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
            "cached": sum(x[2] for x in later) / max(1, sum(x[1] for x in later)),
            "predicted": m["tandem:cluster_prefix_predicted_tokens_total"],
            "reported": m["tandem:cluster_prefix_hit_tokens_total"],
            "wall": wall,
        }
    finally:
        stop_all(procs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--system-words", type=int, default=600)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--prefill-workers", type=int, default=2)
    ap.add_argument("--prefill-kv-memory", default="1GiB")
    ap.add_argument("--tandemd", default=os.path.join(ROOT, "build/bin/tandemd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()
    words = open(os.path.join(ROOT, "bench/data/corpus.txt")).read().split()
    words = words * ((a.system_words * 2) // len(words) + 2)
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
    print(f"CPU: {cpu}; {os.cpu_count()} cores; {a.conversations} conversations x {a.turns} "
          f"turns, {a.clients} at a time, system prompts of {a.system_words} words, "
          f"{a.prefill_workers} prefill workers ({a.prefill_kv_memory} KV each)")
    print("| rep | routing | TTFT median (ms) | TTFT p90 (ms) | cached share | router predicted / "
          "reported hit tokens | wall (s) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    res = {True: [], False: []}
    for rep in range(a.reps):
        for aware in (True, False):
            r = run_mode(a, aware, words)
            res[aware].append(r)
            print(f"| {rep + 1} | {'prefix-aware' if aware else 'off'} | {r['median']:.0f} | "
                  f"{r['p90']:.0f} | {r['cached']:.0%} | {r['predicted']:.0f} / "
                  f"{r['reported']:.0f} | {r['wall']:.1f} |", flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("median", "p90", "cached", "wall")}
           for k, v in res.items()}
    print()
    print("| routing | TTFT median (ms) | TTFT p90 (ms) | cached share | wall (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for aware in (True, False):
        m = med[aware]
        print(f"| {'prefix-aware' if aware else 'off'} | {m['median']:.0f} | {m['p90']:.0f} | "
              f"{m['cached']:.0%} | {m['wall']:.1f} |")
    print(f"\noff / prefix-aware (medians of {a.reps}): TTFT median "
          f"{med[False]['median'] / med[True]['median']:.2f}x, p90 "
          f"{med[False]['p90'] / med[True]['p90']:.2f}x, wall "
          f"{med[False]['wall'] / med[True]['wall']:.2f}x")


if __name__ == "__main__":
    main()
