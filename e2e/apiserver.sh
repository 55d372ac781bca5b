#!/usr/bin/env bash
# A real Kubernetes control plane for the tests (etcd, kube-apiserver, kube-controller-manager on
# loopback), from a directory holding the `start.sh`/`stop.sh` pair described in e2e/README.md:
# $FERRY_KUBE_DIR, else `../shared/kube` beside the repository, else /work/shared/kube.
#
#   e2e/apiserver.sh find            prints that directory; fails when there is none
#   e2e/apiserver.sh start WORKDIR [OWNER_PID]
#                                    starts one in WORKDIR on a free loopback port (etcd takes the
#                                    next two ports); prints the KUBECONFIG path. With OWNER_PID a
#                                    watchdog stops it when that process is gone (killed, say)
#   e2e/apiserver.sh stop WORKDIR    stops it and removes WORKDIR
#
# Needs root (the control plane's own requirement). Each start is fresh: nothing is kept.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

find_dir() {
  local d
  for d in "${FERRY_KUBE_DIR:-}" "$repo/../shared/kube" /work/shared/kube; do
    if [ -n "$d" ] && [ -x "$d/start.sh" ] && [ -x "$d/stop.sh" ]; then
      (cd "$d" && pwd)
      return 0
    fi
  done
  return 1
}

# A port P on 127.0.0.1 with P+1 and P+2 free too (the API server's and etcd's two).
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randrange(20000, 60000 - 3)
    socks = []
    try:
        for q in (p, p + 1, p + 2):
            s = socket.socket()
            s.bind(("127.0.0.1", q))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(p)
    break
else:
    raise SystemExit("no three free consecutive loopback ports")
PY
}

cmd=${1:-}
case "$cmd" in
  find)
    find_dir || { echo "apiserver: no control plane (set FERRY_KUBE_DIR)" >&2; exit 1; }
    ;;
  start)
    work=${2:?usage: e2e/apiserver.sh start WORKDIR}
    dir=$(find_dir) || { echo "apiserver: no control plane (set FERRY_KUBE_DIR)" >&2; exit 1; }
    # A port may be taken between the check and the start: try a few.
    for attempt in 1 2 3; do
      port=$(free_port)
      if "$dir/start.sh" "$work" "$port" >"$work.start.log" 2>&1; then
        rm -f "$work.start.log"
        if [ -n "${3:-}" ]; then
          nohup setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 2; done
            if [ -d "$2" ]; then "$3" "$2" --purge; fi' _ "$3" "$work" "$dir/stop.sh" >/dev/null 2>&1 &
        fi
        echo "$work/kubeconfig"
        exit 0
      fi
      echo "apiserver: start on port $port failed (attempt $attempt):" >&2
      tail -n 5 "$work.start.log" >&2
      "$dir/stop.sh" "$work" --purge >/dev/null 2>&1 || true
    done
    rm -f "$work.start.log"
    exit 1
    ;;
  stop)
    work=${2:?usage: e2e/apiserver.sh stop WORKDIR}
    dir=$(find_dir) || { rm -rf "$work"; exit 0; }
    "$dir/stop.sh" "$work" --purge >/dev/null 2>&1 || true
    rm -rf "$work"
    ;;
  *)
    echo "usage: e2e/apiserver.sh find | start WORKDIR | stop WORKDIR" >&2
    exit 2
    ;;
esac
