#!/usr/bin/env bash
# The lifecycle benchmark (benches/lifecycle.rs) against $KUBECONFIG's cluster (or the API
# stand-in) and a real libvirt lab host. Needs root. Results go to BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
exec e2e/with-cluster.sh timeout 1500 cargo bench --locked --bench lifecycle
