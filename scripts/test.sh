#!/usr/bin/env bash
# ferry's whole test suite: formatting, lints, unit and schema tests, real-libvirt tests
# (each brings up its own lab hosts), the Kubernetes API stand-in's own tests, the deployment
# checks (chart, Argo CD health with a row per condition reason, docs), the e2e suite, the
# README's quick start against a lab host, and the controller image built without a container
# engine and run with podman.
#
# Tests that need an API server use a real one wherever this machine has a control plane
# (../shared/kube: etcd, kube-apiserver and kube-controller-manager started on a free loopback
# port in a temporary directory, stopped and removed afterwards, also on failure), else the
# in-repo stand-in: the e2e suite (e2e/run.sh through e2e/apiserver.sh; $KUBECONFIG, when set,
# names the cluster instead), the deployment checks that run the controller (tests/deploy), the
# quick start and the image test. FERRY_API=standin forces the stand-in for the first two. On a
# real server the e2e controllers run as the Helm chart's ServiceAccount with the chart's RBAC.
# Usage: scripts/test.sh            (run as root: the lab uses network namespaces)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/ferry-tools/bin:$HOME/.cargo/bin:$PATH"
VENV=${FERRY_VENV:-/opt/ferry-venv}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test (unit, schema, request-level, real libvirt, stand-in compatibility)"
# Lab tests start QEMU guests; two at a time suit a 2-core machine.
cargo test --locked -- --test-threads=2

if [ -d e2e/standin ]; then
  echo "== API stand-in tests"
  "$VENV/bin/python" -m pytest -q e2e/standin
fi

if [ "${FERRY_API:-}" != standin ] && kube_dir=$(e2e/apiserver.sh find 2>/dev/null); then
  api="real, one started per test run from $kube_dir"
else
  api="the in-repo stand-in"
fi
echo "== API server for the tests that need one: $api${KUBECONFIG:+ (e2e: the cluster $KUBECONFIG names)}"

echo "== deployment checks (chart, kustomize, samples, Argo CD health and reasons, RBAC, alerts, docs)"
scripts/check-deploy.sh

echo "== e2e"
e2e/run.sh

echo "== the README's quick start, against a lab host"
e2e/quickstart.sh

echo "== the controller image: built from Debian packages, run with podman"
e2e/image.sh
