#!/usr/bin/env python3
"""make deploy-check (started by deploy/check/run, which provides the tools).

1. Renders every kustomization under deploy/k8s (overlays/*, monitoring/*) with kubectl's
   kustomize, from a scratch copy of deploy/k8s holding a random API key (the real key file
   is not in git).
2. Validates each rendered object offline: built-in kinds against the Kubernetes OpenAPI
   schemas of kubectl's minor version (kubernetes-validate, strict: unknown fields fail);
   InferencePool against a small schema written here from its API reference; other custom
   resources (ServiceMonitor, HTTPRoute) are skipped with a note. Then cross-checks what no
   schema sees: selectors match the pods, named ports exist, referenced ConfigMaps/Secrets
   exist, HPA metrics are served by the prometheus-adapter rules for the resource they
   describe, grace period >= preStop + --shutdown_timeout, non-root and read-only root
   filesystem, and the disaggregated overlays' NetworkPolicies allow and block the intended
   flows (netpol.py). Lints the Dockerfiles with hadolint and checks they use
   scripts/install-deps and the Makefile's CMake configure line.
3. Runs the colocated-cpu overlay's pod as local processes: init containers, then tandemd,
   with command, args and env from the rendered YAML (ConfigMap and Secret values
   substituted, volumes as temp dirs, image paths mapped to the build tree, container ports
   to free loopback ports), polls startup/readiness/liveness probes as the kubelet does,
   sends requests with the Secret's API key, checks every metric name the manifests refer
   to against /metrics, then terminates it as the kubelet would: preStop, SIGTERM with a
   stream in flight, exit within terminationGracePeriodSeconds (localpod.py runs a pod).
4. Runs the disaggregated-cpu overlay as local processes (local_cluster.py): router, one
   prefill and two decode pods in their own network namespaces, requests through the
   router's Service, a decode scale-up, a decode drain under load, a router rollout (skip it
   with --no-router-rollout).
The last line printed summarises what was checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from local_cluster import CLUSTER_OVERLAY, run_local_cluster
from localpod import (IMAGE_PATHS, read_completion_stream, IMAGE_USER, ROOT, CheckFailed, LocalPod, Prober, fail,
                      flags_from_configmap, free_port, http, labels_match, log, pod_templates)
from netpol import check_cluster_policies

K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
RUN_OVERLAY = "colocated-cpu"
# Git-ignored secret files the overlays are generated from (random in the scratch copy).
CLUSTER_SECRET_FILES = ["components/disaggregated/cluster-secret"]

# InferencePool (inference.networking.k8s.io/v1): the fields and limits of its API reference
# (gateway-api-inference-extension.sigs.k8s.io/reference/spec), for the fields used here.
INFERENCEPOOL_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "inference.networking.k8s.io/v1"},
        "kind": {"const": "InferencePool"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "targetPorts", "endpointPickerRef"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                   "additionalProperties": {"type": "string"}}},
                },
                "targetPorts": {
                    "type": "array", "minItems": 1, "maxItems": 8,
                    "items": {"type": "object", "additionalProperties": False,
                              "required": ["number"],
                              "properties": {"number": {"type": "integer", "minimum": 1,
                                                        "maximum": 65535}}},
                },
                "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
                "endpointPickerRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "port": {"type": "object", "additionalProperties": False,
                                 "required": ["number"],
                                 "properties": {"number": {"type": "integer", "minimum": 1,
                                                           "maximum": 65535}}},
                        "failureMode": {"enum": ["FailOpen", "FailClose"]},
                    },
                },
            },
        },
    },
}


def obj_id(d: dict) -> str:
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------- 1. render

def kustomizations() -> list[Path]:
    dirs = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    dirs += sorted(p.parent for p in (K8S / "monitoring").glob("*/kustomization.yaml"))
    if not dirs:
        fail("no kustomizations under deploy/k8s/overlays")
    return dirs


def render_all(kubectl: str, scratch: Path, out_dir: Path) -> tuple[dict[str, list[dict]], str]:
    shutil.copytree(K8S, scratch / "k8s")
    (scratch / "k8s" / "base" / "api-key").write_text(secrets.token_hex(24))
    for secret_file in CLUSTER_SECRET_FILES:
        (scratch / "k8s" / secret_file).write_text(secrets.token_hex(32))
    version = json.loads(subprocess.run([kubectl, "version", "--client", "-o", "json"],
                                        check=True, capture_output=True, text=True).stdout)
    rendered: dict[str, list[dict]] = {}
    for d in kustomizations():
        rel = d.relative_to(K8S)
        res = subprocess.run([kubectl, "kustomize", str(scratch / "k8s" / rel)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            fail(f"kustomize {rel}: {res.stderr.strip()}")
        name = str(rel).replace("/", "-")
        (out_dir / f"{name}.yaml").write_text(res.stdout)
        rendered[name] = [doc for doc in yaml.safe_load_all(res.stdout) if doc]
        log(f"rendered {rel}: {len(rendered[name])} objects -> "
            f"{(out_dir / (name + '.yaml')).relative_to(ROOT)}")
    cv = version["clientVersion"]
    return rendered, f"kubectl {cv['gitVersion']} / kustomize {version.get('kustomizeVersion')}"


# --------------------------------------------------------------------------- 2. validate

def validate_schemas(rendered: dict[str, list[dict]], k8s_version: str) -> tuple[int, dict]:
    validated = 0
    skipped: dict[str, int] = {}
    for name, docs in rendered.items():
        for d in docs:
            try:
                kubernetes_validate.validate(d, k8s_version, strict=True)
                validated += 1
            except kubernetes_validate.SchemaNotFoundError:
                key = f"{d['kind']} ({d['apiVersion']})"
                if d["kind"] == "InferencePool":
                    try:
                        jsonschema.validate(d, INFERENCEPOOL_SCHEMA)
                    except jsonschema.ValidationError as e:
                        fail(f"{name}: {obj_id(d)}: {e.message} at {list(e.absolute_path)}")
                    key += ", own schema"
                    validated += 1
                skipped[key] = skipped.get(key, 0) + 1
            except kubernetes_validate.ValidationError as e:
                err = e.caused_by if hasattr(e, "caused_by") else e
                path = list(getattr(err, "absolute_path", []))
                fail(f"{name}: {obj_id(d)} fails the Kubernetes {k8s_version} schema: "
                     f"{getattr(err, 'message', err)} at {path}")
    for key, n in sorted(skipped.items()):
        if "own schema" in key:
            log(f"note: {n} x {key.replace(', own schema', '')}: custom resource, no Kubernetes "
                "schema; validated against deploy_check.py's InferencePool schema")
        else:
            log(f"note: {n} x {key}: custom resource, no Kubernetes schema here: schema "
                "validation skipped (cross-checked below where it refers to other objects)")
    return validated, skipped


def cross_check(name: str, docs: list[dict], adapter_metrics: set[str]) -> int:
    """Checks no schema sees. Returns the number of checks made."""
    n = 0
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    templates = pod_templates(docs)

    def pods_selected(sel: dict, what: str) -> list[tuple[dict, dict]]:
        hit = [(w, t) for w, t in templates if labels_match(sel, t["metadata"].get("labels", {}))]
        if not hit:
            fail(f"{name}: {what} selects no pod template ({sel})")
        return hit

    for w, t in templates:
        sel = w["spec"]["selector"]["matchLabels"]
        if not labels_match(sel, t["metadata"]["labels"]):
            fail(f"{name}: {obj_id(w)}: selector does not match its own template labels")
        spec = t["spec"]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
                fail(f"{name}: {obj_id(w)}: volume {v['name']} names a missing ConfigMap")
            if "secret" in v and ("Secret", v["secret"]["secretName"]) not in names:
                fail(f"{name}: {obj_id(w)}: volume {v['name']} names a missing Secret")
            for src in v.get("projected", {}).get("sources", []):
                for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                    if key in src and (kind, src[key]["name"]) not in names:
                        fail(f"{name}: {obj_id(w)}: volume {v['name']} projects a missing {kind}")
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            fail(f"{name}: {obj_id(w)}: pod must set runAsNonRoot")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation"):
                fail(f"{name}: {obj_id(w)}/{c['name']}: needs readOnlyRootFilesystem and no "
                     "privilege escalation")
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    fail(f"{name}: {obj_id(w)}/{c['name']}: mount of unknown volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref and ("Secret", ref["secretKeyRef"]["name"]) not in names:
                    fail(f"{name}: {obj_id(w)}: env {e['name']} names a missing Secret")
                if "configMapKeyRef" in ref and \
                        ("ConfigMap", ref["configMapKeyRef"]["name"]) not in names:
                    fail(f"{name}: {obj_id(w)}: env {e['name']} names a missing ConfigMap")
            port_names = {p["name"] for p in c.get("ports", []) if "name" in p}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(probe, {}).get("httpGet")
                if p and isinstance(p["port"], str) and p["port"] not in port_names:
                    fail(f"{name}: {obj_id(w)}/{c['name']}: {probe} uses unknown port {p['port']}")
            n += 1
        if spec.get("serviceAccountName") and \
                ("ServiceAccount", spec["serviceAccountName"]) not in names:
            fail(f"{name}: {obj_id(w)}: missing ServiceAccount {spec['serviceAccountName']}")

        # tandemd pods: probes, and the termination budget against --shutdown_timeout.
        td = [c for c in spec["containers"] if c["name"] == "tandemd"]
        if td:
            c = td[0]
            for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"),
                                ("readinessProbe", "/ready")):
                if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                    fail(f"{name}: {obj_id(w)}: {probe} must GET {path}")
            flags = flags_from_configmap(docs)
            shutdown = float(flags.get("shutdown_timeout", 30))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < pre + shutdown + 5:
                fail(f"{name}: {obj_id(w)}: terminationGracePeriodSeconds {grace} < preStop "
                     f"{pre} + --shutdown_timeout {shutdown} + 5 s margin")
            if spec.get("securityContext", {}).get("runAsUser") != IMAGE_USER:
                fail(f"{name}: {obj_id(w)}: runAsUser must be the image's user {IMAGE_USER}")
            n += 2

    for s in by_kind.get("Service", []):
        if "selector" not in s["spec"]:
            continue
        for w, t in pods_selected(s["spec"]["selector"], obj_id(s)):
            ports = {p.get("name"): p["containerPort"] for c in t["spec"]["containers"]
                     for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if isinstance(tp, str) and tp not in ports:
                    fail(f"{name}: {obj_id(s)}: targetPort {tp} is no port of {obj_id(w)}")
        n += 1
    for p in by_kind.get("PodDisruptionBudget", []):
        pods_selected(p["spec"]["selector"]["matchLabels"], obj_id(p))
        n += 1
    for np in by_kind.get("NetworkPolicy", []):
        pods_selected(np["spec"]["podSelector"]["matchLabels"], obj_id(np))
        n += 1
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in names:
            fail(f"{name}: {obj_id(h)}: scale target {ref['kind']}/{ref['name']} is missing")
        for m in h["spec"].get("metrics", []):
            if m["type"] in ("Pods", "Object", "External"):
                mname = m[m["type"].lower()]["metric"]["name"]
                if mname not in adapter_metrics:
                    fail(f"{name}: {obj_id(h)}: metric {mname} is served by no "
                         "prometheus-adapter rule (deploy/k8s/monitoring/prometheus-adapter)")
                # The adapter serves a metric for the resources its rule maps labels to.
                want = "pod" if m["type"] == "Pods" else None
                if m["type"] == "Object":
                    obj = m["object"]["describedObject"]
                    if (obj["kind"], obj["name"]) not in names:
                        fail(f"{name}: {obj_id(h)}: metric {mname} describes "
                             f"{obj['kind']}/{obj['name']}, which is missing")
                    want = obj["kind"].lower()
                if want and want not in adapter_metrics[mname]:
                    fail(f"{name}: {obj_id(h)}: the adapter rule for {mname} maps no "
                         f"`{want}` label (resources: {sorted(adapter_metrics[mname])})")
        n += 1
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in by_kind.get("Service", [])
                if labels_match(sel, s["metadata"].get("labels", {}))]
        if not svcs:
            fail(f"{name}: {obj_id(sm)} selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep["port"] == p.get("name") for s in svcs for p in s["spec"]["ports"]):
                fail(f"{name}: {obj_id(sm)}: no selected Service has a port named {ep['port']}")
        n += 1
    for ip in by_kind.get("InferencePool", []):
        hit = pods_selected(ip["spec"]["selector"]["matchLabels"], obj_id(ip))
        for w, t in hit:
            cports = {p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for tp in ip["spec"]["targetPorts"]:
                if tp["number"] not in cports:
                    fail(f"{name}: {obj_id(ip)}: targetPort {tp['number']} is no port of {obj_id(w)}")
        epp = ip["spec"]["endpointPickerRef"]
        svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == epp["name"]]
        if not svc or epp["port"]["number"] not in [p["port"] for p in svc[0]["spec"]["ports"]]:
            fail(f"{name}: {obj_id(ip)}: endpoint picker Service {epp['name']}:"
                 f"{epp['port']['number']} is missing")
        n += 1
    for r in by_kind.get("HTTPRoute", []):
        for rule in r["spec"]["rules"]:
            for b in rule.get("backendRefs", []):
                if (b.get("kind", "Service"), b["name"]) not in names:
                    fail(f"{name}: {obj_id(r)}: backend {b.get('kind')}/{b['name']} is missing")
        n += 1
    return n


def metric_names_referenced(rendered: dict[str, list[dict]]) -> dict[str, set[str]]:
    """tandem:* names used by the adapter rules, the dashboard and the EPP config."""
    refs: dict[str, set[str]] = {}
    pat = re.compile(r"tandem:[a-z0-9_]+")
    for docs in rendered.values():
        for d in docs:
            if d["kind"] != "ConfigMap":
                continue
            for key, text in d.get("data", {}).items():
                found = set(pat.findall(text))
                if found:
                    refs.setdefault(f"ConfigMap {d['metadata']['name']}/{key}", set()).update(found)
    return refs


def adapter_metric_names(rendered: dict[str, list[dict]]) -> dict[str, set[str]]:
    """Custom metric name -> the Kubernetes resources its rule maps labels to."""
    out: dict[str, set[str]] = {}
    for docs in rendered.values():
        for d in docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "adapter-config":
                cfg = yaml.safe_load(d["data"]["config.yaml"])
                for rule in cfg["rules"]:
                    res = {o["resource"] for o in rule["resources"].get("overrides", {}).values()}
                    out.setdefault(rule["name"]["as"], set()).update(res)
    if not out:
        fail("no prometheus-adapter rules rendered")
    return out


def check_epp_config(rendered: dict[str, list[dict]]) -> int:
    n = 0
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tandem-epp-config"):
                cfg = yaml.safe_load(d["data"]["epp-config.yaml"])
                if cfg.get("kind") != "EndpointPickerConfig":
                    fail(f"{name}: EPP config is not an EndpointPickerConfig")
                ext = [p for p in cfg["plugins"] if p["type"] == "core-metrics-extractor"][0]
                params = ext["parameters"]
                engines = {e["name"]: e for e in params["engineConfigs"]}
                eng = engines.get(params["defaultEngine"])
                if not eng:
                    fail(f"{name}: EPP defaultEngine {params['defaultEngine']} has no engineConfig")
                label = params["engineLabelKey"]
                for w, t in pod_templates(docs):
                    lab = t["metadata"]["labels"]
                    if lab.get("app.kubernetes.io/name") == "tandem" and \
                            lab.get(label) not in engines:
                        fail(f"{name}: {obj_id(w)}: pod label {label} does not name an EPP engine")
                refs = {p["pluginRef"] for prof in cfg["schedulingProfiles"] for p in prof["plugins"]}
                types = {p.get("name", p["type"]) for p in cfg["plugins"]}
                if refs - types:
                    fail(f"{name}: EPP profile refers to unknown plugins {refs - types}")
                n += 1
    return n


def lint_dockerfiles(hadolint: str) -> int:
    files = sorted(DOCKER.glob("Dockerfile.*"))
    files = [f for f in files if not f.name.endswith(".dockerignore")]
    res = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True)
    if res.returncode != 0:
        fail("hadolint:\n" + res.stdout + res.stderr)
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"cmake -S \. -B \$\(BUILD\) (-G Ninja -DCMAKE_BUILD_TYPE=\w+)", make)
    if not m:
        fail("Makefile: no `cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=...` line")
    configure = f"cmake -S . -B build {m.group(1)}"
    for f in files:
        text = f.read_text()
        if "scripts/install-deps" not in text:
            fail(f"{f.name}: does not run scripts/install-deps")
        if configure not in text:
            fail(f"{f.name}: does not run the Makefile's configure line `{configure}`")
        for path in ("/opt/tandem/bin/", "/opt/tandem/scripts/fetch-model", "/opt/tandem/models",
                     f"USER {IMAGE_USER}"):
            if path not in text:
                fail(f"{f.name}: lacks {path}, which the manifests rely on")
    pk = subprocess.run([str(DOCKER / "runtime-packages"),
                         str(IMAGE_PATHS["/opt/tandem/bin"] / "tandemd")],
                        capture_output=True, text=True)
    pkgs = pk.stdout.split()
    if pk.returncode != 0 or not any(p.startswith("libgrpc++") for p in pkgs):
        fail(f"deploy/docker/runtime-packages on build/bin/tandemd: {pk.stderr or pkgs}")
    log(f"hadolint: {', '.join(f.name for f in files)} clean; both run scripts/install-deps and "
        f"`{configure}`; runtime-packages finds {len(pkgs)} packages for tandemd here")
    return len(files)


# --------------------------------------------------------------------------- 3. local pod

def stream_completion(base: str, key: str, model: str, out: dict, first: threading.Event) -> None:
    """A streamed completion long enough to be in flight when SIGTERM comes."""
    body = {"model": model, "stream": True, "max_tokens": 128, "temperature": 0,
            "ignore_eos": True, "prompt": "Once upon a time"}
    req = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {key}",
                                                         "Content-Type": "application/json"})
    out.update(chunks=0, done=False, finish=None, error=None, usage=None)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            read_completion_stream(r, out, first)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        out["error"] = repr(e)
    finally:
        first.set()


def run_local_pod(docs: list[dict], work: Path, logs: Path,
                  referenced: dict[str, set[str]]) -> list[str]:
    deps = [d for d in docs if d["kind"] == "Deployment"
            and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "tandem"]
    if len(deps) != 1:
        fail(f"{RUN_OVERLAY}: expected one tandem Deployment, found {len(deps)}")
    dep = deps[0]
    pod = LocalPod(docs, dep, work)
    pod.materialize_volumes()
    spec = pod.spec
    summary: list[str] = []

    # Init containers, in order, each to completion.
    for c in spec.get("initContainers", []):
        argv, env = pod.prepare_container(c)
        log(f"init container {c['name']}: {' '.join(argv)}")
        with open(logs / f"{c['name']}.log", "w") as lf:
            res = subprocess.run(argv, env=env, cwd=pod.cwd, stdout=lf, stderr=subprocess.STDOUT,
                                 timeout=900)
        if res.returncode != 0:
            fail(f"init container {c['name']} exited {res.returncode} "
                 f"(log: {(logs / (c['name'] + '.log')).relative_to(ROOT)})")
        summary.append(f"init {c['name']} ok")

    c = next(x for x in spec["containers"] if x["name"] == "tandemd")
    for p in c.get("ports", []):
        pod.ports[p["containerPort"]] = free_port()
        if "name" in p:
            pod.port_names[p["name"]] = p["containerPort"]
    argv, env = pod.prepare_container(c)
    key = env.get("FLAGS_api_key") or fail("tandemd container gets no FLAGS_api_key from the Secret")
    shown = " ".join(argv)
    log(f"container tandemd: {shown}")
    log(f"  env from Secret: FLAGS_api_key ({len(key)} chars); ports "
        + ", ".join(f"{n} {cp}->127.0.0.1:{pod.ports[cp]}" for n, cp in pod.port_names.items()))
    http_port = pod.ports[pod.port_names["http"]]
    base = f"http://127.0.0.1:{http_port}"
    flags = flags_from_configmap(docs)
    model = flags.get("served_model_name")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)

    lf = open(logs / "tandemd.log", "w")
    proc = subprocess.Popen(argv, env=env, cwd=pod.cwd, stdout=lf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    prober = Prober(c, pod, proc)
    try:
        t_start = prober.wait_startup()
        log(f"startupProbe passed after {t_start:.1f} s")
        prober.wait_ready()
        if not prober.once(c["livenessProbe"]):
            fail("livenessProbe fails on a started pod")
        summary.append(f"startup probe {t_start:.1f} s, readiness and liveness ok")
        prober.run_background()

        # Requests, as a client of the Service would send them.
        code, body, _ = http("GET", f"{base}/v1/models", key=key)
        ids = [m["id"] for m in json.loads(body)["data"]] if code == 200 else []
        if code != 200 or ids != [model]:
            fail(f"GET /v1/models: {code} {body[:200]!r} (want the served name {model})")
        req = {"model": model, "max_tokens": 16, "temperature": 0,
               "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
        code, body, _ = http("POST", f"{base}/v1/chat/completions", req)
        if code != 401:
            fail(f"chat completion without the API key: {code}, want 401")
        code, body, _ = http("POST", f"{base}/v1/chat/completions", req, key=key, timeout=120)
        if code != 200:
            fail(f"chat completion with the Secret's API key: {code} {body[:300]!r}")
        resp = json.loads(body)
        text = resp["choices"][0]["message"]["content"]
        if not text or resp["usage"]["completion_tokens"] < 1:
            fail(f"chat completion returned no text: {resp}")
        log(f"chat completion: 200, {resp['usage']['completion_tokens']} tokens: {text!r}")
        summary.append("chat completion 200 with the Secret's key (401 without)")
        if "grpc" in pod.port_names:
            socket.create_connection(("127.0.0.1", pod.ports[pod.port_names["grpc"]]), 5).close()
            summary.append("gRPC port open")

        # Every tandem:* name the manifests use must be a metric family tandemd exports.
        code, body, _ = http("GET", f"{base}/metrics")
        families = set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))
        missing = {}
        for where, names in referenced.items():
            for n in names:
                fam = re.sub(r"_(bucket|sum|count)$", "", n)
                if n not in families and fam not in families:
                    missing.setdefault(where, set()).add(n)
        if missing:
            fail(f"metric names the manifests use but tandemd does not export: {missing}")
        n_names = len(set().union(*referenced.values()))
        log(f"/metrics: all {n_names} tandem:* names used by the dashboard, adapter rules and "
            "EPP config are exported")
        summary.append(f"{n_names} referenced metric names exported")

        # Termination as the kubelet does it: preStop (sleep), then SIGTERM, all within the
        # grace period. A stream started during preStop must finish during the drain.
        t0 = time.monotonic()
        log(f"terminating: preStop sleep {pre} s, then SIGTERM; grace period {grace} s")
        stream: dict = {}
        first = threading.Event()
        time.sleep(pre)
        # A request that arrived at the end of preStop: SIGTERM once its first token is out.
        th = threading.Thread(target=stream_completion, args=(base, key, model, stream, first),
                              daemon=True)
        th.start()
        if not first.wait(timeout=60):
            fail("the streamed completion sent no token within 60 s")
        os.kill(proc.pid, signal.SIGTERM)
        t_term = time.monotonic()
        drained_503 = ready_503 = None
        while proc.poll() is None and time.monotonic() - t0 < grace:
            if drained_503 is None and th.is_alive():
                # The signal is handled asynchronously: /ready turns 503 a moment after kill().
                # Once it has, a new request must be refused too.
                try:
                    ready_503, _, _ = http("GET", f"{base}/ready", timeout=5)
                    if ready_503 == 503 or time.monotonic() - t_term > 2:
                        drained_503, _, _ = http("POST", f"{base}/v1/chat/completions", req,
                                                 key=key, timeout=5)
                except OSError:
                    pass  # it stopped between the two
            time.sleep(0.05)
        prober.halt()
        t_exit = time.monotonic() - t0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            fail(f"tandemd still running {grace} s (terminationGracePeriodSeconds) after "
                 "termination began: the kubelet would SIGKILL it")
        th.join(timeout=10)
        if proc.returncode != 0:
            fail(f"tandemd exited {proc.returncode} after SIGTERM, want 0")
        if stream.get("error") or not stream.get("done") or stream.get("finish") != "length" \
                or stream.get("chunks", 0) < 2:
            fail(f"the stream in flight at SIGTERM did not finish cleanly: {stream}")
        if prober.liveness_failures_max >= c["livenessProbe"].get("failureThreshold", 3):
            fail("livenessProbe failed failureThreshold times in a row while serving")
        after = [ok for t, ok in prober.readiness_log if t > t_term + 0.5]
        msg = (f"exit 0 {t_exit:.1f} s after termination began ({t_exit - pre:.1f} s after "
               f"SIGTERM) <= grace {grace} s; stream in flight finished ({stream['chunks']} "
               f"chunks, finish_reason length)")
        if drained_503 is not None:
            if drained_503 != 503 or ready_503 != 503:
                fail(f"while draining: /ready {ready_503} and a new request {drained_503}, "
                     "want 503 and 503")
            msg += "; /ready and new requests 503 during the drain"
        if after and any(after):
            fail("readinessProbe still passed after SIGTERM")
        log(msg)
        summary.append(f"SIGTERM drain: {msg}")
        writes = {v: sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
                  for v, d in pod.volume_dirs.items()
                  if not any("configMap" in x or "secret" in x
                             for x in spec["volumes"] if x["name"] == v)}
        log(f"files written to emptyDir volumes: { {v: f for v, f in writes.items() if f} }")
        leftovers = list(pod.cwd.iterdir())
        if leftovers:
            fail(f"processes wrote into their working directory (read-only root in the pod): "
                 f"{leftovers}")
    finally:
        prober.halt()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lf.close()
    return summary


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--build-dir", default="build",
                    help="the CMake build whose bin/tandemd runs (default: build)")
    ap.add_argument("--no-run", action="store_true", help="skip running the pods locally")
    ap.add_argument("--no-netns", action="store_true",
                    help="run the cluster's pods on loopback addresses, not network namespaces")
    ap.add_argument("--no-router-rollout", action="store_true",
                    help="skip rolling the router (Recreate, new pod IP) and waiting for the "
                         "workers to register again")
    ap.add_argument("--only-cluster", action="store_true",
                    help="of the local runs, run only the disaggregated cluster")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()

    t0 = time.monotonic()
    IMAGE_PATHS["/opt/tandem/bin"] = (ROOT / args.build_dir / "bin").resolve()
    out_dir = ROOT / "build" / "deploy-check"
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "rendered").mkdir(parents=True)
    (out_dir / "logs").mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="tandem-deploy-check-"))
    try:
        rendered, tools = render_all(args.kubectl, scratch, out_dir / "rendered")
        k8s_version = re.search(r"v(\d+\.\d+)", tools).group(1)
        n_objects = sum(len(d) for d in rendered.values())
        validated, skipped = validate_schemas(rendered, k8s_version)
        adapter = adapter_metric_names(rendered)
        n_cross = sum(cross_check(name, docs, adapter) for name, docs in rendered.items())
        n_cross += check_epp_config(rendered)
        n_policy = sum(check_cluster_policies(name, docs) for name, docs in rendered.items()
                       if any(t["metadata"]["labels"].get("app.kubernetes.io/component") == "router"
                              for _, t in pod_templates(docs)))
        log(f"NetworkPolicy: {n_policy} allowed/blocked flows of the disaggregated overlays as "
            "intended (clients -> router only; router <-> workers on cluster; prefill -> decode "
            "on kv)")
        n_cross += n_policy
        log(f"schemas: {validated} objects valid against Kubernetes {k8s_version} (strict); "
            f"{n_cross} cross-reference checks passed")
        n_docker = lint_dockerfiles(args.hadolint)
        parts = [f"rendered {len(rendered)} kustomizations ({n_objects} objects) with {tools}",
                 f"{validated} objects schema-valid (Kubernetes {k8s_version} strict"
                 f"{', InferencePool by own schema' if any('own' in k for k in skipped) else ''})"
                 f", skipped CRDs: {', '.join(sorted(k.split(' (')[0] for k in skipped if 'own' not in k))}",
                 f"{n_cross} cross-checks", f"hadolint clean on {n_docker} Dockerfiles"]
        if not args.no_run:
            if not (IMAGE_PATHS["/opt/tandem/bin"] / "tandemd").exists():
                fail(f"{args.build_dir}/bin/tandemd missing: run `make build` first")
            if not (ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf").exists():
                fail("models/SmolLM2-135M-Instruct.Q4_1.gguf missing: run `make model` first")
            if not args.only_cluster:
                work = scratch / "pod"
                work.mkdir()
                summary = run_local_pod(rendered[f"overlays-{RUN_OVERLAY}"], work,
                                        out_dir / "logs", metric_names_referenced(rendered))
                parts.append(f"ran {RUN_OVERLAY}'s pod locally: " + "; ".join(summary))
            work = scratch / "cluster"
            work.mkdir()
            summary = run_local_cluster(rendered[f"overlays-{CLUSTER_OVERLAY}"], work,
                                        out_dir / "logs", metric_names_referenced(rendered),
                                        use_netns=not args.no_netns,
                                        router_rollout=not args.no_router_rollout)
            parts.append(f"ran {CLUSTER_OVERLAY} locally: " + "; ".join(summary))
        print(f"deploy-check: OK in {time.monotonic() - t0:.0f} s: " + "; ".join(parts), flush=True)
        return 0
    except CheckFailed as e:
        print(f"deploy-check: FAILED: {e}", file=sys.stderr, flush=True)
        print(f"deploy-check: FAILED (rendered YAML and logs in "
              f"{out_dir.relative_to(ROOT)}/)", flush=True)
        return 1
    finally:
        if args.keep:
            log(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
