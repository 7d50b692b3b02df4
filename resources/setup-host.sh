#!/usr/bin/env bash
# Installs Debian packages that are missing: the ones named, or by default what ember's demo and
# tests need on the host: gcc (tiny test guests), busybox-static, cpio and e2fsprogs (guest user
# space), util-linux (setpriv, for the permission tests), strace (the disk-close sync test),
# iproute2 and iputils-ping (network namespaces, TAPs and pings for the virtio-net tests), and
# virtiofsd (shared directories): Debian's package where the release has one, else the Rust
# virtiofsd from crates.io (`cargo install --locked virtiofsd`, about 2 minutes, with
# libseccomp-dev and libcap-ng-dev) into /usr/local/bin, where ember finds it on PATH;
# qemu-storage-daemon (the vhost-user-blk backend of the tests), which Debian ships in qemu-utils
# from QEMU 8.0 on and in qemu-system-common before: installing bookworm's qemu-system-common
# (7.2) next to a newer qemu-utils (from backports) would break it, so the package is chosen by
# qemu-utils' version; for images (the oci crate): libssl-dev and pkg-config (ember's HTTPS
# client builds on the system's OpenSSL), docker-registry and skopeo (the image tests' local
# registry and pushes) and umoci (the image benchmark's reference pipeline); and for the fuzz
# stage (resources/fuzz.sh), rustup's nightly toolchain and cargo-fuzz
# (`cargo install --locked cargo-fuzz`, about 2 minutes).
# Needs root only when something is missing.
set -euo pipefail
defaults=0
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
  defaults=1
  pkgs=(gcc libc6-dev busybox-static cpio e2fsprogs util-linux iproute2 iputils-ping strace
    libssl-dev pkg-config docker-registry skopeo umoci)
fi
install_debs() {
  local need=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: please install: ${need[*]} (apt-get install as root)" >&2
    exit 1
  fi
  echo "setup-host: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}
# Where ember looks for virtiofsd (vmm/src/virtiofsd.rs): $EMBER_VIRTIOFSD, PATH, Debian's path.
have_virtiofsd() {
  [ -n "${EMBER_VIRTIOFSD:-}" ] && [ -f "$EMBER_VIRTIOFSD" ] && return 0
  command -v virtiofsd >/dev/null 2>&1 || [ -x /usr/libexec/virtiofsd ]
}
install_virtiofsd() {
  have_virtiofsd && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: please install virtiofsd (as root: resources/setup-host.sh, or" \
      "cargo install --locked virtiofsd, then set EMBER_VIRTIOFSD)" >&2
    exit 1
  fi
  if apt-cache show virtiofsd >/dev/null 2>&1; then
    install_debs virtiofsd
    return 0
  fi
  install_debs libseccomp-dev libcap-ng-dev pkg-config
  echo "setup-host: building virtiofsd with cargo (about 2 minutes)" >&2
  cargo install --locked --quiet virtiofsd --root /usr/local
}
install_storage_daemon() {
  command -v qemu-storage-daemon >/dev/null 2>&1 && return 0
  # The installed qemu-utils decides (a 7.x one lacks the daemon and must stay matched with
  # qemu-system-common 7.x), else the one apt would install.
  local utils
  utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  [ -n "$utils" ] || utils=$(apt-cache policy qemu-utils 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -n "$utils" ] && [ "$utils" != "(none)" ] \
    && dpkg --compare-versions "$utils" ge "1:8.0+dfsg-5~"; then
    install_debs qemu-utils
  else
    install_debs qemu-system-common
  fi
}
# The fuzz targets build on nightly only (sanitizers); cargo-fuzz drives libFuzzer.
install_fuzz_tools() {
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "setup-host: installing the nightly Rust toolchain" >&2
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "setup-host: building cargo-fuzz with cargo (about 2 minutes)" >&2
    cargo install --locked --quiet cargo-fuzz
  fi
}
install_debs "${pkgs[@]}"
if [ "$defaults" -eq 1 ]; then
  install_virtiofsd
  install_storage_daemon
  install_fuzz_tools
fi
exit 0
