"""Render the vestibule chart and validate what it produces.

Run through helm/validate.sh, which provides the toolchain (helm/requirements.txt):
  - Helm's own template engine, via helm-python-sdk (Helm v4 Go SDK in a
    shared library, so no helm binary is downloaded);
  - Kubernetes OpenAPI schemas, via kubernetes-validate (strict: unknown fields
    are errors).

For the default values and every helm/vestibule/ci/*-values.yaml it renders
the chart, validates every manifest against the schemas of the oldest and the
newest Kubernetes version the case supports, and checks the chart's contracts
(security context, RBAC scope, wiring between operator, gateway and Services).
It also checks that the committed CRDs equal `vestibule-operator crd [acmeissuer]`, that
the committed dashboard parses and names only metrics the binaries export,
and that bad values fail to render. Exits 1 on any failure.

Usage: python validate.py --crd-from FILE --acme-crd-from FILE [--verbose]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "vestibule")
REPO = os.path.dirname(HERE)
RELEASE = "vestibule"
NAMESPACE = "vestibule-system"
CONTROLLER = "vestibule.dev/ingress-controller"

# Kinds from CRDs that kubernetes-validate has no schema for. They get a
# structural check here instead (see check_servicemonitor).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("gateway.networking.k8s.io/v1", "GatewayClass")}

# Write verbs the operator may hold, and on what. Everything else is read-only.
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate"}
ALLOWED_WRITES = {
    ("networking.k8s.io", "ingresses/status"): {"patch", "update"},
    ("vestibule.dev", "tenants/status"): {"patch", "update"},
    ("vestibule.dev", "acmeissuers/status"): {"patch", "update"},
    ("gateway.networking.k8s.io", "gatewayclasses/status"): {"patch", "update"},
    ("gateway.networking.k8s.io", "gateways/status"): {"patch", "update"},
    ("gateway.networking.k8s.io", "httproutes/status"): {"patch", "update"},
    # ACME certificates and the account, in the release namespace only
    # (checked below).
    ("", "secrets"): {"create", "update"},
    ("", "configmaps"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "events"): {"create", "patch"},
    ("coordination.k8s.io", "leases"): {"create", "update"},
}
READ_ONLY = {"get", "list", "watch"}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checks = 0

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.items.append(what)
        return ok


F = Failures()


# === rendering ===


def load_values(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path in sorted(out):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc is None:
                continue
            doc["__source"] = path
            docs.append(doc)
    return docs


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


# === small helpers ===


def kn(doc: dict[str, Any]) -> str:
    md = doc.get("metadata", {})
    ns = md.get("namespace")
    return f"{doc.get('kind')}/{ns + '/' if ns else ''}{md.get('name')}"


def find(docs: list[dict[str, Any]], kind: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True):
    return [d for d in docs if d.get("kind") == kind and pred(d)]


def component(doc: dict[str, Any]) -> str | None:
    return doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")


def workloads(docs):
    return [d for d in docs if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")]


def pod_labels(w: dict[str, Any]) -> dict[str, str]:
    return w["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def args_of(container: dict[str, Any]) -> dict[str, list[str]]:
    """--flag=value / --flag args as {flag: [values]}."""
    out: dict[str, list[str]] = {}
    for a in container.get("args", []):
        if not a.startswith("--"):
            continue
        flag, _, value = a.partition("=")
        out.setdefault(flag, []).append(value)
    return out


# === schema validation ===


def validate_schemas(docs, versions: list[str], case: str, skipped: set[str]) -> None:
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__source"}
        key = (body.get("apiVersion"), body.get("kind"))
        if key in CRD_KINDS:
            skipped.add(f"{key[1]} ({key[0]})")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(body, version, strict=True)
                F.check(True, "")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                F.check(False, f"[{case}] {kn(doc)} ({doc['__source']}) invalid for Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                F.check(False, f"[{case}] {kn(doc)}: no Kubernetes {version} schema for {key[0]} {key[1]}")


# === contract checks ===


def check_basics(docs, case: str) -> None:
    seen = set()
    for d in docs:
        F.check(bool(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name")),
                f"[{case}] {d['__source']}: object without apiVersion/kind/name")
        key = (d.get("apiVersion"), d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name"))
        F.check(key not in seen, f"[{case}] duplicate object {kn(d)}")
        seen.add(key)
        name = d["metadata"].get("name", "")
        F.check(len(name) <= 63 or d.get("kind") in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
                f"[{case}] {kn(d)}: name longer than 63 characters")


def check_security(docs, case: str, v: dict[str, Any]) -> None:
    expected_image = (
        f"{v['image']['repository']}@{v['image']['digest']}" if v["image"].get("digest")
        else f"{v['image']['repository']}:{v['image'].get('tag') or '0.1.0'}"
    )
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        F.check(psc.get("runAsNonRoot") is True, f"[{case}] {kn(w)}: pod runAsNonRoot is not true")
        F.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"[{case}] {kn(w)}: seccomp is not RuntimeDefault")
        F.check(spec.get("hostNetwork") is not True, f"[{case}] {kn(w)}: hostNetwork")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            who = f"[{case}] {kn(w)} container {c['name']}"
            F.check(sc.get("readOnlyRootFilesystem") is True, f"{who}: root filesystem not read-only")
            F.check(sc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation not false")
            F.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{who}: capabilities not dropped")
            F.check(not sc.get("capabilities", {}).get("add"), f"{who}: adds capabilities")
            F.check(sc.get("privileged") is not True, f"{who}: privileged")
            F.check(c.get("image") == expected_image, f"{who}: image {c.get('image')!r}, want {expected_image!r}")
            F.check(c.get("resources", {}).get("requests"), f"{who}: no resource requests")
            flags = [a.partition("=")[0] for a in c.get("args", []) if a.startswith("--")]
            dups = sorted({f for f in flags if flags.count(f) > 1 and f != "--watch-namespace"})
            F.check(not dups, f"{who}: flags given twice (the binaries reject that): {dups}")
            F.check(c.get("livenessProbe") and c.get("readinessProbe"), f"{who}: missing liveness/readiness probe")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                F.check(port in ports or isinstance(port, int), f"{who}: {probe} port {port!r} is not a container port")


def check_operator(docs, case: str, v: dict[str, Any]) -> None:
    ops = [w for w in workloads(docs) if component(w) == "operator"]
    if not F.check(len(ops) == 1 and ops[0]["kind"] == "Deployment", f"[{case}] want one operator Deployment, got {[kn(w) for w in ops]}"):
        return
    op = ops[0]
    F.check(op["spec"]["replicas"] == v["operator"]["replicas"], f"[{case}] operator replicas {op['spec']['replicas']}")
    if case == "default":
        F.check(op["spec"]["replicas"] == 2, f"[{case}] operator should default to 2 replicas")
    spec = op["spec"]["template"]["spec"]
    c = spec["containers"][0]
    F.check(c.get("args", [None])[0] == "run", f"[{case}] operator args must start with `run`")
    a = args_of(c)
    env = {e["name"]: e for e in c.get("env", [])}
    F.check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
            f"[{case}] operator POD_NAMESPACE not from the downward API")
    F.check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
            f"[{case}] operator POD_NAME not from the downward API")
    F.check(a.get("--identity") == ["$(POD_NAME)"], f"[{case}] operator --identity is not the pod name")
    F.check(bool(a.get("--lease-name", [""])[0]), f"[{case}] operator has no --lease-name")
    F.check(sorted(a.get("--watch-namespace", [])) == sorted(set(v["operator"]["watchNamespaces"])),
            f"[{case}] operator --watch-namespace {a.get('--watch-namespace')}")
    F.check(("--require-tenant" in a) == bool(v["operator"]["requireTenant"]), f"[{case}] operator --require-tenant")
    F.check(("--gateway-api" in a) == bool(v["gatewayAPI"]["enabled"]), f"[{case}] operator --gateway-api")
    tls = v["configServer"]["tls"]["enabled"]
    F.check(("--tls-cert" in a) == tls and ("--tls-key" in a) == tls, f"[{case}] operator TLS flags vs configServer.tls.enabled={tls}")
    # Plain HTTP only when asked for, and then said on the command line.
    F.check(("--insecure-listen" in a) == (not tls), f"[{case}] operator --insecure-listen vs configServer.tls.enabled={tls}")
    F.check(spec.get("serviceAccountName") == find_sa(docs, "operator", v), f"[{case}] operator serviceAccountName")

    # --publish-service names the chart's gateway Service (unless overridden).
    if v["operator"]["publishService"]["enabled"]:
        pub = a.get("--publish-service", [""])[0]
        if v["operator"]["publishService"]["override"]:
            F.check(pub == v["operator"]["publishService"]["override"], f"[{case}] --publish-service {pub!r} ignores the override")
        else:
            ns, _, name = pub.partition("/")
            svcs = find(docs, "Service", lambda d: d["metadata"]["name"] == name and d["metadata"].get("namespace") == ns)
            F.check(len(svcs) == 1 and svcs[0]["spec"]["type"] in ("LoadBalancer", "NodePort"),
                    f"[{case}] --publish-service {pub!r} is not the chart's gateway Service")
    else:
        F.check("--publish-service" not in a, f"[{case}] --publish-service set while disabled")

    # Service for the config server.
    listen = a.get("--listen", [""])[0]
    F.check(listen.endswith(f":{v['configServer']['port']}"), f"[{case}] operator --listen {listen!r}")
    svc = find(docs, "Service", lambda d: component(d) == "operator")
    if F.check(len(svc) == 1, f"[{case}] want one operator Service"):
        s = svc[0]
        F.check(s["spec"].get("type", "ClusterIP") == "ClusterIP", f"[{case}] operator Service must be ClusterIP")
        F.check(selects(s["spec"]["selector"], pod_labels(op)), f"[{case}] operator Service selects no operator pod")
        ports = {p["name"]: p for p in s["spec"]["ports"]}
        F.check(ports.get("config", {}).get("port") == v["configServer"]["port"], f"[{case}] operator Service config port")


def find_sa(docs, comp: str, v: dict[str, Any]) -> str | None:
    sas = find(docs, "ServiceAccount", lambda d: component(d) == comp)
    if sas:
        return sas[0]["metadata"]["name"]
    return v[comp]["serviceAccount"]["name"] or "default"


def check_gateway(docs, case: str, v: dict[str, Any]) -> None:
    g = v["gateway"]
    gws = [w for w in workloads(docs) if component(w) == "gateway"]
    if not F.check(len(gws) == 1 and gws[0]["kind"] == g["kind"], f"[{case}] want one gateway {g['kind']}, got {[kn(w) for w in gws]}"):
        return
    gw = gws[0]
    spec = gw["spec"]["template"]["spec"]
    c = spec["containers"][0]
    a = args_of(c)
    F.check(spec.get("automountServiceAccountToken") is False, f"[{case}] gateway pod mounts a ServiceAccount token")
    for sa in find(docs, "ServiceAccount", lambda d: component(d) == "gateway"):
        F.check(sa.get("automountServiceAccountToken") is False, f"[{case}] gateway ServiceAccount automounts its token")
    gw_sa = spec.get("serviceAccountName")
    F.check(gw_sa == find_sa(docs, "gateway", v), f"[{case}] gateway serviceAccountName")
    for b in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        F.check(all(s.get("name") != gw_sa for s in b.get("subjects", [])), f"[{case}] {kn(b)} grants RBAC to the gateway")

    # The cluster-wide rate limit store: flags only with a URL, files
    # mounted from the Secrets the values name.
    store = g["rateLimitStore"]
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {vol["name"]: vol for vol in spec.get("volumes", [])}
    F.check(a.get("--rate-limit-store", [""])[0] == store["url"] if store["url"] else "--rate-limit-store" not in a,
            f"[{case}] gateway --rate-limit-store vs gateway.rateLimitStore.url")
    for flag, secret, key in (("--rate-limit-store-password-file", "passwordSecret", "password"),
                              ("--rate-limit-store-ca", "caSecret", "ca.crt")):
        want = bool(store["url"] and store[secret])
        path = a.get(flag, [""])[0]
        if F.check((flag in a) == want, f"[{case}] gateway {flag} vs rateLimitStore.{secret}") and want:
            vol = volumes.get(mounts.get(os.path.dirname(path), ""), {})
            F.check(vol.get("secret", {}).get("secretName") == store[secret]
                    and any(i["key"] == key and os.path.basename(path) == i["path"] for i in vol["secret"].get("items", [])),
                    f"[{case}] {flag} {path} is not Secret {store[secret]}'s {key}")

    # The client address flags follow gateway.clientAddress.
    client = g["clientAddress"]
    F.check(("--proxy-protocol" in a) == bool(client["proxyProtocol"]),
            f"[{case}] gateway --proxy-protocol vs clientAddress.proxyProtocol")
    F.check(a.get("--trusted-proxies", [""])[0] == ",".join(client["trustedProxies"]) if client["trustedProxies"]
            else "--trusted-proxies" not in a, f"[{case}] gateway --trusted-proxies vs clientAddress.trustedProxies")

    # --operator URL: scheme by TLS, host = operator Service DNS name, port = its config port.
    url = a.get("--operator", [""])[0]
    m = re.fullmatch(r"(https?)://([^:/]+):(\d+)", url)
    op_svc = find(docs, "Service", lambda d: component(d) == "operator")
    if F.check(bool(m) and len(op_svc) == 1, f"[{case}] gateway --operator {url!r}"):
        scheme, host, port = m.groups()
        tls = v["configServer"]["tls"]["enabled"]
        F.check(scheme == ("https" if tls else "http"), f"[{case}] gateway --operator scheme {scheme} with tls={tls}")
        want_host = f"{op_svc[0]['metadata']['name']}.{op_svc[0]['metadata']['namespace']}.svc"
        F.check(host == want_host, f"[{case}] gateway --operator host {host}, want {want_host}")
        cfg = [p for p in op_svc[0]["spec"]["ports"] if p["name"] == "config"]
        F.check(bool(cfg) and int(port) == cfg[0]["port"], f"[{case}] gateway --operator port {port}")
        F.check(("--ca-file" in a) == tls, f"[{case}] gateway --ca-file vs tls={tls}")
    F.check(a.get("--admin") == [f"0.0.0.0:{g['ports']['admin']}"], f"[{case}] gateway --admin {a.get('--admin')}")
    F.check(("--admin-token-file" in a) == bool(g["admin"]["tokenSecret"]), f"[{case}] gateway --admin-token-file vs gateway.admin.tokenSecret")
    F.check("--token-file" in a and "--state-dir" in a, f"[{case}] gateway needs --token-file and --state-dir")

    # Probes on the admin port.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        hg = c.get(probe, {}).get("httpGet", {})
        F.check(hg.get("port") in ("admin", g["ports"]["admin"]) and hg.get("path") == path,
                f"[{case}] gateway {probe} is not {path} on the admin port")

    # Volumes: token Secret, CA only (never the key), writable state dir.
    vols = {vol["name"]: vol for vol in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    state_dir = a.get("--state-dir", [""])[0]
    state_mount = mounts.get(state_dir)
    F.check(bool(state_mount) and "emptyDir" in vols.get(state_mount["name"], {}) and not state_mount.get("readOnly"),
            f"[{case}] gateway --state-dir {state_dir!r} is not a writable emptyDir")
    token_secret = v["configServer"]["token"]["existingSecret"] or None
    secrets_rendered = {d["metadata"]["name"] for d in find(docs, "Secret")}
    for w in workloads(docs):
        wvols = w["spec"]["template"]["spec"].get("volumes", [])
        tok = [x for x in wvols if x["name"] == "token"]
        if F.check(len(tok) == 1, f"[{case}] {kn(w)} does not mount the token Secret"):
            name = tok[0]["secret"]["secretName"]
            F.check(name == token_secret if token_secret else name in secrets_rendered,
                    f"[{case}] {kn(w)} mounts token Secret {name!r} that the chart neither renders nor was given")
    for vol in vols.values():
        for item in vol.get("secret", {}).get("items", []):
            F.check(item["key"] != "tls.key", f"[{case}] gateway mounts the config server's private key")

    # Services: the traffic Service selects the gateways and exposes no admin port.
    svcs = find(docs, "Service", lambda d: component(d) == "gateway")
    traffic = [s for s in svcs if s["spec"]["type"] in ("LoadBalancer", "NodePort")]
    if F.check(len(traffic) == 1, f"[{case}] want one LoadBalancer/NodePort gateway Service"):
        s = traffic[0]
        F.check(s["spec"]["type"] == g["service"]["type"], f"[{case}] gateway Service type")
        F.check(selects(s["spec"]["selector"], pod_labels(gw)), f"[{case}] gateway Service selects no gateway pod")
        for p in s["spec"]["ports"]:
            F.check(p["targetPort"] != "admin" and p["targetPort"] != g["ports"]["admin"],
                    f"[{case}] gateway {s['spec']['type']} Service exposes the admin port")
        F.check(s["spec"].get("externalTrafficPolicy") == g["service"]["externalTrafficPolicy"],
                f"[{case}] externalTrafficPolicy")
        ann = s["metadata"].get("annotations", {})
        pool = g["service"]["metallb"]["addressPool"]
        if pool:
            F.check(ann.get("metallb.universe.tf/address-pool") == pool and ann.get("metallb.io/address-pool") == pool,
                    f"[{case}] MetalLB address-pool annotations missing")
        if g["service"]["loadBalancerIP"] and g["service"]["type"] == "LoadBalancer":
            F.check(s["spec"].get("loadBalancerIP") == g["service"]["loadBalancerIP"], f"[{case}] loadBalancerIP")
        for port in ("http", "https"):
            want = g["service"]["nodePorts"][port]
            got = [p.get("nodePort") for p in s["spec"]["ports"] if p["name"] == port]
            F.check(got == [int(want) if want else None], f"[{case}] nodePort for {port}: {got}")


def check_selectors(docs, case: str) -> None:
    pods = [pod_labels(w) for w in workloads(docs)]
    for s in find(docs, "Service"):
        F.check(any(selects(s["spec"].get("selector", {}), p) for p in pods), f"[{case}] {kn(s)} selects no pod")
    for p in find(docs, "PodDisruptionBudget"):
        F.check(any(selects(p["spec"]["selector"]["matchLabels"], l) for l in pods), f"[{case}] {kn(p)} selects no pod")


def check_network_policy(docs, case: str, v: dict[str, Any]) -> None:
    nps = find(docs, "NetworkPolicy")
    if not v["networkPolicy"]["enabled"]:
        F.check(not nps, f"[{case}] NetworkPolicy rendered while disabled")
        return
    if not F.check(len(nps) == 2, f"[{case}] want two NetworkPolicies (operator, gateway)"):
        return
    op = [w for w in workloads(docs) if component(w) == "operator"][0]
    gw = [w for w in workloads(docs) if component(w) == "gateway"][0]
    np = [n for n in nps if selects(n["spec"]["podSelector"]["matchLabels"], pod_labels(op))]
    gnp = [n for n in nps if selects(n["spec"]["podSelector"]["matchLabels"], pod_labels(gw))]
    if not (F.check(len(np) == 1, f"[{case}] no NetworkPolicy selects the operator")
            and F.check(len(gnp) == 1, f"[{case}] no NetworkPolicy selects the gateway")):
        return
    np, gnp = np[0], gnp[0]
    check_gateway_network_policy(gnp, case, v)
    op = [w for w in workloads(docs) if component(w) == "operator"][0]
    gw = [w for w in workloads(docs) if component(w) == "gateway"][0]
    others = [w for w in workloads(docs) if w is not gw]
    F.check(selects(np["spec"]["podSelector"]["matchLabels"], pod_labels(op)), f"[{case}] NetworkPolicy does not select the operator")
    F.check("Ingress" in np["spec"]["policyTypes"], f"[{case}] NetworkPolicy does not restrict ingress")
    config_rules = [r for r in np["spec"]["ingress"] if any(p.get("port") in ("config", v["configServer"]["port"]) for p in r.get("ports", []))]
    if F.check(len(config_rules) == 1, f"[{case}] want exactly one NetworkPolicy rule for the config port"):
        peers = config_rules[0].get("from", [])
        F.check(bool(peers), f"[{case}] config port open to everyone")
        for peer in peers:
            sel = peer.get("podSelector", {}).get("matchLabels", {})
            F.check(set(peer) == {"podSelector"} and selects(sel, pod_labels(gw)),
                    f"[{case}] config port peer {peer} is not just the gateway pods")
            F.check(not any(selects(sel, pod_labels(w)) for w in others), f"[{case}] config port peer also admits non-gateway pods")
        F.check(config_rules[0]["ports"] and all(p.get("port") in ("config", v["configServer"]["port"]) for p in config_rules[0]["ports"]),
                f"[{case}] the gateway rule opens more than the config port")


def check_gateway_network_policy(np, case: str, v: dict[str, Any]) -> None:
    """Traffic ports open to all; the admin port only to networkPolicy.adminFrom."""
    F.check("Ingress" in np["spec"]["policyTypes"], f"[{case}] gateway NetworkPolicy does not restrict ingress")
    g = v["gateway"]["ports"]
    def opens(rule, name):
        return any(p.get("port") in (name, g[name]) for p in rule.get("ports", []))
    rules = np["spec"].get("ingress", [])
    for name in ("http", "https"):
        F.check(any(opens(r, name) and not r.get("from") for r in rules), f"[{case}] gateway {name} port not open to all")
    admin_rules = [r for r in rules if opens(r, "admin")]
    want = v["networkPolicy"]["adminFrom"]
    if not want:
        F.check(not admin_rules, f"[{case}] gateway admin port admitted without networkPolicy.adminFrom")
    elif F.check(len(admin_rules) == 1, f"[{case}] want one NetworkPolicy rule for the admin port"):
        F.check(admin_rules[0].get("from") == want, f"[{case}] gateway admin port peers {admin_rules[0].get('from')} are not networkPolicy.adminFrom")
        F.check(all(opens(admin_rules[0], "admin") and p.get("port") in ("admin", g["admin"]) for p in admin_rules[0]["ports"]),
                f"[{case}] the admin rule opens more than the admin port")


def check_rbac(docs, case: str, v: dict[str, Any]) -> None:
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    for r in roles:
        for rule in r.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                F.check("*" not in rule.get(field, []), f"[{case}] {kn(r)}: wildcard in {field}")
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    verbs = set(rule.get("verbs", []))
                    writes = verbs & WRITE_VERBS
                    allowed = ALLOWED_WRITES.get((group, res), set())
                    F.check(writes <= allowed, f"[{case}] {kn(r)}: {sorted(writes - allowed)} on {group or 'core'}/{res}")
                    F.check(verbs <= READ_ONLY | allowed, f"[{case}] {kn(r)}: unexpected verbs {sorted(verbs)} on {group or 'core'}/{res}")
                    if res == "leases" and verbs & {"update", "get"}:
                        F.check(bool(rule.get("resourceNames")), f"[{case}] {kn(r)}: Lease get/update not limited by name")
                    if res == "secrets" and writes:
                        F.check(r["kind"] == "Role" and r["metadata"].get("namespace") == NAMESPACE,
                                f"[{case}] {kn(r)}: Secret writes outside the release namespace")

    # What the operator needs, per scope.
    def grants(group: str, res: str, verb: str, namespace: str | None) -> bool:
        """True if the operator's bindings grant verb on group/res in namespace (None: cluster-wide)."""
        sa = find_sa(docs, "operator", v)
        for b in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == NAMESPACE for s in b["subjects"]):
                continue
            if b["kind"] == "RoleBinding" and namespace is None:
                continue
            if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] != namespace:
                continue
            ref = b["roleRef"]
            role = [r for r in roles if r["kind"] == ref["kind"] and r["metadata"]["name"] == ref["name"]
                    and (r["kind"] == "ClusterRole" or r["metadata"].get("namespace") == b["metadata"].get("namespace"))]
            for r in role:
                for rule in r.get("rules", []):
                    if group in rule["apiGroups"] and res in rule["resources"] and verb in rule["verbs"]:
                        return True
        return False

    scopes: list[str | None] = v["operator"]["watchNamespaces"] or [None]
    for scope in scopes:
        where = scope or "cluster-wide"
        for group, res in (("networking.k8s.io", "ingresses"), ("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "secrets"), ("", "configmaps")):
            for verb in ("get", "list", "watch"):
                F.check(grants(group, res, verb, scope), f"[{case}] operator lacks {verb} {group or 'core'}/{res} ({where})")
        for verb in ("patch", "update"):
            F.check(grants("networking.k8s.io", "ingresses/status", verb, scope), f"[{case}] operator lacks {verb} ingresses/status ({where})")
        for group in ("events.k8s.io", ""):
            for verb in ("create", "patch"):
                F.check(grants(group, "events", verb, scope), f"[{case}] operator lacks {verb} {group or 'core'}/events ({where})")
    if v["operator"]["watchNamespaces"]:
        F.check(not grants("", "secrets", "list", None), f"[{case}] namespaced mode still grants Secrets cluster-wide")
    for group, res in (("networking.k8s.io", "ingressclasses"), ("vestibule.dev", "tenants")):
        for verb in ("get", "list", "watch"):
            F.check(grants(group, res, verb, None), f"[{case}] operator lacks {verb} {group}/{res}")
    for verb in ("patch", "update"):
        F.check(grants("vestibule.dev", "tenants/status", verb, None), f"[{case}] operator lacks {verb} tenants/status")
    for verb in ("get", "create", "update"):
        F.check(grants("coordination.k8s.io", "leases", verb, NAMESPACE), f"[{case}] operator lacks {verb} leases in {NAMESPACE}")
    # ACME: issuers, their status, and the Secrets the leader writes.
    for verb in ("get", "list", "watch"):
        F.check(grants("vestibule.dev", "acmeissuers", verb, None), f"[{case}] operator lacks {verb} acmeissuers")
    for verb in ("patch", "update"):
        F.check(grants("vestibule.dev", "acmeissuers/status", verb, None), f"[{case}] operator lacks {verb} acmeissuers/status")
    for verb in ("get", "list", "watch", "create", "update"):
        F.check(grants("", "secrets", verb, NAMESPACE), f"[{case}] operator lacks {verb} secrets in {NAMESPACE} (ACME)")
    F.check(not grants("", "secrets", "create", None), f"[{case}] Secret writes granted cluster-wide")
    for verb in ("get", "create", "patch"):
        F.check(grants("", "configmaps", verb, NAMESPACE), f"[{case}] operator lacks {verb} configmaps in {NAMESPACE} (ACME demand)")
    F.check(not grants("", "configmaps", "patch", None), f"[{case}] ConfigMap writes granted cluster-wide")
    # Gateway API: read the four kinds, write three statuses, when enabled
    # (and nothing of it otherwise).
    gw_api = v["gatewayAPI"]["enabled"]
    for verb in ("get", "list", "watch"):
        F.check(grants("gateway.networking.k8s.io", "gatewayclasses", verb, None) == gw_api,
                f"[{case}] operator {verb} gatewayclasses vs gatewayAPI.enabled={gw_api}")
        F.check(grants("", "namespaces", verb, None) == gw_api,
                f"[{case}] operator {verb} namespaces vs gatewayAPI.enabled={gw_api}")
        for scope in scopes:
            for res in ("gateways", "httproutes", "referencegrants"):
                F.check(grants("gateway.networking.k8s.io", res, verb, scope) == gw_api,
                        f"[{case}] operator {verb} {res} ({scope or 'cluster-wide'}) vs gatewayAPI.enabled={gw_api}")
    for verb in ("patch", "update"):
        F.check(grants("gateway.networking.k8s.io", "gatewayclasses/status", verb, None) == gw_api,
                f"[{case}] operator {verb} gatewayclasses/status vs gatewayAPI.enabled={gw_api}")
        for scope in scopes:
            for res in ("gateways/status", "httproutes/status"):
                F.check(grants("gateway.networking.k8s.io", res, verb, scope) == gw_api,
                        f"[{case}] operator {verb} {res} ({scope or 'cluster-wide'}) vs gatewayAPI.enabled={gw_api}")
    pub = v["operator"]["publishService"]
    if pub["enabled"] and not pub["override"]:
        for verb in ("list", "watch"):
            F.check(grants("", "services", verb, NAMESPACE), f"[{case}] operator cannot {verb} the published Service in {NAMESPACE}")


def check_gateway_api(docs, case: str, v: dict[str, Any]) -> None:
    g = v["gatewayAPI"]
    classes = find(docs, "GatewayClass")
    want = g["enabled"] and g["gatewayClass"]["create"]
    F.check(len(classes) == int(want), f"[{case}] GatewayClass rendered {len(classes)} times, want {int(want)}")
    for c in classes:
        F.check(c["spec"]["controllerName"] == "vestibule.dev/gateway-controller", f"[{case}] GatewayClass controllerName")
        F.check(c["metadata"]["name"] == g["gatewayClass"]["name"], f"[{case}] GatewayClass name")
    crds = find(docs, "CustomResourceDefinition", lambda d: d["spec"]["group"] == "gateway.networking.k8s.io")
    names = sorted(d["metadata"]["name"].split(".")[0] for d in crds)
    want_crds = ["gatewayclasses", "gateways", "httproutes", "referencegrants"] if g["installCRDs"] else []
    F.check(names == want_crds, f"[{case}] Gateway API CRDs {names}, want {want_crds}")
    for d in crds:
        ann = d["metadata"].get("annotations", {})
        F.check(ann.get("helm.sh/resource-policy") == "keep", f"[{case}] {kn(d)} not kept on uninstall")
        F.check(ann.get("gateway.networking.k8s.io/bundle-version") == "v1.5.1", f"[{case}] {kn(d)} not the pinned v1.5.1")
        served = {ver["name"] for ver in d["spec"]["versions"] if ver.get("served")}
        F.check("v1" in served, f"[{case}] {kn(d)} does not serve v1 (the operator watches v1)")


def check_ingress_class(docs, case: str, v: dict[str, Any]) -> None:
    ics = find(docs, "IngressClass")
    if not v["ingressClass"]["create"]:
        F.check(not ics, f"[{case}] IngressClass rendered while ingressClass.create=false")
        return
    if F.check(len(ics) == 1, f"[{case}] want one IngressClass"):
        ic = ics[0]
        F.check(ic["metadata"]["name"] == v["ingressClass"]["name"], f"[{case}] IngressClass name")
        F.check(ic["spec"]["controller"] == CONTROLLER, f"[{case}] IngressClass controller")
        want = "true" if v["ingressClass"]["default"] else "false"
        F.check(ic["metadata"]["annotations"].get("ingressclass.kubernetes.io/is-default-class") == want,
                f"[{case}] is-default-class annotation, want {want!r}")


def check_tls_secret(docs, case: str, v: dict[str, Any]) -> None:
    tls = v["configServer"]["tls"]
    generated = find(docs, "Secret", lambda d: d.get("type") == "kubernetes.io/tls")
    if tls["enabled"] and not tls["secretName"]:
        if F.check(len(generated) == 1, f"[{case}] want a generated config-server TLS Secret"):
            import base64
            data = generated[0]["data"]
            for key, marker in (("tls.crt", "CERTIFICATE"), ("tls.key", "PRIVATE KEY"), ("ca.crt", "CERTIFICATE")):
                pem = base64.b64decode(data.get(key, "")).decode()
                F.check(marker in pem, f"[{case}] generated TLS Secret {key} is not PEM {marker}")
    else:
        F.check(not generated, f"[{case}] config-server TLS Secret rendered without tls.enabled or with secretName")


def check_servicemonitor(docs, case: str, v: dict[str, Any]) -> None:
    sms = find(docs, "ServiceMonitor")
    if not v["metrics"]["serviceMonitor"]["enabled"]:
        F.check(not sms, f"[{case}] ServiceMonitor rendered while disabled")
        return
    F.check(len(sms) == 2, f"[{case}] want ServiceMonitors for operator and gateway")
    services = find(docs, "Service")
    for sm in sms:
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if F.check(len(matched) == 1, f"[{case}] {kn(sm)} selects {len(matched)} Services, want 1"):
            ports = {p["name"] for p in matched[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                F.check(ep["port"] in ports, f"[{case}] {kn(sm)} scrapes port {ep['port']!r} its Service lacks")
                F.check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "bearerTokenSecret"}, f"[{case}] {kn(sm)} endpoint fields {sorted(ep)}")
                # The admin token, when set, goes with the gateway's scrapes only.
                secret = v["gateway"]["admin"]["tokenSecret"]
                want = {"name": secret, "key": "token"} if secret and ep["port"] == "admin" else None
                F.check(ep.get("bearerTokenSecret") == want, f"[{case}] {kn(sm)} bearerTokenSecret {ep.get('bearerTokenSecret')}, want {want}")
        F.check(sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE], f"[{case}] {kn(sm)} namespaceSelector")


def check_dashboard(docs, case: str, v: dict[str, Any], dashboard_text: str) -> None:
    cms = find(docs, "ConfigMap", lambda d: "vestibule.json" in d.get("data", {}))
    if not v["grafanaDashboard"]["enabled"]:
        F.check(not cms, f"[{case}] dashboard ConfigMap rendered while disabled")
        return
    if F.check(len(cms) == 1, f"[{case}] want one dashboard ConfigMap"):
        F.check(json.loads(cms[0]["data"]["vestibule.json"]) == json.loads(dashboard_text),
                f"[{case}] dashboard ConfigMap differs from dashboards/vestibule.json")
        for k, val in v["grafanaDashboard"]["labels"].items():
            F.check(cms[0]["metadata"]["labels"].get(k) == val, f"[{case}] dashboard ConfigMap label {k}")


def check_case(case: str, values_file: str | None, versions: list[str], dashboard_text: str,
               skipped: set[str], verbose: bool) -> int:
    values = load_values(values_file)
    v = merged_values(values)
    docs = render(values)
    validate_schemas(docs, versions, case, skipped)
    check_basics(docs, case)
    check_security(docs, case, v)
    check_operator(docs, case, v)
    check_gateway(docs, case, v)
    check_selectors(docs, case)
    check_network_policy(docs, case, v)
    check_rbac(docs, case, v)
    check_ingress_class(docs, case, v)
    check_gateway_api(docs, case, v)
    check_tls_secret(docs, case, v)
    check_servicemonitor(docs, case, v)
    check_dashboard(docs, case, v, dashboard_text)
    if verbose:
        for d in docs:
            print(f"  {case}: {kn(d)}  ({d['__source']})")
    return len(docs)


# === chart-level checks ===


def check_crd(crd_from: str, file_name: str, kind: str, command: str) -> None:
    committed_path = os.path.join(CHART, "crds", file_name)
    with open(committed_path) as f:
        committed = f.read()
    with open(crd_from) as f:
        generated = f.read()
    F.check(committed == generated,
            f"helm/vestibule/crds/{file_name} differs from `vestibule-operator {command}`; regenerate it with\n"
            f"    cargo run -q -p vestibule-operator -- {command} > helm/vestibule/crds/{file_name}")
    docs = [d for d in yaml.safe_load_all(committed) if d]
    F.check(len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition", "CRD file must hold one CustomResourceDefinition")
    for version in (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(docs[0], version, strict=True)
            F.check(True, "")
        except kubernetes_validate.ValidationError as e:
            F.check(False, f"CRD invalid for Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")

    # The examples the README points to must satisfy the CRD schema.
    import jsonschema
    schema = docs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path in sorted(glob.glob(os.path.join(REPO, "examples", "**", "*.y*ml"), recursive=True)):
        with open(path) as f:
            try:
                objs = [o for o in yaml.safe_load_all(f) if isinstance(o, dict)]
            except yaml.YAMLError:
                continue
        for o in objs:
            if o.get("kind") == kind and str(o.get("apiVersion", "")).startswith("vestibule.dev/"):
                errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(o), key=str)
                F.check(not errs, f"{os.path.relpath(path, REPO)}: {kind}/{o['metadata']['name']} violates the CRD schema: "
                        + "; ".join(e.message for e in errs[:3]))


def check_dashboard_file() -> str:
    path = os.path.join(CHART, "dashboards", "vestibule.json")
    with open(path) as f:
        text = f.read()
    try:
        dash = json.loads(text)
    except json.JSONDecodeError as e:
        F.check(False, f"dashboards/vestibule.json does not parse: {e}")
        return text
    exported = ""
    for src in ("gateway/src/metrics.rs", "operator/src/metrics.rs"):
        with open(os.path.join(REPO, src)) as f:
            exported += f.read()
    names = set(re.findall(r'"(vestibule_[a-z_]+)"', exported))
    F.check(bool(names), "found no metric names in gateway/operator metrics.rs")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    F.check(len(panels) >= 10, "dashboard has too few panels")
    ids = [p["id"] for p in dash["panels"]]
    F.check(len(ids) == len(set(ids)), "dashboard panel ids are not unique")
    for p in panels:
        for t in p.get("targets", []):
            for metric in re.findall(r"\b(vestibule_[a-z_]+)", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                F.check(metric in names or base in names, f"dashboard panel {p['title']!r} uses {metric}, which no binary exports")
    return text


def check_bad_values() -> None:
    bad = [
        ({"gateway": {"kind": "StatefulSet"}}, "gateway.kind"),
        ({"gateway": {"service": {"externalTrafficPolicy": "Nearest"}}}, "externalTrafficPolicy"),
        ({"gateway": {"logFormat": "xml"}}, "logFormat"),
        ({"gateway": {"headerCase": "upper"}}, "headerCase"),
        ({"gateway": {"podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}}}, "podDisruptionBudget"),
    ]
    for values, needle in bad:
        try:
            render(values)
            F.check(False, f"values {values} rendered, want a failure naming {needle}")
        except helm.HelmError as e:
            F.check(needle in str(e), f"values {values} failed without naming {needle}: {e}")


def check_lint() -> None:
    for values_file in [None] + sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        report = helm.lint(CHART, load_values(values_file), strict=True, namespace=NAMESPACE)
        name = os.path.basename(values_file) if values_file else "default"
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + [
            {"error": e} for e in report.get("errors", [])]
        F.check(not problems, f"helm lint --strict ({name}): {problems}")


def check_readme_table() -> None:
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True  # no __pycache__ in the work tree
    import values_table

    want, missing = values_table.table(os.path.join(CHART, "values.yaml"))
    F.check(not missing, f"values.yaml keys without a description: {missing}")
    with open(os.path.join(HERE, "README.md")) as f:
        readme = f.read()
    F.check(want in readme, "helm/README.md values table is stale: regenerate it with `python3 helm/values_table.py`")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crd-from", required=True, help="file holding the output of `vestibule-operator crd`")
    ap.add_argument("--acme-crd-from", required=True, help="file holding the output of `vestibule-operator crd acmeissuer`")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    oldest = kubernetes_validate.utils.all_versions()[0]
    latest = kubernetes_validate.latest_version()
    cases: list[tuple[str, str | None, list[str]]] = [("default", None, [oldest, latest])]
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        name = os.path.basename(path)[: -len("-values.yaml")]
        # The all-options case uses the native preStop sleep (Kubernetes >= 1.30).
        floor = "1.30.0" if name == "all-options" else oldest
        cases.append((name, path, [floor, latest]))

    dashboard_text = check_dashboard_file()
    check_crd(args.crd_from, "tenants.vestibule.dev.yaml", "Tenant", "crd")
    check_crd(args.acme_crd_from, "acmeissuers.vestibule.dev.yaml", "AcmeIssuer", "crd acmeissuer")
    check_lint()
    check_bad_values()
    check_readme_table()
    skipped: set[str] = set()
    for case, path, versions in cases:
        n = check_case(case, path, versions, dashboard_text, skipped, args.verbose)
        print(f"rendered {case}: {n} objects, schemas of Kubernetes {' and '.join(versions)}")
    if skipped:
        print(f"note: no Kubernetes schema for CRD kinds {sorted(skipped)}; checked structurally instead")

    for failure in F.items:
        print(f"FAIL {failure}")
    print(f"chart: {F.checks - len(F.items)} passed, {len(F.items)} failed")
    return 1 if F.items else 0


if __name__ == "__main__":
    sys.exit(main())
