#!/usr/bin/env bash
# Builds ember's guest kernel from Debian's linux-source-6.1 with resources/kernel/ember.config
# (merged over tinyconfig), plus resources/kernel/pvm-emulation.patch when this host's KVM is
# the software-emulating PVM module. Outputs, cached by a hash of all inputs:
#   build/guest/vmlinux   ELF, debug info stripped
#   build/guest/bzImage
# A second run with the same inputs does nothing. Set EMBER_KERNEL_JOBS to change make -j.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$root/build/guest"
work="$root/build/kernel"
mkdir -p "$out" "$work"

pvm=no
[ -d /sys/module/kvm_pvm ] && pvm=yes

"$here/setup-host.sh" linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev python3 xz-utils

tarball=$(ls /usr/src/linux-source-6.1*.tar.xz | head -n 1)
key=$( { sha256sum "$tarball" | cut -d' ' -f1; sha256sum "$here/kernel/ember.config";
         [ "$pvm" = yes ] && sha256sum "$here/kernel/pvm-emulation.patch"; } | sha256sum | cut -c1-16)
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ "$(cat "$out/kernel.key" 2>/dev/null)" = "$key" ]; then
  echo "build-kernel: up to date ($out/vmlinux)" >&2
  exit 0
fi

src="$work/linux-$key"
if [ ! -f "$src/Makefile" ]; then
  rm -rf "$work"/linux-*
  mkdir -p "$src"
  echo "build-kernel: unpacking $(basename "$tarball")" >&2
  tar -xf "$tarball" -C "$src" --strip-components=1
  if [ "$pvm" = yes ]; then
    echo "build-kernel: this host's KVM is PVM: applying the emulation compat patch" >&2
    patch -d "$src" -p1 --quiet < "$here/kernel/pvm-emulation.patch"
  fi
fi

cd "$src"
make -s tinyconfig
scripts/kconfig/merge_config.sh -m -O . .config "$here/kernel/ember.config" >/dev/null
make -s olddefconfig
echo "build-kernel: compiling (several minutes on a small machine)" >&2
make -s -j"${EMBER_KERNEL_JOBS:-$(nproc)}" bzImage 2>&1 | grep -v -e 'int3_selftest' -e '^ *|' -e '^ *[0-9]* |' >&2 || true
[ -f vmlinux ] && [ -f arch/x86/boot/bzImage ] || { echo "build-kernel: the kernel build failed" >&2; exit 1; }
objcopy --strip-debug vmlinux "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage"
echo "$key" > "$out/kernel.key"
echo "build-kernel: built $out/vmlinux and $out/bzImage" >&2
