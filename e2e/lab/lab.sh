#!/usr/bin/env bash
# ferry lab: several libvirt/QEMU "hypervisor hosts" on one machine, each a network
# namespace + private mount/UTS namespace with its own libvirtd, virtlogd and virtlockd,
# sharing one storage directory. See e2e/lab/README.md.
#
#   lab.sh up    [--id ID] [--hosts N] [--dir DIR] [--owner-pid PID] [--tls] [--ssh]
#   lab.sh down  [--id ID | --dir DIR]
#   lab.sh env   [--id ID | --dir DIR]               print the path of DIR/lab.env
#   lab.sh status [--id ID | --dir DIR]
#   lab.sh partition      [--id ID] hK               cut hK off the lab network (veth down)
#   lab.sh heal           [--id ID] hK               undo partition
#   lab.sh stop-libvirtd  [--id ID] [--kill] hK      stop hK's libvirtd only (guests keep running)
#   lab.sh start-libvirtd [--id ID] hK               start it again in the same namespaces
#   lab.sh power-off      [--id ID] hK               power loss: SIGKILL hK's guests and daemons
#   lab.sh exec           [--id ID] hK -- CMD...     run CMD inside hK's namespaces
#
# Exit status: 0 ok, 1 error, 2 usage, 3 the lab ID is already in use.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
GUEST_SRC=$HERE/guest
CACHE=${FERRY_CACHE:-/var/cache/ferry-lab}
MAX_HOSTS=6
GUEST_CMDLINE="console=ttyS0 loglevel=3 no_timer_check"
KEEPALIVE_INTERVAL=${FERRY_LAB_KEEPALIVE_INTERVAL:-2}
KEEPALIVE_COUNT=${FERRY_LAB_KEEPALIVE_COUNT:-3}
# Concurrent calls libvirtd serves per client connection (libvirt's default, as on real hosts).
MAX_CLIENT_REQUESTS=${FERRY_LAB_MAX_CLIENT_REQUESTS:-5}
DAEMON_WAIT=${FERRY_LAB_DAEMON_WAIT:-30}   # seconds to wait for a daemon / socket
PATH=$PATH:/usr/sbin:/sbin

ID=""
HOSTS=1
DIR=""
OWNER_PID=""
TLS=0
SSH=0
KILL_SIGNAL=TERM
ARGS=()

usage() { sed -n '2,16p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "lab.sh: $*" >&2; exit 1; }
log() { echo "lab[${ID:-?}] $(date +%T.%3N) $*" >&2; }
dbg() { [ -z "${FERRY_LAB_DEBUG:-}" ] || log "$@"; }

# Single-quote a value for a sourceable shell file.
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

# --- names ----------------------------------------------------------------------------
ns_host()   { echo "fl${ID}-h$1"; }
ns_client() { echo "fl${ID}-client"; }
bridge()    { echo "flbr${ID}"; }
veth_host() { echo "fl${ID}h$1"; }     # root-namespace end; the namespace end is eth0
veth_client() { echo "fl${ID}c"; }
ip_host()   { echo "10.250.${ID}.$((10 + $1))"; }
ip_client() { echo "10.250.${ID}.1"; }
hdir()      { echo "$DIR/h$1"; }
unix_uri()  { echo "qemu+unix:///system?socket=$(hdir "$1")/run/libvirt/libvirt-sock"; }
tcp_uri()   { echo "qemu+tcp://$(ip_host "$1")/system"; }
tls_uri()   { echo "qemu+tls://$(ip_host "$1")/system"; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --id) ID=${2:?--id needs a value}; shift 2 ;;
      --id=*) ID=${1#*=}; shift ;;
      --hosts) HOSTS=${2:?--hosts needs a value}; shift 2 ;;
      --hosts=*) HOSTS=${1#*=}; shift ;;
      --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
      --dir=*) DIR=${1#*=}; shift ;;
      --owner-pid) OWNER_PID=${2:?--owner-pid needs a value}; shift 2 ;;
      --kill) KILL_SIGNAL=KILL; shift ;;
      --tls) TLS=1; shift ;;
      --ssh) SSH=1; shift ;;
      --) shift; ARGS+=("$@"); break ;;
      -h|--help) usage ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
}

valid_id() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 200 ]; }

# Fill in ID and DIR from each other: --dir alone reads DIR/lab.env; --id alone uses the
# directory recorded on the lab's bridge (ifalias), else the default.
resolve_lab() {
  if [ -z "$ID" ] && [ -n "$DIR" ] && [ -f "$DIR/lab.env" ]; then
    ID=$(sed -n "s/^LAB_ID='\{0,1\}\([0-9]*\)'\{0,1\}$/\1/p" "$DIR/lab.env")
  fi
  if [ -z "$ID" ] && [ -n "$DIR" ] && [ -f "$DIR/id" ]; then ID=$(cat "$DIR/id"); fi
  [ -n "$ID" ] || ID=1
  valid_id "$ID" || die "--id must be an integer 1..200 (got '$ID')"
  if [ -z "$DIR" ]; then
    local alias=""
    alias=$(cat "/sys/class/net/$(bridge)/ifalias" 2>/dev/null || true)
    case "$alias" in "ferry-lab "/*) DIR=${alias#ferry-lab } ;; esac
  fi
  [ -n "$DIR" ] || DIR=/tmp/ferry-lab-$ID
  case "$DIR" in /*) ;; *) DIR=$(pwd)/$DIR ;; esac
  DIR=${DIR%/}
}

host_index() {
  local h=${1:-}
  [[ "$h" =~ ^h([1-9][0-9]*)$ ]] || die "expected a host name like h1 (got '${h}')"
  echo "${BASH_REMATCH[1]}"
}

# wait_until SECONDS CMD... : run CMD every 0.1 s until it succeeds or time runs out.
wait_until() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# Alive = exists and is not a zombie (PID 1 of a container may reap late).
pid_alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local st; st=$( { cat "/proc/$1/stat"; } 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st:0:1}" != Z ]
}
pid_dead() { ! pid_alive "$1"; }
pid_from() { [ -s "$1" ] && tr -dc '0-9' <"$1" || true; }

# --- guest artifacts (built once per machine into $CACHE) ------------------------------
GUEST=""
ensure_guest() {
  mkdir -p "$CACHE/debs"
  exec {lockfd}>"$CACHE/.lock"
  flock -w 900 "$lockfd" || die "timed out waiting for $CACHE/.lock"
  local deb stamp
  deb=$("$GUEST_SRC/build.sh" fetch-kernel "$CACHE/debs")
  stamp=$(cat "$GUEST_SRC/init" "$GUEST_SRC/build.sh" <(basename "$deb") | sha256sum | cut -c1-16)
  GUEST=$CACHE/guest-$stamp
  if [ ! -f "$GUEST/stamp" ]; then
    log "building tiny guest into $GUEST"
    rm -rf "$GUEST.tmp"
    "$GUEST_SRC/build.sh" build "$deb" "$GUEST.tmp"
    echo "$stamp $(basename "$deb")" >"$GUEST.tmp/stamp"
    rm -rf "$GUEST"
    mv "$GUEST.tmp" "$GUEST"
  fi
  # Other versions (other branches' guest/) stay cached until unused for a week.
  touch "$GUEST/stamp"
  local old
  for old in "$CACHE"/guest-*/stamp; do
    [ -f "$old" ] && [ "$old" != "$GUEST/stamp" ] && [ -n "$(find "$old" -mtime +7)" ] &&
      rm -rf "${old%/stamp}"
  done
  # Keep the lock while copying so a concurrent build cannot prune under us.
  cp "$GUEST/vmlinuz" "$DIR/shared/boot/vmlinuz"
  cp "$GUEST/initrd.img" "$DIR/shared/boot/initrd.img"
  cp "$GUEST/tiny.qcow2" "$DIR/shared/pool/tiny.qcow2"
  chmod 0444 "$DIR/shared/pool/tiny.qcow2"
  VIRT_TYPE=$(detect_virt)
  exec {lockfd}>&-
}

# KVM verdict, probed once per machine (cached with the kernel release, the /dev/kvm device
# and the QEMU version as key): boot the tiny guest with -accel kvm and look for FERRY-READY.
detect_virt() {
  if [ -n "${FERRY_LAB_VIRT_TYPE:-}" ]; then echo "$FERRY_LAB_VIRT_TYPE"; return; fi
  if [ ! -c /dev/kvm ]; then echo qemu; return; fi
  local key verdict f=$CACHE/kvm-verdict
  key="$(uname -r) $(stat -Lc '%t:%T' /dev/kvm) $(qemu-system-x86_64 --version | head -n 1 | tr -d ' ')"
  if [ -f "$f" ] && [ "$(sed -n 1p "$f")" = "$key" ]; then sed -n 2p "$f"; return; fi
  local t; t=$(mktemp -d "${TMPDIR:-/tmp}/ferry-kvm-probe.XXXXXX")
  qemu-img create -q -f qcow2 -F qcow2 -b "$GUEST/tiny.qcow2" "$t/disk.qcow2"
  qemu-system-x86_64 -accel kvm -m 128 -nodefaults -display none -no-reboot \
    -serial "file:$t/console.log" -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
    -append "$GUEST_CMDLINE" -drive "file=$t/disk.qcow2,if=virtio" \
    </dev/null >"$t/qemu.log" 2>&1 &
  local qpid=$!
  verdict=qemu
  if wait_until 20 grep -q FERRY-READY "$t/console.log"; then verdict=kvm; fi
  kill -KILL "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  log "KVM probe: $verdict ($(tr '\n' ' ' <"$t/qemu.log" | cut -c1-200))"
  rm -rf "$t"
  printf '%s\n%s\n' "$key" "$verdict" >"$f"
  echo "$verdict"
}

# --- TLS (up --tls) ------------------------------------------------------------------------
# A lab CA signs one server certificate per host (CN and DNS name labhK, IP SAN the host's
# address) and a client certificate. Client directories hold libvirt's pkipath layout
# (cacert.pem, clientcert.pem, clientkey.pem):
#   pki/client     good client certificate and the lab CA
#   pki/rogue      a client certificate signed by another CA, trusting both CAs: the client
#                  accepts the host, the host rejects the client
#   pki/wrong-ca   a client certificate and CA that are not the lab's: the client rejects the
#                  host's certificate (libvirt first checks the client certificate against
#                  cacert.pem, so both must come from the same CA)
pki() { echo "$DIR/pki"; }

# certtool_cert NAME SIGNER TEMPLATE-LINES... : key + certificate NAME{key,cert}.pem in pki/work,
# signed by SIGNER (a NAME made earlier), or self-signed when SIGNER is "-".
certtool_cert() {
  local name=$1 signer=$2 w; shift 2
  w=$(pki)/work
  printf '%s\n' "$@" "expiration_days = 7" >"$w/$name.tmpl"
  certtool --generate-privkey --key-type=rsa --bits=2048 --outfile "$w/${name}key.pem" 2>/dev/null
  if [ "$signer" = - ]; then
    certtool --generate-self-signed --load-privkey "$w/${name}key.pem" \
      --template "$w/$name.tmpl" --outfile "$w/${name}cert.pem" 2>/dev/null
  else
    certtool --generate-certificate --load-privkey "$w/${name}key.pem" \
      --load-ca-certificate "$w/${signer}cert.pem" --load-ca-privkey "$w/${signer}key.pem" \
      --template "$w/$name.tmpl" --outfile "$w/${name}cert.pem" 2>/dev/null
  fi
}

make_pki() {
  local w k; w=$(pki)/work
  command -v certtool >/dev/null || die "--tls needs certtool (Debian gnutls-bin)"
  mkdir -p "$w"
  chmod 0700 "$(pki)"
  certtool_cert ca - "cn = ferry lab $ID CA" ca cert_signing_key
  certtool_cert rogueca - "cn = not the ferry lab CA" ca cert_signing_key
  certtool_cert client ca "cn = ferry-controller" tls_www_client signing_key encryption_key
  certtool_cert rogue rogueca "cn = ferry-controller" tls_www_client signing_key encryption_key
  for ((k = 1; k <= HOSTS; k++)); do
    certtool_cert "h$k" ca "cn = labh$k" "dns_name = labh$k" "ip_address = $(ip_host "$k")" \
      tls_www_server signing_key encryption_key
  done
  local dir name cas cert ca
  for dir in client:ca:client rogue:ca+rogueca:rogue wrong-ca:rogueca:rogue; do
    IFS=: read -r name cas cert <<<"$dir"
    mkdir -p "$(pki)/$name"
    : >"$(pki)/$name/cacert.pem"
    for ca in ${cas//+/ }; do cat "$w/${ca}cert.pem" >>"$(pki)/$name/cacert.pem"; done
    cp "$w/${cert}cert.pem" "$(pki)/$name/clientcert.pem"
    cp "$w/${cert}key.pem" "$(pki)/$name/clientkey.pem"
    chmod 0600 "$(pki)/$name"/*.pem
  done
}

# --- SSH (up --ssh) ------------------------------------------------------------------------
# Each host runs an sshd on its address (port 22) inside its namespaces, so a session reaches
# that host's libvirtd socket. ssh/ holds:
#   client, client.pub   the key the hosts accept (root)
#   other                a key no host accepts
#   known_hosts          the hosts' real host keys
#   known_hosts.wrong    other keys under the hosts' addresses
sshdir() { echo "$DIR/ssh"; }

make_ssh_keys() {
  local s k; s=$(sshdir)
  command -v ssh-keygen >/dev/null || die "--ssh needs ssh-keygen (Debian openssh-client)"
  [ -x /usr/sbin/sshd ] || die "--ssh needs /usr/sbin/sshd (Debian openssh-server)"
  mkdir -p "$s"
  chmod 0700 "$s"
  ssh-keygen -q -t ed25519 -N '' -C ferry-lab-client -f "$s/client"
  ssh-keygen -q -t ed25519 -N '' -C ferry-lab-other -f "$s/other"
  ssh-keygen -q -t ed25519 -N '' -C ferry-lab-wrong-host -f "$s/wronghost"
  cp "$s/client.pub" "$s/authorized_keys"
  : >"$s/known_hosts"
  : >"$s/known_hosts.wrong"
  for ((k = 1; k <= HOSTS; k++)); do
    ssh-keygen -q -t ed25519 -N '' -C "labh$k" -f "$s/host$k"
    echo "$(ip_host "$k") $(cut -d' ' -f1,2 "$s/host$k.pub")" >>"$s/known_hosts"
    echo "$(ip_host "$k") $(cut -d' ' -f1,2 "$s/wronghost.pub")" >>"$s/known_hosts.wrong"
  done
}

start_sshd() {
  local k=$1 d s; d=$(hdir "$k"); s=$(sshdir)
  {
    echo "ListenAddress $(ip_host "$k")"
    echo "Port 22"
    echo "HostKey $s/host$k"
    echo "PidFile $d/sshd.pid"
    echo "AuthorizedKeysFile $s/authorized_keys"
    echo "PermitRootLogin prohibit-password"
    echo "PubkeyAuthentication yes"
    echo "PasswordAuthentication no"
    echo "KbdInteractiveAuthentication no"
    echo "UsePAM no"
    echo "StrictModes no"
    echo "LogLevel ERROR"
  } >"$d/sshd_config"
  mkdir -p /run/sshd
  in_host "$k" /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log" </dev/null >>"$d/daemons.log" 2>&1 ||
    die "h$k: sshd failed to start ($(tail -n 3 "$d/sshd.log" 2>/dev/null))"
  wait_until "$DAEMON_WAIT" test -s "$d/sshd.pid" || die "h$k: sshd wrote no pid file"
}

host_answers_ssh() {
  [ "$(ip netns exec "$(ns_client)" timeout 10 virsh -q -c "qemu+libssh://root@$(ip_host "$1")/system?keyfile=$(sshdir)/client&known_hosts=$(sshdir)/known_hosts&sshauth=privkey" hostname 2>/dev/null)" = "labh$1" ]
}

# --- per-host configuration ------------------------------------------------------------
write_host_config() {
  local k=$1 d ip uuid
  d=$(hdir "$k"); ip=$(ip_host "$k")
  uuid=$(cat /proc/sys/kernel/random/uuid)
  # /var/log/libvirt/qemu as Debian's libvirt-daemon-system package leaves it: HostPools without a
  # console.logDirectory log consoles there.
  mkdir -p "$d/etc/libvirt" "$d/run/libvirt" "$d/var/lib/libvirt" "$d/var/log/libvirt/qemu" \
           "$d/var/cache/libvirt" "$d/etc-files"
  local tls_conf="listen_tls = 0"
  if [ "$TLS" = 1 ]; then
    mkdir -p "$d/pki"
    cp "$(pki)/work/cacert.pem" "$d/pki/cacert.pem"
    cp "$(pki)/work/h${k}cert.pem" "$d/pki/servercert.pem"
    cp "$(pki)/work/h${k}key.pem" "$d/pki/serverkey.pem"
    chmod 0600 "$d/pki/serverkey.pem"
    tls_conf="listen_tls = 1
tls_port = \"16514\"
ca_file = \"$d/pki/cacert.pem\"
cert_file = \"$d/pki/servercert.pem\"
key_file = \"$d/pki/serverkey.pem\"
auth_tls = \"none\""
  fi
  cat >"$d/etc/libvirt/libvirtd.conf" <<EOF
# ferry lab host h$k
$tls_conf
listen_tcp = 1
listen_addr = "$ip"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0777"
unix_sock_admin_perms = "0700"
host_uuid = "$uuid"
keepalive_interval = $KEEPALIVE_INTERVAL
keepalive_count = $KEEPALIVE_COUNT
max_client_requests = $MAX_CLIENT_REQUESTS
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >"$d/etc/libvirt/qemu.conf" <<EOF
# ferry lab host h$k
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
migration_host = "$ip"
migration_address = "$ip"
lock_manager = "lockd"
keepalive_interval = $KEEPALIVE_INTERVAL
keepalive_count = $KEEPALIVE_COUNT
stdio_handler = "logd"
EOF
  cat >"$d/etc/libvirt/qemu-lockd.conf" <<EOF
# Leases live on the shared storage so that all lab hosts see them.
auto_disk_leases = 1
file_lockspace_dir = "$DIR/shared/lockd"
EOF
  echo 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' >"$d/etc/libvirt/virtlogd.conf"
  echo 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"' >"$d/etc/libvirt/virtlockd.conf"
  echo "$uuid" >"$d/host-uuid"
  # Name resolution inside the host: lab names only, and no DNS server at all.
  {
    echo "127.0.0.1 localhost"
    echo "$(ip_host "$k") labh$k"
    local j
    for ((j = 1; j <= HOSTS; j++)); do [ "$j" = "$k" ] || echo "$(ip_host "$j") labh$j"; done
    echo "$(ip_client) labclient"
  } >"$d/etc-files/hosts"
  echo "# ferry lab host: no DNS" >"$d/etc-files/resolv.conf"
  : >"$d/etc-files/no-kvm"
}

# Network namespace, veth on the lab bridge, holder process owning the mount/UTS namespaces.
make_host_ns() {
  local k=$1 ns d
  ns=$(ns_host "$k"); d=$(hdir "$k")
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip link add "$(veth_host "$k")" type veth peer name eth0 netns "$ns"
  sysctl -qw "net.ipv6.conf.$(veth_host "$k").disable_ipv6=1" 2>/dev/null || true
  ip link set "$(veth_host "$k")" master "$(bridge)" up
  ip -n "$ns" addr add "$(ip_host "$k")/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # Guests' NICs (bridge "gbr0") join an isolated bridge with no address and no uplink: guests
  # may have addresses, but nothing they send leaves the host's namespace.
  ip -n "$ns" link add gbr0 type bridge
  ip -n "$ns" link set gbr0 up
  # The holder keeps the namespaces alive (for start-libvirtd and exec); it writes its own pid
  # (bash execs into sleep, so the pid stays) and carries DIR in its command line.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid -f ip netns exec "$ns" unshare --mount --uts --propagation private -- \
    bash -c 'echo $$ >"$1"; exec -a "ferry-lab-holder $2" sleep infinity' \
    _ "$d/holder.pid" "$d" </dev/null >/dev/null 2>&1
  wait_until 10 test -s "$d/holder.pid" || die "h$k: holder did not start"
}

# Run a command inside host k's namespaces (mount, UTS, network).
in_host() {
  local k=$1; shift
  local pid; pid=$(pid_from "$(hdir "$k")/holder.pid")
  pid_alive "$pid" || die "h$k: holder process is not running (is the lab up?)"
  nsenter -t "$pid" -m -u -n -- "$@"
}

setup_host_mounts() {
  local k=$1 d; d=$(hdir "$k")
  # shellcheck disable=SC2016  # expanded by the inner bash
  in_host "$k" bash -euc '
    d=$1 kvm=$2 k=$3
    for p in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
      mkdir -p "$p"
      mount --bind "$d$p" "$p"
    done
    for f in hosts resolv.conf; do
      if [ -e "/etc/$f" ]; then mount --bind "$d/etc-files/$f" "/etc/$f"; fi
    done
    # Hide KVM: a read-only empty file, so access(W_OK) fails with EROFS and libvirt
    # consistently reports no KVM (with /dev/null, libvirt thinks KVM is usable, finds it
    # is not, and re-probes QEMU on every define).
    if [ "$kvm" = qemu ] && [ -e /dev/kvm ]; then
      mount --bind "$d/etc-files/no-kvm" /dev/kvm
      mount -o remount,bind,ro /dev/kvm
    fi
    hostname "labh$k"
  ' _ "$d" "$VIRT_TYPE" "$k"
}

start_virtlogd_lockd() {
  local k=$1 d; d=$(hdir "$k")
  in_host "$k" virtlogd -d -f /etc/libvirt/virtlogd.conf -p "$d/virtlogd.pid" </dev/null >>"$d/daemons.log" 2>&1
  in_host "$k" virtlockd -d -f /etc/libvirt/virtlockd.conf -p "$d/virtlockd.pid" </dev/null >>"$d/daemons.log" 2>&1
  wait_until "$DAEMON_WAIT" test -S "$d/run/libvirt/virtlogd-sock" || die "h$k: virtlogd socket missing"
  wait_until "$DAEMON_WAIT" test -S "$d/run/libvirt/virtlockd-sock" || die "h$k: virtlockd socket missing"
}

start_libvirtd() {
  local k=$1 d; d=$(hdir "$k")
  rm -f "$d/libvirtd.pid"
  if ! in_host "$k" libvirtd -d --listen -f /etc/libvirt/libvirtd.conf -p "$d/libvirtd.pid" \
       </dev/null >>"$d/daemons.log" 2>&1; then
    daemon_logs "$k"
    die "h$k: libvirtd failed to start"
  fi
  if ! wait_until "$DAEMON_WAIT" host_answers_unix "$k"; then
    daemon_logs "$k"
    die "h$k: libvirtd does not answer on $(unix_uri "$k") within ${DAEMON_WAIT}s"
  fi
}

# Print the tail of host k's daemon logs (they go away with DIR on teardown).
daemon_logs() {
  local d f; d=$(hdir "$1")
  for f in "$d/daemons.log" "$d/var/log/libvirt/libvirtd.log"; do
    [ -s "$f" ] || continue
    echo "--- tail of $f" >&2
    tail -n 15 "$f" >&2
  done
}

host_answers_unix() {
  [ "$(timeout 5 virsh -q -c "$(unix_uri "$1")" hostname 2>/dev/null)" = "labh$1" ]
}

host_answers_tcp() {
  [ "$(ip netns exec "$(ns_client)" timeout 5 virsh -q -c "$(tcp_uri "$1")" hostname 2>/dev/null)" = "labh$1" ]
}

host_answers_tls() {
  [ "$(ip netns exec "$(ns_client)" timeout 5 virsh -q -c "$(tls_uri "$1")?pkipath=$(pki)/client" hostname 2>/dev/null)" = "labh$1" ]
}

host_up() {
  local k=$1
  write_host_config "$k"
  make_host_ns "$k"
  setup_host_mounts "$k"
  start_virtlogd_lockd "$k"
  start_libvirtd "$k"
  if [ "$SSH" = 1 ]; then start_sshd "$k"; fi
  # Build libvirt's QEMU capabilities cache now, so that the first define is not slow.
  timeout 60 virsh -q -c "$(unix_uri "$k")" domcapabilities --virttype "$VIRT_TYPE" >/dev/null 2>&1 ||
    log "h$k: warning: domcapabilities --virttype $VIRT_TYPE failed"
}

write_env() {
  local f=$DIR/lab.env k names=""
  for ((k = 1; k <= HOSTS; k++)); do names+="${names:+ }h$k"; done
  {
    echo "# ferry lab $ID: source this file (values are single-quoted)"
    echo "LAB_ID=$(shq "$ID")"
    echo "LAB_DIR=$(shq "$DIR")"
    echo "LAB_HOSTS=$(shq "$names")"
    for ((k = 1; k <= HOSTS; k++)); do
      echo "LAB_H${k}_NAME=$(shq "h$k")"
      echo "LAB_H${k}_HOSTNAME=$(shq "labh$k")"
      echo "LAB_H${k}_IP=$(shq "$(ip_host "$k")")"
      echo "LAB_H${k}_UNIX_URI=$(shq "$(unix_uri "$k")")"
      echo "LAB_H${k}_TCP_URI=$(shq "$(tcp_uri "$k")")"
      if [ "$TLS" = 1 ]; then echo "LAB_H${k}_TLS_URI=$(shq "$(tls_uri "$k")")"; fi
      echo "LAB_H${k}_NETNS=$(shq "$(ns_host "$k")")"
      echo "LAB_H${k}_HOST_UUID=$(shq "$(cat "$(hdir "$k")/host-uuid")")"
    done
    echo "LAB_CLIENT_NETNS=$(shq "$(ns_client)")"
    echo "LAB_CLIENT_IP=$(shq "$(ip_client)")"
    echo "LAB_SHARED_DIR=$(shq "$DIR/shared")"
    echo "LAB_POOL_DIR=$(shq "$DIR/shared/pool")"
    echo "LAB_GOLDEN=$(shq tiny.qcow2)"
    echo "LAB_KERNEL=$(shq "$DIR/shared/boot/vmlinuz")"
    echo "LAB_INITRD=$(shq "$DIR/shared/boot/initrd.img")"
    echo "LAB_CMDLINE=$(shq "$GUEST_CMDLINE")"
    echo "LAB_CONSOLE_DIR=$(shq "$DIR/shared/console")"
    echo "LAB_LOCKD_DIR=$(shq "$DIR/shared/lockd")"
    echo "LAB_VIRT_TYPE=$(shq "$VIRT_TYPE")"
    if [ "$TLS" = 1 ]; then echo "LAB_PKI_DIR=$(shq "$(pki)")"; fi
    if [ "$SSH" = 1 ]; then echo "LAB_SSH_DIR=$(shq "$(sshdir)")"; fi
  } >"$f.tmp"
  mv "$f.tmp" "$f"
}

# --- up ----------------------------------------------------------------------------------
UP_DONE=0
HOST_JOBS=()
on_up_exit() {
  local rc=$?
  if [ "$UP_DONE" != 1 ]; then
    trap - EXIT
    trap '' INT TERM HUP
    log "up failed (exit $rc); tearing down what was built"
    local k j
    for j in "${HOST_JOBS[@]}"; do kill -TERM "$j" 2>/dev/null || true; done
    for j in "${HOST_JOBS[@]}"; do wait "$j" 2>/dev/null || true; done
    for ((k = 1; k <= HOSTS; k++)); do
      if [ -s "$DIR/h$k/up.log" ]; then sed "s/^/  h$k: /" "$DIR/h$k/up.log" >&2; fi
    done
    ( down_impl ) || true
    # A daemon launched by a host job just before it was stopped may appear late.
    sleep 1
    kill_lab_pids KILL >/dev/null || true
    [ "$rc" != 0 ] || rc=1
  fi
  exit "$rc"
}

cmd_up() {
  [[ "$HOSTS" =~ ^[0-9]+$ ]] && [ "$HOSTS" -ge 1 ] && [ "$HOSTS" -le "$MAX_HOSTS" ] ||
    die "--hosts must be 1..$MAX_HOSTS (got '$HOSTS')"
  [ "$(id -u)" = 0 ] || die "must run as root"
  local t0=$SECONDS k
  # Claim the ID: no namespaces or bridge of this ID may exist, and DIR is created atomically.
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -Eq "^fl${ID}-(h[0-9]+|client)$" ||
     [ -e "/sys/class/net/$(bridge)" ]; then
    echo "lab.sh: lab $ID is in use (namespaces or bridge exist); run 'lab.sh down --id $ID'" >&2
    exit 3
  fi
  mkdir -p "$(dirname "$DIR")"
  if ! mkdir "$DIR" 2>/dev/null; then
    echo "lab.sh: $DIR exists: lab $ID is in use or was not torn down; run 'lab.sh down --id $ID'" >&2
    exit 3
  fi
  trap on_up_exit EXIT
  trap 'exit 130' INT TERM
  echo "$ID" >"$DIR/id"
  echo "$HOSTS" >"$DIR/hosts"
  echo $$ >"$DIR/up.pid"
  if [ -n "$OWNER_PID" ]; then start_watchdog; fi
  local sock; sock="$(hdir "$HOSTS")/run/libvirt/libvirt-sock"
  [ "${#sock}" -lt 100 ] || die "--dir is too long for a unix socket path ($sock)"
  mkdir -p "$DIR/shared/pool" "$DIR/shared/boot" "$DIR/shared/console" "$DIR/shared/lockd"

  ensure_guest
  log "guest ready, virt type $VIRT_TYPE ($((SECONDS - t0))s)"

  # Lab network: a bridge without address in the root namespace, the client namespace.
  ip link add "$(bridge)" type bridge
  ip link set "$(bridge)" alias "ferry-lab $DIR"
  sysctl -qw "net.ipv6.conf.$(bridge).disable_ipv6=1" 2>/dev/null || true
  ip link set "$(bridge)" up
  allow_bridge_forwarding
  ip netns add "$(ns_client)"
  ip netns exec "$(ns_client)" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip link add "$(veth_client)" type veth peer name eth0 netns "$(ns_client)"
  sysctl -qw "net.ipv6.conf.$(veth_client).disable_ipv6=1" 2>/dev/null || true
  ip link set "$(veth_client)" master "$(bridge)" up
  ip -n "$(ns_client)" addr add "$(ip_client)/24" dev eth0
  ip -n "$(ns_client)" link set lo up
  ip -n "$(ns_client)" link set eth0 up

  if [ "$TLS" = 1 ]; then make_pki; fi
  if [ "$SSH" = 1 ]; then make_ssh_keys; fi

  # Hosts in parallel.
  local failed=0
  for ((k = 1; k <= HOSTS; k++)); do
    mkdir -p "$(hdir "$k")"
    ( host_up "$k" ) >"$(hdir "$k")/up.log" 2>&1 &
    HOST_JOBS+=($!)
  done
  for ((k = 1; k <= HOSTS; k++)); do
    wait "${HOST_JOBS[k - 1]}" || { failed=1; log "h$k failed to come up"; }
  done
  HOST_JOBS=()
  [ "$failed" = 0 ] || die "some hosts failed to come up"

  for ((k = 1; k <= HOSTS; k++)); do
    wait_until "$DAEMON_WAIT" host_answers_tcp "$k" ||
      die "h$k: not reachable over TCP ($(tcp_uri "$k")) from $(ns_client)"
    if [ "$SSH" = 1 ]; then
      wait_until "$DAEMON_WAIT" host_answers_ssh "$k" ||
        die "h$k: not reachable over SSH (qemu+libssh://root@$(ip_host "$k")/system) from $(ns_client)"
    fi
    if [ "$TLS" = 1 ]; then
      wait_until "$DAEMON_WAIT" host_answers_tls "$k" ||
        die "h$k: not reachable over TLS ($(tls_uri "$k")?pkipath=$(pki)/client) from $(ns_client)"
    fi
  done
  write_env
  rm -f "$DIR/up.pid"
  UP_DONE=1
  log "up: $HOSTS host(s) in $((SECONDS - t0))s; env: $DIR/lab.env"
  echo "$DIR/lab.env"
}

# A FORWARD policy other than ACCEPT (e.g. Docker's) would drop bridged frames when
# br_netfilter is loaded: let frames within the lab bridge pass, and only those.
allow_bridge_forwarding() {
  command -v iptables >/dev/null || return 0
  [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] || return 0
  if ! iptables -S FORWARD 2>/dev/null | head -n 1 | grep -q -- '-P FORWARD ACCEPT'; then
    iptables -I FORWARD -i "$(bridge)" -o "$(bridge)" -m comment --comment "ferry-lab-$ID" -j ACCEPT
    touch "$DIR/iptables-rule"
  fi
}

# Tears the lab down when the owner process (e.g. a test binary) dies without doing so.
start_watchdog() {
  pid_alive "$OWNER_PID" || die "--owner-pid $OWNER_PID is not running"
  local start; start=$(proc_start "$OWNER_PID")
  setsid -f bash "$SELF" _watch --id "$ID" --dir "$DIR" --owner-pid "$OWNER_PID" -- "$start" \
    </dev/null >>"$DIR/watchdog.log" 2>&1
  wait_until 10 test -s "$DIR/watchdog.pid" || die "watchdog did not start"
}

proc_start() {
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  # Field 22 of /proc/PID/stat (start time); after "comm)" the state is field 3.
  awk '{print $20}' <<<"$s"
}

cmd_watch() {
  local start=${ARGS[0]:-}
  echo $$ >"$DIR/watchdog.pid"
  while [ -d "$DIR" ]; do
    if ! pid_alive "$OWNER_PID" || [ "$(proc_start "$OWNER_PID")" != "$start" ]; then
      log "owner $OWNER_PID is gone; tearing the lab down"
      trap '' INT TERM HUP
      # An unfinished 'up' tears down what it built when terminated: let it, then finish.
      local up; up=$(pid_from "$DIR/up.pid")
      if pid_alive "$up" && grep -q "lab.sh" "/proc/$up/cmdline" 2>/dev/null; then
        kill -TERM "$up" 2>/dev/null || true
        wait_until 120 pid_dead "$up" || kill -KILL "$up" 2>/dev/null || true
      fi
      down_impl
      exit 0
    fi
    sleep 1
  done
}

# --- down --------------------------------------------------------------------------------
# Pids of this process and its ancestors, which teardown must never kill.
protected_pids() {
  local p=$$
  echo "$BASHPID"
  while [ -n "$p" ] && [ "$p" != 0 ]; do
    echo "$p"
    p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
  done
}

# Processes that belong to this lab: every process in one of its network namespaces, and
# QEMU / libvirt daemons / holders / watchdogs whose command line names DIR.
lab_pids() {
  local ns pid exe cmd
  [ -n "${MY_SID:-}" ] || MY_SID=$(proc_sid $$)
  for ns in $(lab_netns); do ip netns pids "$ns" 2>/dev/null || true; done
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    cmd=$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in *"$DIR/"*|*"$DIR "*) ;; *) continue ;; esac
    exe=$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)" 2>/dev/null || true)
    case "$exe" in
      qemu-system-*|libvirtd|virtlogd|virtlockd|sleep) echo "$pid" ;;
      # A watchdog of this lab, unless it is us (or a subshell of us: same session).
      bash) case "$cmd" in *" _watch "*) [ "$(proc_sid "$pid")" = "$MY_SID" ] || echo "$pid" ;; esac ;;
    esac
  done
}

proc_sid() {
  local s; s=$( { cat "/proc/$1/stat"; } 2>/dev/null) || return 0
  s=${s##*) }
  awk '{print $4}' <<<"$s"
}

no_lab_pids() { [ -z "$(lab_pids)" ]; }

kill_lab_pids() {
  local sig=$1 protect pid n=0
  protect=" $(protected_pids | tr '\n' ' ') "
  for pid in $(lab_pids | sort -un); do
    case "$protect" in *" $pid "*) continue ;; esac
    kill "-$sig" "$pid" 2>/dev/null && n=$((n + 1))
  done
  echo "$n"
}

lab_netns() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^fl${ID}-(h[0-9]+|client)$" || true
}

# stop_pidfile FILE SECONDS [SIGNAL]: signal the daemon, wait for it, then SIGKILL it.
stop_pidfile() {
  dbg "stop $1"
  local f=$1 secs=$2 sig=${3:-TERM} pid
  pid=$(pid_from "$f")
  [ -n "$pid" ] || return 0
  case " $(protected_pids | tr '\n' ' ') " in *" $pid "*) return 0 ;; esac
  if pid_alive "$pid" && grep -qF "$DIR" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    wait_until "$secs" pid_dead "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 pid_dead "$pid" || true
  fi
  rm -f "$f"
}

down_impl() {
  local d k dom n
  # 1. The watchdog (unless we are it).
  stop_pidfile "$DIR/watchdog.pid" 2
  dbg "down: guests"
  # 2. Guests: ask each libvirtd, then kill whatever QEMU is left.
  for d in "$DIR"/h*/; do
    [ -d "$d" ] || continue
    k=${d%/}; k=${k##*/h}
    [[ "$k" =~ ^[0-9]+$ ]] || continue
    if [ -S "$d/run/libvirt/libvirt-sock" ] && pid_alive "$(pid_from "$d/libvirtd.pid")"; then
      for dom in $(timeout 10 virsh -q -c "$(unix_uri "$k")" list --name 2>/dev/null || true); do
        timeout 10 virsh -q -c "$(unix_uri "$k")" destroy "$dom" >/dev/null 2>&1 || true
      done
    fi
  done
  for pid in $(lab_pids | sort -un); do
    case "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)" 2>/dev/null)" in
      qemu-system-*) kill -KILL "$pid" 2>/dev/null || true ;;
    esac
  done
  dbg "down: daemons"
  # 3. Daemons by pid file, then the holders (after unmounting inside their namespace).
  for d in "$DIR"/h*/; do
    [ -d "$d" ] || continue
    stop_pidfile "$d/sshd.pid" 5
    stop_pidfile "$d/libvirtd.pid" 10
    stop_pidfile "$d/virtlockd.pid" 5
    stop_pidfile "$d/virtlogd.pid" 5
    local hp; hp=$(pid_from "$d/holder.pid")
    if pid_alive "$hp" && grep -qF "$DIR" "/proc/$hp/cmdline" 2>/dev/null; then
      nsenter -t "$hp" -m -- umount -l /etc/libvirt /run/libvirt /var/lib/libvirt \
        /var/log/libvirt /var/cache/libvirt /etc/hosts /etc/resolv.conf /dev/kvm 2>/dev/null || true
    fi
    stop_pidfile "$d/holder.pid" 2 KILL
  done
  dbg "down: leftover processes"
  # 4. Anything else still inside the lab's namespaces or naming DIR.
  n=$(kill_lab_pids TERM)
  if [ "$n" != 0 ]; then
    wait_until 5 no_lab_pids || kill_lab_pids KILL >/dev/null
    wait_until 5 no_lab_pids || log "warning: processes left: $(lab_pids | tr '\n' ' ')"
  fi
  dbg "down: network"
  # 5. Network.
  for ((k = 1; k <= MAX_HOSTS; k++)); do ip link del "$(veth_host "$k")" 2>/dev/null || true; done
  ip link del "$(veth_client)" 2>/dev/null || true
  local ns
  for ns in $(lab_netns); do ip netns del "$ns" 2>/dev/null || log "warning: cannot delete netns $ns"; done
  ip link del "$(bridge)" 2>/dev/null || true
  if command -v iptables >/dev/null; then
    while iptables -D FORWARD -i "$(bridge)" -o "$(bridge)" -m comment --comment "ferry-lab-$ID" -j ACCEPT 2>/dev/null; do :; done
  fi
  dbg "down: files"
  # 6. Files.
  for _ in 1 2 3 4 5; do
    rm -rf "$DIR" 2>/dev/null && break
    sleep 0.2
  done
  [ ! -e "$DIR" ] || log "warning: could not remove $DIR"
}

cmd_down() {
  local t0=$SECONDS
  [ "$(id -u)" = 0 ] || die "must run as root"
  # Ignore interrupts: a half-finished teardown is worse than a slow one.
  trap '' INT TERM HUP
  down_impl
  local left; left=$(lab_netns | tr '\n' ' ')
  [ -z "$left" ] || die "namespaces left after down: $left"
  [ ! -e "$DIR" ] || die "$DIR left after down"
  log "down in $((SECONDS - t0))s"
}

# --- failure injection ----------------------------------------------------------------------
need_lab() { [ -f "$DIR/lab.env" ] || die "no lab at $DIR (lab $ID is not up)"; }

cmd_partition() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  ip link set "$(veth_host "$k")" down
  log "h$k partitioned"
}

cmd_heal() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  ip link set "$(veth_host "$k")" up
  log "h$k healed"
}

cmd_stop_libvirtd() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  local f; f=$(hdir "$k")/libvirtd.pid
  pid_alive "$(pid_from "$f")" || { log "h$k: libvirtd is not running"; return 0; }
  stop_pidfile "$f" 15 "$KILL_SIGNAL"
  rm -f "$(hdir "$k")/run/libvirt/libvirt-sock" "$(hdir "$k")/run/libvirt/libvirt-sock-ro" 2>/dev/null || true
  log "h$k: libvirtd stopped (SIG$KILL_SIGNAL)"
}

cmd_start_libvirtd() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  HOSTS=$(cat "$DIR/hosts")
  if pid_alive "$(pid_from "$(hdir "$k")/libvirtd.pid")"; then log "h$k: libvirtd already running"; return 0; fi
  pid_alive "$(pid_from "$(hdir "$k")/virtlockd.pid")" || start_virtlogd_lockd "$k"
  start_libvirtd "$k"
  log "h$k: libvirtd started"
}

# A power loss as far as one shared kernel allows: every QEMU process of the host and its libvirtd,
# virtlockd and virtlogd die at once (SIGKILL, by their pid files, checked to belong to this lab),
# which drops the dead guests' disk leases. The namespaces stay, so start-libvirtd can "power it
# on" again (it starts virtlogd and virtlockd first when they are gone).
cmd_power_off() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  local d f pid killed=() i; d=$(hdir "$k")
  for f in "$d"/run/libvirt/qemu/*.pid; do
    [ -f "$f" ] || continue
    pid=$(pid_from "$f")
    if [ -n "$pid" ] && pid_alive "$pid" && grep -qF "$DIR" "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      killed+=("$pid")
    fi
  done
  stop_pidfile "$d/libvirtd.pid" 0 KILL
  # virtlockd goes too, and with it the leases it held (it would otherwise keep a killed guest's
  # leases until it saw the process gone, seconds later); virtlogd with it.
  stop_pidfile "$d/virtlockd.pid" 0 KILL
  stop_pidfile "$d/virtlogd.pid" 0 KILL
  rm -f "$d"/run/libvirt/libvirt-sock* "$d"/run/libvirt/virtlockd-* "$d"/run/libvirt/virtlogd-* \
    2>/dev/null || true
  # Powered off means nothing of the host runs any more: a killed QEMU holds its disk locks
  # until it has exited (a large guest takes a moment to tear down).
  for pid in "${killed[@]}"; do
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    pid_alive "$pid" && die "h$k: QEMU process $pid still runs 10 s after SIGKILL"
  done
  log "h$k: powered off (guests and libvirtd killed)"
}

cmd_exec() {
  need_lab; local k; k=$(host_index "${ARGS[0]:-}")
  [ "${#ARGS[@]}" -ge 2 ] || die "usage: lab.sh exec [--id ID] hK -- CMD..."
  in_host "$k" "${ARGS[@]:1}"
}

cmd_status() {
  if [ ! -f "$DIR/lab.env" ]; then echo "lab $ID: down ($DIR has no lab.env)"; return 0; fi
  local k n; n=$(cat "$DIR/hosts")
  echo "lab $ID at $DIR"
  for ((k = 1; k <= n; k++)); do
    local d; d=$(hdir "$k")
    printf 'h%s %-12s holder:%s libvirtd:%s virtlogd:%s virtlockd:%s link:%s\n' "$k" "$(ip_host "$k")" \
      "$(pid_alive "$(pid_from "$d/holder.pid")" && echo up || echo down)" \
      "$(pid_alive "$(pid_from "$d/libvirtd.pid")" && echo up || echo down)" \
      "$(pid_alive "$(pid_from "$d/virtlogd.pid")" && echo up || echo down)" \
      "$(pid_alive "$(pid_from "$d/virtlockd.pid")" && echo up || echo down)" \
      "$(cat "/sys/class/net/$(veth_host "$k")/operstate" 2>/dev/null || echo missing)"
  done
}

main() {
  local cmd=${1:-}
  [ -n "$cmd" ] || usage
  shift
  parse_args "$@"
  resolve_lab
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) echo "$DIR/lab.env" ;;
    status) cmd_status ;;
    partition) cmd_partition ;;
    heal) cmd_heal ;;
    stop-libvirtd) cmd_stop_libvirtd ;;
    start-libvirtd) cmd_start_libvirtd ;;
    power-off) cmd_power_off ;;
    exec) cmd_exec ;;
    _watch) cmd_watch ;;
    -h|--help|help) usage ;;
    *) echo "lab.sh: unknown command '$cmd'" >&2; usage ;;
  esac
}

main "$@"
