#!/usr/bin/env bash
# The cold image benchmark of `ember run IMAGE` (issue 17): `ember pull` of an image from a
# registry on 127.0.0.1 into an empty cache (fetch, digest checks, unpack with whiteouts, the
# read-only ext4) against the same work done by the usual tools, `skopeo copy` + `umoci unpack`
# + `mkfs.ext4 -d` (with the size and inode count of ember's image, and an fsync as ember
# does), on the same image in the same run, taking turns (target: ember <= 1.0x the tools).
#
# The image (two layers: busybox-static with /etc, then this host's /usr/lib/python3.11, about
# 54 MiB unpacked, thousands of files) is built with umoci and pushed with skopeo to Debian's
# docker-registry; nothing comes from the network. Needs docker-registry, skopeo, umoci,
# busybox-static and e2fsprogs (resources/setup-host.sh installs them); as root umoci keeps
# owners, otherwise it unpacks --rootless.
#
# Usage: resources/bench-images.sh [EMBER_BINARY]   (default target/release/ember; RUNS=N, default 5)
set -euo pipefail
me=bench-images
. "$(dirname "$0")/lib.sh"

ember=$(realpath "${1:-target/release/ember}")
runs=${RUNS:-5}
[ -x "$ember" ] || { echo "$me: no ember binary at $ember: run cargo build --release first" >&2; exit 1; }
for tool in docker-registry skopeo umoci busybox; do
  command -v "$tool" >/dev/null || { echo "$me: $tool is missing: run resources/setup-host.sh" >&2; exit 1; }
done
mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) || { echo "$me: mkfs.ext4 is missing: install e2fsprogs" >&2; exit 1; }
dumpe2fs=$(PATH=$PATH:/usr/sbin:/sbin command -v dumpe2fs)
python_lib=/usr/lib/python3.11
[ -d "$python_lib" ] || { echo "$me: $python_lib (the image's bulk) is missing: apt install python3.11" >&2; exit 1; }
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)

# On disk, not a tmpfs: both sides write ~100 MiB per run.
work=$(mktemp -d /var/tmp/ember-bench-images.XXXXXX)
registry_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

stage "building the image (umoci) in $work"
src=$work/src
umoci init --layout "$src"
umoci new --image "$src:v1"
umoci unpack "${rootless[@]}" --image "$src:v1" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/etc" "$work/bundle/rootfs/usr/lib"
cp "$(command -v busybox)" "$work/bundle/rootfs/bin/busybox"
ln -s busybox "$work/bundle/rootfs/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/bundle/rootfs/etc/passwd"
umoci repack --image "$src:v1" "$work/bundle"
cp -a "$python_lib" "$work/bundle/rootfs/usr/lib/"
umoci repack --image "$src:v1" "$work/bundle"
umoci config --image "$src:v1" --config.cmd sh --config.env PATH=/bin
rm -rf "$work/bundle"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ref=127.0.0.1:$port/bench/python:v1
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$src:v1" "docker://$ref"
pushed=$(du -sm "$work/storage" | cut -f1)
unpacked=$(du -sm "$python_lib" | cut -f1)
stage "pushed $ref: ${pushed} MiB in the registry (gzip layers), ~${unpacked} MiB unpacked"

ember_pull() {
  local cache=$work/cache-$1
  EMBER_CACHE_DIR=$cache "$ember" pull "$ref" >"$work/pull.out"
  sed -n 's/^root filesystem: //p' "$work/pull.out" | tail -n 1
}

# The tools' pipeline, the ext4 sized as ember sized its own ($size bytes, $inodes inodes).
tools() {
  local dir=$work/tools-$1
  mkdir -p "$dir"
  skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$ref" "oci:$dir/layout:v1"
  umoci unpack "${rootless[@]}" --image "$dir/layout:v1" "$dir/bundle" >/dev/null
  truncate -s "$size" "$dir/rootfs.ext4"
  "$mkfs" -q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal -N "$inodes" -d "$dir/bundle/rootfs" "$dir/rootfs.ext4"
  sync "$dir/rootfs.ext4"
}

# A first ember pull to learn the ext4's size and inode count (and warm the registry).
rootfs=$(ember_pull warmup)
[ -f "$rootfs" ] || { echo "$me: ember pull named no root filesystem:" >&2; cat "$work/pull.out" >&2; exit 1; }
size=$(stat -c %s "$rootfs")
inodes=$("$dumpe2fs" -h "$rootfs" 2>/dev/null | sed -n 's/^Inode count: *//p')
rm -rf "$work/cache-warmup"
stage "ember's ext4: $((size >> 20)) MiB, $inodes inodes; $runs runs each, taking turns"

ember_ms=() tools_ms=()
for i in $(seq "$runs"); do
  for side in ember tools; do
    # Taking turns, in both orders, so neither always runs on the other's page cache.
    [ $((i % 2)) = 0 ] && side=$([ "$side" = ember ] && echo tools || echo ember)
    start=$(date +%s%N)
    if [ "$side" = ember ]; then
      ember_pull "$i" >/dev/null
      ember_ms+=("$(ms_since "$start")")
      rm -rf "$work/cache-$i"
    else
      tools "$i"
      tools_ms+=("$(ms_since "$start")")
      rm -rf "$work/tools-$i"
    fi
  done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
em=$(median "${ember_ms[@]}")
tm=$(median "${tools_ms[@]}")
echo "cold pull to ext4, ember pull:                      median ${em} ms  (runs: ${ember_ms[*]})"
echo "cold pull to ext4, skopeo copy + umoci unpack + mkfs: median ${tm} ms  (runs: ${tools_ms[*]})"
awk -v e="$em" -v t="$tm" 'BEGIN {
  r = e / t
  printf "ember / tools: %.2fx (target: <= 1.0x): %s\n", r, (r <= 1.0 ? "met" : "MISSED")
}'
