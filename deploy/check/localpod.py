"""A pod of a rendered manifest run as local processes, as the kubelet would run it: volumes
as directories (ConfigMap, Secret and projected keys as files, emptyDirs empty), each
container's command, args and env from the YAML (Secret and ConfigMap values, the downward
API's pod name, namespace and IP substituted), image paths mapped to this build tree, and its
probes polled with their periods and thresholds. Shared by deploy_check.py (the colocated pod)
and local_cluster.py (the disaggregated pods)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Where the image keeps things (deploy/docker/Dockerfile.*) -> where they are in this tree.
IMAGE_PATHS = {
    "/opt/tandem/bin": ROOT / "build" / "bin",
    "/opt/tandem/scripts": ROOT / "scripts",
    "/opt/tandem/models": ROOT / "models",
}
IMAGE_USER = 10001


class CheckFailed(Exception):
    pass


def fail(msg: str) -> None:
    raise CheckFailed(msg)


def log(msg: str) -> None:
    print(f"deploy-check: {msg}", flush=True)



def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def flags_from_configmap(docs: list[dict]) -> dict[str, str]:
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tandemd-flags"):
            text = d["data"]["tandemd.flags"]
            return dict(m.groups() for m in re.finditer(r"^--([a-z_]+)=(.*)$", text, re.M))
    fail("no tandemd-flags ConfigMap")
    return {}



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, key: str | None = None,
         timeout: float = 30.0) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class LocalPod:
    """One pod of a rendered Deployment, run as local processes: on loopback with its ports
    remapped (netns None), or in the network namespace `netns` with the pod IP `ip`."""

    def __init__(self, docs: list[dict], deployment: dict, work: Path, ip: str = "127.0.0.1",
                 netns: str | None = None, name: str = "tandem-local-0"):
        self.docs = docs
        self.dep = deployment
        self.spec = deployment["spec"]["template"]["spec"]
        self.work = work
        self.ip, self.netns, self.name = ip, netns, name
        self.namespace = deployment["metadata"].get("namespace", "default")
        self.configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        self.secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        self.volume_dirs: dict[str, Path] = {}
        self.ports: dict[int, int] = {}      # containerPort -> loopback port
        self.port_names: dict[str, int] = {}  # name -> containerPort
        self.cwd = work / "cwd"
        self.cwd.mkdir()
        self.notes: list[str] = []

    # Volumes: ConfigMap/Secret keys become files, emptyDirs empty dirs.
    def materialize_volumes(self) -> None:
        for v in self.spec.get("volumes", []):
            d = self.work / "volumes" / v["name"]
            d.mkdir(parents=True)
            if "configMap" in v:
                data = self.configmaps[v["configMap"]["name"]].get("data", {})
                for k, val in data.items():
                    (d / k).write_text(val)
            elif "secret" in v:
                data = self.secrets[v["secret"]["secretName"]].get("data", {})
                for k, val in data.items():
                    (d / k).write_bytes(base64.b64decode(val))
                    (d / k).chmod(v["secret"].get("defaultMode", 0o644))
            elif "projected" in v:
                for src in v["projected"]["sources"]:
                    if "configMap" in src:
                        for k, val in self.configmaps[src["configMap"]["name"]]["data"].items():
                            (d / k).write_text(val)
                    elif "secret" in src:
                        for k, val in self.secrets[src["secret"]["name"]]["data"].items():
                            (d / k).write_bytes(base64.b64decode(val))
                    else:
                        fail(f"local run: volume {v['name']}: projected {list(src)} unsupported")
            elif "emptyDir" not in v:
                fail(f"local run: volume {v['name']}: only configMap, secret, emptyDir supported")
            self.volume_dirs[v["name"]] = d

    def path_map(self, c: dict) -> list[tuple[str, str]]:
        m: dict[str, str] = {k: str(v) for k, v in IMAGE_PATHS.items()}
        for mount in c.get("volumeMounts", []):
            if mount["mountPath"] in IMAGE_PATHS:
                continue  # the model volume is this tree's models/ (filled by make model)
            m[mount["mountPath"]] = str(self.volume_dirs[mount["name"]])
        return sorted(m.items(), key=lambda kv: -len(kv[0]))

    def rewrite(self, s: str, pmap: list[tuple[str, str]]) -> str:
        # One pass, longest prefix first, so a mapped path is never mapped again.
        table = dict(pmap)
        alt = "|".join(re.escape(src) for src, _ in pmap)
        s = re.sub(rf"(?<![\w/.-])({alt})(?=/|$|\s|\")", lambda m: table[m.group(1)], s,
                   flags=re.M)
        for cport, lport in self.ports.items():
            if cport != lport:
                s = re.sub(rf"(--(?:port|grpc_port|grpc-port)[= ]){cport}\b", rf"\g<1>{lport}", s)
        if self.netns is None:  # on loopback, each pod binds its own address
            s = re.sub(r"(--host[= ])0\.0\.0\.0\b", rf"\g<1>{self.ip}", s)
        return s

    def env_for(self, c: dict) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work / "home"),
               "LANG": "C.UTF-8"}
        (self.work / "home").mkdir(exist_ok=True)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = self.expand(e["value"], env)
            elif "secretKeyRef" in e.get("valueFrom", {}):
                r = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = base64.b64decode(self.secrets[r["name"]]["data"][r["key"]]).decode()
            elif "configMapKeyRef" in e.get("valueFrom", {}):
                r = e["valueFrom"]["configMapKeyRef"]
                env[e["name"]] = self.configmaps[r["name"]]["data"][r["key"]]
            elif "fieldRef" in e.get("valueFrom", {}):
                fp = e["valueFrom"]["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                                  "status.podIP": self.ip, "status.podIPs": self.ip}.get(fp, "")
        return env

    @staticmethod
    def expand(s: str, env: dict[str, str]) -> str:
        # Kubernetes' $(VAR) expansion: defined variables only; $$ escapes.
        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                      lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)

    def argv(self, c: dict, env: dict[str, str], pmap: list[tuple[str, str]]) -> list[str]:
        cmd = [self.expand(a, env) for a in c.get("command", [])]
        args = [self.expand(a, env) for a in c.get("args", [])]
        if not cmd:
            fail(f"local run: container {c['name']} has no command (the image default "
                 "cannot be run here)")
        return [self.rewrite(a, pmap) for a in cmd + args]

    def prepare_container(self, c: dict) -> tuple[list[str], dict[str, str]]:
        pmap = self.path_map(c)
        # Files inside mounted ConfigMaps name in-container paths and ports too (the flags file).
        for mount in c.get("volumeMounts", []):
            d = self.volume_dirs.get(mount["name"])
            vol = next(v for v in self.spec["volumes"] if v["name"] == mount["name"])
            if d is not None and ("configMap" in vol or "projected" in vol):
                for f in d.iterdir():
                    f.write_text(self.rewrite(f.read_text(), pmap))
        env = self.env_for(c)
        env = {k: self.rewrite(v, pmap) if k in ("HOME", "TMPDIR") else v for k, v in env.items()}
        return self.argv(c, env, pmap), env


class Prober:
    """The kubelet's probe loop for one container."""

    def __init__(self, c: dict, pod: LocalPod, proc: subprocess.Popen):
        self.c, self.pod, self.proc = c, pod, proc
        self.stop = threading.Event()
        self.liveness_failures_max = 0
        self.readiness_log: list[tuple[float, bool]] = []
        self.thread: threading.Thread | None = None

    def once(self, probe: dict) -> bool:
        if "httpGet" in probe:
            g = probe["httpGet"]
            cport = g["port"] if isinstance(g["port"], int) else self.pod.port_names[g["port"]]
            url = f"http://{self.pod.ip}:{self.pod.ports[cport]}{g.get('path', '/')}"
            try:
                code, _, _ = http("GET", url, timeout=probe.get("timeoutSeconds", 1))
                return 200 <= code < 400
            except (OSError, urllib.error.URLError):
                return False
        if "tcpSocket" in probe:
            p = probe["tcpSocket"]["port"]
            cport = p if isinstance(p, int) else self.pod.port_names[p]
            try:
                socket.create_connection((self.pod.ip, self.pod.ports[cport]),
                                         timeout=probe.get("timeoutSeconds", 1)).close()
                return True
            except OSError:
                return False
        fail(f"local run: unsupported probe {list(probe)}")
        return False

    def wait_startup(self) -> float:
        p = self.c["startupProbe"]
        t0 = time.monotonic()
        time.sleep(p.get("initialDelaySeconds", 0))
        failures = 0
        while True:
            if self.proc.poll() is not None:
                fail(f"tandemd exited with {self.proc.returncode} before its startup probe passed")
            if self.once(p):
                return time.monotonic() - t0
            failures += 1
            if failures >= p.get("failureThreshold", 3):
                fail(f"startupProbe failed {failures} times: the kubelet would restart the "
                     f"container ({time.monotonic() - t0:.0f} s)")
            time.sleep(p.get("periodSeconds", 10))

    def wait_ready(self, limit: float = 120) -> float:
        p = self.c["readinessProbe"]
        t0 = time.monotonic()
        while not self.once(p):
            if time.monotonic() - t0 > limit or self.proc.poll() is not None:
                fail("readinessProbe never passed")
            time.sleep(p.get("periodSeconds", 10))
        return time.monotonic() - t0

    def run_background(self) -> None:
        lp, rp = self.c["livenessProbe"], self.c["readinessProbe"]

        def loop() -> None:
            next_l = next_r = time.monotonic()
            consecutive = 0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_l:
                    ok = self.once(lp)
                    consecutive = 0 if ok else consecutive + 1
                    self.liveness_failures_max = max(self.liveness_failures_max, consecutive)
                    next_l = now + lp.get("periodSeconds", 10)
                if now >= next_r:
                    self.readiness_log.append((now, self.once(rp)))
                    next_r = now + rp.get("periodSeconds", 10)
                self.stop.wait(0.05)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()


def read_completion_stream(r, out: dict, first: threading.Event | None = None) -> None:
    """Reads an OpenAI completion SSE stream from response `r` into `out`: status, done
    ([DONE] seen), error (an error event), usage, chunks (choice deltas), finish (the last
    finish_reason); sets `first` at the first chunk."""
    out["status"] = r.status
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        payload = line[6:]
        if payload == "[DONE]":
            out["done"] = True
            break
        ev = json.loads(payload)
        if "error" in ev:
            out["error"] = ev["error"]
            continue
        if ev.get("usage"):
            out["usage"] = ev["usage"]
        for ch in ev.get("choices", []):
            out["chunks"] += 1
            if ch.get("finish_reason"):
                out["finish"] = ch["finish_reason"]
        if first is not None and out["chunks"]:
            first.set()
