"""tandemd --disaggregation on: a prefill and a decode instance on one core each, the KV cache
handed over in process. Greedy outputs through the public APIs equal the colocated daemon's
(the session `daemon`), concurrent requests included, streaming works, a client that goes
away costs nothing, and /metrics sees both instances' KV come back."""
import concurrent.futures
import json
import time
import urllib.request

import pytest

from conftest import MODEL_NAME, Daemon

PROMPTS = [
    "The capital of France is",
    "List three colors:",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Water boils at",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def disagg():
    d = Daemon("--disaggregation", "on", "--max-num-seqs", "16")
    yield d
    code = d.terminate()
    assert code == 0, f"tandemd exited with {code}:\n{d.logs()}"
    logs = d.logs()
    assert "ERROR: AddressSanitizer" not in logs and "runtime error:" not in logs, logs


def complete(url, prompt, max_tokens=24, **extra):
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            **extra}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def test_log_names_both_instances(disagg):
    logs = disagg.logs()
    assert "prefill instance" in logs and "decode instance" in logs, logs


def test_greedy_outputs_equal_the_colocated_daemon(daemon, disagg):
    for prompt in PROMPTS:
        want = complete(daemon.url, prompt)["choices"][0]["text"]
        got = complete(disagg.url, prompt)
        assert got["choices"][0]["text"] == want, prompt
        assert got["usage"]["completion_tokens"] == 24


def test_concurrent_requests_equal_one_at_a_time(disagg):
    solo = [complete(disagg.url, p)["choices"][0]["text"] for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        futures = [pool.submit(complete, disagg.url, p) for p in PROMPTS * 2]
        texts = [f.result()["choices"][0]["text"] for f in futures]
    assert texts == solo * 2


def test_seeded_sampling_equals_the_colocated_daemon(daemon, disagg):
    extra = {"temperature": 0.8, "seed": 1234, "top_p": 0.95}
    for prompt in PROMPTS[:3]:
        want = complete(daemon.url, prompt, **extra)["choices"][0]["text"]
        assert complete(disagg.url, prompt, **extra)["choices"][0]["text"] == want, prompt


def test_streaming_and_chat(disagg):
    import openai
    client = openai.OpenAI(base_url=disagg.url + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
        temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    full = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
        temperature=0)
    assert full.choices[0].message.content == text


def test_client_gone_mid_decode_frees_both_caches(disagg):
    import openai
    client = openai.OpenAI(base_url=disagg.url + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
    stream = client.completions.create(model=MODEL_NAME, prompt="Count: 1, 2, 3,",
                                       max_tokens=2000, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    # The next request is served, and once everything is idle the KV is all free again.
    assert complete(disagg.url, "Hello", max_tokens=4)["choices"][0]["text"] is not None
    deadline = time.time() + 30
    while time.time() < deadline:
        m = disagg.metrics()
        if m.get("tandem:num_requests_running") == 0 and m.get("tandem:kv_cache_usage_ratio") == 0:
            break
        time.sleep(0.1)
    m = disagg.metrics()
    assert m.get("tandem:num_requests_running") == 0, m
    assert m.get("tandem:kv_cache_usage_ratio") == 0, m
    assert m.get("tandem:kv_handover_sequences_total", 0) >= 2, m
    assert m.get("tandem:kv_handover_bytes_total", 0) > 0, m
    assert m.get("tandem:decode_arrivals_waiting") == 0, m
