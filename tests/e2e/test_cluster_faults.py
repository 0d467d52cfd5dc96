"""Network faults between cluster processes. The router, a prefill worker and a decode worker
each run in a network namespace of their own, joined by veth pairs (the router to each worker,
and prefill to decode directly for the KV), with the cluster secret (peers are not loopback).
The test injects, on the KV link: a bandwidth cap (tbf qdisc), a partition (the link taken
down mid-transfer), and through a small fault-injecting TCP proxy, delay, a stall and a reset.

After every fault: the request ends with a clear status, nothing hangs, both workers' KV is all
free (read from the router's registry of worker loads), and the cluster serves the next
request with the right answer. A second cluster runs --kv-transport direct (the prefill worker
holds a sequence's blocks until its push is done, the data plane a second connection from the
decode worker to the prefill worker's address on the KV link): healthy, and partitioned
mid-transfer."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import MODEL, MODEL_NAME, TANDEMD, free_port, scrape

PROXY = os.path.join(os.path.dirname(__file__), "fault_proxy.py")
PROMPT = "The history of the city " * 60  # ~360 tokens: ~8 MB of f16 KV to move
KV_PORT = 7100
PROXY_PORT = 7200


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Net:
    """Namespaces r (router), p (prefill), d (decode); links root-r, r-p, r-d, p-d."""
    made_count = 0

    def __init__(self):
        Net.made_count += 1
        tag = f"tf{os.getpid() % 100000}{Net.made_count}"
        # Each Net's addresses are 10.(212 + n).x.y: two clusters side by side do not clash in
        # the root namespace.
        self.base = f"10.{212 + Net.made_count}"
        self.ns = {k: f"{tag}{k}" for k in "rpd"}
        self.made = []
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # (a, b, subnet): a gets .1, b gets .2; None is the root namespace.
        links = [(None, "r", 0), ("r", "p", 1), ("r", "d", 2), ("p", "d", 3)]
        self.dev = {}
        for a, b, net in links:
            da, db = f"{tag}{a or 'h'}{b}", f"{tag}{b}{a or 'h'}"
            sh("ip", "link", "add", da, "type", "veth", "peer", "name", db)
            for end, dev, host in ((a, da, 1), (b, db, 2)):
                if end is not None:
                    sh("ip", "link", "set", dev, "netns", self.ns[end])
                self.exec(end, "ip", "addr", "add", f"{self.base}.{net}.{host}/24", "dev", dev)
                self.exec(end, "ip", "link", "set", dev, "up")
                self.dev[(end, b if end == a else a)] = dev
        self.router_ip = f"{self.base}.0.2"

    def exec(self, end, *cmd, check=True):
        if end is None:
            return sh(*cmd, check=check)
        return sh("ip", "netns", "exec", self.ns[end], *cmd, check=check)

    def link(self, up):
        """The prefill-decode link, from the prefill side."""
        self.exec("p", "ip", "link", "set", self.dev[("p", "d")], "up" if up else "down")

    def cap(self, rate):
        dev = self.dev[("p", "d")]
        self.exec("p", "tc", "qdisc", "del", "dev", dev, "root", check=False)
        if rate:
            self.exec("p", "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                      "burst", "64kb", "latency", "2s")

    def close(self):
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        # The root end of root-r went with its peer.


class Proc:
    def __init__(self, net, end, args, log_name):
        self.log = tempfile.NamedTemporaryFile(prefix=f"tandemd-{log_name}-", suffix=".log",
                                               delete=False)
        cmd = ["ip", "netns", "exec", net.ns[end], *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def logs(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def start_cluster(*, direct):
    """Yields a Faults over a router, a prefill and a decode worker in their namespaces."""
    if os.geteuid() != 0:
        pytest.fail("these tests create network namespaces: run them as root")
    net = Net()
    tmp = tempfile.mkdtemp(prefix="tandem-faults-")
    secret = os.path.join(tmp, "secret")
    with open(secret, "w") as f:
        f.write("faults-test-secret\n")
    mode = os.path.join(tmp, "proxy-mode")
    with open(mode, "w") as f:
        f.write("pass")
    common = [TANDEMD, "--model", MODEL, "--served-model-name", MODEL_NAME, "--host", "0.0.0.0",
              "--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
              "--cluster-secret-file", secret, "--threads", "1", "--grpc-port", "-1"]
    http_port, cluster_port = free_port(), 50052
    # direct: both workers; the prefill worker's data-plane address on the p-d link (x.x.3.1),
    # and its transfers' deadline as short as the decode side's.
    transport = ["--kv-transport", "direct"] if direct else []
    prefill_extra = (["--kv-direct-host", f"{net.base}.3.1", "--kv-transfer-timeout-ms", "3000"]
                     if direct else [])
    procs = {}
    try:
        procs["router"] = Proc(net, "r", [*common, "--role", "router", "--port", str(http_port),
                                          "--cluster-port", str(cluster_port),
                                          "--heartbeat-ms", "200", "--worker-timeout-ms", "2000"],
                               "router")
        procs["proxy"] = Proc(net, "d", [sys.executable, PROXY, f"{net.base}.3.2:{PROXY_PORT}",
                                         f"127.0.0.1:{KV_PORT}", mode], "proxy")
        procs["decode"] = Proc(net, "d", [*common, "--role", "decode", "--port", "8000",
                                          "--router", f"{net.base}.2.1:{cluster_port}",
                                          "--cluster-port", "50053", "--advertise-host",
                                          f"{net.base}.2.2", "--kv-port", str(KV_PORT),
                                          # KV comes over the prefill-decode link, through the
                                          # fault proxy.
                                          "--kv-advertise-address",
                                          f"{net.base}.3.2:{PROXY_PORT}",
                                          "--kv-transfer-timeout-ms", "3000", *transport],
                                "decode")
        procs["prefill"] = Proc(net, "p", [*common, "--role", "prefill", "--port", "8000",
                                           "--router", f"{net.base}.1.1:{cluster_port}",
                                           "--cluster-port", "50053", "--advertise-host",
                                           f"{net.base}.1.2", *transport, *prefill_extra],
                                "prefill")
        f = Faults(net, procs, f"http://{net.router_ip}:{http_port}", mode)
        f.wait_ready()
        yield f
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
        net.close()
        for name in ("router", "prefill", "decode"):
            if name in procs:
                logs = procs[name].logs()
                assert "ERROR: AddressSanitizer" not in logs and "runtime error:" not in logs, logs
                assert codes[name] == 0, f"{name} exited {codes[name]}:\n{logs}"


@pytest.fixture(scope="module")
def faults():
    yield from start_cluster(direct=False)


@pytest.fixture(scope="module")
def direct_faults(faults):
    # After the tcp cluster (its reference answer is compared against), beside it.
    yield from start_cluster(direct=True)


class Faults:
    def __init__(self, net, procs, url, mode_file):
        self.net, self.procs, self.url, self.mode_file = net, procs, url, mode_file

    def proxy(self, mode):
        with open(self.mode_file + ".tmp", "w") as f:
            f.write(mode)
        os.replace(self.mode_file + ".tmp", self.mode_file)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster not ready:\n" +
                           "\n".join(f"== {n}\n{p.logs()}" for n, p in self.procs.items()))

    def metrics(self):
        return scrape(self.url)

    def workers_idle(self, timeout=30):
        """Both workers (by their heartbeats) have all KV free and nothing running."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            usage = {k: v for k, v in m.items() if k.startswith("tandem:cluster_worker_kv_usage")}
            running = {k: v for k, v in m.items() if k.startswith("tandem:cluster_worker_running")}
            if len(usage) == 2 and not any(usage.values()) and not any(running.values()):
                return True
            if time.time() > deadline:
                return m
            time.sleep(0.1)

    def complete(self, prompt=PROMPT, max_tokens=8, timeout=120):
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        req = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"HTTP {e.code}: {e.read().decode(errors='replace')}") from e

    def stream(self, on_first, max_tokens=8, timeout=120):
        """A streamed completion; calls on_first() at its first token. Returns (tokens, error)."""
        body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": max_tokens,
                "temperature": 0, "stream": True}
        req = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        n, error = 0, None
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        error = event["error"]["message"]
                        break
                    if event["choices"][0]["text"]:
                        n += 1
                        if n == 1:
                            on_first()
        except OSError as e:
            error = str(e)
        return n, error


@pytest.fixture(scope="module")
def reference(faults):
    """The answer with a healthy network."""
    return faults.complete()["choices"][0]["text"]


def test_healthy_network_and_the_secret_over_real_links(faults, reference):
    assert reference
    m = faults.metrics()
    assert m['tandem:cluster_workers{role="prefill"}'] == 1
    assert m['tandem:cluster_workers{role="decode"}'] == 1
    assert faults.workers_idle() is True


def test_a_bandwidth_cap_slows_the_transfer_and_changes_nothing(faults, reference):
    faults.net.cap("40mbit")
    try:
        t0 = time.time()
        got = faults.complete()["choices"][0]["text"]
        slow = time.time() - t0
    finally:
        faults.net.cap(None)
    assert got == reference
    assert slow > 1.0, slow  # ~8 MB at 40 Mbit/s: the cap was in the way
    assert faults.workers_idle() is True


def test_a_partition_mid_transfer_fails_the_request_and_frees_the_kv(faults, reference):
    faults.net.cap("20mbit")  # a transfer of a few seconds, to cut in the middle of
    try:
        t0 = time.time()
        n, error = faults.stream(lambda: (time.sleep(0.3), faults.net.link(False)))
        elapsed = time.time() - t0
    finally:
        faults.net.link(True)
        faults.net.cap(None)
    assert n >= 1 and error is not None, (n, error)
    assert "KV" in error or "worker" in error, error
    assert elapsed < 60, elapsed  # the transfer timed out; nothing hung
    assert faults.workers_idle() is True
    assert faults.complete()["choices"][0]["text"] == reference


def test_delay_through_the_proxy_changes_nothing(faults, reference):
    faults.proxy("delay:5")
    try:
        assert faults.complete()["choices"][0]["text"] == reference
    finally:
        faults.proxy("pass")
    assert faults.workers_idle() is True


def test_a_reset_mid_transfer_fails_at_once_and_frees_the_kv(faults, reference):
    faults.proxy("delay:20")  # slow enough to reset in the middle
    try:
        t0 = time.time()
        n, error = faults.stream(lambda: faults.proxy("reset"))
        elapsed = time.time() - t0
    finally:
        faults.proxy("pass")
    assert n >= 1 and error is not None, (n, error)
    assert elapsed < 20, elapsed
    assert faults.workers_idle(timeout=10) is True
    assert faults.complete()["choices"][0]["text"] == reference


def test_a_stall_mid_transfer_times_out_cleanly(faults, reference):
    faults.proxy("delay:20")
    try:
        t0 = time.time()
        n, error = faults.stream(lambda: faults.proxy("stall"))
        elapsed = time.time() - t0
    finally:
        faults.proxy("pass")
    assert n >= 1 and error is not None, (n, error)
    assert elapsed < 60, elapsed
    assert faults.workers_idle() is True
    assert faults.complete()["choices"][0]["text"] == reference


def test_client_gone_mid_transfer_frees_both_workers(faults, reference):
    """The client closes its connection right after the first token, while the KV crawls
    through the proxy: the transfer is abandoned on both sides and every block comes back."""
    import http.client
    import socket as so
    faults.proxy("delay:20")
    try:
        host, port = faults.url[len("http://"):].rsplit(":", 1)
        body = json.dumps({"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 8,
                           "temperature": 0, "stream": True})
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        while True:
            line = r.fp.readline()
            assert line, "the stream ended before its first token"
            if line.startswith(b"data: {"):
                break
        c.sock.shutdown(so.SHUT_RDWR)
        c.close()
        assert faults.workers_idle() is True
    finally:
        faults.proxy("pass")
    assert faults.complete()["choices"][0]["text"] == reference


def test_direct_over_real_links_equals_the_frame_protocol(direct_faults, reference):
    assert direct_faults.complete()["choices"][0]["text"] == reference
    assert "KV at direct:" in direct_faults.procs["decode"].logs()
    assert direct_faults.workers_idle() is True


def test_direct_partition_mid_transfer_fails_the_request_and_frees_the_kv(direct_faults,
                                                                         reference):
    """The data plane's connection and the control's both cross the cut link: the transfer's
    deadline passes on both sides, the watchdogs abort the plane, the decode worker frees its
    lease and the prefill worker gets back the blocks the push held."""
    direct_faults.net.cap("20mbit")
    try:
        t0 = time.time()
        n, error = direct_faults.stream(
            lambda: (time.sleep(0.3), direct_faults.net.link(False)))
        elapsed = time.time() - t0
    finally:
        direct_faults.net.link(True)
        direct_faults.net.cap(None)
    assert n >= 1 and error is not None, (n, error)
    assert "KV" in error or "worker" in error, error
    assert elapsed < 60, elapsed
    assert direct_faults.workers_idle() is True
    assert direct_faults.complete()["choices"][0]["text"] == reference
