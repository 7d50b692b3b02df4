#!/usr/bin/env bash
# Boots a demo microVM whose serial console is this terminal: builds ember, the guest kernel
# and the busybox root filesystem (the first run takes about 15 minutes on 2 cores, mostly the
# kernel; later runs start at once), then boots with the root filesystem on a virtio-blk disk
# (a fresh copy each time) and starts a shell in the guest.
# Type `poweroff` or `reboot` in the guest to end it (ember exits 0), or Ctrl-A x.
# Extra arguments go to ember, e.g.
#   resources/demo.sh --vcpus 2 --memory 512
# Set EMBER_KERNEL to boot another kernel instead of building one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
me=demo
. "$root/resources/lib.sh"
stage "checking host packages"
"$root/resources/setup-host.sh"
stage "building ember (first run: about 3 minutes)"
cargo build --release
kernel=${EMBER_KERNEL:-}
if [ -z "$kernel" ]; then
  stage "guest kernel (first run: about 12 minutes on 2 cores)"
  "$root/resources/build-kernel.sh"
  kernel="$root/build/guest/vmlinux"
fi
stage "guest root filesystem"
"$root/resources/build-rootfs.sh"
cp "$root/build/guest/rootfs.ext4" "$root/build/guest/demo-rootfs.ext4"
stage "booting; end the VM with poweroff or reboot in the guest, or Ctrl-A x"
exec "$root/target/release/ember" --kernel "$kernel" \
  --disk "$root/build/guest/demo-rootfs.ext4,root,id=rootfs" --memory 256 "$@"
