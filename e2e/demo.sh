#!/usr/bin/env bash
# The local lab demo: a real QEMU guest boots under ferry on a real libvirt host, is stopped with
# `runStrategy: Halted`, started again and deleted, all through kubectl.
#
# Uses the cluster $KUBECONFIG names, or (when unset) the in-repo Kubernetes API stand-in. The
# lab host is a network + mount namespace with its own libvirtd (e2e/lab). Everything the demo
# starts is stopped and removed when it ends, also on Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/ferry-tools/bin:$PATH"
# Without a cluster, run against the API stand-in (e2e/with-cluster.sh starts and stops it).
if [ -z "${KUBECONFIG:-}" ]; then
  exec e2e/with-cluster.sh "$0" "$@"
fi

LAB_ID=${FERRY_DEMO_LAB_ID:-90}
NS=ferry-demo
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
pids=()
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  step "cleaning up"
  if [ -z "${FERRY_STANDIN:-}" ]; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1
    kubectl delete node ferry-demo-h1 >/dev/null 2>&1
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  e2e/lab/lab.sh down --id "$LAB_ID" >/dev/null 2>&1
  rm -rf "$work"
  echo "done"
}
trap cleanup EXIT INT TERM

cargo build --release --locked --quiet --bin ferry
FERRY=target/release/ferry

step "starting a lab hypervisor host (libvirtd in its own namespaces)"
e2e/lab/lab.sh up --id "$LAB_ID" --hosts 1 >/dev/null
# shellcheck disable=SC1090
source "/tmp/ferry-lab-$LAB_ID/lab.env"
echo "host h1: $LAB_H1_UNIX_URI (guests run under ${LAB_VIRT_TYPE})"

step "installing the CRDs and a Node object for the lab host"
"$FERRY" crds | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Node
metadata: {name: ferry-demo-h1, labels: {ferry.dev/hypervisor: "true"}}
YAML
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kubectl patch node ferry-demo-h1 --subresource=status --type=merge -p "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$LAB_H1_IP\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"lab host\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null

step "starting ferry controller"
# The lab host's libvirt socket lives in the lab's directory: allow the controller to use it.
"$FERRY" controller --namespace "$NS" --lease-namespace "$NS" --http-addr 127.0.0.1:0 \
  --libvirt-socket-dir "$LAB_DIR" >"$work/controller.log" 2>&1 &
pids+=($!)

step "applying a HostPool and a VirtualMachine"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: ferry.dev/v1alpha1
kind: HostPool
metadata: {name: lab}
spec:
  nodeSelector: {matchLabels: {ferry.dev/hypervisor: "true"}}
  libvirt: {uriTemplate: "$LAB_H1_UNIX_URI", connectTimeoutSeconds: 5}
  storage: {pool: ferry, path: "$LAB_POOL_DIR", images: [{name: "$LAB_GOLDEN"}]}
  console: {logDirectory: "$LAB_CONSOLE_DIR"}
  boot: {directories: ["$(dirname "$LAB_KERNEL")"]}
---
apiVersion: ferry.dev/v1alpha1
kind: VirtualMachine
metadata: {name: demo}
spec:
  hostPool: lab
  runStrategy: Always
  cpu: {cores: 1}
  memory: 128Mi
  terminationGracePeriodSeconds: 20
  disks: [{name: root, image: "$LAB_GOLDEN"}]
  boot: {kernel: "$LAB_KERNEL", initrd: "$LAB_INITRD", cmdline: "$LAB_CMDLINE"}
YAML

step "waiting for the VM to be Ready"
kubectl -n "$NS" wait fvm/demo --for=condition=Ready --timeout=180s
kubectl -n "$NS" get hostpools,virtualmachines -o wide
console="$LAB_CONSOLE_DIR/${NS}_demo.console.log"
for _ in $(seq 1 300); do grep -q FERRY-READY "$console" 2>/dev/null && break; sleep 0.5; done
echo "guest console:"
grep -a -E 'FERRY-(DISK|BOOT|READY)' "$console" | sed 's/^/    /'
grep -a FERRY-TICK "$console" | tail -n 2 | sed 's/^/    /'

step "stopping it on purpose (runStrategy: Halted)"
kubectl -n "$NS" patch fvm demo --type merge -p '{"spec":{"runStrategy":"Halted"}}'
kubectl -n "$NS" wait fvm/demo --for=jsonpath='{.status.phase}'=Stopped --timeout=90s
kubectl -n "$NS" get fvm demo
kubectl -n "$NS" get fvm demo -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo "libvirt says: $(virsh -c "$LAB_H1_UNIX_URI" domstate "${NS}_demo")"

step "starting it again"
kubectl -n "$NS" patch fvm demo --type merge -p '{"spec":{"runStrategy":"Always"}}'
kubectl -n "$NS" wait fvm/demo --for=condition=Ready --timeout=180s
for _ in $(seq 1 300); do grep -q "FERRY-BOOT 2" "$console" 2>/dev/null && break; sleep 0.5; done
grep -a 'FERRY-BOOT' "$console" | sed 's/^/    /'

step "events"
kubectl -n "$NS" get events --sort-by=.metadata.creationTimestamp 2>/dev/null | tail -n 12 || true

step "deleting it: domain and overlay are removed, the golden image stays"
kubectl -n "$NS" delete fvm demo --timeout=90s
echo "domains on h1: [$(virsh -c "$LAB_H1_UNIX_URI" list --all --name | tr -s '\n' ' ')]"
echo "pool contents: $(ls "$LAB_POOL_DIR" | tr '\n' ' ')"
