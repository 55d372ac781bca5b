#!/usr/bin/env bash
# The e2e suite (tests/e2e/, one test binary, a module per feature): the real `ferry controller`
# against $KUBECONFIG's cluster (or the API server e2e/with-cluster.sh starts) and real libvirt lab
# hosts. Needs root. Extra arguments go to the test binary, e.g. `e2e/run.sh placement` or
# `e2e/run.sh migration::` (test names are substrings of `module::test_name`).
# Not here: debian_guest_runs_cloud_init (e2e/debian.sh); the HA benchmark is e2e/bench-ha.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec e2e/with-cluster.sh timeout 2400 cargo test --locked --test e2e -- --ignored --skip debian_guest_runs_cloud_init --test-threads=1 "$@"
