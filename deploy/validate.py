#!/usr/bin/env python3
"""Checks deploy/ without a cluster or a Docker engine.

What it checks, and why:
  - deploy/k8s/*.yaml (the chart's defaults, rendered): the things that break a media relay in
    production: non-root and read-only, probe paths and ports, a grace period longer than the
    drain, hostNetwork with the right DNS policy and one pod per node, selectors that really
    match (PDB, Service, ServiceMonitor, HPA target), env names the relay reads, the UDP port
    range holding capacity x ports per call, alert expressions on real metrics.
  - the Grafana dashboard: every PromQL expression names only metrics (and label values) the
    relay exports.
  - the Helm chart without Helm: each template parses as YAML once template actions are
    stripped, every .Values path it reads exists in values.yaml and every value is read.
  - the Helm chart with Helm, when a backend exists (the helm CLI, or the helm_sdkpy package,
    see deploy/tools/helm_render.py): deploy/k8s/ is what the chart renders, variants (DaemonSet,
    no hostNetwork, IPv6, everything on) render and pass the same checks, and broken values are
    refused. Without a backend these are reported as skipped.
  - the Dockerfile: multi-stage, numeric non-root user, both binaries, documented ports.

Prints one line per check and ends with "N passed, M failed". Needs Python 3.11 and PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

try:
    import yaml
except ImportError:  # pragma: no cover
    print("validate.py needs PyYAML: pip install pyyaml (Debian: apt-get install python3-yaml)")
    print("0 passed, 1 failed")
    sys.exit(1)

DEPLOY = Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "relay"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "relay-dashboard.json"
RENDER = DEPLOY / "tools" / "helm_render.py"
SECCOMP = DEPLOY / "seccomp" / "relay-io-uring.json"
SECCOMP_TOOL = DEPLOY / "tools" / "seccomp_profile.py"

# ---- what the relay exposes (keep in sync with the relay's config and metrics) ---------------

RELAY_ENV = {
    "RELAY_CONTROL_LISTEN", "RELAY_CONTROL_TOKEN", "RELAY_ALLOW_UNAUTHENTICATED",
    "RELAY_METRICS_LISTEN", "RELAY_WHATSAPP_V4", "RELAY_WHATSAPP_V6", "RELAY_INTERNAL",
    "RELAY_ADVERTISE_V4", "RELAY_ADVERTISE_V6", "RELAY_ADVERTISE_INTERNAL",
    "RELAY_PORT_MIN", "RELAY_PORT_MAX", "RELAY_SHARDS", "RELAY_CAPACITY",
    "RELAY_MAX_CALLS_PER_NUMBER", "RELAY_DRAIN_DEADLINE", "RELAY_LOG_JSON", "RELAY_CONFIG",
    "RELAY_MAX_SHARD_BUSY_PERCENT", "RELAY_CONTROL_TLS_CERT", "RELAY_CONTROL_TLS_KEY",
    "RELAY_CONTROL_TLS_CLIENT_CA", "RELAY_HOMER", "RELAY_HOMER_ID",
}
# Set by the chart for $(VAR) expansion and log context, or read by the tracing filter.
HELPER_ENV = {"POD_IP", "POD_NAME", "NODE_NAME", "RUST_LOG"}

COUNTERS = {
    "relay_calls_created_total", "relay_calls_ended_total", "relay_packets_total",
    "relay_bytes_total", "relay_drops_total", "relay_srtp_auth_failures_total",
    "relay_shard_packets_total", "relay_shard_busy_seconds_total", "relay_shard_send_errors_total",
}
GAUGES = {"relay_active_calls", "relay_capacity", "relay_draining", "relay_shard_calls",
          "relay_udp_ports_used", "relay_udp_ports_free", "relay_build_info"}
HISTOGRAMS = {"relay_ice_setup_seconds", "relay_dtls_setup_seconds", "relay_call_loss_ratio",
              "relay_call_jitter_seconds", "relay_live_loss_ratio", "relay_live_jitter_seconds",
              "relay_live_rtt_seconds", "relay_live_mos"}
# The standard process metrics (from /proc); queries may use them, the dashboard need not.
PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes",
           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
           "process_threads", "process_start_time_seconds"}
# relay_shard_busy_ratio: the gauge admission reads; dashboards use the counter's rate instead.
METRICS = COUNTERS | GAUGES | HISTOGRAMS | PROCESS | {"relay_shard_busy_ratio"}
LABEL_VALUES = {
    "cause": {"terminated", "ice_failed", "dtls_failed", "fingerprint_mismatch",
              "no_media_after_accept", "media_receive_timeout", "consent_lost",
              "internal_leg_timeout", "peer_closed", "drained", "internal_leg_failed"},
    "leg": {"whatsapp", "internal"},
    "direction": {"rx", "tx"},
    "reason": {"bad_source", "malformed", "auth_failed", "replayed", "unknown_payload_type",
               "not_ready", "unexpected", "rate_limited", "late_dtls"},
    "family": {"ipv4", "ipv6"},
}
# Labels a query may group or match on: the relay's own, plus what Prometheus' Kubernetes
# discovery adds (namespace, pod, job, instance, and `node` from the ServiceMonitor).
LABELS = set(LABEL_VALUES) | {"shard", "le", "namespace", "pod", "node", "job", "instance",
                              "version", "commit"}
PROMQL_FUNCTIONS = {
    "rate", "irate", "increase", "delta", "deriv", "sum", "avg", "min", "max", "count",
    "histogram_quantile", "scalar", "vector", "min_over_time", "max_over_time",
    "avg_over_time", "abs", "clamp_min", "clamp_max", "topk", "bottomk", "absent", "round",
    "label_values", "time", "sort", "sort_desc", "quantile",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan"}

# ---- tiny test harness -----------------------------------------------------------------------

RESULTS: list[tuple[str, str, str]] = []  # (status, name, detail)


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append(("ok" if ok else "FAIL", name, "" if ok else detail))
    return ok


def skip(name: str, why: str) -> None:
    RESULTS.append(("skip", name, why))


def run(name: str, fn: Callable[[], None]) -> None:
    """Run a group of checks; an exception in it is one failure, not a crash."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report, keep going
        check(name, False, f"{type(e).__name__}: {e}")


# ---- helpers -----------------------------------------------------------------------------------

def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return default
        obj = obj[p]
    return obj


def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text: str) -> float:
    """Humantime-style '300s', '5m', '1h30m', or a bare number of seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def promql_problems(expr: str) -> list[str]:
    """Metric names, functions, labels and label values in a PromQL expression that the relay
    does not export (or PromQL does not have)."""
    problems = []
    # Label matchers: check names and enumerated values before they are stripped.
    for body in re.findall(r"\{([^{}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace("{", "(").replace("}", ")"), expr)):
        for label, op, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body):
            if label not in LABELS:
                problems.append(f"unknown label {label}")
            elif label in LABEL_VALUES and "$" not in value:
                for alt in value.split("|"):
                    if alt not in LABEL_VALUES[label]:
                        problems.append(f"unknown {label} value {alt!r}")
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        for label in re.findall(r"[A-Za-z_]\w*", clause):
            if label not in LABELS:
                problems.append(f"unknown grouping label {label}")
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"(?<![A-Za-z_:])\d[\d.]*(?:[eE][-+]?\d+)?", " ", s)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        tok = m.group(0)
        is_call = re.match(r"\s*\(", s[m.end():]) is not None
        if is_call:
            if tok not in PROMQL_FUNCTIONS:
                problems.append(f"unknown function {tok}")
        elif tok in PROMQL_KEYWORDS:
            continue
        elif tok not in METRICS and not (
            re.sub(r"_(bucket|sum|count)$", "", tok) in HISTOGRAMS and tok != re.sub(r"_(bucket|sum|count)$", "", tok)
        ):
            problems.append(f"unknown metric {tok}")
    return problems


def metrics_in(expr: str) -> set[str]:
    s = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    found = set()
    for tok in re.findall(r"relay_[a-z_]+", s):
        base = re.sub(r"_(bucket|sum|count)$", "", tok)
        found.add(base if base in HISTOGRAMS else tok)
    return found


# ---- Kubernetes object checks (deploy/k8s and every rendered variant) ------------------------

def check_objects(objs: list[dict], label: str) -> None:
    def c(name: str, ok: bool, detail: str = "") -> bool:
        return check(f"{label}: {name}", ok, detail)

    c("every object has apiVersion, kind and metadata.name",
      all(o.get("apiVersion") and o.get("kind") and dig(o, "metadata", "name") for o in objs),
      str([o.get("kind") for o in objs]))
    workloads = [o for o in objs if o.get("kind") in ("Deployment", "DaemonSet")]
    if not c("exactly one Deployment or DaemonSet", len(workloads) == 1, f"found {len(workloads)}"):
        return
    w = workloads[0]
    wname = w["metadata"]["name"]
    pod = dig(w, "spec", "template", default={})
    pod_labels = dig(pod, "metadata", "labels", default={})
    spec = pod.get("spec", {})
    c("workload selector matches its pod labels",
      selector_matches(dig(w, "spec", "selector", "matchLabels"), pod_labels))
    containers = spec.get("containers", [])
    relay = next((ct for ct in containers if ct.get("name") == "relay"), None)
    if not c("a container named relay", relay is not None):
        return

    # Security.
    psc = spec.get("securityContext", {})
    csc = relay.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    c("runs as non-root with a numeric UID",
      (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True and isinstance(uid, int) and uid > 0,
      f"runAsNonRoot={psc.get('runAsNonRoot')}/{csc.get('runAsNonRoot')} runAsUser={uid}")
    c("read-only root filesystem", csc.get("readOnlyRootFilesystem") is True)
    c("no privilege escalation, not privileged",
      csc.get("allowPrivilegeEscalation") is False and not csc.get("privileged"))
    caps = csc.get("capabilities", {})
    c("drops ALL capabilities and adds none",
      "ALL" in (caps.get("drop") or []) and not caps.get("add"), str(caps))
    c("no service account token mounted (the relay does not use the API)",
      spec.get("automountServiceAccountToken") is False)
    sp = csc.get("seccompProfile") or psc.get("seccompProfile") or {}
    c("seccomp: RuntimeDefault, or Localhost with the profile deploy/seccomp ships",
      sp.get("type") == "RuntimeDefault"
      or (sp.get("type") == "Localhost" and sp.get("localhostProfile") == SECCOMP.name), str(sp))

    # Environment.
    env = relay.get("env", [])
    names = [e.get("name") for e in env]
    values = {e["name"]: e.get("value") for e in env if "value" in e}
    unknown = [n for n in names if n not in RELAY_ENV | HELPER_ENV]
    c("env names are ones the relay reads", not unknown, f"unknown: {unknown}")
    c("no env var set twice", len(names) == len(set(names)),
      str(sorted({n for n in names if names.count(n) > 1})))
    required = {"RELAY_CONTROL_LISTEN", "RELAY_CONTROL_TOKEN", "RELAY_METRICS_LISTEN",
                "RELAY_DRAIN_DEADLINE", "RELAY_PORT_MIN", "RELAY_PORT_MAX", "RELAY_CAPACITY"}
    c("sets listen addresses, token, drain deadline, port range, capacity",
      required <= set(names), f"missing: {sorted(required - set(names))}")
    c("advertises a WhatsApp-facing address",
      bool({"RELAY_ADVERTISE_V4", "RELAY_ADVERTISE_V6"} & set(names)))
    token = next((e for e in env if e.get("name") == "RELAY_CONTROL_TOKEN"), {})
    c("control token comes from a Secret, not a literal",
      dig(token, "valueFrom", "secretKeyRef", "name") is not None and "value" not in token)
    bad_refs = []
    for i, e in enumerate(env):
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
            if ref not in names[:i]:
                bad_refs.append(f"{e['name']} uses $({ref}) before it is defined")
    c("$(VAR) references point at earlier env vars", not bad_refs, "; ".join(bad_refs))
    fieldrefs = [dig(e, "valueFrom", "fieldRef", "fieldPath") for e in env]
    ok_paths = [p for p in fieldrefs if p is None or p in
                ("status.podIP", "status.hostIP", "metadata.name", "metadata.namespace",
                 "spec.nodeName") or re.fullmatch(r"metadata\.annotations\['[^']+'\]", p)]
    c("downward API field paths are valid", len(ok_paths) == len(fieldrefs), str(fieldrefs))

    # Ports and probes.
    ports = {p.get("name"): p for p in relay.get("ports", [])}

    def listen_port(var: str) -> int | None:
        m = re.search(r":(\d+)$", values.get(var) or "")
        return int(m.group(1)) if m else None

    c("gRPC container port matches RELAY_CONTROL_LISTEN",
      dig(ports, "grpc", "containerPort") == listen_port("RELAY_CONTROL_LISTEN") is not None,
      f"{dig(ports, 'grpc', 'containerPort')} vs {values.get('RELAY_CONTROL_LISTEN')}")
    c("metrics container port matches RELAY_METRICS_LISTEN",
      dig(ports, "metrics", "containerPort") == listen_port("RELAY_METRICS_LISTEN") is not None,
      f"{dig(ports, 'metrics', 'containerPort')} vs {values.get('RELAY_METRICS_LISTEN')}")

    def probe_ok(probe: dict | None, path: str) -> bool:
        get = dig(probe, "httpGet") or {}
        port = get.get("port")
        port_ok = port == "metrics" or port == dig(ports, "metrics", "containerPort")
        return get.get("path") == path and port_ok

    c("readiness probe: GET /readyz on the metrics port", probe_ok(relay.get("readinessProbe"), "/readyz"),
      str(relay.get("readinessProbe")))
    c("liveness probe: GET /healthz on the metrics port", probe_ok(relay.get("livenessProbe"), "/healthz"),
      str(relay.get("livenessProbe")))
    if relay.get("startupProbe"):
        c("startup probe: GET /healthz on the metrics port", probe_ok(relay.get("startupProbe"), "/healthz"))

    # Drain: SIGKILL must not come before the drain deadline.
    deadline = duration_seconds(values.get("RELAY_DRAIN_DEADLINE") or "0")
    pre_stop = dig(relay, "lifecycle", "preStop", default={}) or {}
    sleep = dig(pre_stop, "sleep", "seconds", default=0) or 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    c("terminationGracePeriodSeconds > preStop sleep + drain deadline",
      isinstance(grace, int) and grace > sleep + deadline,
      f"grace {grace}s, preStop {sleep}s, drain {deadline}s")
    c("preStop, if any, is a sleep (the image has no shell; SIGTERM starts the drain)",
      not pre_stop or set(pre_stop) == {"sleep"}, str(pre_stop))

    # Media port range vs capacity.
    try:
        pmin, pmax = int(values["RELAY_PORT_MIN"]), int(values["RELAY_PORT_MAX"])
        per_call = 1 + sum(values.get(v, "none") != "none" for v in ("RELAY_WHATSAPP_V4", "RELAY_WHATSAPP_V6"))
        cap = int(values["RELAY_CAPACITY"])
        c("UDP port range holds capacity x ports per call",
          0 < pmin <= pmax and cap * per_call <= pmax - pmin + 1,
          f"{pmin}-{pmax} = {pmax - pmin + 1} ports, {cap} calls x {per_call}")
        c("media ports are unprivileged (no capability needed)", pmin >= 1024, str(pmin))
    except (KeyError, ValueError, TypeError) as e:
        c("UDP port range holds capacity x ports per call", False, f"unreadable: {e}")

    # Host networking.
    if spec.get("hostNetwork"):
        c("hostNetwork uses dnsPolicy ClusterFirstWithHostNet",
          spec.get("dnsPolicy") == "ClusterFirstWithHostNet", str(spec.get("dnsPolicy")))
        anti = dig(spec, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution", default=[])
        one_per_node = w["kind"] == "DaemonSet" or any(
            t.get("topologyKey") == "kubernetes.io/hostname"
            and selector_matches(dig(t, "labelSelector", "matchLabels"), pod_labels) for t in anti)
        c("hostNetwork: at most one pod per node (required anti-affinity or DaemonSet)", one_per_node)
    else:
        c("without hostNetwork, dnsPolicy is not ClusterFirstWithHostNet",
          spec.get("dnsPolicy") != "ClusterFirstWithHostNet")
        adv = next((e for e in env if e.get("name") == "RELAY_ADVERTISE_V4"), None)
        c("without hostNetwork, the advertised IPv4 is not the node's address",
          adv is None or dig(adv, "valueFrom", "fieldRef", "fieldPath") != "status.hostIP")

    # Objects that select the pods.
    for pdb in [o for o in objs if o.get("kind") == "PodDisruptionBudget"]:
        c("PodDisruptionBudget selector matches the pods",
          selector_matches(dig(pdb, "spec", "selector", "matchLabels"), pod_labels))
        c("PodDisruptionBudget allows voluntary disruption (else node drains block)",
          dig(pdb, "spec", "maxUnavailable", default=0) not in (0, "0", "0%")
          or dig(pdb, "spec", "minAvailable") is not None)
    services = [o for o in objs if o.get("kind") == "Service"]
    for svc in services:
        c(f"Service {svc['metadata']['name']} selects the pods",
          selector_matches(dig(svc, "spec", "selector"), pod_labels))
        targets = [p.get("targetPort") for p in dig(svc, "spec", "ports", default=[])]
        c(f"Service {svc['metadata']['name']} targets container ports that exist",
          all(t in ports or t in [p.get("containerPort") for p in ports.values()] for t in targets), str(targets))
        c(f"Service {svc['metadata']['name']} does not publish not-ready (draining) pods",
          not dig(svc, "spec", "publishNotReadyAddresses"))
    for hpa in [o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"]:
        ref = dig(hpa, "spec", "scaleTargetRef", default={})
        c("HPA targets the workload",
          ref.get("kind") == w["kind"] == "Deployment" and ref.get("name") == wname, str(ref))
        ms = dig(hpa, "spec", "metrics", default=[])
        c("HPA scales on the pods metric relay_active_calls (AverageValue)",
          any(m.get("type") == "Pods" and dig(m, "pods", "metric", "name") == "relay_active_calls"
              and dig(m, "pods", "target", "type") == "AverageValue" for m in ms), str(ms))
        c("HPA scale-down is gentler than scale-up (each removed pod drains)",
          dig(hpa, "spec", "behavior", "scaleDown", "stabilizationWindowSeconds", default=300)
          >= dig(hpa, "spec", "behavior", "scaleUp", "stabilizationWindowSeconds", default=0))
    for sm in [o for o in objs if o.get("kind") == "ServiceMonitor"]:
        sel = dig(sm, "spec", "selector", "matchLabels")
        matched = [s for s in services if selector_matches(sel, dig(s, "metadata", "labels"))]
        c("ServiceMonitor selects the Service", len(matched) == 1, f"matched {len(matched)}")
        ns = dig(sm, "spec", "namespaceSelector", "matchNames", default=[])
        c("ServiceMonitor looks in the Service's namespace",
          all(dig(s, "metadata", "namespace") in ns for s in matched) if ns else True, str(ns))
        port_names = {p.get("name") for s in matched for p in dig(s, "spec", "ports", default=[])}
        eps = dig(sm, "spec", "endpoints", default=[])
        c("ServiceMonitor scrapes the Service's metrics port at /metrics",
          any(e.get("port") in port_names and e.get("port") == "metrics"
              and e.get("path", "/metrics") == "/metrics" for e in eps), str(eps))
    for rule in [o for o in objs if o.get("kind") == "PrometheusRule"]:
        exprs = [r["expr"] for g in dig(rule, "spec", "groups", default=[]) for r in g.get("rules", [])]
        bad = {}
        for e in exprs:
            probs = [p for p in promql_problems(e) if p != "unknown metric up"]
            if probs:
                bad[e[:60]] = probs
        c("PrometheusRule expressions use only the relay's metrics", not bad, str(bad))


def check_k8s() -> None:
    files = sorted(K8S.glob("*.yaml"))
    check("deploy/k8s has manifests", bool(files))
    objs: list[dict] = []
    for f in files:
        if f.name == "prometheus-adapter-values.yaml":
            continue
        docs = load_docs(f.read_text())
        check(f"{f.name} parses", bool(docs))
        objs += docs
    check_objects(objs, "k8s")
    kinds = {o.get("kind") for o in objs}
    check("k8s: has Namespace, ServiceAccount, Service, PDB, HPA, ServiceMonitor, PrometheusRule",
          {"Namespace", "ServiceAccount", "Service", "PodDisruptionBudget",
           "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds, str(kinds))

    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = dig(adapter, "rules", "custom", default=[])
    hpa_metric = next((dig(m, "pods", "metric", "name") for o in objs if o.get("kind") == "HorizontalPodAutoscaler"
                       for m in dig(o, "spec", "metrics", default=[])), None)
    check("prometheus-adapter rule serves the HPA's metric from relay_active_calls per pod",
          any("relay_active_calls" in r.get("seriesQuery", "")
              and dig(r, "name", "as") == hpa_metric
              and dig(r, "resources", "overrides", "pod", "resource") == "pod" for r in rules),
          f"hpa metric {hpa_metric}, rules {rules}")
    hpa_metrics = [dig(m, "pods", "metric", "name") for o in objs if o.get("kind") == "HorizontalPodAutoscaler"
                   for m in dig(o, "spec", "metrics", default=[])]
    busy_rule = next((r for r in rules if dig(r, "name", "as") == "relay_shard_busy"), {})
    check("HPA also scales on shard busy headroom, served by an adapter rule over the busy-seconds counter",
          "relay_shard_busy" in hpa_metrics
          and "relay_shard_busy_seconds_total" in busy_rule.get("seriesQuery", "")
          and "rate(" in busy_rule.get("metricsQuery", ""),
          f"hpa metrics {hpa_metrics}, rule {busy_rule}")
    cms = [o for o in objs if o.get("kind") == "ConfigMap" and "relay-dashboard.json" in (o.get("data") or {})]
    check("k8s: the Grafana dashboard ConfigMap (sidecar label) holds deploy/grafana's JSON",
          len(cms) == 1 and dig(cms[0], "metadata", "labels", "grafana_dashboard") == "1"
          and json.loads(cms[0]["data"]["relay-dashboard.json"]) == json.loads(DASHBOARD.read_text()))


def check_rules_promtool() -> None:
    """`promtool check rules` on the rendered PrometheusRule's groups: PromQL syntax and rule
    shape as Prometheus itself parses them (PROMTOOL or promtool on PATH; skipped without)."""
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not tool or not os.path.exists(tool):
        skip("promtool check rules", "no promtool (scripts/test.sh provides it as PROMTOOL)")
        return
    objs = load_docs((K8S / "monitoring.yaml").read_text())
    rule = next((o for o in objs if o.get("kind") == "PrometheusRule"), None)
    if not check("promtool: k8s/monitoring.yaml has a PrometheusRule", rule is not None):
        return
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": dig(rule, "spec", "groups")}, f)
    p = subprocess.run([tool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check("promtool check rules: the alerts parse as Prometheus rules", p.returncode == 0,
          (p.stdout + p.stderr)[-2000:])


# ---- dashboard ----------------------------------------------------------------------------------

def check_dashboard() -> None:
    d = json.loads(DASHBOARD.read_text())
    copy = CHART / "dashboards" / "relay-dashboard.json"
    check("dashboard: the chart's copy is deploy/grafana's JSON (cp it after editing)",
          copy.exists() and copy.read_text() == DASHBOARD.read_text())
    check("dashboard: schemaVersion >= 36", d.get("schemaVersion", 0) >= 36, str(d.get("schemaVersion")))
    variables = {v.get("name"): v for v in dig(d, "templating", "list", default=[])}
    check("dashboard: Prometheus datasource variable",
          dig(variables, "datasource", "type") == "datasource"
          and dig(variables, "datasource", "query") == "prometheus")
    panels = []
    for p in d.get("panels", []):
        panels.append(p)
        panels += p.get("panels", [])
    ids = [p.get("id") for p in panels]
    check("dashboard: panel ids unique", len(ids) == len(set(ids)), str(ids))
    check("dashboard: every panel has a gridPos", all("gridPos" in p for p in panels))
    data_panels = [p for p in panels if p.get("type") != "row"]
    check("dashboard: panels query the datasource variable",
          all(dig(p, "datasource", "uid") == "${datasource}" for p in data_panels))
    problems, used = {}, set()
    for p in data_panels:
        targets = p.get("targets", [])
        if not targets:
            problems[p.get("title")] = ["no query"]
        for t in targets:
            expr = t.get("expr", "")
            used |= metrics_in(expr)
            probs = promql_problems(expr)
            if probs:
                problems[f"{p.get('title')} [{t.get('refId')}]"] = probs
    check("dashboard: every query names only the relay's metrics, labels and label values",
          not problems, json.dumps(problems, indent=1))
    for name, v in variables.items():
        q = v.get("definition") or ""
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        if v.get("type") == "query":
            check(f"dashboard: variable {name} queries a relay metric",
                  bool(m) and not promql_problems(m.group(1)) and m.group(2) in LABELS, q)
    missing = (METRICS - PROCESS - {"relay_shard_busy_ratio"}) - used
    check("dashboard: shows every metric the relay exports", not missing, f"missing: {sorted(missing)}")
    titles = " ".join(p.get("title", "").lower() for p in panels)
    for word in ("capacity", "cause", "drops", "srtp", "ice", "dtls", "loss", "jitter", "shard", "draining",
                 "busy", "send errors", "mos", "round-trip", "ports", "memory"):
        check(f"dashboard: has a panel about {word}", word in titles)


# ---- seccomp profile ------------------------------------------------------------------------------

SECCOMP_ACTIONS = {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                   "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG"}
SECCOMP_OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
               "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}
# What the relay itself calls on its packet path and at start (a profile without them breaks it).
RELAY_NEEDS = {"io_uring_setup", "io_uring_enter", "io_uring_register", "epoll_create1", "epoll_ctl",
               "epoll_wait", "epoll_pwait", "recvmmsg", "sendmmsg", "recvfrom", "sendto", "bind",
               "setsockopt", "getsockname", "accept4", "futex", "mmap", "munmap", "mprotect",
               "sched_setaffinity", "sched_getaffinity", "getrandom", "eventfd2", "timerfd_create",
               "rt_sigaction", "sigaltstack", "exit_group", "statx", "openat", "read", "write"}


def check_seccomp() -> None:
    try:
        prof = json.loads(SECCOMP.read_text())
    except (OSError, json.JSONDecodeError) as e:
        check("seccomp: the io_uring profile is JSON", False, str(e))
        return
    check("seccomp: the io_uring profile is JSON", isinstance(prof, dict))
    p = subprocess.run([sys.executable, str(SECCOMP_TOOL), "--check"], capture_output=True, text=True)
    check("seccomp: the profile is what deploy/tools/seccomp_profile.py writes", p.returncode == 0,
          p.stderr)
    check("seccomp: denies by default", prof.get("defaultAction") in {"SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                                                                        "SCMP_ACT_KILL_PROCESS"},
          str(prof.get("defaultAction")))
    arches = set(prof.get("architectures") or [])
    check("seccomp: covers x86_64 and aarch64", {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= arches,
          str(sorted(arches)))
    rules = prof.get("syscalls") or []
    problems = []
    for i, r in enumerate(rules):
        if not (isinstance(r.get("names"), list) and r["names"]
                and all(isinstance(n, str) and re.fullmatch(r"_?[a-z0-9_]+", n) for n in r["names"])):
            problems.append(f"rule {i}: names must be a non-empty list of syscall names")
        if r.get("action") not in SECCOMP_ACTIONS:
            problems.append(f"rule {i}: unknown action {r.get('action')}")
        for key in ("includes", "excludes", "comment"):
            if key in r:
                # OCI runtimes (containerd) ignore Docker's conditions: a capability-only rule
                # would apply to everyone.
                problems.append(f"rule {i}: Docker-only key {key!r}")
        for a in r.get("args") or []:
            if a.get("op") not in SECCOMP_OPS or not isinstance(a.get("index"), int) \
                    or not isinstance(a.get("value"), int):
                problems.append(f"rule {i}: bad argument condition {a}")
    check("seccomp: every rule is well formed (OCI runtime spec, no Docker-only conditions)",
          not problems, "; ".join(problems))
    for key in ("archMap", "includes", "excludes"):
        check(f"seccomp: no Docker-only top-level {key}", key not in prof)
    plain = [r for r in rules if r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args")]
    allowed = {n for r in plain for n in r["names"]}
    names = [n for r in plain for n in r["names"]]
    check("seccomp: no syscall allowed twice", len(names) == len(set(names)),
          str(sorted({n for n in names if names.count(n) > 1})))
    check("seccomp: allows io_uring_setup, io_uring_enter and io_uring_register",
          {"io_uring_setup", "io_uring_enter", "io_uring_register"} <= allowed)
    missing = sorted(RELAY_NEEDS - allowed)
    check("seccomp: allows what the relay calls (io_uring and epoll drivers, sockets, threads)",
          not missing, str(missing))
    conditional = {n for r in rules if r.get("args") or r.get("action") != "SCMP_ACT_ALLOW"
                   for n in r["names"]}
    check("seccomp: clone without namespaces, socket without AF_VSOCK (conditions, not plain allows)",
          {"clone", "socket"} <= conditional and not ({"clone", "clone3", "socket"} & allowed))
    check("seccomp: no capability-only calls (the chart drops every capability)",
          not ({"mount", "umount2", "ptrace", "bpf", "kexec_load", "init_module", "setns", "unshare",
                "reboot", "swapon", "pivot_root", "perf_event_open"} & allowed))


# ---- chart without Helm ---------------------------------------------------------------------------

ACTION = re.compile(r'\{\{(?:"(?:[^"\\]|\\.)*"|`[^`]*`|[^"`}]|\}(?!\}))*\}\}')


def strip_template(text: str) -> str:
    """YAML-ish text with Go template actions removed: lines holding only actions go, inline
    actions become a placeholder scalar. Both branches of an if/else stay."""
    text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        if line.strip() and not ACTION.sub("", line).strip():
            continue
        out.append(ACTION.sub("TPL", line))
    return "\n".join(out)


def values_paths(v: Any, prefix: tuple = ()) -> set[tuple]:
    paths = {prefix} if prefix else set()
    if isinstance(v, dict):
        for k, sub in v.items():
            paths |= values_paths(sub, prefix + (k,))
    return paths


def leaf_paths(v: Any, prefix: tuple = ()) -> set[tuple]:
    if isinstance(v, dict) and v:
        out = set()
        for k, sub in v.items():
            out |= leaf_paths(sub, prefix + (k,))
        return out
    return {prefix}


def check_chart_static() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    check("chart: Chart.yaml is apiVersion v2 with name and version",
          chart.get("apiVersion") == "v2" and chart.get("name") == "relay" and bool(chart.get("version")))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    check("chart: values.yaml parses to a mapping", isinstance(values, dict))
    templates = sorted((CHART / "templates").glob("*"))
    for t in templates:
        if t.suffix == ".yaml" or t.name == "_pod.tpl":
            try:
                docs = list(yaml.safe_load_all(strip_template(t.read_text())))
                check(f"chart: {t.name} is YAML once template actions are stripped", True)
                if t.suffix == ".yaml":
                    kinds = [d.get("kind") for d in docs if isinstance(d, dict)]
                    check(f"chart: {t.name} declares a kind", bool(kinds) and all(kinds))
            except yaml.YAMLError as e:
                check(f"chart: {t.name} is YAML once template actions are stripped", False, str(e))
    text = "\n".join(t.read_text() for t in templates)
    refs = {tuple(m.split(".")[1:]) for m in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", text)}
    known = values_paths(values)
    missing = sorted(".".join(r) for r in refs if r not in known)
    check("chart: every .Values path in the templates exists in values.yaml", not missing, str(missing))
    unused = sorted(".".join(p) for p in leaf_paths(values)
                    if not any(p[:len(r)] == r for r in refs))
    check("chart: every value in values.yaml is read by a template", not unused, str(unused))
    env_names = set(re.findall(r"-\s+name:\s+(RELAY_[A-Z0-9_]+|[A-Z_]+)\s*$", text, flags=re.M))
    env_names |= set(re.findall(r'"name"\s+"(RELAY_[A-Z0-9_]+)"', text))
    unknown = sorted(n for n in env_names if n not in RELAY_ENV | HELPER_ENV)
    check("chart: env names in templates are ones the relay reads", not unknown, str(unknown))
    check("chart: NOTES.txt exists", (CHART / "templates" / "NOTES.txt").exists())


def check_dockerfile() -> None:
    df = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"(?im)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", df)
    check("Dockerfile: multi-stage", len(stages) >= 2, str(stages))
    final = df[df.rfind("\nFROM "):]
    user = re.findall(r"(?m)^USER\s+(\S+)", final)
    check("Dockerfile: final stage runs as a numeric non-root user",
          bool(user) and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]) is not None, str(user))
    copies = re.findall(r"(?m)^COPY\s+--from=\S+\s+(.+)$", final)
    check("Dockerfile: final stage copies relay and relayctl only",
          len(copies) == 1 and sorted(Path(p).name for p in copies[0].split()[:-1]) == ["relay", "relayctl"],
          str(copies))
    check("Dockerfile: builds with the locked dependency set", "--locked" in df)
    check("Dockerfile: caches dependencies in their own layer", "cargo chef cook" in df)
    exposed = " ".join(re.findall(r"(?m)^EXPOSE\s+(.+)$", df))
    check("Dockerfile: documents the control, metrics and media ports",
          all(p in exposed for p in ("7070/tcp", "9090/tcp", "/udp")), exposed)
    check("Dockerfile: entrypoint is the relay", re.search(r'ENTRYPOINT\s+\["/usr/local/bin/relay"\]', df) is not None)


# ---- chart with Helm (optional) ---------------------------------------------------------------------

def helm_python() -> str | None:
    """An interpreter that can run tools/helm_render.py with a backend, if any."""
    candidates = [sys.executable]
    if os.environ.get("HELM_SDKPY_PYTHON"):
        candidates.append(os.environ["HELM_SDKPY_PYTHON"])
    for py in candidates:
        p = subprocess.run([py, str(RENDER), "--backend"], capture_output=True, text=True)
        if p.returncode == 0:
            return py
    return None


def check_chart_helm() -> None:
    py = helm_python()
    if py is None:
        why = ("no Helm backend: install the helm CLI, or `pip install helm-sdkpy` into a Python "
               ">= 3.12 and set HELM_SDKPY_PYTHON to it")
        for name in ("deploy/k8s matches the chart's rendering", "chart variants render and pass",
                     "chart refuses broken values", "helm lint"):
            skip(f"helm: {name}", why)
        return
    backend = subprocess.run([py, str(RENDER), "--backend"], capture_output=True, text=True).stdout.strip()
    print(f"   (Helm backend: {backend} via {py})")

    def render(values: dict) -> subprocess.CompletedProcess:
        return subprocess.run([py, str(RENDER), "--values-json", json.dumps(values), str(CHART)],
                              capture_output=True, text=True, timeout=300)

    p = subprocess.run([py, str(RENDER), "--check-k8s"], capture_output=True, text=True, timeout=300)
    check("helm: deploy/k8s matches the chart's rendering", p.returncode == 0, (p.stdout + p.stderr)[-3000:])

    variants = {
        "defaults": {},
        "daemonset": {"kind": "DaemonSet"},
        "no-hostnetwork": {"hostNetwork": False, "listenHost": "0.0.0.0"},
        "ipv6+annotation": {"media": {"whatsappV6": "::"},
                            "advertise": {"v4": {"from": "annotation", "annotation": "relay.example.com/public-ipv4"},
                                          "v6": {"from": "annotation", "annotation": "relay.example.com/public-ipv6"}}},
        "io-uring seccomp": {"seccomp": {"profile": "ioUring"}},
        "everything-on": {"autoscaling": {"enabled": True}, "serviceMonitor": {"enabled": True},
                          "prometheusRule": {"enabled": True}, "config": {"enabled": True},
                          "grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                               "annotations": {"grafana_folder": "Relay"}},
                          "control": {"token": {"value": "t0ken"},
                                      "tls": {"enabled": True, "existingSecret": "relay-tls",
                                              "clientCaKey": "ca.crt"}},
                          "relay": {"logLevel": "info",
                          "extraArgs": ["--log-json"]}, "podAnnotations": {"a": "b"},
                          "service": {"headless": False}, "lifecycle": {"preStopSleepSeconds": 0,
                          "terminationGracePeriodSeconds": 400}},
    }
    for name, values in variants.items():
        p = render(values)
        if not check(f"helm: variant {name} renders", p.returncode == 0, p.stderr[-2000:]):
            continue
        objs = load_docs(p.stdout)
        check_objects(objs, f"helm {name}")
        if name == "io-uring seccomp":
            w = next(o for o in objs if o.get("kind") in ("Deployment", "DaemonSet"))
            sp = dig(w, "spec", "template", "spec", "securityContext", "seccompProfile", default={})
            check("helm io-uring seccomp: the pod uses the Localhost profile deploy/seccomp ships",
                  sp == {"type": "Localhost", "localhostProfile": SECCOMP.name}, str(sp))
        if name == "everything-on":
            kinds = {o.get("kind") for o in objs}
            check("helm everything-on: renders Secret, ConfigMap, HPA, ServiceMonitor, PrometheusRule",
                  {"Secret", "ConfigMap", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds,
                  str(kinds))
            w = next(o for o in objs if o.get("kind") == "Deployment")
            check("helm everything-on: no replicas field under an HPA", "replicas" not in w["spec"])
            env = dig(w, "spec", "template", "spec", "containers")[0]["env"]
            check("helm everything-on: config file passed as RELAY_CONFIG",
                  any(e["name"] == "RELAY_CONFIG" for e in env))
            values = {e["name"]: e.get("value") for e in env}
            check("helm everything-on: control TLS files from the mounted Secret",
                  values.get("RELAY_CONTROL_TLS_CERT") == "/etc/relay/tls/tls.crt"
                  and values.get("RELAY_CONTROL_TLS_KEY") == "/etc/relay/tls/tls.key"
                  and values.get("RELAY_CONTROL_TLS_CLIENT_CA") == "/etc/relay/tls/ca.crt", str(values))
            pod = dig(w, "spec", "template", "spec")
            vol = next((v for v in pod.get("volumes", []) if v.get("name") == "control-tls"), {})
            mount = next((m for m in pod["containers"][0].get("volumeMounts", [])
                          if m.get("name") == "control-tls"), {})
            check("helm everything-on: TLS Secret mounted read-only, group-readable only",
                  dig(vol, "secret", "secretName") == "relay-tls" and dig(vol, "secret", "defaultMode") == 0o440
                  and mount.get("mountPath") == "/etc/relay/tls" and mount.get("readOnly") is True
                  and dig(pod, "securityContext", "fsGroup") == 65532, f"{vol} {mount}")
            cm = next((o for o in objs if o.get("kind") == "ConfigMap"
                       and "relay-dashboard.json" in (o.get("data") or {})), {})
            check("helm everything-on: dashboard ConfigMap in its namespace with the folder annotation",
                  dig(cm, "metadata", "namespace") == "monitoring"
                  and dig(cm, "metadata", "annotations", "grafana_folder") == "Relay")
    broken = {
        "capacity beyond the port range": ({"relay": {"capacity": 6000}}, "port range"),
        "grace period not above the drain": ({"lifecycle": {"terminationGracePeriodSeconds": 300}}, "must exceed"),
        "HPA with a DaemonSet": ({"kind": "DaemonSet", "autoscaling": {"enabled": True}}, "Deployment"),
        "no control token": ({"control": {"token": {"existingSecret": ""}}}, "token"),
        "unknown advertise source": ({"advertise": {"v4": {"from": "stun"}}}, "from must be"),
        "unknown kind": ({"kind": "StatefulSet"}, "kind must be"),
        "TLS without a Secret": ({"control": {"tls": {"enabled": True}}}, "existingSecret"),
        "unknown seccomp profile": ({"seccomp": {"profile": "Unconfined"}}, "seccomp.profile must be"),
    }
    for name, (values, needle) in broken.items():
        p = render(values)
        check(f"helm: refuses {name}", p.returncode != 0 and needle in p.stderr,
              f"rc={p.returncode} stderr={p.stderr[-500:]}")
    lint = subprocess.run([py, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import helm_render; "
                           "errs = helm_render.lint(); print('\\n'.join(errs)); sys.exit(1 if errs else 0)",
                           str(RENDER.parent)], capture_output=True, text=True, timeout=300)
    check("helm: lint", lint.returncode == 0, lint.stdout + lint.stderr)


def main() -> int:
    run("k8s manifests", check_k8s)
    run("alert rules (promtool)", check_rules_promtool)
    run("dashboard", check_dashboard)
    run("chart (static)", check_chart_static)
    run("Dockerfile", check_dockerfile)
    run("seccomp profile", check_seccomp)
    run("chart (helm)", check_chart_helm)
    passed = sum(s == "ok" for s, _, _ in RESULTS)
    failed = sum(s == "FAIL" for s, _, _ in RESULTS)
    skipped = sum(s == "skip" for s, _, _ in RESULTS)
    for status, name, detail in RESULTS:
        if status == "ok" and os.environ.get("VALIDATE_QUIET"):
            continue
        print(f"{status:4} {name}" + (f"\n       {detail}" if detail else ""))
    if skipped:
        print(f"({skipped} skipped)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
