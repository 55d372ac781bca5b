#!/usr/bin/env bash
# The scale benchmark (benches/scale.rs): the release `ferry controller` against simulated hosts
# (libvirt's test:/// driver, one file per host) and $KUBECONFIG's cluster (or the API stand-in).
# No root and no lab needed. Sizes: FERRY_SCALE_HOSTS (100), FERRY_SCALE_VMS (1000),
# FERRY_SCALE_STEADY_SECS (120). Results go to BENCHMARKS.md by hand.
#   e2e/bench-scale.sh                                         # 100 hosts, 1,000 VMs
#   FERRY_SCALE_HOSTS=500 FERRY_SCALE_VMS=10000 e2e/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec e2e/with-cluster.sh timeout "${FERRY_SCALE_TIMEOUT:-7200}" cargo bench --locked --bench scale
