#!/usr/bin/env bash
# Boots a demo microVM whose serial console is this terminal: builds ember, the guest kernel
# (first run only: several minutes) and the busybox root filesystem, then boots with the root
# filesystem on a virtio-blk disk (a fresh copy each time) and starts a shell in the guest.
# Type `reboot` (or `poweroff`) in the guest to end it. Extra arguments go to ember, e.g.
#   resources/demo.sh --vcpus 2 --memory 512
# Set EMBER_KERNEL to boot another kernel instead of building one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/resources/setup-host.sh"
cargo build --release --quiet
kernel=${EMBER_KERNEL:-}
if [ -z "$kernel" ]; then
  "$root/resources/build-kernel.sh"
  kernel="$root/build/guest/vmlinux"
fi
"$root/resources/build-rootfs.sh"
cp "$root/build/guest/rootfs.ext4" "$root/build/guest/demo-rootfs.ext4"
exec "$root/target/release/ember" --kernel "$kernel" \
  --disk "$root/build/guest/demo-rootfs.ext4,root,id=rootfs" --memory 256 "$@"
