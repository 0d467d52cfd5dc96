"""NetworkPolicy, evaluated: whether the policies of a namespace let TCP from one pod (or a
client elsewhere) reach another pod's port. make deploy-check uses it twice: on the rendered
disaggregated overlays (the intended traffic matrix, allowed and blocked flows), and on the
connections it sees between the local cluster's pods while they serve."""

from __future__ import annotations

from localpod import fail, labels_match, pod_templates

class Peer:
    """A pod (or a client) as NetworkPolicy sees it: labels, its namespace's labels, ports."""

    def __init__(self, name: str, labels: dict, ns_labels: dict, ports: dict[str, int] | None = None):
        self.name, self.labels, self.ns_labels = name, labels, ns_labels
        self.ports = ports or {}  # container port name -> number


def peer_of_template(name: str, tpl: dict, namespace: str) -> Peer:
    ports = {p["name"]: p["containerPort"] for c in tpl["spec"]["containers"]
             for p in c.get("ports", []) if "name" in p}
    return Peer(name, tpl["metadata"].get("labels", {}),
                {"kubernetes.io/metadata.name": namespace}, ports)


def selector_matches(sel: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); {} selects everything."""
    if sel is None:
        return True
    if not labels_match(sel.get("matchLabels", {}), labels):
        return False
    for e in sel.get("matchExpressions", []):
        has, v = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and v in e.get("values", []), "NotIn": not has or v not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def np_allows(policies: list[dict], src: Peer, dst: Peer, port: int, namespace: str) -> bool:
    """Whether TCP from src to dst:port passes the NetworkPolicies of `namespace` (the policies'
    own namespace; src may be elsewhere): dst's ingress and src's egress must both allow it."""
    def port_ok(rule_ports: list[dict] | None, target: Peer) -> bool:
        if not rule_ports:
            return True
        for rp in rule_ports:
            if rp.get("protocol", "TCP") != "TCP":
                continue
            p = rp.get("port")
            if p is None or (isinstance(p, int) and p <= port <= rp.get("endPort", p)) or \
                    (isinstance(p, str) and target.ports.get(p) == port):
                return True
        return False

    def peer_ok(peers: list[dict] | None, other: Peer) -> bool:
        if not peers:
            return True
        for pe in peers:
            if "ipBlock" in pe:
                continue  # pod traffic here; ipBlocks name addresses outside the cluster
            in_ns = ("namespaceSelector" in pe and selector_matches(pe["namespaceSelector"], other.ns_labels)) \
                or ("namespaceSelector" not in pe
                    and other.ns_labels.get("kubernetes.io/metadata.name") == namespace)
            if in_ns and selector_matches(pe.get("podSelector"), other.labels):
                return True
        return False

    def side(pod: Peer, kind: str, other: Peer, target: Peer) -> bool:
        if pod.ns_labels.get("kubernetes.io/metadata.name") != namespace:
            return True  # not governed by these policies
        sel = [p for p in policies if selector_matches(p["spec"]["podSelector"], pod.labels)
               and kind in p["spec"].get("policyTypes", ["Ingress"])]
        if not sel:
            return True
        key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        return any(peer_ok(r.get(peers_key), other) and port_ok(r.get("ports"), target)
                   for p in sel for r in p["spec"].get(key, []))

    return side(dst, "Ingress", src, dst) and side(src, "Egress", dst, dst)


def check_cluster_policies(name: str, docs: list[dict]) -> int:
    """The disaggregated overlays' traffic matrix: who may reach whom on which port."""
    ns = next((d["metadata"].get("namespace") for d in docs if d["kind"] == "Deployment"), "default")
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {t["metadata"]["labels"].get("app.kubernetes.io/component"): peer_of_template(
        t["metadata"]["labels"].get("app.kubernetes.io/component"), t, ns) for _, t in pod_templates(docs)}
    for role in ("router", "prefill", "decode"):
        if role not in pods:
            fail(f"{name}: no {role} pod template")
    client = Peer("a client pod in another namespace", {"app": "client"},
                  {"kubernetes.io/metadata.name": "clients"})
    same_ns_client = Peer("an unrelated pod in the namespace", {"app": "other"},
                          {"kubernetes.io/metadata.name": ns})
    prom = Peer("Prometheus (namespace monitoring)", {"app.kubernetes.io/name": "prometheus"},
                {"kubernetes.io/metadata.name": "monitoring"})
    r, p, d = pods["router"], pods["prefill"], pods["decode"]
    allow = [(client, r, "http"), (client, r, "grpc"), (same_ns_client, r, "http"),
             (p, r, "cluster"), (d, r, "cluster"), (r, p, "cluster"), (r, d, "cluster"),
             (p, d, "kv"), (prom, r, "http"), (prom, p, "http"), (prom, d, "http")]
    deny = [(client, r, "cluster"), (same_ns_client, r, "cluster"), (client, p, "http"),
            (client, p, "cluster"), (client, d, "http"), (client, d, "cluster"), (client, d, "kv"),
            (same_ns_client, p, "cluster"), (same_ns_client, d, "kv"), (d, p, "cluster"),
            (p, d, "cluster"), (r, d, "kv"), (d, d, "kv"), (p, p, "cluster"), (d, d, "cluster"),
            (r, p, "http"), (prom, p, "cluster"), (prom, d, "kv")]
    for src, dst, port in allow + deny:
        if port not in dst.ports:
            fail(f"{name}: the {dst.name} pod has no port named {port}")
        got = np_allows(pols, src, dst, dst.ports[port], ns)
        if got != ((src, dst, port) in allow):
            fail(f"{name}: NetworkPolicy {'blocks' if not got else 'allows'} {src.name} -> "
                 f"{dst.name}:{port} ({dst.ports[port]}); want it "
                 f"{'allowed' if (src, dst, port) in allow else 'blocked'}")
    return len(allow) + len(deny)
