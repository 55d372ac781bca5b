#!/usr/bin/env bash
# The e2e suite (tests/e2e.rs): the real `ferry controller` against $KUBECONFIG's cluster (or the
# API stand-in) and real libvirt lab hosts. Needs root. Extra arguments go to the test binary.
# Not here: ha_recovery_bench (e2e/bench-ha.sh) and debian_guest_runs_cloud_init (e2e/debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec e2e/with-cluster.sh timeout 1500 cargo test --locked --test e2e -- --ignored --skip ha_recovery_bench --skip debian_guest_runs_cloud_init --test-threads=1 "$@"
