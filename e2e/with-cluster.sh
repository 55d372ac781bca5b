#!/usr/bin/env bash
# Run a command with KUBECONFIG naming a cluster: the one already named; or, when KUBECONFIG is
# unset (as in CI), a real Kubernetes API server started for the run (e2e/apiserver.sh: a control
# plane on loopback, when this machine has one); or else the in-repo API stand-in (e2e/standin;
# see e2e/README.md for what it cannot prove). FERRY_API=standin picks the stand-in even where a
# real server could run. Whatever is started is stopped and removed at the end, also on failure.
# The command sees FERRY_API=real|standin|given.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FERRY_VENV:-/opt/ferry-venv}
work=$(mktemp -d /tmp/ferry-e2e.XXXXXX)
standin_pid=""
apiserver=""
cleanup() {
  if [ -n "$standin_pid" ]; then
    kill "$standin_pid" 2>/dev/null || true
    wait "$standin_pid" 2>/dev/null || true
  fi
  if [ -n "$apiserver" ]; then
    e2e/apiserver.sh stop "$apiserver"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${KUBECONFIG:-}" ]; then
  export FERRY_API=${FERRY_API:-given}
elif [ "${FERRY_API:-}" != standin ] && e2e/apiserver.sh find >/dev/null 2>&1; then
  echo "e2e: KUBECONFIG is unset; starting a real API server ($(e2e/apiserver.sh find))"
  apiserver="$work/apiserver"
  started=$(date +%s)
  KUBECONFIG=$(e2e/apiserver.sh start "$apiserver" $$)
  echo "e2e: API server ready in $(($(date +%s) - started)) s"
  export KUBECONFIG FERRY_API=real
else
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
  export KUBECONFIG="$work/kubeconfig" FERRY_API=standin FERRY_STANDIN=1 FERRY_STANDIN_PID="$standin_pid"
fi

FERRY_E2E=1 "$@"
