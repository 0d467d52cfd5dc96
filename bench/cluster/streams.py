#!/usr/bin/env python3
"""bench/cluster/streams.py: N concurrent gRPC Generate streams through a router.

Starts a cluster on this machine (tandemd --role=router, one prefill and one decode worker on
one core each), opens --streams concurrent tandem.v1 Generate streams to the router at once
(one HTTP/2 connection, grpc.aio), and reports how many completed, their latency (p50/p99)
and each process's thread count idle and at its peak (sampled from /proc every 20 ms): the
router relays every stream on gRPC's callback API, so threads should not grow with streams.

  bench/cluster/streams.py [--streams 1000] [--max-tokens 8] [--tandemd build/bin/tandemd]
                           [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]

Run it with the repository's Python environment (scripts/python-env prints its python).
"""
import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def wait_http(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def stubs():
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="tandem-stubs-")
    proto = os.path.join(ROOT, "proto")
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(proto, "tandem"))
             for f in fs if f.endswith(".proto")]
    assert protoc.main(["protoc", f"-I{proto}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *files]) == 0
    sys.path.insert(0, out)
    import importlib
    return (importlib.import_module("tandem.v1.generation_pb2"),
            importlib.import_module("tandem.v1.generation_pb2_grpc"))


async def run_streams(target, n, max_tokens, pb2, pb2_grpc, model):
    import grpc
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb2_grpc.GenerationStub(ch)

        async def one(i):
            req = pb2.GenerateRequest(model=model, max_tokens=max_tokens, temperature=0,
                                      ignore_eos=True,
                                      text=f"Stream {i}: the quick brown fox jumps over the dog")
            t0 = time.perf_counter()
            tokens = 0
            try:
                async for r in stub.Generate(req, timeout=600):
                    for c in r.choices:
                        tokens += len(c.token_ids)
                return time.perf_counter() - t0, tokens, None
            except grpc.aio.AioRpcError as e:
                return time.perf_counter() - t0, tokens, e.code().name

        return await asyncio.gather(*(one(i) for i in range(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--tandemd", default=os.path.join(ROOT, "build/bin/tandemd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()
    pb2, pb2_grpc = stubs()
    common = [a.tandemd, "--model", a.model, "--served-model-name", "m", "--host", "127.0.0.1",
              "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
              "--slo-admission", "off", "--max-num-seqs", "256", "--max-queue", "8192",
              "--log-level", "warn"]
    cport, hport, gport = free_port(), free_port(), free_port()
    procs = {}
    logs = tempfile.mkdtemp(prefix="tandem-streams-")
    def start(name, *args):
        log = open(os.path.join(logs, f"{name}.log"), "w")
        procs[name] = subprocess.Popen([*common, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        start("router", "--role", "router", "--port", str(hport), "--grpc-port", str(gport),
              "--cluster-port", str(cport), "--threads", "1")
        for role, cpu in (("prefill", "0"), ("decode", "1")):
            start(role, "--role", role, "--router", f"127.0.0.1:{cport}", "--cluster-port", "0",
                  "--port", "0", "--grpc-port", "-1", "--threads", "1")
        wait_http(f"http://127.0.0.1:{hport}/ready")
        idle = {k: threads_of(p.pid) for k, p in procs.items()}
        peak = dict(idle)
        stop = threading.Event()
        def sample():
            while not stop.is_set():
                for k, p in procs.items():
                    peak[k] = max(peak[k], threads_of(p.pid))
                time.sleep(0.02)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        results = asyncio.run(run_streams(f"127.0.0.1:{gport}", a.streams, a.max_tokens, pb2,
                                          pb2_grpc, "m"))
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        ok = [r for r in results if r[2] is None and r[1] == a.max_tokens]
        errors = {}
        for r in results:
            if r[2] is not None:
                errors[r[2]] = errors.get(r[2], 0) + 1
        lat = sorted(r[0] for r in ok)
        cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
        print(f"CPU: {cpu}; {os.cpu_count()} cores")
        print(f"{a.streams} concurrent streams x {a.max_tokens} tokens through the router: "
              f"{len(ok)} complete, errors {errors or 'none'}, wall {wall:.1f} s")
        if lat:
            print(f"stream latency p50 {statistics.median(lat):.2f} s, "
                  f"p99 {lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.2f} s")
        for k in procs:
            print(f"{k:8s} threads idle {idle[k]:4d} -> peak {peak[k]:4d}")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
