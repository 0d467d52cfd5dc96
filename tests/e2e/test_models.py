"""A user's other model, served end to end: Gemma 3 270M base (Q4_K_M) under
--chat-template gemma, against llama.cpp's greedy reference (tests/reference/gemma3/greedy.json,
made by tests/reference/gen_gemma3_reference.py).

Greedy tokens are compared only before the first near-tie: a position where llama.cpp's top-2
logit gap is under NEAR_TIE, or where llama.cpp and the float64 model disagree on the argmax.
There, legitimate numeric differences (llama.cpp flips its own choices between flash attention
on and off at gaps up to 0.44) may pick the other token, and everything after follows it.

The model comes from `scripts/fetch-model gemma3-270m` (`make test` runs it); without it the
tests fail and say so."""
import json
import os
import urllib.request

import openai
import pytest

from conftest import SOURCE_DIR, Daemon

GEMMA_PATH = os.path.join(SOURCE_DIR, "models", "gemma-3-270m-q4_k_m.gguf")
# No --served-model-name: the API answers to the file name without .gguf, as a user's would.
GEMMA_NAME = "gemma-3-270m-q4_k_m"
REFERENCE = os.path.join(SOURCE_DIR, "tests", "reference", "gemma3", "greedy.json")
BOS = 2
NEAR_TIE = 0.5
SLIDING_WINDOW = 512
MAX_COMPARED = 32  # greedy tokens compared per prompt at most (each costs a decode step)

COMPARED_PROMPTS = ["1, 2, 3, 4, 5,", "Water boils at a temperature of",
                    "The capital of France is"]


def reference():
    with open(REFERENCE) as f:
        return {p["prompt"]: p for p in json.load(f)["prompts"]}


def stable_prefix(ref):
    """How many of the reference's greedy tokens come before the first near-tie: a position
    where llama.cpp's or the exact float64 model's top-2 gap is under NEAR_TIE, or where the
    two pick different tokens (kernels of another ISA may flip those)."""
    for i, (gap, token, exact, exact_gap) in enumerate(
            zip(ref["top2_gap"], ref["tokens"], ref["exact_argmax"], ref["exact_gap"])):
        if gap < NEAR_TIE or exact_gap < NEAR_TIE or token != exact:
            return i
    return len(ref["tokens"])


@pytest.fixture(scope="module")
def gemma():
    if not os.path.isfile(GEMMA_PATH):
        pytest.fail(f"no Gemma 3 model at {GEMMA_PATH}: fetch it with "
                    "scripts/fetch-model gemma3-270m (make test does)", pytrace=False)
    # Later flags win: this model, named after its file (an empty --served-model-name).
    d = Daemon("--model", GEMMA_PATH, "--served-model-name=", "--chat-template", "gemma")
    yield d
    d.stop_cleanly()


def post(daemon, path, body):
    req = urllib.request.Request(daemon.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def tokenize(daemon, text, add_special_tokens):
    return post(daemon, "/tokenize", {"model": GEMMA_NAME, "prompt": text,
                                      "add_special_tokens": add_special_tokens})["tokens"]


def continuation_text(daemon, prompt_ids, ids):
    """The text that `ids` add after `prompt_ids`, as the server's detokenizer writes it (a
    continuation keeps the leading space that a decode from the start may drop)."""
    def detok(t):
        return post(daemon, "/detokenize", {"model": GEMMA_NAME, "tokens": t})["prompt"]
    before = detok(prompt_ids)
    full = detok(prompt_ids + ids)
    assert full.startswith(before), (before, full)
    return full[len(before):]


def complete(daemon, prompt, max_tokens, **extra):
    return post(daemon, "/v1/completions", {"model": GEMMA_NAME, "prompt": prompt,
                                            "max_tokens": max_tokens, "temperature": 0,
                                            **extra})


def test_startup_log_names_the_architecture(gemma):
    assert "instance: gemma3:" in gemma.logs(), gemma.logs()


def test_models_lists_the_gemma_model(gemma):
    client = openai.OpenAI(base_url=gemma.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [GEMMA_NAME]


@pytest.mark.parametrize("prompt", COMPARED_PROMPTS)
def test_greedy_completion_equals_llama_cpp(gemma, prompt):
    ref = reference()[prompt]
    n = min(stable_prefix(ref), MAX_COMPARED)
    assert n >= 3, f"the reference has a near-tie at {n}: pick another prompt"
    # The server's tokenizer gives llama.cpp's ids, BOS added once.
    assert tokenize(gemma, prompt, add_special_tokens=True) == ref["prompt_tokens"]
    r = complete(gemma, prompt, n)
    assert r["model"] == GEMMA_NAME
    assert r["usage"]["prompt_tokens"] == len(ref["prompt_tokens"])
    assert r["usage"]["completion_tokens"] == n
    want = continuation_text(gemma, ref["prompt_tokens"], ref["tokens"][:n])
    assert r["choices"][0]["text"] == want, (n, ref["text"])


def test_streaming_chat_through_the_sdk(gemma):
    client = openai.OpenAI(base_url=gemma.url + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
    msg = "Write one sentence about the sea."
    chunks = list(client.chat.completions.create(
        model=GEMMA_NAME, messages=[{"role": "user", "content": msg}], max_tokens=16,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text.strip(), chunks
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1]), finishes
    assert "<end_of_turn>" not in text and "<start_of_turn>" not in text, text

    # The prompt is the gemma turn format with exactly one BOS: the template's, none added.
    turn = f"<bos><start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n"
    want = tokenize(gemma, turn, add_special_tokens=False)
    assert want[0] == BOS and want.count(BOS) == 1, want
    rendered = post(gemma, "/tokenize", {"model": GEMMA_NAME,
                                         "messages": [{"role": "user", "content": msg}]})
    assert rendered["tokens"] == want
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices, chunks[-1]
    assert usage.prompt_tokens == len(want)
    assert 1 <= usage.completion_tokens <= 16


@pytest.mark.parametrize("length", [610, 1547])
def test_a_prompt_past_the_sliding_window(gemma, length):
    """Local layers see only the last 512 positions, global ones all: 610 tokens is just past
    the window (the one asked for in issue #13), 1547 three windows long."""
    (ref,) = [p for p in reference().values() if len(p["prompt_tokens"]) == length]
    assert ref["kind"] == "long" and length > SLIDING_WINDOW
    stable = min(stable_prefix(ref), MAX_COMPARED)
    if length == 1547:
        assert stable >= 8, "the long reference's first tokens should not be near-ties"
    # 610 tokens: the exact model's gap at the first token is 0.40, a near-tie, so only the
    # request itself is checked there (it runs past the window all the same).
    n = max(stable, 4)
    assert tokenize(gemma, ref["prompt"], add_special_tokens=True) == ref["prompt_tokens"]
    r = complete(gemma, ref["prompt"], n, logprobs=2)
    assert r["usage"]["prompt_tokens"] == length
    assert r["usage"]["completion_tokens"] == n
    if stable == 0:
        return
    # The first token alone, then the stable ones; top_logprobs shows the server's own gap on
    # failure.
    lp = r["choices"][0]["logprobs"]
    first = continuation_text(gemma, ref["prompt_tokens"], ref["tokens"][:1])
    assert lp["tokens"][0] == first, (lp["top_logprobs"][0], ref["top2_gap"][0])
    want = continuation_text(gemma, ref["prompt_tokens"], ref["tokens"][:stable])
    assert r["choices"][0]["text"].startswith(want), (stable, lp["top_logprobs"])


def test_local_layers_keep_only_their_window(gemma):
    assert "15 sliding-window layers keep their last 512 positions" in gemma.logs(), gemma.logs()


def test_disaggregated_over_tcp_equals_colocated_past_the_window(gemma):
    """Both instances keep only the window of the 15 local layers: the prefill instance sends
    each local layer's window of the prompt over loopback TCP (the layer frame's first
    position), the decode instance writes it into its window. Three windows of prompt, then
    greedy decoding: the colocated daemon's text."""
    (ref,) = [p for p in reference().values() if len(p["prompt_tokens"]) == 1547]
    d = Daemon("--model", GEMMA_PATH, "--served-model-name=", "--disaggregation", "on",
               "--kv-transport", "tcp")
    try:
        logs = d.logs()
        assert logs.count("sliding-window layers keep their last 512 positions") == 2, logs
        want = complete(gemma, ref["prompt"], 12)
        got = complete(d, ref["prompt"], 12)
        assert got["usage"]["completion_tokens"] == 12
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
    finally:
        code = d.terminate()
    assert code == 0, f"tandemd exited with {code}:\n{d.logs()}"
