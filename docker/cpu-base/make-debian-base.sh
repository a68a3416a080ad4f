#!/usr/bin/env bash
# Makes a Debian 12 (bookworm) base image with debootstrap and `docker import`, for machines that
# cannot pull from any registry. The host's extra CA certificates
# (/usr/local/share/ca-certificates/*.crt, e.g. a TLS-intercepting proxy's) are added to the
# image's trust store, so that HTTPS from builds on top of it works where the host's does.
#
# Usage: docker/cpu-base/make-debian-base.sh [--tag NAME] [--force]
#   --tag NAME   image to create (default: local/debian:bookworm)
#   --force      rebuild even if the image exists
# Env: DEBIAN_MIRROR (default: the host's apt mirror, else http://deb.debian.org/debian),
#      DEBIAN_SECURITY_MIRROR (default: http://deb.debian.org/debian-security),
#      TFT_STATE_DIR (scratch space, default /var/tmp/tft-sagemaker).
set -euo pipefail

TAG=local/debian:bookworm
FORCE=0
while (($#)); do
    case $1 in
        --tag) TAG=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[debian-base] %s\n' "$*" >&2; }

if ((FORCE == 0)) && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists (use --force to rebuild)"
    exit 0
fi
command -v debootstrap >/dev/null || { log "error: debootstrap not installed (.ci/setup_docker.sh install)"; exit 1; }

host_mirror() {
    # First Debian archive URI of the host's apt sources (deb822 or one-line format).
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    } | grep -m1 -E '/debian/?$' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

STATE_DIR=${TFT_STATE_DIR:-/var/tmp/tft-sagemaker}
mkdir -p "$STATE_DIR"
ROOTFS=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates bookworm "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"

cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF

shopt -s nullglob
extra_certs=(/usr/local/share/ca-certificates/*.crt)
if ((${#extra_certs[@]})); then
    log "trusting ${#extra_certs[@]} extra CA certificate(s) from the host"
    cp "${extra_certs[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    # Its output is noise when it works (a benign "rehash: warning"): show it only on failure.
    out=$(chroot "$ROOTFS" update-ca-certificates 2>&1) || { echo "$out" >&2; exit 1; }
fi

# Keep the image small: no package cache, no apt lists (a build runs apt-get update anyway).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

log "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
log "done: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
