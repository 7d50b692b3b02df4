#!/usr/bin/env bash
# Runs ember's whole test suite on a fresh machine: installs what is missing, builds the guest
# artifacts (the kernel only if EMBER_TEST_KERNEL is unset: several minutes the first time),
# downloads Debian's stock cloud kernel,
# checks formatting and lints, then runs every test. Tests that need /dev/kvm fail without it
# unless EMBER_SKIP_KVM_TESTS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/resources/setup-host.sh"
"$root/resources/build-rootfs.sh"
"$root/resources/fetch-debian-kernel.sh"
if [ -z "${EMBER_TEST_KERNEL:-}" ] || [ -z "${EMBER_TEST_BZIMAGE:-}" ]; then
  "$root/resources/build-kernel.sh"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
