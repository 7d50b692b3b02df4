#!/usr/bin/env bash
# Builds the guest user space from Debian's busybox-static, without root privileges or loop
# mounts:
#   build/guest/initramfs.cpio  uncompressed newc cpio (the kernel unpacks it without gunzip)
#   build/guest/rootfs.ext4     the same tree as an ext4 image (mkfs.ext4 -d), for virtio-blk
# Both run resources/rootfs/init; see there for the EMBER-INIT / EMBER-DONE markers, and
# resources/rootfs/ember-exit, which test scripts call to set ember's exit status.
# Cached: a second run with the same inputs does nothing, unless an image is no longer what
# this script built (booted read-write, say): build/guest/rootfs.stamp records the inputs' hash
# and the outputs' checksums. Boot copies, never these files. EMBER_GUEST_DIR overrides
# build/guest.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${EMBER_GUEST_DIR:-$root/build/guest}
me=build-rootfs
. "$here/lib.sh"
mkdir -p "$out"

"$here/setup-host.sh" busybox-static cpio e2fsprogs

busybox=/bin/busybox
key=$(cat "$0" "$here"/rootfs/* "$busybox" | sha256sum | cut -c1-16)
# The stamp: the inputs' key, then one "checksum  name" line per output.
stamp() {
  echo "$key"
  (cd "$out" && sha256sum initramfs.cpio rootfs.ext4)
}
if [ -f "$out/initramfs.cpio" ] && [ -f "$out/rootfs.ext4" ] && [ -f "$out/rootfs.stamp" ]; then
  if [ "$(stamp)" = "$(cat "$out/rootfs.stamp")" ]; then
    stage "up to date ($out)"
    exit 0
  fi
  if [ "$(head -n 1 "$out/rootfs.stamp")" = "$key" ]; then
    stage "$out/initramfs.cpio or rootfs.ext4 changed since it was built (booted read-write?): rebuilding"
  fi
fi

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,sbin,etc,proc,sys,dev,tmp,root,mnt}
cp "$busybox" "$tree/bin/busybox"
# A chosen set of applets: each file in an initramfs costs the emulated kernel ~25 ms to unpack.
for applet in sh ash cat cp dd df dmesg echo false free grep head hexdump hostname init ip \
    ifconfig kill ln ls md5sum mkdir mknod mount mv nc ping poweroff printf ps reboot rm \
    route sed seq sha256sum sleep stty sync tail test touch tr true umount uname vi wc; do
  ln -s busybox "$tree/bin/$applet"
done
ln -s ../bin/busybox "$tree/sbin/devmem"
install -m 0755 "$here/rootfs/init" "$tree/init"
install -m 0755 "$here/rootfs/ember-exit" "$tree/bin/ember-exit"
ln -sf /init "$tree/sbin/init"
install -m 0644 "$here/rootfs/inittab" "$tree/etc/inittab"
echo "root::0:0:root:/root:/bin/sh" > "$tree/etc/passwd"

(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
rm -f "$out/rootfs.ext4.tmp"
mkfs.ext4 -q -F -L rootfs -E root_owner=0:0 -d "$tree" "$out/rootfs.ext4.tmp" 32M >/dev/null
mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
rm -f "$out/rootfs.key"   # the stamp's predecessor, which had the key alone
stamp > "$out/rootfs.stamp"
stage "built $out/initramfs.cpio and $out/rootfs.ext4"
