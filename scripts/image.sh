#!/usr/bin/env bash
# Builds ferry's controller image without a container engine and without pulling a base image:
#   1. the release binaries, built with cargo from exactly the Dockerfile's context (the files
#      .dockerignore lets through, copied to target/image/context: what cannot be built there
#      cannot be built by `docker build` either);
#   2. a root file system from Debian's packages (mmdebstrap: the essential set plus libvirt0,
#      openssh-client and ca-certificates, as the Dockerfile's runtime stage installs), the
#      binaries in /usr/local/bin, the non-root user 65532;
#   3. packed as an OCI image with umoci (entry point, command, user, labels as in the Dockerfile)
#      and written as an OCI archive that `podman load` and `skopeo copy oci-archive:...` accept.
# Reproducible: file times are clamped to SOURCE_DATE_EPOCH (default: the commit's time) and every
# timestamp in the image is that time, so the same commit, packages and toolchain give the same
# digest. Debian's mirror moves: pin it with FERRY_IMAGE_MIRROR (e.g. a snapshot URL).
#
# Usage: scripts/image.sh [OUT]      OUT default: target/image/ferry-<version>.oci.tar (run as root)
# Environment: FERRY_IMAGE_REPOSITORY (default ghcr.io/ferry-dev/ferry: the name the archive
# carries), FERRY_IMAGE_MIRROR, FERRY_IMAGE_FEATURES (cargo features), FERRY_GIT_COMMIT,
# SOURCE_DATE_EPOCH. Prints the archive, its image reference and manifest digest, and sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PY=${FERRY_VENV:-/opt/ferry-venv}/bin/python
[ -x "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "image.sh: no Python (scripts/setup.sh makes /opt/ferry-venv)" >&2; exit 1; }
for tool in mmdebstrap umoci cargo; do
  command -v "$tool" >/dev/null || { echo "image.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "image.sh: run as root (mmdebstrap and umoci unpack as root)" >&2; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
REPOSITORY=${FERRY_IMAGE_REPOSITORY:-ghcr.io/ferry-dev/ferry}
COMMIT=${FERRY_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
IMAGE_DIR=$TARGET_DIR/image
OUT=${1:-$IMAGE_DIR/ferry-$VERSION.oci.tar}
WORK=$IMAGE_DIR/work
started=$(date +%s)

echo "== the Dockerfile's context -> $IMAGE_DIR/context"
# .dockerignore here is "ignore everything, then let through these paths"; anything else is not
# read correctly by this script, so refuse it.
"$PY" - "$IMAGE_DIR/context" <<'PY'
import pathlib, re, shutil, sys
root = pathlib.Path(".")
dest = pathlib.Path(sys.argv[1])
lines = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
if not lines or lines[0] != "*" or not all(l.startswith("!") for l in lines[1:]):
    sys.exit("image.sh: .dockerignore must be '*' followed by '!path' lines")
allowed = [l[1:].rstrip("/") for l in lines[1:]]
# The build stage's COPY sources must all be in the context.
build = open("Dockerfile").read().split("\nFROM ", 2)[1]
for line in build.splitlines():
    if line.startswith("COPY ") and "--from" not in line:
        for src in line.split()[1:-1]:
            if src.rstrip("/") not in allowed:
                sys.exit(f"image.sh: the Dockerfile copies {src}, which .dockerignore keeps out")
shutil.rmtree(dest, ignore_errors=True)
dest.mkdir(parents=True)
for path in allowed:
    src = root / path
    if src.is_dir():
        shutil.copytree(src, dest / path)
    elif src.exists():
        shutil.copy2(src, dest / path)
    else:
        sys.exit(f"image.sh: .dockerignore lets through {path}, which does not exist")
PY

echo "== cargo build --release in the context (as the Dockerfile's build stage)"
FERRY_GIT_COMMIT=$COMMIT CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked --quiet \
  --manifest-path "$IMAGE_DIR/context/Cargo.toml" --features "${FERRY_IMAGE_FEATURES:-}" \
  --bin ferry --bin kubectl-ferry

rm -rf "$WORK"
mkdir -p "$WORK" "$(dirname "$OUT")"
# The binaries of this build, before anything else writes target/release.
install -m 0755 "$TARGET_DIR/release/ferry" "$TARGET_DIR/release/kubectl-ferry" "$WORK/"
built=$(date +%s)

echo "== root file system from Debian packages (mmdebstrap)"
umoci init --layout "$WORK/oci"
umoci new --image "$WORK/oci:ferry"
umoci unpack --image "$WORK/oci:ferry" "$WORK/bundle" >/dev/null
# Slim as debian:*-slim is: no documentation, manual pages or translations (copyrights kept).
mmdebstrap --quiet --variant=essential --include=libvirt0,openssh-client,ca-certificates \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  bookworm "$WORK/bundle/rootfs" ${FERRY_IMAGE_MIRROR:+"$FERRY_IMAGE_MIRROR"}
rootfs=$WORK/bundle/rootfs
install -m 0755 "$WORK/ferry" "$WORK/kubectl-ferry" "$rootfs/usr/local/bin/"
# The numeric user the chart runs as, with a name and a home (ssh, for qemu+ssh://, refuses a uid
# without a passwd entry).
echo "ferry:x:65532:65532:ferry:/tmp:/usr/sbin/nologin" >>"$rootfs/etc/passwd"
echo "ferry:x:65532:" >>"$rootfs/etc/group"
# Files written after mmdebstrap get the same clamped time as the rest.
find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
rootfs_bytes=$(du -sb "$rootfs" | cut -f1)
rootfs_done=$(date +%s)

echo "== OCI image (umoci)"
umoci repack --image "$WORK/oci:ferry" --history.created "$CREATED" \
  --history.created_by "scripts/image.sh: Debian bookworm (essential, libvirt0, openssh-client, ca-certificates), ferry and kubectl-ferry" \
  "$WORK/bundle" >/dev/null
umoci config --image "$WORK/oci:ferry" --no-history --created "$CREATED" \
  --architecture amd64 --os linux --config.user 65532:65532 --config.env HOME=/tmp \
  --config.workingdir / --config.exposedports 8080/tcp \
  --config.entrypoint /usr/local/bin/ferry \
  --config.cmd controller --config.cmd --http-addr --config.cmd 0.0.0.0:8080 \
  --config.cmd --log-format --config.cmd json \
  --config.label org.opencontainers.image.title=ferry \
  --config.label "org.opencontainers.image.description=Kubernetes operator that runs KVM virtual machines on libvirt hosts" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --config.label "org.opencontainers.image.version=$VERSION" \
  --config.label "org.opencontainers.image.revision=$COMMIT" \
  --config.label "org.opencontainers.image.created=$CREATED"
umoci gc --layout "$WORK/oci"
# The archive's image reference: the full name podman gives the loaded image.
"$PY" - "$WORK/oci/index.json" "$REPOSITORY:$VERSION" <<'PY'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
index = json.load(open(path))
(manifest,) = index["manifests"]
manifest.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = ref
json.dump(index, open(path, "w"), separators=(",", ":"), sort_keys=True)
PY
find "$WORK/oci" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$WORK/oci" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
digest=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$WORK/oci/index.json")
layers=$("$PY" - "$WORK/oci" "$digest" <<'PY'
import json, sys
blobs = sys.argv[1] + "/blobs/sha256/"
manifest = json.load(open(blobs + sys.argv[2].split(":")[1]))
print(sum(l["size"] for l in manifest["layers"]))
PY
)
rm -rf "$WORK/bundle"
finished=$(date +%s)
cat >"$OUT.info" <<EOF
archive=$OUT
reference=$REPOSITORY:$VERSION
digest=$digest
commit=$COMMIT
source_date_epoch=$SOURCE_DATE_EPOCH
rootfs_bytes=$rootfs_bytes
compressed_layer_bytes=$layers
archive_bytes=$(stat -c %s "$OUT")
seconds_cargo=$((built - started))
seconds_rootfs=$((rootfs_done - built))
seconds_pack=$((finished - rootfs_done))
EOF
echo "== image"
cat "$OUT.info"
