"""tandemd through the official openai SDK: chat and completions, streaming and not, n,
stop strings, seeds, logprobs, echo, usage, and 64 concurrent streams."""
import concurrent.futures

import openai
import pytest

from conftest import MODEL_NAME

CHAT = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=24,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.model == MODEL_NAME
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert 1 <= r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert "<|im_end|>" not in c.message.content


def test_chat_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=32,
                                          temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == full.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_completion_streaming_equals_non_streaming(client):
    full = client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                     max_tokens=20, temperature=0)
    assert full.object == "text_completion"
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 20
    chunks = list(client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                            max_tokens=20, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_default_max_tokens_for_completions_is_16(client):
    r = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, n=3,
                                       temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    # Sampling at temperature 1 may end a reply at once (<|im_end|>); not all three will.
    assert sum(1 for c in r.choices if c.message.content) >= 2
    assert 2 <= r.usage.completion_tokens <= 36
    # Streaming with n: every index appears and finishes once.
    finished = {}
    for ch in client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12,
                                             n=3, temperature=1.0, seed=7, stream=True):
        for c in ch.choices:
            if c.finish_reason:
                assert c.index not in finished
                finished[c.index] = c.finish_reason
    assert sorted(finished) == [0, 1, 2]


def test_n_choices_with_seed_are_reproducible_and_distinct(client):
    def run():
        r = client.completions.create(model=MODEL_NAME, prompt="My favourite colour is",
                                      max_tokens=16, n=3, temperature=1.0, seed=1234,
                                      extra_body={"ignore_eos": True})
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    a, b = run(), run()
    assert a == b
    assert len(set(a)) > 1  # choices draw from different streams


def test_seed_reproducibility(client):
    def run(seed):
        r = client.completions.create(model=MODEL_NAME, prompt="List three animals:",
                                      max_tokens=24, temperature=1.0, top_p=0.95, seed=seed)
        return r.choices[0].text
    assert run(42) == run(42)
    assert len({run(42), run(43), run(44)}) > 1


def test_stop_string_is_honoured_and_never_returned(client):
    base = client.completions.create(model=MODEL_NAME, prompt="Count: one, two, three,",
                                     max_tokens=30, temperature=0).choices[0].text
    assert len(base) > 12, base
    stop = base[6:10]
    cut = base[:base.index(stop)]
    r = client.completions.create(model=MODEL_NAME, prompt="Count: one, two, three,",
                                  max_tokens=30, temperature=0, stop=[stop, "zzzz-never"])
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL_NAME, prompt="Count: one, two, three,", max_tokens=30, temperature=0,
            stop=stop, stream=True) if c.choices)
    assert streamed == cut


def test_completion_logprobs_shape(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The sky is", max_tokens=5,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert lpv <= 0
        assert len(top) == 3
        # Greedy: the chosen token is the most likely one.
        assert max(top.values()) == pytest.approx(lpv, abs=1e-5)


def test_chat_logprobs_shape(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0
        assert isinstance(e.bytes, list)
        assert len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.top_logprobs[0].token == e.token


def test_no_logprobs_unless_asked(client):
    r = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
    assert r.choices[0].logprobs is None


def test_echo_prepends_prompt(client):
    r = client.completions.create(model=MODEL_NAME, prompt="Roses are red,", max_tokens=8,
                                  temperature=0, echo=True)
    assert r.choices[0].text.startswith("Roses are red,")
    assert len(r.choices[0].text) > len("Roses are red,")


def test_token_id_and_multi_prompts(client):
    ids = [504, 3575, 282, 4649, 314]  # any ids in the vocabulary
    r = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    r = client.completions.create(model=MODEL_NAME, prompt=["Hello", "Goodbye"], max_tokens=4,
                                  temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    alone = client.completions.create(model=MODEL_NAME, prompt="Goodbye", max_tokens=4,
                                      temperature=0)
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[2] == by_index[3] == alone.choices[0].text


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, temperature=0,
                                       max_completion_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def test_content_parts_and_system_message(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                               {"type": "text", "text": " there"}]}])
    assert r.choices[0].message.content is not None


def test_errors_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=CHAT, temperature=5)
    assert "temperature" in str(e.value)
    assert e.value.body["param"] == "temperature" if isinstance(e.value.body, dict) else True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=CHAT,
                                       tools=[{"type": "function",
                                               "function": {"name": "f", "parameters": {}}}])
    assert "tools" in str(e.value)
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hello " * 9000, max_tokens=1)
    assert e.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=9000)
    assert e.value.status_code == 413


def test_concurrent_streams_match_solo(client):
    prompts = [f"Tell me fact number {i} about {topic}."
               for i, topic in enumerate(["cats", "rivers", "stars", "bread", "music", "snow",
                                          "trains", "bees"] * 8)]
    assert len(prompts) == 64

    def stream(p):
        out = []
        for ch in client.chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": p}], max_tokens=16,
                temperature=0, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                out.append(ch.choices[0].delta.content)
            if ch.choices and ch.choices[0].finish_reason:
                out.append("|" + ch.choices[0].finish_reason)
        return "".join(out)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        together = list(pool.map(stream, prompts))
    alone = [stream(p) for p in prompts]
    mismatches = [(p, a, t) for p, a, t in zip(prompts, alone, together) if a != t]
    assert not mismatches, mismatches[:3]
    assert all(t.endswith(("|stop", "|length")) for t in together)
