#!/usr/bin/env bash
# Run a command with KUBECONFIG naming a cluster: the one already named, or (when KUBECONFIG
# is unset, as in CI) an in-repo Kubernetes API stand-in (e2e/standin) started on loopback for
# the run; see e2e/README.md for what the stand-in cannot prove.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FERRY_VENV:-/opt/ferry-venv}
work=$(mktemp -d /tmp/ferry-e2e.XXXXXX)
standin_pid=""
cleanup() {
  if [ -n "$standin_pid" ]; then
    kill "$standin_pid" 2>/dev/null || true
    wait "$standin_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${KUBECONFIG:-}" ]; then
  echo "e2e: KUBECONFIG is unset; starting the API stand-in"
  "$VENV/bin/python" e2e/standin/kube_standin.py --port 0 \
    --kubeconfig-out "$work/kubeconfig" --ready-file "$work/ready" --log "$work/api.log" &
  standin_pid=$!
  for _ in $(seq 1 100); do
    [ -s "$work/ready" ] && break
    kill -0 "$standin_pid" 2>/dev/null || { echo "e2e: the stand-in exited"; exit 1; }
    sleep 0.2
  done
  [ -s "$work/ready" ] || { echo "e2e: the stand-in did not start within 20 s"; exit 1; }
  export KUBECONFIG="$work/kubeconfig" FERRY_STANDIN=1 FERRY_STANDIN_PID="$standin_pid"
fi

FERRY_E2E=1 "$@"
