#!/usr/bin/env python3
"""Checks of Herald's rendered Helm manifests that schemas alone don't make.

Usage: check_manifests.py HELP_TEXT RULES_OUT RENDERED.yaml...

- ServiceMonitor and PrometheusRule (Prometheus Operator CRDs, which
  kubernetes-validate has no schema for) are validated against the strict
  local schemas in deploy/schemas/; any other kind without a schema fails.
- Every pod runs `herald serve` with a HERALD_ROLE Herald accepts, and every
  HERALD_* variable it gets (env and ConfigMap keys) is one `herald serve
  --help` documents (HELP_TEXT) or api/src/main.rs reads, except the ones
  listed in PENDING.
- Every pod is locked down: non-root, read-only root filesystem, no privilege
  escalation, all capabilities dropped, seccomp RuntimeDefault, probes on
  /healthz and /readyz, resources set.
- Every workload's pods are behind a Service labelled herald.io/metrics
  that the ServiceMonitor (when rendered) scrapes on port http, /metrics;
  the relay is a StatefulSet with HERALD_RELAY_ID from its pod's name; every
  HPA targets a rendered workload.
- The PrometheusRule's groups are written to RULES_OUT for `promtool check rules`.
"""

import json
import pathlib
import re
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com-v1.json",
}
# Variables the chart passes for Herald features landing on other branches;
# Herald ignores unknown variables, so these are harmless until then.
PENDING = set()
ROLES = {"all", "api", "relay", "worker"}


def fail(msg):
    print(f"check_manifests: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    help_text, rules_out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    known_vars = set(re.findall(r"HERALD_[A-Z0-9_]+", pathlib.Path(help_text).read_text()))
    # HERALD_LOG is read by the binary itself, outside clap.
    known_vars |= set(re.findall(r'"(HERALD_[A-Z0-9_]+)"', (ROOT / "api/src/main.rs").read_text()))
    if "HERALD_LISTEN" not in known_vars:
        fail(f"{help_text} does not look like `herald serve --help` output")
    rule_groups = []
    checked_pods = 0
    for f in files:
        docs = [d for d in yaml.safe_load_all(pathlib.Path(f).read_text()) if d]
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        for doc in docs:
            where = f"{f}: {doc['kind']}/{doc['metadata']['name']}"
            key = (doc["apiVersion"], doc["kind"])
            if key in CRD_SCHEMAS:
                schema = json.loads((ROOT / "deploy/schemas" / CRD_SCHEMAS[key]).read_text())
                try:
                    jsonschema.validate(doc, schema)
                except jsonschema.ValidationError as e:
                    fail(f"{where}: {e.message} at {list(e.absolute_path)}")
                if doc["kind"] == "PrometheusRule":
                    rule_groups = doc["spec"]["groups"]
            if doc["kind"] in ("Deployment", "StatefulSet"):
                check_pod(where, doc["spec"]["template"]["spec"], configmaps, known_vars)
                checked_pods += 1
        check_scrapes_and_targets(f, docs)
    if checked_pods == 0:
        fail("no Deployment or StatefulSet rendered")
    if rule_groups:
        pathlib.Path(rules_out).write_text(yaml.safe_dump({"groups": rule_groups}))
    print(f"check_manifests: {len(files)} files, {checked_pods} workloads: ok")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_scrapes_and_targets(f, docs):
    """Every role's pods are behind a Service labelled herald.io/metrics whose
    `http` port the ServiceMonitor (when rendered) scrapes on /metrics; the
    relay is a StatefulSet whose pods take their relay id (their Kafka
    transactional id) from their own name; every HPA targets a rendered
    workload of its kind."""
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["labels"].get("herald.io/metrics") == "true"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    for (kind, name), w in workloads.items():
        where = f"{f}: {kind}/{name}"
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        scraped = [s for s in services if selects(s["spec"]["selector"], pod_labels)
                   and any(p.get("targetPort") == "http" for p in s["spec"]["ports"])]
        if len(scraped) != 1:
            fail(f"{where}: its pods must be behind exactly one Service labelled herald.io/metrics with port http, found {len(scraped)}")
        for m in monitors:
            if not selects(m["spec"]["selector"]["matchLabels"], scraped[0]["metadata"]["labels"]):
                fail(f"{where}: ServiceMonitor {m['metadata']['name']} does not select Service {scraped[0]['metadata']['name']}")
            if not any(e.get("port") == "http" and e.get("path") == "/metrics" for e in m["spec"]["endpoints"]):
                fail(f"{where}: ServiceMonitor {m['metadata']['name']} does not scrape port http on /metrics")
        container = w["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        if env.get("HERALD_ROLE", {}).get("value") == "relay":
            if kind != "StatefulSet":
                fail(f"{where}: the relay must be a StatefulSet (a stable, unique name per pod)")
            ref = env.get("HERALD_RELAY_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if ref != "metadata.name":
                fail(f"{where}: HERALD_RELAY_ID must come from the pod's name (downward API metadata.name)")
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in workloads:
            fail(f"{f}: HPA {hpa['metadata']['name']} targets {ref['kind']}/{ref['name']}, which is not rendered")


def check_pod(where, pod, configmaps, known_vars):
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{where}: the pod must set runAsNonRoot and seccompProfile RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        fail(f"{where}: Herald needs no Kubernetes API token; don't mount it")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if not (
            sc.get("readOnlyRootFilesystem") is True
            and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
        ):
            fail(f"{where}: container {c['name']} must be read-only, without escalation, all capabilities dropped")
        if c.get("args", [])[:1] != ["serve"]:
            fail(f"{where}: container {c['name']} must run `herald serve`, got args {c.get('args')}")
        if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
            fail(f"{where}: probes must be /healthz (liveness) and /readyz (readiness)")
        names = set()
        role = None
        for e in c.get("env", []):
            names.add(e["name"])
            if e["name"] == "HERALD_ROLE":
                role = e.get("value")
        for ref in c.get("envFrom", []):
            cm = ref.get("configMapRef", {}).get("name")
            if cm not in configmaps:
                fail(f"{where}: envFrom names ConfigMap {cm!r}, which the chart does not render")
            names.update(configmaps[cm])
        if role not in ROLES:
            fail(f"{where}: HERALD_ROLE={role!r} is not one of {sorted(ROLES)}")
        unknown = {n for n in names if n.startswith("HERALD_")} - known_vars - PENDING
        if unknown:
            fail(f"{where}: variables `herald serve --help` does not know: {sorted(unknown)}")
        not_herald = {n for n in names if not n.startswith("HERALD_")}
        if not_herald:
            fail(f"{where}: unexpected variables {sorted(not_herald)}")
        listen = next((cm.get("HERALD_LISTEN") for cm in configmaps.values() if "HERALD_LISTEN" in cm), None)
        port = c["ports"][0]["containerPort"]
        if listen != f"0.0.0.0:{port}":
            fail(f"{where}: HERALD_LISTEN={listen!r} does not match containerPort {port}")


if __name__ == "__main__":
    main()
