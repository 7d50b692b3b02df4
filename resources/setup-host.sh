#!/usr/bin/env bash
# Installs the Debian packages ember's demo and tests need on the host, if any is missing:
# gcc (tiny test guests), busybox-static, cpio and e2fsprogs (guest user space), util-linux
# (setpriv, for the /dev/kvm permission test). Needs root only when something is missing.
set -euo pipefail
need=()
for pkg in gcc libc6-dev busybox-static cpio e2fsprogs util-linux; do
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
