#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) cloud-init golden image from Debian's packages, for the opt-in
# e2e test `debian_guest_runs_cloud_init` (see e2e/README.md).
#
#   build.sh            build (once) and print the directory holding the result
#
# The result is cached in $FERRY_CACHE/debian-<stamp> (default /var/cache/ferry-lab), stamp = a
# hash of this script, so a change to the script rebuilds; a lock keeps concurrent callers from
# building twice. The directory holds:
#
#   debian.qcow2   the golden image: one ext4 filesystem, no partition table (root=/dev/vda)
#   vmlinuz        the kernel of linux-image-cloud-amd64, for direct kernel boot
#   initrd.img     its initramfs (virtio blk/net/scsi, sr, iso9660, ext4)
#   cmdline        the kernel command line the image expects
#   info           build time, image and tree sizes, package versions
#   build.log      debootstrap's and the chroot steps' output
#
# Nothing is loop-mounted: debootstrap writes a directory tree, `mkfs.ext4 -d` turns it into a
# raw filesystem image, `qemu-img convert` into qcow2. debootstrap's second stage mounts /proc
# and /sys inside the tree while it runs, as it always does; nothing else is mounted.
#
# Environment: FERRY_CACHE, FERRY_DEBIAN_MIRROR (default: the bookworm mirror this machine's
# apt sources name, else http://deb.debian.org/debian), FERRY_APT_TIMEOUT (seconds for each
# download step, default 900).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
CACHE=${FERRY_CACHE:-/var/cache/ferry-lab}
APT_TIMEOUT=${FERRY_APT_TIMEOUT:-900}
SUITE=bookworm
IMAGE_SIZE=2G
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 no_timer_check"

# minbase + what a cloud guest needs. python3-cffi-backend must be named or debootstrap's
# resolver fails on cloud-init's dependencies.
PACKAGES=(
  linux-image-cloud-amd64 initramfs-tools systemd-sysv udev dbus
  cloud-init python3-cffi-backend qemu-guest-agent openssh-server
  ifupdown iproute2 netbase e2fsprogs
)
# In the initramfs: enough to mount root from a virtio disk; the rest (CD-ROM, ISO 9660, NIC)
# is there too so the seed CD-ROM is readable as early as anything asks.
INITRD_MODULES=(virtio_pci virtio_blk virtio_net virtio_scsi virtio_console sr_mod cdrom isofs ext4)

die() { echo "debian/build.sh: $*" >&2; exit 1; }
log() { echo "debian/build.sh: $*" >&2; }

mirror() {
  if [ -n "${FERRY_DEBIAN_MIRROR:-}" ]; then echo "$FERRY_DEBIAN_MIRROR"; return; fi
  local f uri
  # deb822 sources: the URIs of the stanza whose Suites name bookworm (not -security).
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v s="$SUITE" '
      /^[[:space:]]*$/ { if (u != "" && hit) { print u; exit } u=""; hit=0; next }
      /^URIs:/ { u=$2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit=1 }
      END { if (u != "" && hit) print u }' "$f" | head -n 1)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  # one-line sources
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $(i+1) == s) { print $i; exit } }')
  echo "${uri:-http://deb.debian.org/debian}"
}

need_tools() {
  local missing=() t
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  # qemu-utils only when absent: an installed one must keep matching qemu-system-x86's version.
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  timeout "$APT_TIMEOUT" apt-get install -y -q "${missing[@]}" >&2 || {
    timeout "$APT_TIMEOUT" apt-get update -qq >&2 || die "apt-get update failed"
    timeout "$APT_TIMEOUT" apt-get install -y -q "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  }
}

# Everything written into the tree after debootstrap.
configure_tree() {
  local r=$1
  # cloud-init: read the NoCloud seed only (no probing of other clouds), a short module list,
  # one host key type (generating RSA keys under TCG takes seconds), Debian's default user.
  cat >"$r/etc/cloud/cloud.cfg.d/90-ferry.cfg" <<'EOF'
# ferry e2e golden image: NoCloud seed CD-ROM (label cidata) only.
datasource_list: [NoCloud, None]
ssh_deletekeys: true
ssh_genkeytypes: [ed25519]
cloud_init_modules:
  - seed_random
  - bootcmd
  - write_files
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users_groups
  - ssh
cloud_config_modules:
  - runcmd
cloud_final_modules:
  - scripts_per_once
  - scripts_per_boot
  - scripts_per_instance
  - scripts_user
  - ssh_authkey_fingerprints
  - keys_to_console
  - final_message
EOF
  # ifupdown: cloud-init's ENI renderer writes interfaces.d/50-cloud-init.
  mkdir -p "$r/etc/network/interfaces.d"
  cat >"$r/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 0\n' >"$r/etc/fstab"
  echo debian >"$r/etc/hostname"
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  # Each VM gets its own machine-id at first boot; no resolver of the build machine.
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id" "$r/etc/resolv.conf"
  # The build machine's host keys must not ship: cloud-init makes new ones per instance.
  rm -f "$r"/etc/ssh/ssh_host_*
  # Timers a short-lived test guest does not need (and that cost CPU under TCG).
  local u
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer \
    e2scrub_all.timer e2scrub_reap.service man-db.timer systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
  done
  # Keep docs out of any later package installs too.
  cat >"$r/etc/dpkg/dpkg.cfg.d/90-ferry-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  # A small initramfs: the listed modules, not every driver.
  sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' \
    "$r/etc/initramfs-tools/initramfs.conf"
  printf '%s\n' "${INITRD_MODULES[@]}" >"$r/etc/initramfs-tools/modules"
}

slim_tree() {
  local r=$1
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/doc/* \
    "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/log/* \
    "$r"/usr/share/locale/*/LC_MESSAGES
  # Python byte-code stays: Debian compiled it at install time, and under TCG every one of
  # cloud-init's four stages would otherwise compile its modules again at each boot.
}

cleanup_work() {
  local work=$1 m
  for m in "$work/root/proc" "$work/root/sys"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  if grep -q " $work/" /proc/mounts; then
    log "left $work in place: something is still mounted under it"
    return
  fi
  rm -rf "$work"
}

build() {
  local out=$1 work start mirror_url krel
  start=$(date +%s)
  need_tools
  mirror_url=$(mirror)
  work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-debian-build.XXXXXX")
  # debootstrap may leave /proc or /sys mounted inside the tree on failure: unmount before
  # removing, and never remove through a mount point that is still there.
  # shellcheck disable=SC2064
  trap "cleanup_work '$work'" EXIT
  mkdir -p "$out" "$CACHE/debian-debs"
  : >"$out/build.log"

  log "debootstrap $SUITE from $mirror_url (log: $out/build.log)"
  local include
  include=$(IFS=,; echo "${PACKAGES[*]}")
  timeout "$APT_TIMEOUT" debootstrap --variant=minbase --merged-usr --components=main \
    --cache-dir="$CACHE/debian-debs" --include="$include" \
    "$SUITE" "$work/root" "$mirror_url" >>"$out/build.log" 2>&1 ||
    die "debootstrap failed (see $out/build.log): $(tail -n 3 "$out/build.log" | tr '\n' ' ')"
  local m
  for m in "$work/root/proc" "$work/root/sys"; do
    mountpoint -q "$m" && umount -l "$m"
  done

  configure_tree "$work/root"
  krel=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)
  krel=${krel#vmlinuz-}
  [ -n "$krel" ] || die "no kernel in the tree"
  log "initramfs for $krel"
  chroot "$work/root" update-initramfs -c -k "$krel" >>"$out/build.log" 2>&1 ||
    chroot "$work/root" update-initramfs -u -k "$krel" >>"$out/build.log" 2>&1 ||
    die "update-initramfs failed (see $out/build.log)"
  local versions
  versions=$(chroot "$work/root" dpkg-query -W -f '${Package} ${Version}\n' \
    cloud-init qemu-guest-agent openssh-server systemd "linux-image-$krel")
  slim_tree "$work/root"
  cp "$work/root/boot/vmlinuz-$krel" "$out/vmlinuz"
  cp "$work/root/boot/initrd.img-$krel" "$out/initrd.img"
  echo "$CMDLINE" >"$out/cmdline"

  log "mkfs.ext4 -d + qemu-img convert"
  local tree_mib
  tree_mib=$(du -sm "$work/root" | cut -f1)
  truncate -s "$IMAGE_SIZE" "$work/root.raw"
  mkfs.ext4 -q -F -L debian-root -d "$work/root" "$work/root.raw" >>"$out/build.log" 2>&1 ||
    die "mkfs.ext4 -d failed (see $out/build.log)"
  rm -rf "$work/root"
  qemu-img convert -q -f raw -O qcow2 "$work/root.raw" "$out/debian.qcow2"
  chmod 0444 "$out/debian.qcow2"
  {
    echo "suite $SUITE"
    echo "mirror $mirror_url"
    echo "kernel $krel"
    echo "build_seconds $(($(date +%s) - start))"
    echo "tree_mib $tree_mib"
    echo "filesystem_size $IMAGE_SIZE"
    echo "qcow2_bytes $(stat -c %s "$out/debian.qcow2")"
    echo "initrd_bytes $(stat -c %s "$out/initrd.img")"
    echo "$versions"
  } >"$out/info"
}

main() {
  [ $# -eq 0 ] || die "usage: build.sh   (prints the image directory)"
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot)"
  mkdir -p "$CACHE"
  local stamp dir lockfd
  stamp=$(sha256sum "$SELF" | cut -c1-16)
  dir=$CACHE/debian-$stamp
  exec {lockfd}>"$CACHE/.debian.lock"
  flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE/.debian.lock"
  if [ ! -f "$dir/stamp" ]; then
    log "building the Debian golden image into $dir"
    rm -rf "$dir.tmp"
    build "$dir.tmp"
    echo "$stamp" >"$dir.tmp/stamp"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    log "built in $(awk '$1 == "build_seconds" { print $2 }' "$dir/info") s: $(du -h --apparent-size "$dir/debian.qcow2" | cut -f1) qcow2"
  fi
  touch "$dir/stamp"
  # Older builds (an older script) go once unused for a week.
  local old
  for old in "$CACHE"/debian-*/stamp; do
    [ -f "$old" ] && [ "$old" != "$dir/stamp" ] && [ -n "$(find "$old" -mtime +7)" ] &&
      rm -rf "${old%/stamp}"
  done
  echo "$dir"
}

main "$@"
