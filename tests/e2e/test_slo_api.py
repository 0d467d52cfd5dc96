"""Per-request SLOs and refusals through the public APIs: the `slo` body field, the
x-slo-ttft-ms / x-slo-tpot-ms headers and gRPC metadata (400 / INVALID_ARGUMENT for bad values),
and streaming requests refused before their first token getting a real error status (429 with
Retry-After for a full queue, 503 when the daemon stops while they wait) instead of a 200 event
stream carrying an in-band error."""
import concurrent.futures
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import MODEL_NAME, Daemon


def post_json(url, obj, headers=None, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def completion(slo=None, **extra):
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2, **extra}
    if slo is not None:
        body["slo"] = slo
    return body


def test_good_slo_in_body_and_headers_is_served(daemon, client):
    code, _, body = post_json(daemon.url + "/v1/completions",
                              completion({"ttft_ms": 60000, "tpot_ms": 5000}))
    assert code == 200, body
    code, _, body = post_json(daemon.url + "/v1/completions", completion({"tpot_ms": 2500.5}),
                              headers={"X-SLO-TTFT-MS": "30000"})
    assert code == 200, body
    # The older spellings still work, and agree with `slo` when both are given.
    code, _, body = post_json(daemon.url + "/v1/completions",
                              completion({"ttft_ms": 60000}, ttft_slo_ms=60000))
    assert code == 200, body
    # Through the official SDK: extra_body and extra_headers, streamed.
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        stream=True, extra_body={"slo": {"ttft_ms": 60000, "tpot_ms": 5000}},
        extra_headers={"x-slo-tpot-ms": "4000"}))
    assert chunks and chunks[-1].choices[0].finish_reason is not None


@pytest.mark.parametrize("slo,extra,param,message", [
    ({"ttft_ms": 0}, {}, "slo.ttft_ms", "must be > 0"),
    ({"tpot_ms": -5}, {}, "slo.tpot_ms", "must be > 0"),
    ({"ttft_ms": 3600001}, {}, "slo.ttft_ms", "<= 3600000"),
    ({"ttft_ms": "100"}, {}, "slo.ttft_ms", "must be a number"),
    ({"e2e_ms": 100}, {}, "slo.e2e_ms", "not supported"),
    (250, {}, "slo", "must be an object"),
    ({"ttft_ms": 100}, {"ttft_slo_ms": 200}, "slo.ttft_ms", "disagree"),
])
def test_bad_slo_in_body_is_400(daemon, slo, extra, param, message):
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = completion(slo, **extra)
        if path.endswith("chat/completions"):
            del body["prompt"]
            body["messages"] = [{"role": "user", "content": "Hi"}]
        for stream in (False, True):
            code, headers, raw = post_json(daemon.url + path, {**body, "stream": stream})
            assert code == 400, raw
            assert headers.get("Content-Type") == "application/json"
            err = json.loads(raw)["error"]
            assert err["param"] == param, err
            assert message in err["message"] and f"'{param}'" in err["message"], err


@pytest.mark.parametrize("header,value,message", [
    ("x-slo-ttft-ms", "soon", "must be a number of milliseconds"),
    ("X-Slo-Ttft-Ms", "0", "must be > 0"),
    ("x-slo-tpot-ms", "-1", "must be > 0"),
    ("x-slo-tpot-ms", "3600001", "<= 3600000"),
    ("x-slo-tpot-ms", "1e999", "must be a number"),
])
def test_bad_slo_header_is_400_naming_the_header(daemon, header, value, message):
    # A good body value does not rescue a bad header: the header wins, and it is wrong.
    code, _, raw = post_json(daemon.url + "/v1/completions", completion({"ttft_ms": 1000}),
                             headers={header: value})
    assert code == 400, raw
    err = json.loads(raw)["error"]
    assert err["param"] == header.lower(), err
    assert message in err["message"] and f"'{header.lower()}'" in err["message"], err


def test_slo_metadata_on_grpc(daemon, grpc_stubs):
    pb2, pb2_grpc = grpc_stubs
    with grpc.insecure_channel(daemon.grpc_target) as channel:
        stub = pb2_grpc.GenerationStub(channel)
        req = pb2.GenerateRequest(model=MODEL_NAME, text="Hi", max_tokens=2, ttft_slo_ms=60000)
        responses = list(stub.Generate(req, timeout=120,
                                       metadata=[("x-slo-tpot-ms", "5000")]))
        assert responses[-1].usage.completion_tokens == 2
        for key, value in [("x-slo-ttft-ms", "abc"), ("x-slo-tpot-ms", "0")]:
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Generate(req, timeout=60, metadata=[(key, value)]))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"'{key}'" in e.value.details()
        # The proto fields go through the same rule.
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(pb2.GenerateRequest(model=MODEL_NAME, text="Hi", max_tokens=2,
                                                   tpot_slo_ms=7200000), timeout=60))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


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


def test_streaming_request_refused_for_a_full_queue_gets_429():
    d = Daemon("--max-num-seqs", "1", "--max-num-batched-tokens", "64", "--max-queue", "1")
    try:
        busy = open_stream(d, 2000)  # holds the only running slot
        # At most one more fits the queue; the others must be refused, each with a real 429
        # (not a 200 event stream carrying an error), whenever the refusal happens.
        body = {"model": MODEL_NAME, "prompt": "q", "max_tokens": 2, "stream": True}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post_json, d.url + "/v1/completions", body)
                       for _ in range(4)]
            refused = []
            for f in concurrent.futures.as_completed(futures, timeout=120):
                code, headers, raw = f.result()
                if code == 429:
                    refused.append((headers, raw))
                if len(refused) >= 3:
                    break
            busy.close()  # lets a queued request run to its end
            results = [f.result(timeout=120) for f in futures]
        assert len(refused) >= 3, results
        for code, headers, raw in results:
            assert code in (200, 429), (code, raw)
            if code == 429:
                assert headers.get("Content-Type") == "application/json", headers
                assert int(headers.get("Retry-After", "0")) >= 1, headers
                err = json.loads(raw)["error"]
                assert err["type"] == "rate_limit_error", err
            else:
                assert headers.get("Content-Type") == "text/event-stream", headers
                assert raw.rstrip().endswith(b"data: [DONE]"), raw
    finally:
        assert d.terminate() == 0



def wait_for(pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_streaming_request_failed_while_queued_gets_its_real_status():
    # Best effort (no default SLOs), so nothing but the queue decides whether it waits.
    d = Daemon("--max-num-seqs", "1", "--max-num-batched-tokens", "64", "--max-queue", "4",
               "--shutdown-timeout", "1", "--ttft-slo-ms", "0", "--tpot-slo-ms", "0")
    busy = None
    try:
        busy = open_stream(d, 4000)  # runs far past the shutdown timeout
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queued = pool.submit(post_json, d.url + "/v1/completions",
                                 {"model": MODEL_NAME, "prompt": "q", "max_tokens": 2,
                                  "stream": True})
            assert wait_for(lambda: d.metrics()["tandem:num_requests_waiting"] == 1)
            # Accepted and queued, but no headers yet: SIGTERM fails it before its first token
            # (after the 1 s drain), and the client gets a 503, not a 200 stream.
            d.proc.send_signal(signal.SIGTERM)
            code, headers, raw = queued.result(timeout=60)
        assert code == 503, (code, headers, raw)
        assert headers.get("Content-Type") == "application/json", headers
        err = json.loads(raw)["error"]
        assert err["type"] == "server_error" and "shutting down" in err["message"], err
    finally:
        if busy is not None:
            busy.close()
        assert d.terminate() == 0
