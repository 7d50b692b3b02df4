#!/usr/bin/env bash
# Builds ember's guest kernel from Debian's linux-source-6.1 with resources/kernel/ember.config
# (merged over tinyconfig), plus resources/kernel/pvm-emulation.patch when this host's KVM is
# the software-emulating PVM module. Outputs, cached by a hash of all inputs:
#   build/guest/vmlinux   ELF, debug info stripped
#   build/guest/bzImage
# A second run with the same inputs does nothing. The first takes about 12 minutes on 2 cores
# (it prints a progress line every 30 seconds). Set EMBER_KERNEL_JOBS to change make -j.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
me=build-kernel
. "$here/lib.sh"
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
  stage "up to date ($out/vmlinux)"
  exit 0
fi

src="$work/linux-$key"
if [ ! -f "$src/Makefile" ]; then
  rm -rf "$work"/linux-*
  mkdir -p "$src"
  stage "unpacking $(basename "$tarball")"
  tar -xf "$tarball" -C "$src" --strip-components=1
  if [ "$pvm" = yes ]; then
    stage "this host's KVM is PVM: applying the emulation compat patch"
    patch -d "$src" -p1 --quiet < "$here/kernel/pvm-emulation.patch"
  fi
fi

cd "$src"
stage "configuring (tinyconfig + resources/kernel/ember.config)"
# Both steps report every value the fragments override ("Value of CONFIG_... is redefined",
# "override: ... changes choice state"): that is the point of a fragment, so say nothing.
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m -O . .config "$here/kernel/ember.config" >/dev/null
make -s olddefconfig 2>&1 | grep -v 'changes choice state' >&2 || true
jobs=${EMBER_KERNEL_JOBS:-$(nproc)}
stage "compiling with $jobs jobs (about 12 minutes on 2 cores)"
# make's one line per file becomes a line every 30 seconds; warnings and errors pass through,
# less the expected int3_selftest one and the compiler's source excerpts.
make -j"$jobs" bzImage 2>&1 | awk -v me="$me" -v start="$SECONDS" '
  /^  [A-Z0-9]+ / { files++; if (systime() - last >= 30) { last = systime();
      el = start + systime() - t0; printf "%s [%d:%02d] %d files built, now %s\n", me, el / 60, el % 60, files, $2 > "/dev/stderr"; fflush("/dev/stderr") }
    next }
  /int3_selftest/ || /^ *\|/ || /^ *[0-9]* \|/ { next }
  { print > "/dev/stderr" }
  BEGIN { t0 = systime(); last = t0 - 30 }' || true
[ -f vmlinux ] && [ -f arch/x86/boot/bzImage ] || { stage "the kernel build failed"; exit 1; }
objcopy --strip-debug vmlinux "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage"
echo "$key" > "$out/kernel.key"
stage "built $out/vmlinux and $out/bzImage"
