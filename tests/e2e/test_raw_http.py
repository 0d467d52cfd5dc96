"""Raw HTTP: SSE framing exactly as OpenAI sends it (checked with curl), probes, metrics."""
import json
import subprocess
import urllib.request

from conftest import MODEL_NAME


def curl(*args):
    return subprocess.run(["curl", "-sS", "-N", *args], check=True, capture_output=True,
                          timeout=120).stdout


def test_sse_framing_with_curl(daemon):
    body = json.dumps({"model": MODEL_NAME, "prompt": "One, two,", "max_tokens": 6,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    raw = curl("-D", "-", "-H", "Content-Type: application/json", "-d", body,
               daemon.url + "/v1/completions").decode()
    head, _, events = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    # De-chunked by curl: a sequence of "data: ...\n\n" events, the last "data: [DONE]".
    assert events.endswith("data: [DONE]\n\n"), events[-200:]
    parts = events.split("\n\n")
    assert parts[-1] == ""
    datas = parts[:-1]
    assert all(p.startswith("data: ") and "\n" not in p for p in datas), datas
    objs = [json.loads(p[6:]) for p in datas[:-1]]
    assert all(o["object"] == "text_completion" for o in objs)
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 6
    assert objs[-2]["choices"][0]["finish_reason"] == "length"
    ids = {o["id"] for o in objs}
    assert len(ids) == 1


def test_probes(daemon):
    for path in ("/health", "/ready"):
        with urllib.request.urlopen(daemon.url + path) as r:
            assert r.status == 200


def test_metrics_exposition(daemon, client):
    client.completions.create(model=MODEL_NAME, prompt="Metrics", max_tokens=3, temperature=0)
    m = daemon.metrics()
    assert m["tandem:generation_tokens_total"] >= 3
    assert m["tandem:prompt_tokens_total"] >= 1
    assert m['tandem:requests_total{api="http",status="200"}'] >= 1
    assert m["tandem:time_to_first_token_seconds_count"] >= 1
    # The shared daemon has no default SLOs: its requests are best-effort, counted, not judged.
    assert m["tandem:best_effort_sequences_total"] >= 1
    assert "tandem:slo_judged_total" in m
    assert "tandem:goodput_requests_per_second" in m
    assert "tandem:kv_cache_usage_ratio" in m
    assert "tandem:num_requests_running" in m
    with urllib.request.urlopen(daemon.url + "/metrics") as r:
        text = r.read().decode()
    assert "# TYPE tandem:time_per_output_token_seconds histogram" in text
    assert 'tandem:inter_token_latency_seconds_bucket{le="+Inf"}' in text


def test_tokenize_detokenize(daemon):
    def post(path, obj):
        req = urllib.request.Request(daemon.url + path, data=json.dumps(obj).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    t = post("/tokenize", {"model": MODEL_NAME, "prompt": "Hello world"})
    assert t["count"] == len(t["tokens"]) > 0
    assert t["max_model_len"] == 8192
    d = post("/detokenize", {"model": MODEL_NAME, "tokens": t["tokens"]})
    assert d["prompt"] == "Hello world"
