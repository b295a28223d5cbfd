#!/usr/bin/env bash
# Checks every file in deploy/ with the real tool for it. Usage: deploy/check.sh path/to/ringlb
# Needs: promtool (Debian's prometheus), systemd-analyze (systemd), python3 with yaml (python3-yaml),
# kubernetes-validate (PyPI; its schemas are bundled, so it runs offline).
set -euo pipefail
bin=$(realpath "${1:?usage: deploy/check.sh path/to/ringlb}")
cd "$(dirname "$0")"
py=/usr/bin/python3
fail=0
step() { echo "== $*"; }

step "promtool: Prometheus config, alert rules and their unit tests"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts_test.yml

step "systemd-analyze verify (any warning fails)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in systemd/*.service; do
  sed "s|/usr/bin/ringlb|$bin|g" "$u" > "$tmp/$(basename "$u")"
done
# --man=no: the man pages the units name are installed by the package (deploy/debian/check.sh
# verifies the installed units with them), not here.
out=$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1 || true)
if [ -n "$out" ]; then echo "$out"; fail=1; else echo "ok: $(ls systemd)"; fi

step "Grafana dashboard: JSON, and every panel has a query"
$py - <<'PY'
import json, sys
d = json.load(open("grafana/ringlb.json"))
assert d["panels"], "no panels"
for p in d["panels"]:
    assert p.get("targets") and all(t.get("expr") for t in p["targets"]), f"panel {p.get('title')} has no query"
print(f"ok: {len(d['panels'])} panels")
PY

step "kubernetes-validate --strict: every manifest against the oldest and newest Kubernetes we support"
manifests=$(ls kubernetes/*.yaml | grep -v kustomization.yaml)
for v in 1.30.0 1.37.0; do
  if kubernetes-validate --strict --quiet -k "$v" $manifests; then
    echo "ok: Kubernetes $v: $(echo $manifests)"
  else
    fail=1
  fi
done

step "Kubernetes manifests: the kustomization, required fields, minimal RBAC, embedded configs"
$py - "$bin" "$tmp" <<'PY'
import glob, os, subprocess, sys, yaml
bin, tmp = sys.argv[1], sys.argv[2]
k = yaml.safe_load(open("kubernetes/kustomization.yaml"))
assert k["kind"] == "Kustomization", "kustomization.yaml is not a Kustomization"
listed = [f"kubernetes/{r}" for r in k["resources"]]
on_disk = sorted(f for f in glob.glob("kubernetes/*.yaml") if not f.endswith("kustomization.yaml"))
assert sorted(listed) == on_disk, f"kustomization resources {listed} != manifests {on_disk}"
docs = []
for f in listed:
    for d in yaml.safe_load_all(open(f)):
        if d:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), f"{f}: a document lacks apiVersion/kind/metadata.name"
            docs.append((f, d))
for f, d in docs:
    if d["kind"] in ("Deployment", "StatefulSet"):
        spec = d["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), f"{f}: selector does not match the pod labels"
        for c in spec["template"]["spec"]["containers"]:
            assert c.get("image"), f"{f}: container without image"
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{f}: {c['name']} may escalate"
    if d["kind"] == "Role":
        for r in d["rules"]:
            assert r.get("resourceNames"), f"{f}: a rule is not limited to named resources"
            assert "delete" not in r["verbs"] and "create" not in r["verbs"] and "*" not in r["verbs"], f"{f}: RBAC too wide: {r}"
        scale = [r for r in d["rules"] if any(x.endswith("/scale") for x in r["resources"])]
        assert scale and all(r["resourceNames"] == ["web"] for r in scale), f"{f}: scale rule must name the one StatefulSet"
# Every Deployment: probes over HTTP for readiness, resources, a Localhost seccomp profile
# (the runtimes' default one blocks io_uring) and, for ringlb, a PodDisruptionBudget.
kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
for f, d in docs:
    if d["kind"] != "Deployment":
        continue
    pod = d["spec"]["template"]["spec"]
    for c in pod["containers"]:
        assert c.get("resources", {}).get("requests"), f"{f}: {c['name']} has no resource requests"
        assert c.get("readinessProbe", {}).get("httpGet"), f"{f}: {c['name']} readiness is not an HTTP probe"
        assert c.get("livenessProbe"), f"{f}: {c['name']} has no liveness probe"
    if d["metadata"]["name"] == "ringlb":
        assert pod["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/ringlb.json"}, f"{f}: ringlb must run under the shipped seccomp profile"
        assert ("PodDisruptionBudget", "ringlb") in kinds, "ringlb has no PodDisruptionBudget"
        assert d["spec"]["replicas"] >= 2, "a PodDisruptionBudget over one replica blocks every drain"
    if d["metadata"]["name"] == "ringlb-scaler":
        # up.sh waits for the pod up to its --timeout; the exec actuator kills a command
        # still running at its own `timeout`: that must be the longer of the two.
        import re, tomllib
        cm = next(x for _, x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == "ringlb-scaler")
        waits = [int(t) for t in re.findall(r"--timeout=(\d+)s", cm["data"]["up.sh"])]
        assert waits, "up.sh has no kubectl wait --timeout"
        text = tomllib.loads(cm["data"]["scaler.toml"])["actuator"].get("timeout", "10m")
        m = re.fullmatch(r"(\d+)([smh])", text)
        assert m, f"{f}: write the actuator's timeout in whole s, m or h here, not {text!r}"
        limit = int(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]]
        assert limit > max(waits), f"{f}: the exec actuator's timeout ({limit}s) is shorter than up.sh's wait ({max(waits)}s): every slow pod start would be killed"
# The configs inside the ConfigMaps must be valid for the binary itself.
for f, d in docs:
    if d["kind"] != "ConfigMap":
        continue
    for key, text in d["data"].items():
        if not key.endswith(".toml"):
            continue
        path = f"{tmp}/{key}"
        open(path, "w").write(text)
        cmd = [bin, "check", "--config", path] if key == "ringlb.toml" else [bin, "scale", "--check", "--config", path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{f}: {key} is not valid: {r.stderr}"
print(f"ok: {len(docs)} documents")
PY

step "Containerfile: the files it copies exist"
for src in $(awk '/^COPY/ && !/--from/ {for (i=2;i<NF;i++) print $i}' container/Containerfile); do
  [ -e "../$src" ] || { echo "Containerfile copies $src, which does not exist"; fail=1; }
done
echo "ok: container/Containerfile (not built here: no container engine on this machine)"

exit $fail
