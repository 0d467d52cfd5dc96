#!/usr/bin/env python3
"""bench/cluster/handover.py: the KV handover as a client sees it, layer-wise push against
push-after-prefill, and the frame protocol (tcp) against block to block (direct).

For each --kv-transport (tcp, direct) and --kv-push mode (layer, after-prefill), starts a
router and one prefill and one decode worker (one core each, KV over loopback), then for each
prompt length sends --runs streamed requests one at a time (max_tokens 2, ignore_eos) and
measures TTFT and the gap from the first token (sampled by the prefill worker) to the second
(the decode worker's first, after the KV arrived). Prints the medians, and the KV bytes per
request (from the prefill worker's metrics). Each request's prompt starts with a word of its own,
so the prefill worker's prefix cache holds none of it and the whole prompt is computed;
--repeat-prompts sends the same prompt every time instead (the prefix cache then serves all
but its last block, and the handover is most of what is left).

  bench/cluster/handover.py [--runs 7] [--lengths 128,512,1024,2048] [--transports tcp,direct]
                            [--pushes layer,after-prefill] [--repeat-prompts] [--tandemd PATH]
                            [--model PATH]
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(url):
    out = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
    return out


def wait_ready(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(url + " not ready")


def stop_all(procs):
    """SIGTERM to every process, then waits for each."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)


def one(port, prompt):
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 2, "temperature": 0,
                       "stream": True, "ignore_eos": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    times = []
    for line in r:
        if line.startswith(b"data: {") and b'"text":""' not in line:
            times.append(time.perf_counter())
    c.close()
    if len(times) < 2:
        raise RuntimeError("fewer than 2 tokens streamed")
    return times[0] - t0, times[1] - times[0]


def run_mode(a, transport, mode):
    common = [a.tandemd, "--model", a.model, "--served-model-name", "m", "--host", "127.0.0.1",
              "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
              "--grpc-port", "-1", "--threads", "1", "--log-level", "warn"]
    cport = free_port()
    ports = {"router": free_port(), "prefill": free_port(), "decode": free_port()}
    logs = tempfile.mkdtemp(prefix="tandem-handover-")
    procs = []
    try:
        procs.append(subprocess.Popen([*common, "--role", "router", "--port", str(ports["router"]),
                                       "--cluster-port", str(cport)],
                                      stdout=open(f"{logs}/router.log", "w"),
                                      stderr=subprocess.STDOUT))
        for role in ("prefill", "decode"):
            extra = ["--kv-transport", transport]
            if role == "prefill":
                extra += ["--kv-push", mode]
            procs.append(subprocess.Popen([*common, "--role", role, "--port", str(ports[role]),
                                           "--router", f"127.0.0.1:{cport}", "--cluster-port",
                                           "0", *extra],
                                          stdout=open(f"{logs}/{role}.log", "w"),
                                          stderr=subprocess.STDOUT))
        wait_ready(f"http://127.0.0.1:{ports['router']}")
        words = open(os.path.join(ROOT, "bench/data/corpus.txt")).read().split()
        words = words * (max(a.lengths) // len(words) + 1)
        rows = []
        for n in a.lengths:
            prompt = " ".join(words[:n])  # roughly n tokens
            one(ports["router"], prompt)  # warm-up
            before = metrics(f"http://127.0.0.1:{ports['prefill']}")
            ttft, gap = [], []
            for run in range(a.runs):
                unique = "" if a.repeat_prompts else f"Request {n}-{run}-{transport}-{mode}: "
                t, g = one(ports["router"], unique + prompt)
                ttft.append(t * 1000)
                gap.append(g * 1000)
            after = metrics(f"http://127.0.0.1:{ports['prefill']}")
            kv_bytes = (after["tandem:kv_push_bytes_total"] -
                        before["tandem:kv_push_bytes_total"]) / a.runs
            rows.append((n, kv_bytes, statistics.median(ttft), statistics.median(gap)))
        return rows
    finally:
        stop_all(procs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--lengths", default="128,512,1024,2048")
    ap.add_argument("--transports", default="tcp,direct")
    ap.add_argument("--pushes", default="layer,after-prefill")
    ap.add_argument("--repeat-prompts", action="store_true")
    ap.add_argument("--tandemd", default=os.path.join(ROOT, "build/bin/tandemd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()
    a.lengths = [int(x) for x in a.lengths.split(",")]
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
    print(f"CPU: {cpu}; {os.cpu_count()} cores; medians of {a.runs} runs; "
          f"{'the same prompt every time' if a.repeat_prompts else 'a prompt of its own each'}")
    configs = [(t, p) for t in a.transports.split(",") for p in a.pushes.split(",")]
    results = [run_mode(a, t, p) for t, p in configs]
    names = " / ".join(f"{t} {p}" for t, p in configs)
    print(f"| prompt words | KV MB | TTFT {names} (ms) | first->second token {names} (ms) |")
    print("| ---: | ---: | --- | --- |")
    for i, (n, kvb, _, _) in enumerate(results[0]):
        ttft = " / ".join(f"{r[i][2]:.0f}" for r in results)
        gap = " / ".join(f"{r[i][3]:.1f}" for r in results)
        print(f"| {n} | {kvb / 1e6:.1f} | {ttft} | {gap} |")


if __name__ == "__main__":
    main()
