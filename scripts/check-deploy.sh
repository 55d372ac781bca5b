#!/usr/bin/env bash
# Checks of everything that ships beside the binary, offline, with the real tools:
#   - Helm chart: helm lint --strict (default and all toggles on), helm template, bad values
#     files rejected with the expected message;
#   - kubernetes-validate (strict) on every rendered built-in object and the CRDs, for the
#     chart's minimum Kubernetes version and a current one;
#   - kustomize bases, samples and the Argo CD CRD kustomization render with kubectl kustomize;
#   - cargo test --test deploy: CRD copies == crds/, chart and config/rbac RBAC ==
#     REQUIRED_PERMISSIONS (src/controller/permissions.rs), samples pass the CEL rules;
#   - pytest tests/deploy: chart semantics (flags, Lease env, restricted security, toggles,
#     determinism, dashboard metrics, alerts parsed as PromQL), kustomize == chart Deployment, samples against the CRD
#     schemas, Argo CD Lua health tests (lupa, Lua 5.1) and a row for every condition reason in
#     src/, the docs (links, supported versions, flags and commands), the CRD upgrade path, and the real
#     `ferry controller` against the API stand-in with every request checked against the chart's
#     RBAC;
#   - the optional `otel` feature: builds, and exports spans to a local OTLP/HTTP receiver
#     (tests/otel.rs).
# Usage: scripts/check-deploy.sh        (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/ferry-tools/bin:$HOME/.cargo/bin:$PATH"
VENV=${FERRY_VENV:-/opt/ferry-venv}
# The chart's kubeVersion floor and a current release.
K8S_VERSIONS=${FERRY_K8S_VERSIONS:-"1.29.0 1.35.0"}
CHART=charts/ferry
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== helm lint --strict"
helm lint --strict "$CHART"
helm lint --strict "$CHART" --values "$CHART/ci/all-on-values.yaml"

echo "== helm template"
helm template ferry "$CHART" --namespace ferry-system --include-crds >"$out/chart-default.yaml"
helm template ferry "$CHART" --namespace ferry-system --values "$CHART/ci/all-on-values.yaml" \
  >"$out/chart-all-on.yaml"
helm template ferry "$CHART" --namespace ferry-system --set watchNamespace=vms \
  --set replicaCount=1 --set podAntiAffinity=none >"$out/chart-namespaced.yaml"

echo "== bad values are rejected"
for f in tests/deploy/bad-values/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$f")
  if [ -z "$expect" ]; then
    echo "FAIL: $f has no '# expect:' line" >&2
    exit 1
  fi
  if msg=$(helm template ferry "$CHART" --values "$f" 2>&1 >/dev/null); then
    echo "FAIL: helm template accepted $f" >&2
    exit 1
  fi
  if ! grep -qF -- "$expect" <<<"$msg"; then
    echo "FAIL: $f was rejected, but not with '$expect':" >&2
    echo "$msg" >&2
    exit 1
  fi
  echo "rejected as expected: $f"
done

echo "== kubectl kustomize"
kubectl kustomize config/default >"$out/kustomize-default.yaml"
kubectl kustomize config/samples >"$out/samples.yaml"
kubectl kustomize deploy/argocd/crds >"$out/argocd-crds.yaml"

echo "== kubernetes-validate (built-in kinds and CRDs; ServiceMonitor and PrometheusRule have no schema here)"
for v in $K8S_VERSIONS; do
  "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" \
    "$out/chart-default.yaml" "$out/chart-all-on.yaml" "$out/chart-namespaced.yaml" \
    "$out/kustomize-default.yaml" "$out/argocd-crds.yaml" \
    config/samples/libvirt-tls-secret.example.yaml deploy/argocd/argocd-cm-patch.yaml
done

echo "== cargo test --test deploy (CRD copies, RBAC vs REQUIRED_PERMISSIONS, samples vs CEL)"
cargo test --locked --test deploy -- --test-threads=1
cargo build --locked --bin ferry --bin kubectl-ferry

echo "== pytest tests/deploy"
FERRY_BIN="${CARGO_TARGET_DIR:-target}/debug/ferry" "$VENV/bin/python" -m pytest -q tests/deploy

# Last: this relinks target/debug/ferry with the feature, and the pytest run above uses the
# default build.
echo "== --features otel (OpenTelemetry trace export to a local OTLP/HTTP receiver)"
cargo test --locked --features otel --test otel

echo "check-deploy: all checks passed"
