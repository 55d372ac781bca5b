#!/usr/bin/env bash
# Builds ferry's tiny test guest from Debian packages (nothing is installed on the machine).
#
#   build.sh fetch-kernel DEBDIR   print the path of a linux-image-*-cloud-amd64 .deb in DEBDIR,
#                                  downloading it (apt-get download, bounded) when none is there
#   build.sh build DEB OUTDIR      write OUTDIR/{vmlinuz,initrd.img,tiny.qcow2,kernel-release}
#
# vmlinuz     the cloud kernel, unpacked with dpkg-deb -x
# initrd.img  busybox-static + virtio/ACPI-button/CD-ROM modules + the /init next to this script
# tiny.qcow2  the golden image: 64 MiB, first line "FERRY-GOLDEN tiny v1", zeros elsewhere
#             (the guest keeps its boot counter at byte 4096 of its overlay)
# shellcheck disable=SC2012  # ls on file names we produce ourselves
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GOLDEN_HEADER="FERRY-GOLDEN tiny v1"
GOLDEN_SIZE=64M
APT_TIMEOUT=${FERRY_APT_TIMEOUT:-300}

# Top-level modules; their dependencies are added from modules.dep (dependencies first).
MODULES=(
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk failover net_failover virtio_net virtio_console
  button evdev
  scsi_common "scsi_mod scan=sync" cdrom sr_mod libata ata_piix ata_generic virtio_scsi isofs
)

die() { echo "guest/build.sh: $*" >&2; exit 1; }

fetch_kernel() {
  local debdir=$1 deb pkg
  mkdir -p "$debdir"
  deb=$(ls -1 "$debdir"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$deb" ]; then echo "$deb"; return; fi
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    echo "guest/build.sh: apt does not know linux-image-cloud-amd64; running apt-get update" >&2
    timeout "$APT_TIMEOUT" apt-get update -qq >&2 || die "apt-get update failed or timed out"
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
  echo "guest/build.sh: downloading $pkg (timeout ${APT_TIMEOUT}s)" >&2
  (cd "$debdir" && timeout "$APT_TIMEOUT" apt-get download -q "$pkg" >&2) ||
    die "apt-get download $pkg failed or timed out"
  deb=$(ls -1 "$debdir"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$deb" ] || die "download of $pkg produced no .deb"
  echo "$deb"
}

build() {
  local deb=$1 out=$2 work kroot krel busybox
  [ -f "$deb" ] || die "no such .deb: $deb"
  busybox=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
  if command -v file >/dev/null && file -L "$busybox" | grep -q 'dynamically linked'; then
    die "$busybox is dynamically linked; install busybox-static"
  fi
  for t in dpkg-deb depmod cpio gzip qemu-img; do
    command -v "$t" >/dev/null || die "missing tool: $t"
  done
  mkdir -p "$out"
  work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-guest-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN

  dpkg-deb -x "$deb" "$work/k"
  krel=$(ls -1 "$work/k/lib/modules" | head -n 1)
  [ -n "$krel" ] || die "no modules in $deb"
  kroot=$work/k/lib/modules/$krel
  depmod -b "$work/k" "$krel"

  # initramfs tree
  local r=$work/root
  mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/tmp" "$r/mnt/seed" "$r/lib/modules"
  cp "$busybox" "$r/bin/busybox"
  cp "$HERE/init" "$r/init"
  chmod 0755 "$r/init" "$r/bin/busybox"
  mknod -m 600 "$r/dev/console" c 5 1 2>/dev/null || true
  mknod -m 666 "$r/dev/null" c 1 3 2>/dev/null || true

  # Resolve dependencies with modules.dep; write load.order (name + insmod args).
  declare -A seen=()
  : >"$r/lib/modules/load.order"
  add_module() {
    local name=$1 args=${2:-} rel dep
    [ -z "${seen[$name]:-}" ] || return 0
    rel=$(awk -F: -v n="$name" '{ f=$1; sub(".*/", "", f); sub("\\.ko.*$", "", f); if (f == n) { print $1; exit } }' "$kroot/modules.dep")
    if [ -z "$rel" ]; then
      if grep -q "/$name.ko" "$kroot/modules.builtin" 2>/dev/null; then seen[$name]=builtin; return 0; fi
      die "module $name not found in $krel"
    fi
    seen[$name]=1
    # shellcheck disable=SC2013  # modules.dep lists names separated by spaces
    for dep in $(awk -F: -v m="$rel" '$1 == m { print $2; exit }' "$kroot/modules.dep"); do
      dep=${dep##*/}; dep=${dep%%.ko*}
      add_module "$dep"
    done
    cp "$kroot/$rel" "$r/lib/modules/$name.ko"
    echo "$name${args:+ $args}" >>"$r/lib/modules/load.order"
  }
  local m
  for m in "${MODULES[@]}"; do
    # shellcheck disable=SC2086
    add_module $m
  done

  (cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
    gzip -6 >"$out/initrd.img"
  cp "$work/k/boot/vmlinuz-$krel" "$out/vmlinuz"
  echo "$krel" >"$out/kernel-release"

  # Golden image: header line at byte 0, the rest zero (sparse), converted to qcow2.
  truncate -s "$GOLDEN_SIZE" "$work/golden.raw"
  printf '%s\n' "$GOLDEN_HEADER" | dd of="$work/golden.raw" conv=notrunc status=none
  qemu-img convert -q -f raw -O qcow2 "$work/golden.raw" "$out/tiny.qcow2"
  chmod 0444 "$out/tiny.qcow2"
}

case "${1:-}" in
  fetch-kernel) [ $# -eq 2 ] || die "usage: build.sh fetch-kernel DEBDIR"; fetch_kernel "$2" ;;
  build) [ $# -eq 3 ] || die "usage: build.sh build DEB OUTDIR"; build "$2" "$3" ;;
  *) die "usage: build.sh fetch-kernel DEBDIR | build DEB OUTDIR" ;;
esac
