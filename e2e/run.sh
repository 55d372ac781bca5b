#!/usr/bin/env bash
# The e2e suite (tests/e2e.rs): the real `ferry controller` against $KUBECONFIG's cluster (or the
# API stand-in) and real libvirt lab hosts. Needs root. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec e2e/with-cluster.sh timeout 1500 cargo test --locked --test e2e -- --ignored --skip ha_recovery_bench --test-threads=1 "$@"
