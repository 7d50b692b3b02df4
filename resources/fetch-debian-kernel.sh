#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel (linux-image-*-cloud-amd64, a bzImage) from the Debian
# archive into build/guest/debian-vmlinuz, to check that ember boots a kernel it did not build.
# Cached: a second run does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/guest"
mkdir -p "$out"
[ -f "$out/debian-vmlinuz" ] && { echo "fetch-debian-kernel: up to date" >&2; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
chmod 777 "$tmp"   # apt's download user must be able to write here
[ -n "$(apt-cache policy linux-image-cloud-amd64 2>/dev/null)" ] || apt-get update -qq
pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1)
[ -n "$pkg" ] || { echo "fetch-debian-kernel: no linux-image-cloud-amd64 in the apt sources" >&2; exit 1; }
apt-get download -q "$pkg" >/dev/null 2>&1
dpkg-deb -x "$pkg"_*.deb x
cp x/boot/vmlinuz-* "$out/debian-vmlinuz.tmp"
mv "$out/debian-vmlinuz.tmp" "$out/debian-vmlinuz"
echo "fetch-debian-kernel: $pkg -> $out/debian-vmlinuz" >&2
