"""The disaggregated overlay run as local processes (make deploy-check, step 4): the router,
one prefill and two decode pods, each in its own network namespace (veth pairs into a bridge),
with cluster DNS as per-namespace hosts files; requests through the router's Service; a decode
scale-up; a decode pod drained under load; a router rollout. Every
namespace, veth and bridge is removed on the way out, also on failure or SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from localpod import (ROOT, read_completion_stream, CheckFailed, LocalPod, Prober, fail, flags_from_configmap, http,
                      labels_match, log)
from netpol import np_allows, peer_of_template

CLUSTER_OVERLAY = "disaggregated-cpu"

CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class PodNetwork:
    """Pods' network: each pod in its own network namespace with a veth into a bridge that
    lives in a "node" namespace (the kubelet's and the clients' side, where this process's
    threads run), pod IPs from 10.244.0.0/24, Service names in /etc/netns/NS/hosts (which
    `ip netns exec` mounts over /etc/hosts). Nothing is added to this machine's own
    namespace. Without namespaces (not root), the fallback: each pod on its own loopback
    address 127.0.1.N with the same ports, Service names replaced by addresses in argv."""

    SUBNET = "10.244.0"

    def __init__(self, logs: Path, use_netns: bool = True):
        self.use_netns = use_netns
        self.tag = f"tdc{os.getpid()}"
        self.node = f"{self.tag}-node"
        self.namespaces: list[str] = []
        self.orig_fd: int | None = None
        self.netns_ok = False
        self.next_ip = 2
        self.logs = logs
        self.hosts: dict[str, list[str]] = {}  # DNS name -> addresses
        self.reason = ""

    def ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", *(["-n", ns] if ns else []), *args]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise OSError(f"{' '.join(cmd)}: {res.stderr.strip()}")

    @staticmethod
    def sweep_stale() -> None:
        """Namespaces left by a deploy-check that was killed (its pid is gone)."""
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            m = re.match(r"(tdc(\d+)-\S+)", line)
            if m and not Path(f"/proc/{m.group(2)}").exists():
                subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)
                shutil.rmtree(f"/etc/netns/{m.group(1)}", ignore_errors=True)

    def setup(self) -> None:
        if not self.use_netns:
            self.reason = "--no-netns"
            return
        if shutil.which("ip") is None:
            self.reason = "no `ip` command"
            return
        try:
            self.sweep_stale()
            self.ip("netns", "add", self.node)
            self.namespaces.append(self.node)
            self.ip("link", "set", "lo", "up", ns=self.node)
            self.ip("link", "add", "br0", "type", "bridge", ns=self.node)
            self.ip("addr", "add", f"{self.SUBNET}.1/24", "dev", "br0", ns=self.node)
            self.ip("link", "set", "br0", "up", ns=self.node)
            self.orig_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
            with open(f"/run/netns/{self.node}") as f:
                setns(f.fileno())
            self.netns_ok = True
        except OSError as e:
            self.reason = str(e)
            self.cleanup()

    def add_pod(self, pod_name: str) -> tuple[str, str | None]:
        """A network for one pod: (its IP, its namespace or None on loopback)."""
        n = self.next_ip
        self.next_ip += 1
        if not self.netns_ok:
            return f"127.0.1.{n}", None
        ns = f"{self.tag}-{pod_name}"
        self.ip("netns", "add", ns)
        self.namespaces.append(ns)
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", f"veth{n}", "netns",
                self.node, ns=ns)
        self.ip("addr", "add", f"{self.SUBNET}.{n}/24", "dev", "eth0", ns=ns)
        self.ip("link", "set", "eth0", "up", ns=ns)
        self.ip("link", "set", "lo", "up", ns=ns)
        self.ip("link", "set", f"veth{n}", "master", "br0", ns=self.node)
        self.ip("link", "set", f"veth{n}", "up", ns=self.node)
        d = Path("/etc/netns") / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(self.hosts_text(pod_name, f"{self.SUBNET}.{n}"))
        return f"{self.SUBNET}.{n}", ns

    def hosts_text(self, pod_name: str, ip: str) -> str:
        lines = ["127.0.0.1 localhost", f"{ip} {pod_name}"]
        for name, addrs in sorted(self.hosts.items()):
            lines += [f"{a} {name}" for a in addrs]
        return "\n".join(lines) + "\n"

    def publish(self, hosts: dict[str, list[str]], pods: dict[str, str]) -> None:
        """Cluster DNS as of now, into every pod's hosts file (rewritten in place: the file
        `ip netns exec` bind-mounted stays the same inode). pods: name -> IP."""
        self.hosts = hosts
        if not self.netns_ok:
            return
        for name, ip in pods.items():
            f = Path("/etc/netns") / f"{self.tag}-{name}" / "hosts"
            if f.exists():
                with open(f, "r+") as fh:
                    fh.truncate(0)
                    fh.write(self.hosts_text(name, ip))

    def wrap(self, netns: str | None, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv] if netns else argv

    def connections(self, netns: str) -> list[tuple[str, int, str, int, bool]]:
        """Established TCP in a pod namespace: (local ip, port, peer ip, port, local listens)."""
        def ss(*a: str) -> list[str]:
            return subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htn", *a],
                                  capture_output=True, text=True).stdout.splitlines()
        listen = {int(l.split()[2].rsplit(":", 1)[1]) for l in ss("state", "listening")}
        out = []
        for l in ss("state", "established"):
            f = l.split()
            (lip, lp), (pip, pp) = (x.rsplit(":", 1) for x in f[2:4])
            lip, pip = lip.strip("[]").replace("::ffff:", ""), pip.strip("[]").replace("::ffff:", "")
            out.append((lip, int(lp), pip, int(pp), int(lp) in listen))
        return out

    def cleanup(self) -> None:
        if self.orig_fd is not None:
            try:
                setns(self.orig_fd)
            finally:
                os.close(self.orig_fd)
                self.orig_fd = None
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.namespaces.clear()
        try:
            Path("/etc/netns").rmdir()  # only when empty (ours were the only ones)
        except OSError:
            pass


class ClusterPod:
    """A pod of the local cluster: its LocalPod, process, prober and log."""

    def __init__(self, name: str, role: str, dep: dict, docs: list[dict], net: PodNetwork,
                 work: Path, logs: Path):
        self.name, self.role, self.dep = name, role, dep
        self.ip, self.netns = net.add_pod(name)
        (work / name).mkdir()
        self.pod = LocalPod(docs, dep, work / name, ip=self.ip, netns=self.netns, name=name)
        self.pod.materialize_volumes()
        self.c = next(x for x in self.pod.spec["containers"] if x["name"] == "tandemd")
        for p in self.c.get("ports", []):
            self.pod.ports[p["containerPort"]] = p["containerPort"]
            self.pod.port_names[p["name"]] = p["containerPort"]
        self.net, self.logs = net, logs
        self.proc: subprocess.Popen | None = None
        self.prober: Prober | None = None
        self.started = self.ready_at = self.startup_s = None
        self.error: str | None = None
        self.argv: list[str] = []
        self.overrides: list[str] = []

    def url(self, path: str = "") -> str:
        return f"http://{self.ip}:{self.pod.ports[self.pod.port_names['http']]}{path}"

    def start(self, dns: dict[str, list[str]]) -> None:
        """The kubelet's part: init containers to completion, then the container, then the
        startup probe; runs in a thread per pod."""
        try:
            for c in self.pod.spec.get("initContainers", []):
                argv, env = self.pod.prepare_container(c)
                with open(self.logs / f"{self.name}-{c['name']}.log", "w") as lf:
                    res = subprocess.run(self.net.wrap(self.netns, argv), env=env, cwd=self.pod.cwd,
                                         stdout=lf, stderr=subprocess.STDOUT, timeout=900)
                if res.returncode != 0:
                    raise CheckFailed(f"{self.name}: init container {c['name']} exited "
                                      f"{res.returncode}")
            argv, env = self.pod.prepare_container(self.c)
            # One core each: 2 cores run 4-5 pods here. The only change to the rendered args.
            argv2 = [re.sub(r"^--threads=\d+$", "--threads=1", a) for a in argv]
            if argv2 != argv:
                self.overrides.append("--threads=1")
            if self.netns is None:  # loopback fallback: no per-pod hosts file
                for name, addrs in sorted(dns.items(), key=lambda kv: -len(kv[0])):
                    if addrs:
                        argv2 = [re.sub(rf"(?<![\w.-]){re.escape(name)}(?=:)", addrs[0], a)
                                 for a in argv2]
            self.argv = argv2
            self.log = open(self.logs / f"{self.name}.log", "w")
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.net.wrap(self.netns, argv2), env=env,
                                         cwd=self.pod.cwd, stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            self.prober = Prober(self.c, self.pod, self.proc)
            self.startup_s = self.prober.wait_startup()
        except CheckFailed as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            self.error = f"{self.name}: {e!r}"

    def ready(self) -> bool:
        # The kubelet probes readiness once the startup probe has passed.
        return self.startup_s is not None and self.proc.poll() is None and \
            self.prober.once(self.c["readinessProbe"])

    def metrics(self) -> dict[str, float]:
        code, body, _ = http("GET", self.url("/metrics"), timeout=5)
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def kill(self) -> None:
        if self.prober:
            self.prober.halt()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_text(self) -> str:
        try:
            return (self.logs / f"{self.name}.log").read_text()
        except OSError:
            return ""


# The check's requests carry loose SLOs: this machine's cores are shared, and what is checked
# here is the deployment's mechanics (routing, scaling, draining), not SLO admission, which
# would refuse (429) requests a busy moment makes late. docs/deploy.md covers SLOs. A prefill
# worker still refuses (429 + Retry-After) while any KV push of its own waits for a decode
# worker, whatever the SLO: the client retries those as a client should (the OpenAI SDK does),
# and the check counts them. A refusal is not a lost request; a stream cut after its 200 is.
CHECK_SLO = {"ttft_ms": 60000, "tpot_ms": 10000}
MAX_REFUSALS = 30


def stream_request(base: str, key: str, model: str, max_tokens: int, out: dict,
                   first: threading.Event | None = None) -> None:
    """A streamed completion through the router; out gets status, tokens, finish, usage."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "prompt": "The history of the river begins",
            "stream_options": {"include_usage": True}, "slo": CHECK_SLO}
    req = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {key}",
                                                         "Content-Type": "application/json"})
    out.update(status=None, chunks=0, done=False, finish=None, error=None, usage=None, refused=0)
    try:
        while True:
            try:
                r = urllib.request.urlopen(req, timeout=120)
                break
            except urllib.error.HTTPError as e:
                if e.code != 429 or out["refused"] >= MAX_REFUSALS:
                    raise
                out["refused"] += 1
                e.read()
                time.sleep(min(float(e.headers.get("Retry-After") or 1), 1.0))
        with r:
            read_completion_stream(r, out, first)
    except urllib.error.HTTPError as e:
        out["status"] = e.code
        out["error"] = e.read()[:300].decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - reported by the caller
        out["error"] = repr(e)
    finally:
        if first is not None:
            first.set()


def request_ok(out: dict, max_tokens: int) -> bool:
    return out.get("status") == 200 and out.get("done") and not out.get("error") and \
        out.get("finish") == "length" and (out.get("usage") or {}).get("completion_tokens") == max_tokens


def run_local_cluster(docs: list[dict], work: Path, logs: Path,
                      referenced: dict[str, set[str]], use_netns: bool = True,
                      router_rollout: bool = False) -> list[str]:
    """The disaggregated overlay as local processes: router, one prefill and two decode pods
    in their own network namespaces; requests through the router's Service; a decode
    scale-up; a drain of a decode pod under load."""
    deps = {d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component"): d
            for d in docs if d["kind"] == "Deployment"}
    for role in ("router", "prefill", "decode"):
        if role not in deps:
            fail(f"{CLUSTER_OVERLAY}: no {role} Deployment")
    namespace = deps["router"]["metadata"].get("namespace", "default")
    services = [d for d in docs if d["kind"] == "Service"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    flags = flags_from_configmap(docs)
    model = flags.get("served_model_name")
    key = base64.b64decode(next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"]
                                .startswith("tandem-api-key"))["data"]["api-key"]).decode()
    summary: list[str] = []
    net = PodNetwork(logs, use_netns)
    pods: list[ClusterPod] = []
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def dns() -> dict[str, list[str]]:
        """Cluster DNS from the Services: a ClusterIP Service's name -> its ready endpoints
        (kube-proxy's job; no virtual IP here), a headless one's -> ready pods, or every pod
        with publishNotReadyAddresses."""
        out: dict[str, list[str]] = {}
        for s in services:
            sel = s["spec"].get("selector", {})
            # A pod has its IP from its creation on (init containers included).
            eps = [p.ip for p in pods if (p.proc is None or p.proc.poll() is None)
                   and labels_match(sel, p.dep["spec"]["template"]["metadata"]["labels"])
                   and (s["spec"].get("publishNotReadyAddresses") or p.is_ready)]
            n = s["metadata"]["name"]
            for alias in (n, f"{n}.{namespace}", f"{n}.{namespace}.svc",
                          f"{n}.{namespace}.svc.cluster.local"):
                out[alias] = eps
        return out

    def refresh_dns() -> None:
        with lock:
            for p in pods:
                p.is_ready = p.ready()
            net.publish(dns(), {p.name: p.ip for p in pods if p.netns})

    def launch(name: str, role: str) -> ClusterPod:
        p = ClusterPod(name, role, deps[role], docs, net, work, logs)
        p.is_ready = False
        pods.append(p)
        with lock:
            net.publish(dns(), {q.name: q.ip for q in pods if q.netns})
        t = threading.Thread(target=p.start, args=(dns(),), daemon=True)
        t.start()
        threads.append(t)
        return p

    def wait_ready(ps: list[ClusterPod], limit: float = 120) -> None:
        t0 = time.monotonic()
        while True:
            refresh_dns()
            for p in ps:
                if p.error:
                    fail(f"{p.error} (log: {(logs / (p.name + '.log')).relative_to(ROOT)})")
                if p.proc and p.proc.poll() is not None:
                    fail(f"{p.name} exited {p.proc.returncode}: {p.log_text()[-600:]}")
            if all(p.is_ready for p in ps):
                for p in ps:
                    if p.ready_at is None:
                        p.ready_at = time.monotonic()
                return
            if time.monotonic() - t0 > limit:
                fail("not ready within %d s: %s" % (limit, ", ".join(
                    f"{p.name} {'ready' if p.is_ready else 'not ready'}" for p in ps)))
            time.sleep(0.2)

    def wait_started(p: ClusterPod, limit: float = 120) -> None:
        """Waits for `p`'s startup probe to pass (a router is not ready before workers
        register, so readiness cannot be what a pod waits for)."""
        t0 = time.monotonic()
        while p.startup_s is None:
            if p.error:
                fail(f"{p.error} (log: {(logs / (p.name + '.log')).relative_to(ROOT)})")
            if p.proc and p.proc.poll() is not None:
                fail(f"{p.name} exited {p.proc.returncode}: {p.log_text()[-600:]}")
            if time.monotonic() - t0 > limit:
                fail(f"{p.name}: startup probe not passed within {limit:.0f} s")
            time.sleep(0.2)

    def service_url(svc: str, port: str = "http") -> str:
        """A client's view of a Service: its name resolved by cluster DNS to a ready endpoint."""
        refresh_dns()
        s = next(x for x in services if x["metadata"]["name"] == svc)
        eps = dns()[f"{svc}.{namespace}.svc.cluster.local"]
        if not eps:
            fail(f"Service {svc} has no ready endpoint")
        sp = next(x for x in s["spec"]["ports"] if x["name"] == port)
        return f"http://{eps[0]}:{sp['port']}"

    observed: set[tuple[str, str, int]] = set()

    def observe() -> None:
        """Records which pod talks to which pod on which port (listening side = dst)."""
        if not net.netns_ok:
            return
        by_ip = {p.ip: p for p in pods}
        for p in pods:
            if p.proc is None or p.proc.poll() is not None:
                continue
            for lip, lp, pip, pp, inbound in net.connections(p.netns):
                if inbound and pip in by_ip:
                    observed.add((by_ip[pip].role, p.role, lp))
                elif inbound and pip == f"{net.SUBNET}.1":
                    observed.add(("client", p.role, lp))

    def on_term(*_: object) -> None:
        raise CheckFailed("deploy-check got SIGTERM")  # so that `finally` cleans up

    old_handler = signal.signal(signal.SIGTERM, on_term)
    t_all = time.monotonic()
    try:
        net.setup()
        if net.netns_ok:
            where = f"own network namespaces ({net.SUBNET}.0/24, veth + bridge)"
        else:
            where = f"loopback fallback (127.0.1.N, network namespaces unavailable: {net.reason})"
            log(f"WARNING: {where}")
        log(f"{CLUSTER_OVERLAY}: router, 1 prefill and 2 decode pods in {where}")

        # One pod after another, each past its startup probe (its model loaded and its latency
        # model profiled) before the next starts. The router places requests by the workers'
        # latency models; in a cluster each pod profiles on cores of its own, while here pods
        # starting together would profile under each other's load, leaving one decode worker
        # with a model so slow that the router rightly sends it nothing (and, idle, it never
        # corrects it).
        router = launch("router-0", "router")
        wait_started(router)
        prefill = launch("prefill-0", "prefill")
        wait_started(prefill)
        decodes = []
        for name in ("decode-0", "decode-1"):
            decodes.append(launch(name, "decode"))
            wait_started(decodes[-1])
        wait_ready(pods)
        t_ready = time.monotonic() - t_all
        for p in pods:
            log(f"  {p.name} {p.ip}: startup probe {p.startup_s:.1f} s; "
                f"{' '.join(a for a in p.argv if a.startswith('--') and not a.startswith('--flagfile'))}")
        overrides = sorted({o for p in pods for o in p.overrides})
        rlog = router.log_text()
        for p in [prefill, *decodes]:
            if f"{p.role} worker '{p.role}@{p.ip}:" not in rlog:
                fail(f"the router's log shows no registration of {p.name} at its pod IP {p.ip}")
        if "loading weights" in rlog:
            fail("the router loaded weights")
        summary.append(f"router + 1 prefill + 2 decode pods in {where}, all ready in "
                       f"{t_ready:.1f} s (workers registered with their pod IPs via the "
                       "Service name tandem-router-cluster"
                       + (")" if net.netns_ok else ", replaced by its address in argv)"))

        # Clients: through the Service `tandem` only.
        base = service_url("tandem")
        code, body, _ = http("GET", f"{base}/v1/models", key=key)
        if code != 200 or [m["id"] for m in json.loads(body)["data"]] != [model]:
            fail(f"GET /v1/models via Service tandem: {code} {body[:200]!r}")
        req = {"model": model, "max_tokens": 16, "temperature": 0, "slo": CHECK_SLO,
               "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
        code, _, _ = http("POST", f"{base}/v1/chat/completions", req)
        if code != 401:
            fail(f"chat completion via the router without the API key: {code}, want 401")
        for _ in range(MAX_REFUSALS):
            code, body, _ = http("POST", f"{base}/v1/chat/completions", req, key=key, timeout=120)
            if code != 429:
                break
            time.sleep(1)
        if code != 200:
            fail(f"chat completion via the router: {code} {body[:300]!r}")
        code, body, _ = http("POST", prefill.url("/v1/completions"),
                             {"model": model, "prompt": "Hi", "max_tokens": 4}, key=key)
        if code != 503:
            fail(f"a prefill worker answered a completion with {code}, want 503")

        all_outs: list[dict] = []

        def burst(n: int, max_tokens: int) -> list[dict]:
            outs = [{} for _ in range(n)]
            ts = [threading.Thread(target=stream_request, args=(base, key, model, max_tokens, o),
                                   daemon=True) for o in outs]
            for t in ts:
                t.start()
            for t in ts:
                t.join(180)
            all_outs.extend(outs)
            return outs

        def burst_ok(n: int, max_tokens: int, what: str) -> None:
            outs = burst(n, max_tokens)
            if any(not request_ok(o, max_tokens) for o in outs):
                fail(f"requests {what} failed: {outs}")

        def steps(ps: list[ClusterPod]) -> list[float]:
            return [p.metrics().get("tandem:engine_steps", 0) for p in ps]

        before = steps(decodes)
        outs = burst(6, 24)
        observe()
        bad = [o for o in outs if not request_ok(o, 24)]
        if bad:
            fail(f"requests through the router failed: {bad[:2]}")
        after = steps(decodes)
        used = [a > b for a, b in zip(after, before)]
        if not all(used):
            fail(f"not every decode pod took requests (engine steps {before} -> {after})")
        summary.append("via Service tandem: models, chat 200 with the Secret's key (401 "
                       "without), 6 concurrent streams complete, both decode pods used; "
                       "workers refuse generation (503)")

        # Metric names: every tandem:* name the manifests use is exported by the role that
        # serves it (router: SLOs and queue time; workers: queues and KV).
        fams = {p.role: set(re.findall(r"^# TYPE (\S+) ", http("GET", p.url("/metrics"))[1]
                                       .decode(), re.M)) for p in (router, prefill, decodes[0])}
        for h in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
            pool = h["spec"]["scaleTargetRef"]["name"].removeprefix("tandem-")
            for m in h["spec"]["metrics"]:
                role = "router" if m["type"] == "Object" else pool
                src = {"tandem_ttft_slo_miss_ratio": "tandem:slo_ttft_met_total",
                       "tandem_tpot_slo_miss_ratio": "tandem:slo_tpot_met_total",
                       "tandem_request_queue_time_p90_seconds": "tandem:request_queue_time_seconds",
                       "tandem_num_requests_waiting": "tandem:num_requests_waiting",
                       "tandem_kv_cache_usage_ratio": "tandem:kv_cache_usage_ratio"}.get(
                    m[m["type"].lower()]["metric"]["name"])
                if src is None or src not in fams[role]:
                    fail(f"HPA {h['metadata']['name']}: {m[m['type'].lower()]['metric']['name']} "
                         f"needs {src} from the {role}, which does not export it")
        names = set().union(*referenced.values())
        missing = {n for n in names if re.sub(r"_(bucket|sum|count)$", "", n) not in fams["router"]
                   and n not in fams["router"]}
        if missing:
            fail(f"metric names the manifests use but the router does not export: {missing}")

        # Scale-up of the decode pool: a third pod from the same template, nothing restarted.
        t0 = time.monotonic()
        pids = {p.name: p.proc.pid for p in pods}
        d2 = launch("decode-2", "decode")
        decodes.append(d2)
        wait_ready([d2])
        if f"decode worker 'decode@{d2.ip}:" not in router.log_text():
            fail("the new decode pod did not register with the router")
        if dns()[f"tandem-decode.{namespace}.svc.cluster.local"] != [d.ip for d in decodes]:
            fail(f"headless Service tandem-decode lists {dns()['tandem-decode']}, want the three "
                 "decode pods")
        b2 = steps([d2])[0]
        for _ in range(4):
            outs = burst(6, 16)
            if any(not request_ok(o, 16) for o in outs):
                fail(f"requests after the scale-up failed: {[o for o in outs if not request_ok(o, 16)][:2]}")
            if steps([d2])[0] > b2:
                break
        else:
            fail("the new decode pod took no request in 4 bursts of 6")
        if any(p.proc.pid != pids[p.name] or p.proc.poll() is not None for p in pods if p is not d2):
            fail("a pod restarted during the scale-up")
        summary.append(f"decode scale-up 2 -> 3: the new pod ready and registered in "
                       f"{time.monotonic() - t0:.1f} s, took requests, no other pod restarted")

        # Drain of a decode pod under load, as the kubelet deletes it: preStop, SIGTERM,
        # grace period. Streams it holds must finish; nothing may be lost.
        n_streams, max_tokens = 8, 384
        outs = [{} for _ in range(n_streams)]
        firsts = [threading.Event() for _ in outs]
        ts = [threading.Thread(target=stream_request, args=(base, key, model, max_tokens, o, f),
                               daemon=True) for o, f in zip(outs, firsts)]
        for t in ts:
            t.start()
        for f in firsts:
            f.wait(60)
        observe()
        running = {d.name: d.metrics().get("tandem:num_requests_running", 0) for d in decodes}
        victim = max(decodes, key=lambda d: running[d.name])
        if running[victim.name] < 1:
            fail(f"no decode pod holds a stream to drain ({running})")
        grace = victim.pod.spec.get("terminationGracePeriodSeconds", 30)
        pre = victim.c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        log(f"draining {victim.name} ({int(running[victim.name])} of {n_streams} streams on it): "
            f"preStop sleep {pre} s, SIGTERM, grace {grace} s")
        t_del = time.monotonic()
        time.sleep(pre)
        # Still under load when SIGTERM comes: streams running on the victim right now.
        at_term = victim.metrics().get("tandem:num_requests_running", 0)
        os.kill(victim.proc.pid, signal.SIGTERM)
        t_term = time.monotonic()
        if at_term < 1:
            fail(f"{victim.name} held no stream any more when SIGTERM came (streams too short)")
        # More load during the drain: new requests must avoid the draining pod (or be retried).
        time.sleep(1.5)
        late = [{} for _ in range(4)]
        lts = [threading.Thread(target=stream_request, args=(base, key, model, 32, o), daemon=True)
               for o in late]
        for t in lts:
            t.start()
        ready_during = None
        while victim.proc.poll() is None and time.monotonic() - t_del < grace:
            if ready_during is None and time.monotonic() - t_term > 0.5:
                ready_during = victim.ready()
            time.sleep(0.05)
        t_exit = time.monotonic() - t_del
        if victim.proc.poll() is None:
            victim.kill()
            fail(f"{victim.name} still running {grace} s after termination began: SIGKILL")
        if victim.proc.returncode != 0:
            fail(f"{victim.name} exited {victim.proc.returncode} after SIGTERM, want 0")
        if ready_during:
            fail(f"{victim.name}'s readiness probe passed while draining")
        for t in ts + lts:
            t.join(120)
        all_outs.extend(outs + late)
        bad = [o for o in outs if not request_ok(o, max_tokens)] + \
              [o for o in late if not request_ok(o, 32)]
        if bad:
            fail(f"requests lost in the drain of {victim.name}: {bad[:3]}")
        victim.prober.halt()
        pods.remove(victim)
        decodes.remove(victim)
        burst_ok(4, 16, "after the drain")
        msg = (f"drain of {victim.name} under load: {int(at_term)} of {n_streams} streams on it "
               f"at SIGTERM (after preStop {pre} s), exit 0 {t_exit:.1f} s after deletion "
               f"(grace {grace} s), not ready meanwhile; all {n_streams} + 4 started during the "
               f"drain completed 200 with {max_tokens}/32 tokens; 4 more after it")
        log(msg)
        summary.append(msg)

        def rollout_router() -> str:
            nonlocal router, base
            t0 = time.monotonic()
            pre_r = router.c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            time.sleep(pre_r)
            os.kill(router.proc.pid, signal.SIGTERM)
            try:
                router.proc.wait(timeout=router.pod.spec.get("terminationGracePeriodSeconds", 30))
            except subprocess.TimeoutExpired:
                fail("the old router did not exit within its grace period")
            if router.proc.returncode != 0:
                fail(f"the old router exited {router.proc.returncode} after SIGTERM")
            router.prober.halt()
            pods.remove(router)
            old_ip = router.ip
            router = launch("router-1", "router")
            wait_ready([router], limit=90)
            t_ready_r = time.monotonic() - t0
            while True:  # ready needs one worker of each role; wait for all of them
                rlog = router.log_text()
                missing = [p.name for p in [prefill, *decodes]
                           if f"{p.role} worker '{p.role}@{p.ip}:" not in rlog]
                if not missing:
                    break
                if time.monotonic() - t0 > 90:
                    fail(f"{missing} did not register with the new router within 90 s")
                time.sleep(0.2)
            t_back = time.monotonic() - t0
            base = service_url("tandem")
            burst_ok(4, 16, "through the new router")
            msg = (f"router rollout (Recreate): preStop {pre_r} s, old router exit 0, new router pod "
                   f"({old_ip} -> {router.ip}) ready {t_ready_r:.1f} s and all {1 + len(decodes)} "
                   f"workers registered again {t_back:.1f} s after the old one's deletion; requests "
                   "through Service tandem ok")
            log(msg)
            return msg

        # A router rollout (strategy Recreate): the old router drains and exits, a new router
        # pod (a new IP) starts; the workers find it again through the Service name (their
        # channel re-resolves it every second, and starts over after three lost heartbeats).
        if router_rollout:
            summary.append(rollout_router())

        # Every pod-to-pod connection seen is one the NetworkPolicies allow.
        # Every pod-to-pod connection seen is one the NetworkPolicies allow.
        if net.netns_ok:
            peers = {p.role: peer_of_template(p.role, p.dep["spec"]["template"], namespace)
                     for p in [router, prefill, *decodes]}
            for src, dst, port in sorted(observed):
                if src == "client":
                    continue  # the kubelet's probes and this check's client, from the node
                if not np_allows(policies, peers[src], peers[dst], port, namespace):
                    fail(f"a {src} pod connected to a {dst} pod on port {port}, which the "
                         "NetworkPolicies block")
            edges = sorted({f"{s}->{d}:{p}" for s, d, p in observed if s != "client"})
            if not any("prefill->decode" in e for e in edges) or \
                    not any(e.startswith("router->") for e in edges):
                fail(f"expected router->worker and prefill->decode connections, saw {edges}")
            summary.append("pod-to-pod connections seen (" + ", ".join(edges) +
                           ") all allowed by the NetworkPolicies")
        n_req = len(all_outs)
        refused = sum(o.get("refused", 0) for o in all_outs)
        summary.append(f"{n_req} streamed requests, every one 200 and complete"
                       + (f" ({refused} refusals 429 + Retry-After retried by the client)"
                          if refused else ""))
        if overrides:
            summary.append("rendered args run as they are except " + ", ".join(overrides))

        # The rest terminate as the kubelet would; each exits 0.
        for p in [*decodes, prefill, router]:
            os.kill(p.proc.pid, signal.SIGTERM)
        for p in [*decodes, prefill, router]:
            try:
                p.proc.wait(timeout=p.pod.spec.get("terminationGracePeriodSeconds", 30))
            except subprocess.TimeoutExpired:
                fail(f"{p.name} did not exit after SIGTERM")
            if p.proc.returncode != 0:
                fail(f"{p.name} exited {p.proc.returncode} after SIGTERM")
        return summary
    finally:
        for p in pods:
            p.kill()
        for p in pods:
            if getattr(p, "log", None):
                p.log.close()
        net.cleanup()
        signal.signal(signal.SIGTERM, old_handler)
