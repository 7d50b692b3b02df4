#!/usr/bin/env bash
# Installs Debian packages that are missing: the ones named, or by default what ember's demo and
# tests need on the host: gcc (tiny test guests), busybox-static, cpio and e2fsprogs (guest user
# space), util-linux (setpriv, for the permission tests), strace (the disk-close sync test),
# iproute2 and iputils-ping (network namespaces, TAPs and pings for the virtio-net tests).
# Needs root only when something is missing.
set -euo pipefail
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(gcc libc6-dev busybox-static cpio e2fsprogs util-linux iproute2 iputils-ping strace)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: please install: ${need[*]} (apt-get install as root)" >&2
  exit 1
fi
echo "setup-host: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
