"""A battery of malformed requests against a live daemon: each gets the right status and an
OpenAI-shaped error, and the daemon keeps serving normal requests throughout."""
import json
import socket

import pytest

from conftest import MODEL_NAME

C = "/v1/completions"
CH = "/v1/chat/completions"
M = MODEL_NAME
MSG = [{"role": "user", "content": "hi"}]


def comp(**kw):
    return json.dumps({"model": M, "prompt": "hi", "max_tokens": 1, **kw}).encode()


def chat(**kw):
    return json.dumps({"model": M, "messages": MSG, "max_tokens": 1, **kw}).encode()


CASES = [
    # Broken JSON and wrong top-level shapes.
    (C, b"", 400), (C, b"{", 400), (C, b"}", 400), (C, b"[]", 400), (C, b"null", 400),
    (C, b"42", 400), (C, b'"str"', 400), (C, b'{"model": }', 400), (C, b"{'a': 1}", 400),
    (C, b'{"prompt": "hi",}', 400), (C, b'{"prompt": "hi"} trailing', 400),
    (CH, b"{\"messages\": [}", 400), (CH, b"\xff\xfe{}", 400), (C, b"nan", 400),
    (C, b'{"prompt": "a\\ud800b"}', 400),
    # Invalid UTF-8 inside strings.
    (C, b'{"model":"' + M.encode() + b'","prompt":"\xc3\x28"}', 400),
    (CH, b'{"model":"' + M.encode() + b'","messages":[{"role":"user","content":"\xe2\x82"}]}',
     400),
    (C, b'{"model":"' + M.encode() + b'","prompt":"ok","stop":"\xff"}', 400),
    # Depth bomb.
    (C, b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
]

# Wrong types and values for each field, both endpoints.
BAD_VALUES = {
    "max_tokens": ["x", 0, -1, 1.5, True, [1], 2 ** 64, 1e309],
    "temperature": ["hot", -0.1, 2.5, [0], {"a": 1}, 1e400],
    "top_p": [0, -1, 1.5, "x"],
    "top_k": [-2, 1.5, "x"],
    "min_p": [-0.1, 1.1, "x"],
    "n": [0, -1, 17, 1.5, "2", 10 ** 30],
    "seed": ["x", 1.5, [1]],
    "presence_penalty": [-2.5, 3, "x"],
    "frequency_penalty": [-3, 2.1, "x"],
    "repetition_penalty": [0, -1, "x"],
    "stop": [5, [1, 2], ["a", "b", "c", "d", "e"], [""], {"a": 1}],
    "stream": ["yes", 1],
    "stream_options": ["x", {"include_usage": "yes"}],
    "user": [5],
    "ignore_eos": ["x"],
}
for field, values in BAD_VALUES.items():
    for v in values:
        CASES.append((C, comp(**{field: v}), 400))
        CASES.append((CH, chat(**{field: v}), 400))

CASES += [
    # Field-specific.
    (C, comp(logprobs=6), 400), (C, comp(logprobs=-1), 400), (C, comp(logprobs="x"), 400),
    (CH, chat(logprobs="x"), 400), (CH, chat(top_logprobs=3), 400),
    (CH, chat(logprobs=True, top_logprobs=21), 400), (C, comp(echo="x"), 400),
    (C, comp(prompt=None), 400), (C, comp(prompt=[]), 400), (C, comp(prompt=5), 400),
    (C, comp(prompt=[[]]), 400), (C, comp(prompt=[-1]), 400), (C, comp(prompt=[10 ** 9]), 400),
    (C, comp(prompt=[1.5]), 400), (C, comp(prompt=[["a"]]), 400), (C, comp(prompt={"a": 1}), 400),
    (C, comp(prompt=""), 400),
    (CH, chat(messages=[]), 400), (CH, chat(messages=None), 400), (CH, chat(messages="hi"), 400),
    (CH, chat(messages=[{"role": "user"}]), 400),
    (CH, chat(messages=[{"content": "x"}]), 400),
    (CH, chat(messages=[{"role": "wizard", "content": "x"}]), 400),
    (CH, chat(messages=[{"role": "user", "content": 5}]), 400),
    (CH, chat(messages=[{"role": "user", "content": [{"type": "image_url",
                                                      "image_url": {"url": "x"}}]}]), 400),
    (CH, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400),
    (CH, chat(messages=["hi"]), 400),
    # Unsupported features name themselves.
    (CH, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400),
    (CH, chat(tool_choice="auto"), 400), (CH, chat(functions=[{"name": "f"}]), 400),
    (CH, chat(response_format={"type": "json_object"}), 400),
    (CH, chat(logit_bias={"1": 5}), 400), (C, comp(suffix="x"), 400),
    (C, comp(best_of=3), 400),
    # Unknown model and routes.
    (C, comp(model="gpt-9"), 404), (CH, chat(model="gpt-9"), 404),
    ("/v1/nope", comp(), 404), ("/v2/completions", comp(), 404), ("/", b"", 404),
    # Too long for the context.
    (C, comp(prompt="hello " * 9000), 413), (C, comp(max_tokens=8193), 413),
    (CH, chat(max_tokens=9000), 413), (C, comp(prompt=list(range(1, 9000))), 413),
    # Tokenize / detokenize.
    ("/tokenize", b"{", 400), ("/tokenize", json.dumps({"prompt": 5}).encode(), 400),
    ("/detokenize", json.dumps({"tokens": [-5]}).encode(), 400),
    ("/detokenize", json.dumps({"tokens": [10 ** 8]}).encode(), 400),
    ("/detokenize", json.dumps({"tokens": "x"}).encode(), 400),
]


def raw_request(port, path, body, method="POST", extra=b""):
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nConnection: close\r\n" + extra +
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode(errors="replace"), payload


def test_battery_has_over_100_cases():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("path,body,status", CASES,
                         ids=[f"{i}-{c[0].strip('/')}" for i, c in enumerate(CASES)])
def test_malformed_request(daemon, path, body, status):
    code, head, payload = raw_request(daemon.port, path, body)
    assert code == status, (head, payload[:300])
    err = json.loads(payload)["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["message"]


def test_oversized_body_is_413_and_daemon_survives(daemon, client):
    body = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    try:
        code, _, _ = raw_request(daemon.port, C, body)
        assert code == 413
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may close while the client is still sending; the status went first
    r = client.completions.create(model=M, prompt="Still alive?", max_tokens=2,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2


def test_garbage_http_and_daemon_survives(daemon, client):
    for junk in (b"GARBAGE\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
            s.sendall(junk)
            s.recv(4096)
    assert client.completions.create(model=M, prompt="ok", max_tokens=1).usage


def test_field_is_named_in_error(daemon):
    _, _, payload = raw_request(daemon.port, C, comp(temperature="hot"))
    err = json.loads(payload)["error"]
    assert "temperature" in err["message"]
    assert err["param"] == "temperature"
