#!/usr/bin/env bash
# A benchmark against $KUBECONFIG's cluster (or the API stand-in) and real libvirt lab hosts.
# Needs root. Results go to BENCHMARKS.md by hand.
#
#   e2e/bench.sh             the lifecycle benchmark (benches/lifecycle.rs)
#   e2e/bench.sh migration   the live-migration benchmark (benches/migration.rs), ~10 min
# (HA recovery: e2e/bench-ha.sh; scale: e2e/bench-scale.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:-lifecycle}
case "$bench" in
  lifecycle|migration) ;;
  *) echo "usage: e2e/bench.sh [lifecycle|migration]" >&2; exit 2 ;;
esac
exec e2e/with-cluster.sh timeout 1500 cargo bench --locked --bench "$bench"
