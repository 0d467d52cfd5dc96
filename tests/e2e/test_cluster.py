"""tandemd as a cluster of processes: a router (no weights), a prefill worker and a decode
worker (one core each), the KV pushed from prefill to decode over TCP on loopback.

Greedy and seeded outputs through the public APIs equal the colocated daemon's; both workers'
KV is all free again after every case; and when a worker dies (kill -9), stops answering
(SIGSTOP past its heartbeats) or a client goes away, every request ends with a clear status,
the survivors keep serving, and a worker that comes back registers again."""
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import MODEL, MODEL_NAME, TANDEMD, Daemon, free_port

from test_disaggregation import PROMPTS, check_streaming_chat, complete, leave_mid_decode

HEARTBEAT = ("--heartbeat-ms", "200", "--worker-timeout-ms", "1000")


class Cluster:
    """A router and its workers; each worker is a Daemon of its own."""

    def __init__(self, *extra, secret_file=None):
        self.cluster_port = free_port()
        self.extra = list(extra)
        if secret_file:
            self.extra += ["--cluster-secret-file", secret_file]
        self.router = Daemon("--role", "router", "--cluster-port", str(self.cluster_port),
                             *HEARTBEAT, *self.extra, wait_path="/health")
        self.prefill = [self.add("prefill")]
        self.decode = [self.add("decode")]
        self.wait_ready()

    def add(self, role, *extra):
        return Daemon("--role", role, "--router", f"127.0.0.1:{self.cluster_port}",
                      "--cluster-port", "0", "--threads", "1", *self.extra, *extra)

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.router.url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"router not ready:\n{self.router.logs()}")

    @property
    def url(self):
        return self.router.url

    def workers(self):
        return self.prefill + self.decode

    def kv_all_free(self, timeout=30):
        """Every live worker's KV cache back to empty (and nothing running), within timeout."""
        deadline = time.time() + timeout
        while True:
            ms = [w.metrics() for w in self.workers() if w.proc.poll() is None]
            if all(m.get("tandem:kv_cache_usage_ratio") == 0 and
                   m.get("tandem:num_requests_running") == 0 for m in ms):
                return True
            if time.time() > deadline:
                return ms
            time.sleep(0.05)

    def stop(self):
        codes = {}
        for d in [*self.workers(), self.router]:
            codes[d] = d.terminate() if d.proc.poll() is None else d.proc.returncode
        return codes


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    for d, code in c.stop().items():
        if code in (-signal.SIGKILL,):
            continue
        assert code == 0, f"tandemd exited with {code}:\n{d.logs()}"
        logs = d.logs()
        assert "ERROR: AddressSanitizer" not in logs and "runtime error:" not in logs, logs


def test_router_holds_no_weights_and_workers_registered(cluster):
    logs = cluster.router.logs()
    assert "router: no weights" in logs, logs
    assert "prefill worker" in logs and "decode worker" in logs, logs
    assert "loading weights" not in logs, logs


def test_greedy_outputs_equal_the_colocated_daemon(daemon, cluster):
    for prompt in PROMPTS:
        want = complete(daemon.url, prompt)["choices"][0]["text"]
        got = complete(cluster.url, prompt)
        assert got["choices"][0]["text"] == want, prompt
        assert got["usage"]["completion_tokens"] == 24
    assert cluster.kv_all_free() is True


def test_seeded_and_concurrent_requests_equal_the_colocated_daemon(daemon, cluster):
    extra = {"temperature": 0.8, "seed": 77, "top_p": 0.95}
    want = [complete(daemon.url, p, **extra)["choices"][0]["text"] for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        futures = [pool.submit(complete, cluster.url, p, **extra) for p in PROMPTS * 2]
        texts = [f.result()["choices"][0]["text"] for f in futures]
    assert texts == want * 2
    assert cluster.kv_all_free() is True


def test_streaming_chat_and_a_one_token_request(cluster):
    check_streaming_chat(cluster.url)
    # Ends at its first token on the prefill worker: nothing moves to the decode worker.
    one = complete(cluster.url, "Hello", max_tokens=1)
    assert one["usage"]["completion_tokens"] == 1
    assert cluster.kv_all_free() is True


def test_metrics_of_each_role(cluster):
    complete(cluster.url, "Hello there", max_tokens=6)
    # Two requests with SLOs (the others in this module are best-effort): one that any worker
    # meets, one that none can (the workers have no latency model, so both are admitted).
    complete(cluster.url, "Hello there", max_tokens=6, slo={"ttft_ms": 600000, "tpot_ms": 600000})
    complete(cluster.url, "Hello there", max_tokens=6, slo={"ttft_ms": 0.01, "tpot_ms": 0.01})
    # The client has its answer before the workers' calls have closed: the router counts a
    # request in flight until both have, so the gauges are read once everything has settled.
    assert cluster.kv_all_free() is True
    deadline = time.time() + 30
    while True:
        r = cluster.router.metrics()
        if r["tandem:cluster_requests_in_flight"] == 0 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert r['tandem:cluster_workers{role="prefill"}'] == 1, r
    assert r['tandem:cluster_workers{role="decode"}'] == 1, r
    info = [k for k in r if k.startswith("tandem:cluster_worker_info{")]
    assert len(info) == 2 and any('role="decode"' in k and "kv=" in k for k in info), info
    assert r["tandem:cluster_requests_in_flight"] == 0, r
    # Attainment per role: the prefill worker is judged on TTFT, the decode worker on TPOT; one
    # worker of each here, so its series equals the role's.
    for role in ("prefill", "decode"):
        judged = r[f'tandem:cluster_role_slo_judged_total{{role="{role}"}}']
        met = r[f'tandem:cluster_role_slo_met_total{{role="{role}"}}']
        assert (judged, met) == (2, 1), (role, r)
        assert r[f'tandem:cluster_role_slo_attainment_ratio{{role="{role}"}}'] == 0.5, r
        mine = [v for k, v in r.items()
                if k.startswith("tandem:cluster_worker_slo_judged_total{") and f'role="{role}"' in k]
        assert mine == [judged], (role, r)
    assert r["tandem:slo_judged_total"] == 2 and r["tandem:slo_met_total"] == 1, r
    p = cluster.prefill[0].metrics()
    assert p['tandem:kv_pushes_total{outcome="committed"}'] >= 1, p
    assert p['tandem:kv_pushes_total{outcome="failed"}'] == 0, p
    assert p["tandem:kv_push_bytes_total"] > 0 and p["tandem:kv_push_seconds_total"] > 0, p
    d = cluster.decode[0].metrics()
    assert d['tandem:kv_transfers_total{outcome="committed"}'] >= 1, d
    assert d["tandem:kv_transfer_bytes_total"] > 0, d
    assert d["tandem:kv_transfers_open"] == 0 and d["tandem:kv_arrivals_unpaired"] == 0, d
    assert d["tandem:decode_queue_sequences_total"] >= 1, d
    assert d["tandem:decode_queue_seconds_total"] >= 0, d


def test_prompts_go_to_the_prefill_worker_that_holds_their_prefix():
    """Two prefill workers. Two long prompts placed at once land one on each; each one's
    continuation (a conversation's next turn) goes back to the worker that cached it, which says
    so in usage.prompt_tokens_details.cached_tokens; the router's predicted hits equal the hits
    the workers reported. (Without prefix-aware routing both continuations go to one worker,
    the least loaded, and one of them finds nothing.) The workers take no latency profile, so
    that placement is by load and cached prefix alone, not by profiles that a busy host can
    skew (the predicted TTFT's use of the prefix is placement_test's)."""
    c = Cluster("--profile-latency=false")
    try:
        c.prefill.append(c.add("prefill"))
        deadline = time.time() + 60
        while c.router.metrics().get('tandem:cluster_workers{role="prefill"}') != 2:
            assert time.time() < deadline, c.router.logs()
            time.sleep(0.05)
        a = "A list of the planets, from the Sun outwards, with a note on each: " * 6
        b = "Instructions for baking bread at home, step by step, with the reasons: " * 6
        def settled():
            # A request counts as in flight on its workers until both its calls have closed, a
            # moment after the client has its answer; without latency models that count comes
            # before the cached prefix.
            deadline = time.time() + 30
            while c.router.metrics()["tandem:cluster_requests_in_flight"] != 0:
                assert time.time() < deadline, c.router.logs()
                time.sleep(0.02)

        first = complete(c.url, [a, b], max_tokens=4)
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, first["usage"]
        for turn in (" Mercury is the closest.", " Mix flour and water."):
            for base in (a, b):
                settled()
                r = complete(c.url, base + turn, max_tokens=4)
                u = r["usage"]
                # The whole blocks of its first turn at least (a tokenization seam at the join
                # can cost the last block).
                assert u["prompt_tokens_details"]["cached_tokens"] >= u["prompt_tokens"] // 2, u
        # Each worker ran one of the conversations: both have hits of their own.
        for w in c.prefill:
            m = w.metrics()
            assert m["tandem:prefix_cache_hit_tokens_total"] > 0, m
        r = c.router.metrics()
        assert r["tandem:cluster_prefix_hit_tokens_total"] > 0, r
        assert (r["tandem:cluster_prefix_predicted_tokens_total"] ==
                r["tandem:cluster_prefix_hit_tokens_total"]), r
        assert c.kv_all_free() is True
    finally:
        for d, code in c.stop().items():
            assert code == 0, f"tandemd exited with {code}:\n{d.logs()}"


def test_a_synthetic_gqa_model_equals_colocated(tmp_path):
    """The same equality on a model the project generates: 8 heads over 2 KV heads, 3 layers,
    f16 weights, random; prompts given as token ids."""
    gen = os.path.join(os.path.dirname(TANDEMD), "tandem-make-test-model")
    path = str(tmp_path / "gqa.gguf")
    subprocess.run([gen, "--out", path, "--type", "f16", "--heads", "8", "--kv_heads", "2",
                    "--hidden", "128", "--ffn", "256", "--layers", "3", "--context", "512",
                    "--seed", "7"], check=True, capture_output=True)
    colocated = Daemon("--model", path, "--served-model-name", MODEL_NAME)
    c = None
    try:
        c = Cluster("--model", path, "--served-model-name", MODEL_NAME)
        for seed in range(4):
            prompt = [(seed * 37 + i * 11) % 200 + 3 for i in range(5 + 9 * seed)]
            want = complete(colocated.url, prompt, max_tokens=20)["choices"][0]["text"]
            got = complete(c.url, prompt, max_tokens=20)
            assert got["usage"]["completion_tokens"] > 1, got  # something was decoded
            assert got["choices"][0]["text"] == want, prompt
        assert c.kv_all_free() is True
    finally:
        colocated.terminate()
        if c:
            c.stop()


def check_transport_equals_the_colocated_daemon(daemon, transport):
    """A cluster of one prefill and one decode worker with --kv-transport `transport` and the
    cluster secret: the decode worker registers a "<transport>:..." KV address, the outputs
    (one at a time, then all at once) are the colocated daemon's, both caches end empty, and
    every transfer committed. Returns the two workers' last metrics (prefill, decode)."""
    with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as f:
        f.write(f"{transport}, same secret\n")
        secret = f.name
    c = Cluster("--kv-transport", transport, secret_file=secret)
    try:
        assert f"KV at {transport}:" in c.decode[0].logs(), c.decode[0].logs()
        for prompt in PROMPTS:
            want = complete(daemon.url, prompt)["choices"][0]["text"]
            got = complete(c.url, prompt)
            assert got["choices"][0]["text"] == want, prompt
            assert got["usage"]["completion_tokens"] == 24
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            texts = [f.result()["choices"][0]["text"]
                     for f in [pool.submit(complete, c.url, p) for p in PROMPTS]]
        assert texts == [complete(daemon.url, p)["choices"][0]["text"] for p in PROMPTS]
        assert c.kv_all_free() is True
        d = c.decode[0].metrics()
        assert d['tandem:kv_transfers_total{outcome="committed"}'] == 2 * len(PROMPTS), d
        assert d["tandem:kv_transfers_open"] == 0, d
        return c.prefill[0].metrics(), d
    finally:
        for d, code in c.stop().items():
            assert code == 0, f"tandemd exited with {code}:\n{d.logs()}"
        os.unlink(secret)


def test_a_cluster_over_shared_memory_equals_the_colocated_daemon(daemon):
    """The decode worker listens for KV on shared memory (--kv-transport shm): it registers a
    "shm:NAME" address, and the prefill worker on the same host connects to it there."""
    check_transport_equals_the_colocated_daemon(daemon, "shm")


def test_a_direct_cluster_equals_the_colocated_daemon(daemon):
    """Both workers with --kv-transport direct: the decode worker registers a "direct:HOST:PORT"
    address, the prefill worker sends each layer from its cache's blocks straight into the
    blocks the decode worker reserved (the protocol of nccl, over the byte data plane), holding
    them until the push is done (all free again at the end)."""
    p, d = check_transport_equals_the_colocated_daemon(daemon, "direct")
    assert d["tandem:kv_transfer_bytes_total"] > 0, d
    assert p['tandem:kv_pushes_total{outcome="committed"}'] == 2 * len(PROMPTS), p
    assert p["tandem:kv_push_bytes_total"] == d["tandem:kv_transfer_bytes_total"], (p, d)


def test_a_prefill_worker_of_another_kv_transport_fails_its_requests_clearly():
    """A decode worker with --kv-transport direct, a prefill worker with the default (tcp):
    the hand-off fails before anything is sent, and the request's error says what to fix."""
    port = free_port()
    router = Daemon("--role", "router", "--cluster-port", str(port), *HEARTBEAT,
                    wait_path="/health")
    workers = [Daemon("--role", role, "--router", f"127.0.0.1:{port}", "--cluster-port", "0",
                      "--threads", "1", *extra)
               for role, extra in [("prefill", ()), ("decode", ("--kv-transport", "direct"))]]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(router.url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        body = json.dumps({"model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 8,
                           "temperature": 0}).encode()
        req = urllib.request.Request(router.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        message = e.value.read().decode()
        assert e.value.code >= 500, message
        assert "--kv-transport" in message and "direct" in message, message
    finally:
        for d in [*workers, router]:
            assert d.terminate() == 0, d.logs()


def test_workers_refuse_generation_and_bad_input_is_a_400(cluster):
    with pytest.raises(urllib.error.HTTPError) as e:
        complete(cluster.prefill[0].url, "Hi")
    assert e.value.code == 503
    assert "router" in e.value.read().decode()
    body = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 4, "temperature": -1}
    req = urllib.request.Request(cluster.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 400


def test_the_router_serves_the_chat_page_and_workers_do_not(cluster):
    # The page (docs/chat-page.md) talks to the public API, which the router serves; workers
    # refuse generation, so they have no page to offer.
    with urllib.request.urlopen(cluster.url + "/", timeout=60) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    for worker in cluster.prefill + cluster.decode:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(worker.url + "/", timeout=60)
        assert e.value.code == 404


def test_client_gone_mid_decode_frees_both_workers(cluster):
    leave_mid_decode(cluster.url)
    assert cluster.kv_all_free() is True
    assert complete(cluster.url, "Hello", max_tokens=4)["choices"][0]["text"] is not None


def test_client_gone_while_prefilling_frees_both_workers(cluster):
    import http.client
    import socket as so
    port = int(cluster.url.rsplit(":", 1)[1])
    body = json.dumps({"model": MODEL_NAME, "prompt": "word " * 1500, "max_tokens": 50,
                       "temperature": 0, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    deadline = time.time() + 30
    while cluster.prefill[0].metrics().get("tandem:num_requests_running", 0) == 0:
        assert time.time() < deadline, "the prompt never started prefilling"
        time.sleep(0.005)
    c.sock.shutdown(so.SHUT_RDWR)
    c.close()
    assert cluster.kv_all_free() is True
    # Nothing was handed over: the decode worker drops the request waiting for its KV once the
    # router's cancel reaches it (after the prefill worker's, on a loaded machine).
    deadline = time.time() + 30
    while True:
        d = cluster.decode[0].metrics()
        if d["tandem:kv_arrivals_unpaired"] == 0 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert d["tandem:kv_arrivals_unpaired"] == 0, d
    assert complete(cluster.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4


def stream_until_error(url, prompt, max_tokens, on_token=None):
    """Streams a completion; returns (tokens received, the error text or None)."""
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    n = 0
    try:
        stream = client.completions.create(model=MODEL_NAME, prompt=prompt,
                                           max_tokens=max_tokens, temperature=0, stream=True)
        for _ in stream:
            n += 1
            if on_token:
                on_token(n)
    except Exception as e:  # the stream ends with an error event or a broken connection
        return n, str(e)
    return n, None


def test_kill_9_of_the_decode_worker_mid_decode():
    c = Cluster()
    try:
        victim = c.decode[0]

        def kill_at(n):
            if n == 5:
                victim.proc.kill()
                victim.proc.wait()  # gone (and reaped) before anyone looks at the survivors

        n, err = stream_until_error(c.url, "Count: 1, 2, 3,", 2000, kill_at)
        assert err is not None and n < 2000, (n, err)
        assert "decode worker" in err or "worker" in err, err
        # The survivors: the prefill worker's KV is all free, the router refuses clearly.
        assert c.kv_all_free() is True
        with pytest.raises(urllib.error.HTTPError) as e:
            for _ in range(100):  # until the router has dropped the dead worker
                complete(c.url, "Hello", max_tokens=4)
                time.sleep(0.05)
        assert e.value.code == 503
        assert "decode worker" in e.value.read().decode()
        # A new decode worker joins and the cluster serves again.
        c.decode = [c.add("decode")]
        c.wait_ready()
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        assert c.kv_all_free() is True
    finally:
        c.stop()


def test_a_decode_worker_lost_before_the_first_token_is_replaced_once():
    """kill -9 of the decode worker that waits for a request's KV, while its prompt is still
    prefilling: nothing has reached the client, so the router tries the request once more on
    the other decode worker, and the client sees only a complete answer."""
    c = Cluster()
    try:
        c.decode.append(c.add("decode"))
        c.wait_ready()
        prompt = "word " * 2000
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(complete, c.url, prompt, 8)
            victim = None
            deadline = time.time() + 30
            while victim is None and time.time() < deadline:
                for d in c.decode:
                    if d.metrics().get("tandem:num_requests_waiting", 0) > 0:
                        victim = d
                time.sleep(0.005)
            assert victim is not None, "no decode worker ever held the request"
            victim.proc.kill()
            victim.proc.wait()
            got = future.result()
        assert got["usage"]["completion_tokens"] == 8, got
        assert "trying again" in c.router.logs(), c.router.logs()
        assert c.kv_all_free() is True
    finally:
        c.stop()


def test_kill_9_of_the_prefill_worker_mid_prefill_fails_clearly():
    c = Cluster()
    try:
        # Long prompts keep the prefill worker busy; kill it while they run.
        prompt = "word " * 1500
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(complete, c.url, prompt, 8) for _ in range(4)]
            time.sleep(0.3)
            c.prefill[0].proc.kill()
            c.prefill[0].proc.wait()  # gone (and reaped) before anyone looks at the survivors
            errors = 0
            for f in futures:
                try:
                    f.result()
                except urllib.error.HTTPError as e:
                    errors += 1
                    assert e.code in (500, 503), e.code
                    assert "prefill worker" in e.read().decode()
        assert errors >= 1
        assert c.kv_all_free() is True  # the decode worker holds nothing
        c.prefill = [c.add("prefill")]
        c.wait_ready()
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
    finally:
        c.stop()


def test_sigstop_past_the_heartbeat_drops_the_worker_and_sigcont_brings_it_back():
    c = Cluster()
    try:
        victim = c.decode[0]
        results = {}

        def stop_at(n):
            if n == 3:
                os.kill(victim.proc.pid, signal.SIGSTOP)

        n, err = stream_until_error(c.url, "Count: 1, 2, 3,", 2000, stop_at)
        results["stream"] = (n, err)
        assert err is not None, results
        assert "stopped answering" in err, err
        with pytest.raises(urllib.error.HTTPError) as e:
            complete(c.url, "Hello", max_tokens=4)
        assert e.value.code == 503
        os.kill(victim.proc.pid, signal.SIGCONT)
        c.wait_ready()
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        assert c.kv_all_free() is True
        assert "registering again" in victim.logs(), victim.logs()
    finally:
        c.stop()


def test_a_direct_push_to_a_stopped_decode_worker_gives_the_prefill_blocks_back():
    """--kv-transport direct: the prefill worker holds a sequence's blocks until its push is
    done. With the decode worker stopped (SIGSTOP) before the prompt is prefilled, the push gets
    no answer and fails at its timeout; the request ends with a clear error, every block held for
    the push comes back (the prefill worker's KV all free), and after SIGCONT the cluster
    serves again."""
    import threading
    c = Cluster("--kv-transport", "direct")
    try:
        victim = c.decode[0]
        result = {}
        t = threading.Thread(target=lambda: result.update(
            r=stream_until_error(c.url, "word " * 300, 8)))
        os.kill(victim.proc.pid, signal.SIGSTOP)
        t.start()
        t.join(120)
        assert not t.is_alive()
        n, err = result["r"]
        assert err is not None and n < 8, (n, err)  # chunks streamed before the error
        prefill = c.prefill[0]
        deadline = time.time() + 60
        while True:
            m = prefill.metrics()
            if (m.get('tandem:kv_pushes_total{outcome="failed"}', 0) >= 1 and
                    m.get("tandem:kv_cache_usage_ratio") == 0):
                break
            assert time.time() < deadline, m
            time.sleep(0.1)
        os.kill(victim.proc.pid, signal.SIGCONT)
        c.wait_ready()
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        assert c.kv_all_free() is True
    finally:
        os.kill(c.decode[0].proc.pid, signal.SIGCONT)
        c.stop()


def test_a_restarted_router_gets_its_workers_back():
    c = Cluster()
    try:
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        assert c.router.terminate() == 0
        c.router = Daemon("--role", "router", "--cluster-port", str(c.cluster_port), *HEARTBEAT,
                          *c.extra, wait_path="/health")
        c.wait_ready(timeout=30)  # both workers registered again
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        for w in c.workers():
            assert w.logs().count("registered with the router") >= 2, w.logs()
    finally:
        c.stop()


def test_the_cluster_secret_is_required_when_set():
    with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as f:
        f.write("correct horse battery staple\n")
        good = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as f:
        f.write("wrong\n")
        bad = f.name
    c = Cluster(secret_file=good)
    try:
        assert complete(c.url, "Hello", max_tokens=4)["usage"]["completion_tokens"] == 4
        # A worker with the wrong secret never joins.
        intruder = subprocess.Popen(
            [TANDEMD, "--model", MODEL, "--role", "decode", "--router",
             f"127.0.0.1:{c.cluster_port}", "--cluster-port", "0", "--port", "0",
             "--grpc-port", "-1", "--threads", "1", "--profile-latency=false",
             "--cluster-secret-file", bad], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        deadline = time.time() + 30
        while time.time() < deadline and "refused a worker registration" not in c.router.logs():
            time.sleep(0.1)
        intruder.send_signal(signal.SIGTERM)
        out = intruder.communicate(timeout=60)[0]
        assert "refused a worker registration" in c.router.logs(), c.router.logs()
        assert "cluster secret is missing or wrong" in out, out
        assert "registered" not in out.replace("registering", ""), out
    finally:
        c.stop()
        os.unlink(good)
        os.unlink(bad)


def test_role_flags_are_checked():
    for args, want in [(("--role", "prefill"), "--router"),
                       (("--role", "leader"), "--role"),
                       (("--role", "router", "--disaggregation", "on"), "--disaggregation"),
                       (("--role", "router", "--cluster-port", "0"), "--cluster-port"),
                       (("--role", "decode", "--router", "127.0.0.1:1", "--cluster-port", "0",
                         "--kv-transport", "udp"), "--kv-transport"),
                       (("--role", "decode", "--router", "127.0.0.1:1", "--cluster-port", "0",
                         "--kv-transport", "nccl"), "--device cuda:N"),
                       (("--role", "prefill", "--router", "127.0.0.1:1", "--cluster-port", "0",
                         "--kv-transport", "direct", "--kv-transfer-dtype", "int8"),
                        "--kv-transfer-dtype"),
                       (("--disaggregation", "on", "--threads", "2", "--kv-transport", "direct"),
                        "--role=prefill")]:
        r = subprocess.run([TANDEMD, "--model", MODEL, "--port", "0", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0, args
        assert want in r.stderr, (args, r.stderr)
