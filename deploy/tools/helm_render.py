#!/usr/bin/env python3
"""Render the relay chart with the real Helm engine, without a cluster.

Backends, first available wins:
  1. the `helm` CLI on PATH: `helm template`;
  2. the `helm_sdkpy` Python package (Helm's Go engine as a shared library; PyPI, Python >= 3.12):
     it can only `install`, so this script runs a fake Kubernetes API server on 127.0.0.1 that
     answers discovery and accepts every create, and returns the release's rendered manifest.
     Nothing leaves the machine.

Usage:
  helm_render.py [--values-json JSON] [CHART]   print the manifest (exit 3: no backend)
  helm_render.py --write-k8s                    regenerate deploy/k8s/{relay,monitoring}.yaml
  helm_render.py --check-k8s                    exit 1 (with a diff) if they are stale
  helm_render.py --backend                      print the backend name (or "none", exit 3)
Render errors (e.g. the chart's `fail` checks) go to stderr with exit 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
CHART = DEPLOY / "helm" / "relay"
K8S = DEPLOY / "k8s"
RELEASE = "relay"
NAMESPACE = "relay"

# Values for deploy/k8s/monitoring.yaml: the optional monitoring objects of the chart.
MONITORING_VALUES = {
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}
MONITORING_KINDS = {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


class RenderError(Exception):
    pass


def backend() -> str:
    if shutil.which("helm"):
        return "helm"
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError:
        return "none"
    return "helm_sdkpy"


def render(values: dict | None = None, chart: Path = CHART) -> str:
    b = backend()
    if b == "helm":
        return _render_cli(values or {}, chart)
    if b == "helm_sdkpy":
        return _render_sdkpy(values or {}, chart)
    raise RenderError("no Helm backend: install helm, or helm_sdkpy in a Python >= 3.12")


def lint(values: dict | None = None, chart: Path = CHART) -> list[str]:
    """Errors from `helm lint` (CLI) or Helm's lint action (helm_sdkpy: default values only)."""
    b = backend()
    if b == "helm":
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(values or {}, f)
        try:
            p = subprocess.run(["helm", "lint", "--strict", str(chart), "-f", f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        return [] if p.returncode == 0 else [p.stdout + p.stderr]
    if b == "helm_sdkpy":
        import asyncio
        import helm_sdkpy
        cfg = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=_kubeconfig(1))
        res = asyncio.run(helm_sdkpy.Lint(cfg).run(str(chart)))
        # The library serialises Go errors as {}: only the path of each error survives.
        return [f"{m.get('Path')}: severity {m.get('Severity')}" for m in res.get("Messages") or []
                if m.get("Severity", 0) >= 2]
    raise RenderError("no Helm backend")


def _render_cli(values: dict, chart: Path) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(values, f)
    try:
        p = subprocess.run(["helm", "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                            "-f", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        raise RenderError(p.stderr.strip())
    return p.stdout


# ---- helm_sdkpy backend: a fake API server on loopback ------------------------------------

_RESOURCES = {
    ("", "v1"): [("serviceaccounts", "ServiceAccount", True), ("services", "Service", True),
                 ("secrets", "Secret", True), ("configmaps", "ConfigMap", True),
                 ("namespaces", "Namespace", False)],
    ("apps", "v1"): [("deployments", "Deployment", True), ("daemonsets", "DaemonSet", True)],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor", True),
                                      ("prometheusrules", "PrometheusRule", True)],
}


class _FakeApi(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _json(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/version":
            return self._json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
        if path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                      for (g, v) in _RESOURCES if g]
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (g, v), resources in _RESOURCES.items():
            if path == (f"/apis/{g}/{v}" if g else f"/api/{v}"):
                return self._json(200, {
                    "kind": "APIResourceList", "groupVersion": f"{g}/{v}" if g else v,
                    "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns,
                                   "kind": k, "verbs": ["create", "get", "list", "update"]}
                                  for n, k, ns in resources]})
        if path.endswith("/secrets"):  # Helm's release history: empty
            return self._json(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {},
                                    "items": []})
        return self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def _echo(self, code: int) -> None:
        # Creates and updates succeed and return what was sent (JSON or protobuf alike).
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(code)
        self.send_header("Content-Type", self.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self):  # noqa: N802
        self._echo(201)

    def do_PUT(self):  # noqa: N802
        self._echo(200)

    do_PATCH = do_PUT


def _kubeconfig(port: int) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]\n'
        f"contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {NAMESPACE}}}}}]\n"
        "current-context: fake\nusers: [{name: fake, user: {}}]\n"
    )


def _render_sdkpy(values: dict, chart: Path) -> str:
    import asyncio
    import helm_sdkpy

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = helm_sdkpy.Configuration(namespace=NAMESPACE,
                                       kubeconfig=_kubeconfig(server.server_port))
        try:
            res = asyncio.run(helm_sdkpy.Install(cfg).run(
                RELEASE, str(chart), values=values or None, wait=False, timeout=60))
        except helm_sdkpy.HelmError as e:
            raise RenderError(str(e)) from e
        return res["manifest"]
    finally:
        server.shutdown()
        server.server_close()


# ---- deploy/k8s generation ------------------------------------------------------------------

def _split_docs(manifest: str) -> list[str]:
    return [d.strip("\n") for d in re.split(r"(?m)^---\s*$", manifest) if d.strip()]


def _kind(doc: str) -> str:
    m = re.search(r"(?m)^kind:\s*(\S+)", doc)
    return m.group(1) if m else ""


def _plain(doc: str) -> str:
    """Helm's ownership labels do not belong on kubectl-applied objects."""
    lines = [ln for ln in doc.splitlines()
             if not re.match(r"\s*helm\.sh/chart:", ln)
             and not re.match(r"\s*app\.kubernetes\.io/managed-by:", ln)]
    return "\n".join(lines)


_ORDER = ["Namespace", "ServiceAccount", "Secret", "ConfigMap", "Service", "PodDisruptionBudget",
          "Deployment", "DaemonSet", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"]


def k8s_files() -> dict[str, str]:
    """The contents deploy/k8s/relay.yaml and monitoring.yaml must have."""
    def docs(values):
        out = [_plain(d) for d in _split_docs(render(values))]
        return sorted(out, key=lambda d: _ORDER.index(_kind(d)) if _kind(d) in _ORDER else 99)

    namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: relay"
    base = docs({})
    monitoring = [d for d in docs(MONITORING_VALUES) if _kind(d) in MONITORING_KINDS]
    head = ("# Generated by deploy/tools/helm_render.py --write-k8s from deploy/helm/relay{}.\n"
            "# Do not edit by hand: change the chart, then regenerate.\n")
    relay = (head.format(" with its default values (release relay, namespace relay)")
             + "# Before applying, create the control-plane token Secret:\n"
             + "#   kubectl -n relay create secret generic relay-control-token "
               "--from-literal=token=\"$(openssl rand -hex 32)\"\n"
             + "# and set the image to yours. Then: kubectl apply -f deploy/k8s/relay.yaml\n")
    relay += "---\n" + "\n---\n".join([namespace] + base) + "\n"
    mon = (head.format(" with " + json.dumps(MONITORING_VALUES, sort_keys=True))
           + "# Needs the Prometheus Operator CRDs and the Prometheus adapter rules in\n"
           + "# prometheus-adapter-values.yaml. With the HPA, delete `replicas` from relay.yaml's\n"
           + "# Deployment (or apply it once) so that kubectl and the HPA do not fight over it.\n"
           + "# The ConfigMap is the Grafana dashboard, for Grafana's dashboard sidecar.\n")
    mon += "---\n" + "\n---\n".join(monitoring) + "\n"
    return {"relay.yaml": relay, "monitoring.yaml": mon}


def main(argv: list[str]) -> int:
    args = list(argv)
    if "--backend" in args:
        b = backend()
        print(b)
        return 3 if b == "none" else 0
    if backend() == "none":
        print("helm_render: no Helm backend (helm CLI, or helm_sdkpy)", file=sys.stderr)
        return 3
    try:
        if "--check-k8s" in args:
            import difflib
            stale = 0
            for name, text in k8s_files().items():
                have = (K8S / name).read_text() if (K8S / name).exists() else ""
                if have != text:
                    stale += 1
                    sys.stdout.writelines(difflib.unified_diff(
                        have.splitlines(True), text.splitlines(True), f"deploy/k8s/{name}",
                        f"rendered {name}"))
            if stale:
                print("deploy/k8s is stale: run deploy/tools/helm_render.py --write-k8s")
            return 1 if stale else 0
        if "--write-k8s" in args:
            for name, text in k8s_files().items():
                (K8S / name).write_text(text)
                print(f"wrote {K8S / name}")
            return 0
        values = {}
        if "--values-json" in args:
            i = args.index("--values-json")
            values = json.loads(args[i + 1])
            del args[i:i + 2]
        chart = Path(args[0]) if args else CHART
        sys.stdout.write(render(values, chart))
        return 0
    except RenderError as e:
        print(f"helm_render: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
