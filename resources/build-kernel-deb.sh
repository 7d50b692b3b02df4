#!/usr/bin/env bash
# Builds the optional guest kernel package, target/debian/ember-guest-kernel_<version>_amd64.deb,
# and prints its path on stdout. It installs the kernel as /usr/lib/ember/vmlinux, the place
# ember's packaged configs (/usr/share/doc/ember/examples/vm.json) boot from.
#   resources/build-kernel-deb.sh [KERNEL]
# KERNEL is an existing ELF vmlinux (e.g. /work/shared/guest/full-vmlinux); without it,
# resources/build-kernel.sh builds (or finds cached) build/guest/vmlinux and that is packaged.
# The version is the ember package's (deb_version in resources/lib.sh); dates are the
# commit's (SOURCE_DATE_EPOCH), so the same commit and kernel give the same bytes. lintian
# checks it (no error or warning; resources/deb/ember-guest-kernel.lintian-overrides says why
# two tags do not apply to a guest kernel).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
me=build-kernel-deb
. "$here/lib.sh"

"$here/setup-host.sh" dpkg-dev jq lintian
kernel=${1:-}
if [ -z "$kernel" ]; then
  "$here/build-kernel.sh"
  kernel="$root/build/guest/vmlinux"
fi
[ -f "$kernel" ] || { stage "no kernel at $kernel"; exit 1; }
linux=$(grep -a -m 1 -o 'Linux version [^ ]*' "$kernel" | cut -d' ' -f3) ||
  { stage "$kernel is not a Linux kernel image (no 'Linux version' string)"; exit 1; }
version=$(deb_version "$root")
SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH
maintainer=$(cargo metadata --format-version 1 --locked --no-deps --manifest-path "$root/Cargo.toml" |
  jq -r '.packages[] | select(.name == "ember") | .metadata.deb.maintainer')

stage "packaging Linux $linux from $kernel"
pkg="$root/build/deb/ember-guest-kernel"
doc="$pkg/usr/share/doc/ember-guest-kernel"
rm -rf "$pkg"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/lib/ember" "$doc"
install -m 0644 "$kernel" "$pkg/usr/lib/ember/vmlinux"
cat > "$doc/copyright" <<'END'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: Linux
Source: https://www.kernel.org/
Comment: /usr/lib/ember/vmlinux is Linux built from Debian's linux-source-6.1
 with ember's configuration (resources/kernel/ember.config in ember's sources).

Files: *
Copyright: 1991-2023 Linus Torvalds and many others
License: GPL-2
 This program is free software; you can redistribute it and/or modify it under
 the terms of the GNU General Public License version 2 as published by the Free
 Software Foundation.
 .
 On Debian systems, the complete text of the GNU General Public License version
 2 can be found in /usr/share/common-licenses/GPL-2.
END
{
  printf 'ember-guest-kernel (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Linux %s, packaged from ember commit\n    %s.\n\n' "$linux" "$(git -C "$root" rev-parse HEAD)"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.gz"
cat > "$pkg/DEBIAN/control" <<END
Package: ember-guest-kernel
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(du -sk --apparent-size "$pkg/usr" | cut -f1)
Section: kernel
Priority: optional
Enhances: ember
Description: Linux guest kernel for ember microVMs
 Linux $linux, an ELF vmlinux with what ember emulates: the serial
 console, i8042, virtio-mmio disks, NICs, vsock and entropy, and ACPI
 power-off. Installed as /usr/lib/ember/vmlinux, which ember's example
 config boots.
END
mkdir -p "$pkg/usr/share/lintian/overrides"
cp "$here/deb/ember-guest-kernel.lintian-overrides" "$pkg/usr/share/lintian/overrides/ember-guest-kernel"
(cd "$pkg" && find usr -type f | LC_ALL=C sort | xargs md5sum) > "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$root/target/debian"
deb="$root/target/debian/ember-guest-kernel_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
lint_deb "$deb"
stage "built $deb"
echo "$deb"
