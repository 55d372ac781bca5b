#!/usr/bin/env bash
# HA recovery-time benchmark: host power loss through a real IPMI BMC (ipmi_sim), fence
# confirmed, VMs restarted on the survivor (benches/ha.rs).
# Usage: e2e/bench-ha.sh [RUNS]    RUNS like 1x5,5x5,10x5 (VMs x runs); default 1x5,5x5
#        FERRY_HA_BENCH_HANG=1 e2e/bench-ha.sh ...   the host dies without its BMC knowing
#        FERRY_HA_BENCH_SCRIPT=1 e2e/bench-ha.sh ... the ideal: a plain virsh script restarts them
# Prints one HA-BENCH line per run (seconds after the power-off) and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_HA_BENCH=${1:-1x5,5x5}
exec e2e/with-cluster.sh timeout 7200 cargo bench --locked --bench ha
