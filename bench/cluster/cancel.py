#!/usr/bin/env python3
"""bench/cluster/cancel.py: how fast a client that goes away frees remote work.

Starts a router and one prefill and one decode worker (one core each), then, --runs times per
phase, opens a streaming completion over HTTP and closes the connection:
  prefilling  a ~1,500-token prompt, closed 150 ms after sending (before its first token)
  decoding    a short prompt, closed after its 5th streamed token
and measures the time from the close until the worker holding the sequence reports nothing
running or waiting (its /metrics, polled every 2 ms). Prints the median and max per phase.
A worker drops a cancelled sequence between engine steps, so mid-prefill the wait includes
the rest of the step in flight (one prefill chunk, --max-num-batched-tokens).

  bench/cluster/cancel.py [--runs 10] [--tandemd build/bin/tandemd] [--model PATH]
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


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait_ready(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if "ready" in get(url + "/ready"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(url + " not ready")


def busy(url):
    m = {}
    for line in get(url + "/metrics").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    return m.get("tandem:num_requests_running", 0) + m.get("tandem:num_requests_waiting", 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512,
                    help="the workers' step budget: a prefill chunk runs to its end")
    ap.add_argument("--tandemd", default=os.path.join(ROOT, "build/bin/tandemd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()
    common = [a.tandemd, "--model", a.model, "--served-model-name", "m", "--host", "127.0.0.1",
              "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
              "--grpc-port", "-1", "--threads", "1", "--log-level", "warn",
              "--max-num-batched-tokens", str(a.max_num_batched_tokens)]
    cport = free_port()
    ports = {"router": free_port(), "prefill": free_port(), "decode": free_port()}
    logs = tempfile.mkdtemp(prefix="tandem-cancel-")
    procs = []
    try:
        procs.append(subprocess.Popen([*common, "--role", "router", "--port",
                                       str(ports["router"]), "--cluster-port", str(cport)],
                                      stdout=open(f"{logs}/router.log", "w"),
                                      stderr=subprocess.STDOUT))
        for role in ("prefill", "decode"):
            procs.append(subprocess.Popen([*common, "--role", role, "--port", str(ports[role]),
                                           "--router", f"127.0.0.1:{cport}",
                                           "--cluster-port", "0"],
                                          stdout=open(f"{logs}/{role}.log", "w"),
                                          stderr=subprocess.STDOUT))
        url = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
        wait_ready(url["router"])
        results = {"prefilling": [], "decoding": []}
        for phase, worker in (("prefilling", "prefill"), ("decoding", "decode")):
            for _ in range(a.runs):
                prompt = "word " * 1500 if phase == "prefilling" else "Count: 1, 2, 3,"
                body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 2000,
                                   "temperature": 0, "stream": True, "ignore_eos": True})
                c = http.client.HTTPConnection("127.0.0.1", ports["router"], timeout=60)
                c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                if phase == "prefilling":
                    t_sent = time.perf_counter()
                    while busy(url["prefill"]) == 0:
                        if time.perf_counter() - t_sent > 5:
                            raise RuntimeError("the prompt never reached the prefill worker")
                        time.sleep(0.002)
                    time.sleep(0.1)
                    if busy(url["prefill"]) == 0:
                        raise RuntimeError("the prompt was not prefilling at the close")
                else:
                    r = c.getresponse()
                    tokens = 0
                    while tokens < 5:
                        line = r.fp.readline()
                        if line.startswith(b"data: {"):
                            tokens += 1
                c.sock.shutdown(socket.SHUT_RDWR)
                t0 = time.perf_counter()
                c.close()
                while busy(url[worker]) > 0:
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError("the sequence was never freed")
                    time.sleep(0.002)
                results[phase].append((time.perf_counter() - t0) * 1000)
                # Let everything settle before the next run.
                while busy(url["prefill"]) + busy(url["decode"]) > 0:
                    time.sleep(0.01)
        cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
        print(f"CPU: {cpu}; {os.cpu_count()} cores; {a.runs} runs per phase; "
              f"--max-num-batched-tokens {a.max_num_batched_tokens}")
        for phase, ms in results.items():
            print(f"client gone while {phase:10s}: freed after median {statistics.median(ms):6.1f} ms,"
                  f" max {max(ms):6.1f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
