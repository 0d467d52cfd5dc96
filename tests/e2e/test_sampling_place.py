"""tandemd --sampling device on the CPU: the engine draws tokens with the backend's sampling op
(the path a GPU takes by default) instead of the host sampler. Both places draw by one
definition (Philox at (seed, step), survivors walked in id order), so greedy, seeded and
logprob requests give the colocated daemon's (host sampling) text and logprobs, rows that
need the host (penalties, top_logprobs) included, batched requests too."""
import concurrent.futures
import json
import urllib.request

import pytest

from conftest import MODEL_NAME, Daemon

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "Water boils at",
]


@pytest.fixture(scope="module")
def device_sampling():
    d = Daemon("--sampling", "device", "--max-num-seqs", "16")
    yield d
    d.stop_cleanly()


def complete(url, prompt, **extra):
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 20, **extra}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["choices"][0]


def test_log_says_where_rows_are_sampled(daemon, device_sampling):
    assert "sampling on the device" in device_sampling.logs(), device_sampling.logs()
    assert "sampling on the host" in daemon.logs(), daemon.logs()


SETTINGS = [
    {"temperature": 0},
    {"temperature": 0.8, "top_p": 0.95, "seed": 1234},
    {"temperature": 1.2, "top_k": 40, "seed": 7, "logprobs": 1},
    {"temperature": 0.9, "frequency_penalty": 0.7, "seed": 99},  # sampled on the host
    {"temperature": 1.0, "seed": 5, "logprobs": 3},  # top_logprobs: sampled on the host
]


@pytest.mark.parametrize("extra", SETTINGS, ids=lambda e: ",".join(e))
def test_device_sampling_gives_the_host_samplers_text(daemon, device_sampling, extra):
    for prompt in PROMPTS:
        want = complete(daemon.url, prompt, **extra)
        got = complete(device_sampling.url, prompt, **extra)
        assert got["text"] == want["text"], (prompt, extra)
        if "logprobs" in extra:
            w = want["logprobs"]["token_logprobs"]
            g = got["logprobs"]["token_logprobs"]
            assert len(g) == len(w)
            assert all(abs(a - b) < 1e-3 for a, b in zip(g, w)), (prompt, g, w)


def test_batched_seeded_requests_equal_one_at_a_time(device_sampling):
    extra = {"temperature": 0.8, "top_p": 0.9, "seed": 31}
    solo = [complete(device_sampling.url, p, **extra)["text"] for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        futures = [pool.submit(complete, device_sampling.url, p, **extra) for p in PROMPTS * 2]
        texts = [f.result()["text"] for f in futures]
    assert texts == solo * 2
