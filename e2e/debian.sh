#!/usr/bin/env bash
# The Debian cloud-init e2e test (tests/e2e/debian.rs debian_guest_runs_cloud_init): a Debian 12 golden
# image built from Debian's packages (e2e/lab/debian/build.sh, cached) boots under ferry;
# cloud-init applies hostname, SSH key and user-data, the guest agent reports the IP, a graceful
# stop powers the guest off. Slow under TCG (minutes), so not part of e2e/run.sh. Needs root.
# Usage: e2e/debian.sh [RUNS]    (default 1) prints one DEBIAN-BENCH line per run and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
start=$(date +%s)
dir=$(e2e/lab/debian/build.sh)
echo "debian: golden image in $dir ($(($(date +%s) - start)) s; cached builds return at once)"
export FERRY_E2E_DEBIAN=1 FERRY_DEBIAN_IMAGE_DIR=$dir
out=$(mktemp /tmp/ferry-debian-e2e.XXXXXX)
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$runs"); do
  echo "debian: run $i of $runs"
  e2e/with-cluster.sh timeout 1800 cargo test --locked --test e2e -- --ignored --exact \
    debian::debian_guest_runs_cloud_init --nocapture --test-threads=1 2>&1 | tee -a "$out"
done
echo "debian: summary"
grep -o 'DEBIAN-BENCH.*' "$out" || { echo "debian: no DEBIAN-BENCH line"; exit 1; }
