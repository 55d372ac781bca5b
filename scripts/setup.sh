#!/usr/bin/env bash
# Installs everything ferry's build, tests and local lab need on a fresh Debian 12 machine.
# Idempotent; run as root. Usage: scripts/setup.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

need_apt=0
for p in libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 pkg-config iproute2 \
         busybox-static cpio e2fsprogs xorriso openipmi ipmitool unzip curl kmod util-linux; do
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
    pkg-config iproute2 busybox-static cpio e2fsprogs xorriso openipmi ipmitool unzip curl kmod util-linux >/dev/null
fi

# Python venv for the Kubernetes API stand-in and manifest checks.
VENV=${FERRY_VENV:-/opt/ferry-venv}
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check 'kmock==0.8.*' 'pyyaml' 'jsonschema' >/dev/null

echo "setup: done"
