#!/bin/bash
# Builds pikube's offline images as OCI image-layout tarballs (importable with
# `ctr -n k8s.io images import` or pikube's air-gap directory <data-dir>/agent/images/):
#   OUTDIR/pause.tar    localhost/pause:3.9     a static C pause (images/pause/pause.c)
#   OUTDIR/busybox.tar  localhost/busybox:1.35  Debian's busybox-static with applet links
# Needs gcc (static libc: libc6-dev), busybox-static, GNU tar, sha256sum. No network.
# Deterministic (fixed mtimes, sorted entries, numeric owners) and idempotent: an image
# is rebuilt only when one of its inputs is newer than its tarball.
set -euo pipefail
umask 022

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
  amd64|x86_64) ARCH=amd64 VARIANT= ;;
  arm64|aarch64) ARCH=arm64 VARIANT= ;;
  armhf|armv7l) ARCH=arm VARIANT=v7 ;;
  armel|armv6l) ARCH=arm VARIANT=v6 ;;
  i386|i686) ARCH=386 VARIANT= ;;
  *) ARCH=$(uname -m) VARIANT= ;;
esac

# Deterministic tar of the contents of a directory, to stdout.
dtar() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf - .
}

# Stores stdin as a blob of the layout at $1; prints "<sha256hex> <size>".
blob() {
  local tmp hex size
  tmp=$(mktemp "$1/blobs/sha256/.tmp.XXXXXX")
  cat >"$tmp"
  hex=$(sha256sum "$tmp" | cut -d' ' -f1)
  size=$(stat -c %s "$tmp")
  chmod 0644 "$tmp"
  mv "$tmp" "$1/blobs/sha256/$hex"
  echo "$hex $size"
}

# image NAME TAG ROOTFS CONFIG_JSON_FRAGMENT OUTTAR: writes an OCI layout tarball.
image() {
  local name=$1 tag=$2 rootfs=$3 cfg=$4 out=$5
  local layout layer lhex lsize config chex csize manifest mhex msize platform
  layout=$(mktemp -d "$OUT/.layout.XXXXXX")
  chmod 0755 "$layout"
  mkdir -p "$layout/blobs/sha256"
  read -r lhex lsize < <(dtar "$rootfs" | blob "$layout")
  platform="\"architecture\":\"$ARCH\",\"os\":\"linux\""
  [ -n "$VARIANT" ] && platform="$platform,\"variant\":\"$VARIANT\""
  config="{$platform,\"created\":\"1970-01-01T00:00:00Z\",\"config\":{$cfg},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$lhex\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"pikube images/build.sh\"}]}"
  read -r chex csize < <(printf '%s' "$config" | blob "$layout")
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$chex\",\"size\":$csize},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$lhex\",\"size\":$lsize}]}"
  read -r mhex msize < <(printf '%s' "$manifest" | blob "$layout")
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$mhex\",\"size\":$msize,\"annotations\":{\"io.containerd.image.name\":\"$name:$tag\",\"org.opencontainers.image.ref.name\":\"$tag\"},\"platform\":{$platform}}]}" >"$layout/index.json"
  dtar "$layout" >"$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$layout"
  echo "built $out ($name:$tag, manifest sha256:$mhex)"
}

# up_to_date OUTTAR INPUT...: true when OUTTAR exists and is newer than every input.
up_to_date() {
  local out=$1; shift
  [ -f "$out" ] || return 1
  for f in "$@"; do [ "$f" -nt "$out" ] && return 1; done
  return 0
}

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK" "$OUT"/.layout.*' EXIT

if up_to_date "$OUT/pause.tar" "$HERE/build.sh" "$HERE/pause/pause.c"; then
  echo "up to date: $OUT/pause.tar"
else
  root="$WORK/pause"
  mkdir -p "$root"
  gcc -static -Os -Wall -Wextra -o "$root/pause" "$HERE/pause/pause.c"
  strip "$root/pause"
  image localhost/pause 3.9 "$root" '"Entrypoint":["/pause"]' "$OUT/pause.tar"
fi

if up_to_date "$OUT/busybox.tar" "$HERE/build.sh" "$BUSYBOX"; then
  echo "up to date: $OUT/busybox.tar"
else
  if ! "$BUSYBOX" --list >/dev/null 2>&1; then
    echo "error: $BUSYBOX is not a busybox binary (install Debian package busybox-static)" >&2
    exit 1
  fi
  if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "error: $BUSYBOX is not statically linked (install Debian package busybox-static)" >&2
    exit 1
  fi
  root="$WORK/busybox"
  mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/var/www" "$root/usr/bin" "$root/sbin"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  cp "$BUSYBOX" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    case "$applet" in busybox|*/*) continue ;; esac
    ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  image localhost/busybox 1.35 "$root" \
    '"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]' \
    "$OUT/busybox.tar"
fi
