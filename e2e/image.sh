#!/usr/bin/env bash
# The controller image, built and run: scripts/image.sh builds it (or pass an OCI archive), then
# rootful podman (crun, vfs storage in a private directory, no daemon, no registry) loads the
# archive and runs it:
#   - `ferry --version` names this version and commit;
#   - the containerised controller, given a real API server's address and a ServiceAccount token
#     the way a pod gets them (KUBERNETES_SERVICE_HOST/PORT, /var/run/secrets/kubernetes.io/
#     serviceaccount), with the chart's ServiceAccount and RBAC (helm install), read-only root,
#     no capabilities, as uid 65532, becomes leader (the Lease names it), serves /readyz and
#     /metrics, and releases the Lease when stopped.
# Everything is removed at the end, also on failure. Needs root.
#
# The API server: $KUBECONFIG's when set (a real one: the token comes from `kubectl create
# token`), else one started from ../shared/kube/start.sh; without either the test is skipped.
# podman runs in a private mount namespace where the cgroup v2 hierarchy of a hybrid host is
# unmounted (crun refuses hybrid cgroups) and with cgroups disabled for the container.
#
# Usage: e2e/image.sh [ARCHIVE]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="/opt/ferry-tools/bin:$HOME/.cargo/bin:$PATH"

if [ -z "${FERRY_IMAGE_PRIVATE_NS:-}" ]; then
  exec unshare --mount --propagation private env FERRY_IMAGE_PRIVATE_NS=1 "$0" "$@"
fi
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi

PY=${FERRY_VENV:-/opt/ferry-venv}/bin/python
[ -x "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "image test: no Python (scripts/setup.sh makes /opt/ferry-venv)" >&2; exit 1; }
for tool in podman crun skopeo kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "image test: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

ARCHIVE=${1:-}
if [ -z "$ARCHIVE" ]; then
  scripts/image.sh
  ARCHIVE=$(sed -n 's/^archive=//p' "${CARGO_TARGET_DIR:-target}"/image/ferry-*.oci.tar.info | tail -1)
fi

KUBE_SCRIPTS=$ROOT/../shared/kube
if [ -z "${KUBECONFIG:-}" ] && [ ! -f "$KUBE_SCRIPTS/start.sh" ]; then
  echo "image test: the image is built; running it SKIPPED: no KUBECONFIG and no $KUBE_SCRIPTS/start.sh (a real API server is needed)"
  exit 0
fi
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
REF=$(tar -xOf "$ARCHIVE" ./index.json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')

work=$(mktemp -d /tmp/ferry-image.XXXXXX)
NS=ferry-image-$$
CTR=ferry-image-$$
kube_started=""
P() {
  podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/tmp" --storage-driver vfs \
    --cgroup-manager cgroupfs --events-backend file "$@"
}
cleanup() {
  set +e
  echo "== cleaning up"
  P rm --force --time 10 "$CTR" >/dev/null 2>&1
  P rmi --all --force >/dev/null 2>&1
  if [ -n "${KUBECONFIG:-}" ] && [ -z "$kube_started" ] && [ -f "$work/chart.yaml" ]; then
    # The chart's objects, CRDs excepted (deleting a CRD deletes every object of its kind).
    "${FERRY_VENV:-/opt/ferry-venv}/bin/python" -c 'import sys, yaml; print(yaml.safe_dump_all(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "CustomResourceDefinition"))' \
      "$work/chart.yaml" | kubectl delete --ignore-not-found --wait=false -f - >/dev/null 2>&1
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1
  fi
  if [ -n "$kube_started" ]; then bash "$KUBE_SCRIPTS/stop.sh" "$work/kube" --purge >/dev/null 2>&1; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/tmp"
fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "== the archive: $ARCHIVE ($REF)"
skopeo inspect "oci-archive:$ARCHIVE" >"$work/inspect.json"
"$PY" - "$work/inspect.json" "$VERSION" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
labels = info["Labels"]
assert labels["org.opencontainers.image.version"] == sys.argv[2], labels
assert info["Os"] == "linux" and info["Architecture"] == "amd64", info
print(f"skopeo: {len(info['Layers'])} layer(s), version {labels['org.opencontainers.image.version']}, "
      f"revision {labels['org.opencontainers.image.revision']}")
PY

echo "== podman load"
P load --quiet --input "$ARCHIVE"
P image exists "$REF" || fail "podman load did not name the image $REF"
# No daemon and no cgroups here: the container gets none. Limits podman may set without privileges
# it lacks here (its defaults exceed this machine's hard limits).
RUN=(run --cgroups=disabled --network host --ulimit "nofile=4096:4096"
     --ulimit "nproc=4096:4096")

echo "== ferry --version in the image"
got=$(P "${RUN[@]}" --rm "$REF" --version)
commit=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["Labels"]["org.opencontainers.image.revision"][:12])' "$work/inspect.json")
[ "$got" = "ferry $VERSION (git $commit)" ] || fail "ferry --version said '$got'"
echo "$got"

echo "== an API server"
if [ -z "${KUBECONFIG:-}" ]; then
  for _ in 1 2 3 4 5; do
    port=$(( 20000 + RANDOM % 20000 ))
    if ! (ss -ltn | grep -qE "127\.0\.0\.1:($port|$((port + 1))|$((port + 2))) "); then break; fi
  done
  bash "$KUBE_SCRIPTS/start.sh" "$work/kube" "$port" >"$work/kube-start.log" 2>&1 \
    || { cat "$work/kube-start.log"; fail "the API server did not start"; }
  kube_started=1
  export KUBECONFIG=$work/kube/kubeconfig
fi
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
case "$server" in
  https://127.0.0.1:*) API_PORT=${server##*:} ;;
  *) fail "the API server must listen on https://127.0.0.1 (the container uses the host network): $server" ;;
esac
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"

echo "== the chart's CRDs, ServiceAccount and RBAC (no kubelet runs its Deployment here)"
# helm template, not helm install: the ../shared/kube server says v1.28.7 (it has 1.29's CEL
# environment and accepts the CRDs), which Helm would compare with the chart's kubeVersion.
kubectl create namespace "$NS" >/dev/null
helm template ferry charts/ferry --namespace "$NS" --include-crds --set replicaCount=1 \
  --set image.repository="${REF%:*}" --set image.tag="$VERSION" >"$work/chart.yaml"
kubectl apply --server-side -f "$work/chart.yaml" >/dev/null
sa=$(kubectl -n "$NS" get deployment -l app.kubernetes.io/name=ferry -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
mkdir -p "$work/sa"
kubectl -n "$NS" create token "$sa" --duration 1h >"$work/sa/token"
cp "$work/ca.crt" "$work/sa/ca.crt"
printf '%s' "$NS" >"$work/sa/namespace"
chmod 0755 "$work/sa" && chmod 0644 "$work/sa"/*

echo "== the controller in the image, as a pod runs it"
HTTP=$(free_port)
P "${RUN[@]}" --detach --name "$CTR" --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges \
  --volume "$work/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" \
  --env KUBERNETES_SERVICE_HOST=127.0.0.1 --env KUBERNETES_SERVICE_PORT="$API_PORT" \
  --env POD_NAME="$CTR" \
  "$REF" controller --http-addr "127.0.0.1:$HTTP" --log-format json >/dev/null
started=$(date +%s.%N)
pid=$(P inspect --format '{{.State.Pid}}' "$CTR")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the controller runs as uid $uid, not 65532"

holder=""
for _ in $(seq 1 120); do
  holder=$(kubectl -n "$NS" get lease ferry-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [ "$holder" = "$CTR" ] && break
  P container exists "$CTR" && [ "$(P inspect --format '{{.State.Running}}' "$CTR")" = true ] \
    || { P logs "$CTR" | tail -20; fail "the container stopped"; }
  sleep 0.5
done
[ "$holder" = "$CTR" ] || { P logs "$CTR" | tail -20; fail "no leadership after 60 s (holder: '$holder')"; }
leader=$("$PY" -c "import time; print(f'{time.time() - $started:.1f}')")
echo "leader after ${leader} s: Lease $NS/ferry-controller holderIdentity=$holder"

ready=""
for _ in $(seq 1 60); do
  ready=$(curl -fsS --max-time 2 "http://127.0.0.1:$HTTP/readyz" 2>/dev/null || true)
  [ "$ready" = ready ] && break
  sleep 0.5
done
[ "$ready" = ready ] || fail "/readyz answered '$ready'"
echo "/readyz: $ready"
metrics=""
for _ in $(seq 1 60); do
  metrics=$(curl -fsS --max-time 2 "http://127.0.0.1:$HTTP/metrics" 2>/dev/null || true)
  # The leader exports the state gauges once its caches are complete.
  grep -q '^ferry_virtual_machines{' <<<"$metrics" && break
  sleep 0.5
done
grep -q "^ferry_build_info{version=\"$VERSION\",commit=\"$commit\"} 1" <<<"$metrics" \
  || fail "/metrics has no ferry_build_info for $VERSION ($commit)"
grep -q '^ferry_virtual_machines{' <<<"$metrics" \
  || { P logs "$CTR" 2>&1 | tail -20; fail "/metrics has no ferry_virtual_machines"; }
echo "/metrics: $(grep -c '^ferry_' <<<"$metrics") ferry series, $(grep '^ferry_build_info' <<<"$metrics")"

echo "== stopping it: the Lease is released"
P stop --time 20 "$CTR" >/dev/null
code=$(P inspect --format '{{.State.ExitCode}}' "$CTR")
[ "$code" = 0 ] || { P logs "$CTR" | tail -20; fail "the controller exited with $code"; }
P logs "$CTR" 2>&1 | grep -q 'released the leader lease' || fail "the controller did not release its Lease"
holder=$(kubectl -n "$NS" get lease ferry-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
[ "$holder" != "$CTR" ] || fail "the Lease still names $CTR"
echo "image test: passed"
