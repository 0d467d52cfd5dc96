"""Daemon behaviour that needs its own process: client disconnects free KV, queue overflow
answers 429, the API key is enforced, and SIGTERM drains without cutting a request off."""
import concurrent.futures
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import MODEL, MODEL_NAME, TANDEMD, Daemon


def post_json(url, obj, headers=None):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def open_stream(daemon, max_tokens):
    """Starts a streaming completion on a raw socket and returns it after the first event."""
    body = json.dumps({"model": MODEL_NAME, "prompt": "Tell me a long story.",
                       "max_tokens": max_tokens, "stream": True, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", daemon.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    return s


def test_disconnect_mid_stream_frees_blocks():
    d = Daemon()
    try:
        socks = [open_stream(d, 4000) for _ in range(3)]
        # The gauges are published after each engine step, just after the tokens go out.
        assert wait_for(lambda: d.metrics()["tandem:num_requests_running"] == 3), d.metrics()
        assert d.metrics()["tandem:kv_cache_usage_ratio"] > 0
        for s in socks:
            s.close()
        assert wait_for(lambda: d.metrics()["tandem:num_requests_running"] == 0), d.metrics()
        m = d.metrics()
        assert m["tandem:kv_cache_usage_ratio"] == 0
        assert m['tandem:sequences_aborted_total{reason="cancelled"}'] == 3
        # Cancelled long before max_tokens: far fewer than 3 * 4000 tokens were generated.
        assert m["tandem:generation_tokens_total"] < 3000
    finally:
        assert d.terminate() == 0


def test_non_streaming_disconnect_cancels():
    d = Daemon()
    try:
        body = json.dumps({"model": MODEL_NAME, "prompt": "Go on and on.", "max_tokens": 4000,
                           "ignore_eos": True}).encode()
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_for(lambda: d.metrics()["tandem:num_requests_running"] == 1)
        s.close()
        assert wait_for(lambda: d.metrics()["tandem:num_requests_running"] == 0)
        assert d.metrics()["tandem:kv_cache_usage_ratio"] == 0
    finally:
        assert d.terminate() == 0


def test_queue_overflow_returns_429():
    d = Daemon("--max-num-seqs", "1", "--max-num-batched-tokens", "64", "--max-queue", "1")
    try:
        busy = [open_stream(d, 2000)]  # running
        code, headers, body = None, None, None
        # One more fits the queue; the next must be refused.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            queued = pool.submit(post_json, d.url + "/v1/completions",
                                 {"model": MODEL_NAME, "prompt": "q", "max_tokens": 2})
            assert wait_for(lambda: d.metrics()["tandem:num_requests_waiting"] == 1)
            code, headers, body = post_json(d.url + "/v1/completions",
                                            {"model": MODEL_NAME, "prompt": "x",
                                             "max_tokens": 2})
            assert code == 429, body
            assert headers.get("Retry-After") == "1"
            err = json.loads(body)["error"]
            assert "queue" in err["message"]
            for s in busy:
                s.close()
            assert queued.result(timeout=120)[0] == 200
    finally:
        assert d.terminate() == 0


def test_api_key():
    d = Daemon("--api-key", "sekret")
    try:
        bad = openai.OpenAI(base_url=d.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=d.url + "/v1", api_key="sekret", max_retries=0)
        assert good.models.list().data[0].id == MODEL_NAME
        # Probes stay open for orchestrators.
        with urllib.request.urlopen(d.url + "/health") as r:
            assert r.status == 200
    finally:
        assert d.terminate() == 0


def test_sigterm_drains_in_flight_requests():
    d = Daemon("--shutdown-timeout", "120")
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0, timeout=300)
    results = []

    def run(i):
        text, finish = "", None
        for ch in client.completions.create(model=MODEL_NAME, prompt=f"Story {i}:",
                                            max_tokens=200, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True}):
            if ch.choices:
                text += ch.choices[0].text
                finish = ch.choices[0].finish_reason or finish
            if ch.usage:
                results.append((finish, ch.usage.completion_tokens))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert wait_for(lambda: d.metrics()["tandem:num_requests_running"] == 4)
    d.proc.send_signal(15)
    # Draining: not ready, new work refused with 503, in-flight work continues.
    assert wait_for(lambda: _status(d.url + "/ready") == 503, timeout=10)
    code, _, body = post_json(d.url + "/v1/completions",
                              {"model": MODEL_NAME, "prompt": "late", "max_tokens": 2})
    assert code == 503, body
    for t in threads:
        t.join(timeout=300)
    assert d.proc.wait(timeout=60) == 0
    assert sorted(results) == [("length", 200)] * 4


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_a_cuda_device_without_a_gpu_is_one_line():
    """--device cuda:0 on a machine without a GPU (CI) or in a build without the CUDA toolkit:
    the daemon exits at once with one line naming the device and why, before loading anything."""
    r = subprocess.run([TANDEMD, "--model", MODEL, "--port", "0", "--device", "cuda:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cuda:0" in lines[0], r.stderr
    assert "GPU" in lines[0] or "no CUDA backend" in lines[0], r.stderr
