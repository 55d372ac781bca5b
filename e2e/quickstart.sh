#!/usr/bin/env bash
# Runs every shell block of the README's "Quick start on a cluster" section, unchanged, against a
# real API server and a lab hypervisor host, so the README's first screen cannot go stale:
#   - the cluster: $KUBECONFIG's (a real API server), else one started from
#     ../shared/kube/start.sh; skipped without either;
#   - Node hv-1 stands for a lab host (e2e/lab, with libvirt's TLS listener) at its address,
#     Ready, with heartbeats; the current directory holds the lab's libvirt client certificate
#     files and links to the repository's charts/ and config/; Debian's cloud image is the lab's
#     tiny golden image under that name in /var/lib/ferry/images (a tmpfs in a private mount
#     namespace the lab hosts inherit);
#   - `kubectl` and `helm` from scripts/setup.sh, `ferry` and `kubectl-ferry` from this build;
#     with the ../shared/kube server (v1.28.7 built with 1.29's CEL environment, which accepts
#     ferry's CRDs), the blocks reach it through e2e/version_proxy.py, which reports v1.29.0 so
#     that Helm accepts the chart's kubeVersion;
#   - nothing runs the pods `helm install` creates, so this script plays the kubelet for the
#     chart's Deployment: it runs the Deployment's container command, arguments and environment
#     with a token of the chart's ServiceAccount, in the lab's client network namespace (where
#     the hosts are reachable, as from a cluster's pod network; the API server is relayed in).
# Then it checks that the VM's domain runs on the lab host, and removes everything. Needs root.
# Usage: e2e/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="/opt/ferry-tools/bin:$HOME/.cargo/bin:$PATH"

if [ -z "${FERRY_QUICKSTART_PRIVATE_NS:-}" ]; then
  exec unshare --mount --propagation private env FERRY_QUICKSTART_PRIVATE_NS=1 "$0" "$@"
fi

KUBE_SCRIPTS=$ROOT/../shared/kube
if [ -z "${KUBECONFIG:-}" ] && [ ! -f "$KUBE_SCRIPTS/start.sh" ]; then
  echo "quickstart test: SKIPPED: no KUBECONFIG and no $KUBE_SCRIPTS/start.sh (a real API server is needed)"
  exit 0
fi

cargo build --locked --quiet --bin ferry --bin kubectl-ferry
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

work=$(mktemp -d /tmp/ferry-quickstart.XXXXXX)
pids=()
lab_id=""
kube_started=""
made_var_lib_ferry=""
cleanup() {
  set +e
  echo "== cleaning up"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl delete namespace vms --wait=false >/dev/null 2>&1
    helm uninstall ferry -n ferry-system >/dev/null 2>&1
    kubectl delete namespace ferry-system --wait=false >/dev/null 2>&1
    kubectl delete node hv-1 >/dev/null 2>&1
  fi
  if [ -n "$lab_id" ]; then e2e/lab/lab.sh down --id "$lab_id" >/dev/null 2>&1; fi
  if [ -n "$kube_started" ]; then bash "$KUBE_SCRIPTS/stop.sh" "$work/kube" --purge >/dev/null 2>&1; fi
  umount /var/lib/ferry 2>/dev/null
  if [ -n "$made_var_lib_ferry" ]; then rmdir /var/lib/ferry 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== /var/lib/ferry: a tmpfs only this test (and its lab hosts) sees"
[ -d /var/lib/ferry ] || { mkdir /var/lib/ferry; made_var_lib_ferry=1; }
mount -t tmpfs -o size=512m,mode=0755 ferry-quickstart /var/lib/ferry
mkdir -p /var/lib/ferry/images

echo "== a lab hypervisor host with libvirt's TLS listener"
for id in $(seq 150 170); do
  if e2e/lab/lab.sh up --id "$id" --hosts 1 --tls --owner-pid $$ >"$work/lab.log" 2>&1; then
    lab_id=$id
    break
  elif [ $? -ne 3 ]; then
    cat "$work/lab.log"; fail "the lab did not come up"
  fi
done
[ -n "$lab_id" ] || fail "no free lab ID in 150-170"
# shellcheck disable=SC1090
source "/tmp/ferry-lab-$lab_id/lab.env"
cp "$LAB_POOL_DIR/$LAB_GOLDEN" /var/lib/ferry/images/debian-12-generic-amd64.qcow2

echo "== the cluster"
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
api_port=${server##*:}
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"
kubectl get node hv-1 >/dev/null 2>&1 && fail "Node hv-1 exists already in this cluster"
kubectl create -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: hv-1, labels: {kubernetes.io/hostname: hv-1}}
YAML
heartbeat() {
  while true; do
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    kubectl patch node hv-1 --subresource=status --type=merge -p "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$LAB_H1_IP\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"lab host\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null 2>&1
    sleep 10
  done
}
heartbeat &
pids+=($!)

# The API server ../shared/kube starts is v1.28.7 built with 1.29's CEL environment (its README):
# it accepts ferry's CRDs as 1.29 does, but says v1.28.7, and Helm would refuse the chart
# (kubeVersion >=1.29) for that. The quick start reaches it through a proxy that reports v1.29.0.
qs_kubeconfig=$KUBECONFIG
if [ -n "$kube_started" ]; then
  /opt/ferry-venv/bin/python e2e/version_proxy.py "$KUBECONFIG" v1.29.0 "$work/proxy.port" &
  pids+=($!)
  for _ in $(seq 1 50); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
  [ -s "$work/proxy.port" ] || fail "the version proxy did not start"
  qs_kubeconfig=$work/quickstart-kubeconfig
  kubectl config set-cluster qs --server "http://127.0.0.1:$(cat "$work/proxy.port")" --kubeconfig "$qs_kubeconfig" >/dev/null
  kubectl config set-context qs --cluster qs --kubeconfig "$qs_kubeconfig" >/dev/null
  kubectl config use-context qs --kubeconfig "$qs_kubeconfig" >/dev/null
  echo "the cluster says $(KUBECONFIG=$qs_kubeconfig kubectl version -o json | jq -r .serverVersion.gitVersion) through the proxy"
fi

echo "== the API server, relayed into the lab's client namespace"
/opt/ferry-venv/bin/python e2e/netns_relay.py "$LAB_CLIENT_NETNS" 127.0.0.1 "$api_port" "$work/relay.port" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/relay.port" ] && break; sleep 0.1; done
[ -s "$work/relay.port" ] || fail "the relay did not start"

# The kubelet for the chart's Deployment: once it exists, run its container's command.
kubelet() {
  local dep
  for _ in $(seq 1 600); do
    dep=$(kubectl -n ferry-system get deployment -l app.kubernetes.io/name=ferry -o json 2>/dev/null || true)
    [ -n "$dep" ] && [ "$(jq '.items | length' <<<"$dep")" -gt 0 ] && break
    sleep 0.5
  done
  local sa pod="ferry-quickstart-0"
  sa=$(jq -r '.items[0].spec.template.spec.serviceAccountName' <<<"$dep")
  kubectl config set-cluster qs --server "https://127.0.0.1:$(cat "$work/relay.port")" \
    --certificate-authority "$work/ca.crt" --embed-certs --kubeconfig "$work/pod-kubeconfig" >/dev/null
  kubectl config set-credentials qs --token "$(kubectl -n ferry-system create token "$sa" --duration 1h)" \
    --kubeconfig "$work/pod-kubeconfig" >/dev/null
  kubectl config set-context qs --cluster qs --user qs --namespace ferry-system \
    --kubeconfig "$work/pod-kubeconfig" >/dev/null
  kubectl config use-context qs --kubeconfig "$work/pod-kubeconfig" >/dev/null
  mkdir -p "$work/pod-tmp"
  local -a env args
  mapfile -t env < <(jq -r --arg pod "$pod" '.items[0].spec.template.spec.containers[0].env[]
    | "\(.name)=\(.value // (if .valueFrom.fieldRef.fieldPath == "metadata.name" then $pod
        elif .valueFrom.fieldRef.fieldPath == "metadata.namespace" then "ferry-system" else "" end))"' <<<"$dep")
  mapfile -t args < <(jq -r '.items[0].spec.template.spec.containers[0].args[]' <<<"$dep")
  echo "kubelet: running the Deployment's container: ferry ${args[*]}"
  # The pod's own /tmp is an emptyDir; here a directory of its own.
  exec ip netns exec "$LAB_CLIENT_NETNS" env "${env[@]}" HOME="$work/pod-tmp" \
    FERRY_PKI_DIR="$work/pod-tmp/ferry-pki" KUBECONFIG="$work/pod-kubeconfig" "$BIN/ferry" "${args[@]}"
}
kubelet >"$work/controller.log" 2>&1 &
pids+=($!)

echo "== the README's quick start"
mkdir -p "$work/cwd"
ln -s "$ROOT/charts" "$work/cwd/charts"
ln -s "$ROOT/config" "$work/cwd/config"
cp "$LAB_PKI_DIR/client/clientcert.pem" "$LAB_PKI_DIR/client/clientkey.pem" "$LAB_PKI_DIR/client/cacert.pem" "$work/cwd/"
mkdir -p "$work/path"
ln -s "$BIN/ferry" "$BIN/kubectl-ferry" "$work/path/"
/opt/ferry-venv/bin/python - "$ROOT/README.md" >"$work/quickstart.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = re.search(r"^## Quick start on a cluster\n(.*?)(?=^## )", text, re.M | re.S)
assert section, "README.md has no '## Quick start on a cluster' section"
blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
assert blocks, "the quick start has no sh block"
print("\n".join(blocks))
PY
echo "--- the blocks:"; cat "$work/quickstart.sh"; echo "---"
if ! (cd "$work/cwd" && PATH="$work/path:$PATH" KUBECONFIG="$qs_kubeconfig" timeout 600 bash -euxo pipefail "$work/quickstart.sh"); then
  echo "--- controller log (last 30 lines):"; tail -30 "$work/controller.log"
  fail "the quick start failed"
fi

echo "== what the quick start made"
state=$(virsh -c "$LAB_H1_UNIX_URI" domstate vms_demo 2>&1 || true)
[ "$state" = running ] || fail "the VM's domain on the lab host is '$state', not running"
echo "domain vms_demo on lab host h1 ($LAB_H1_IP): $state"
holder=$(kubectl -n ferry-system get lease ferry-controller -o jsonpath='{.spec.holderIdentity}')
[ "$holder" = ferry-quickstart-0 ] || fail "the Lease names '$holder'"
kubectl -n vms delete fvm demo --timeout=120s >/dev/null
[ -z "$(virsh -c "$LAB_H1_UNIX_URI" list --all --name | grep -x vms_demo || true)" ] \
  || fail "deleting the VM left its domain"
echo "quickstart test: passed"
