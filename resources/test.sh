#!/usr/bin/env bash
# Runs ember's whole test suite on a fresh machine: installs what is missing, builds the guest
# artifacts (the kernel only if a test kernel variable below is unset: about 12 minutes on 2
# cores the first time, cached afterwards), downloads Debian's stock cloud kernel, checks
# formatting and lints, then runs every test binary, even after one fails, and ends with the
# line "N passed, N failed, N ignored" (resources/cargo-test.sh); then builds, installs and
# checks the Debian package (resources/test-deb.sh: root only; EMBER_SKIP_DEB_TESTS=1 skips
# it), and finally fuzzes every fuzz target for 45 s (resources/fuzz.sh: nightly, about 10
# minutes with the build; EMBER_FUZZ_SECONDS changes the time, EMBER_SKIP_FUZZ=1 skips it).
# Exits non-zero if anything failed.
#
# Kernels: EMBER_TEST_KERNEL (ELF vmlinux) and EMBER_TEST_BZIMAGE (bzImage) boot most Linux
# tests; EMBER_TEST_ACPI_KERNEL (a kernel with CONFIG_ACPI) the power-off test. Unset ones
# point at the kernel resources/build-kernel.sh builds, which has ACPI. Tests that need
# /dev/kvm fail without it unless EMBER_SKIP_KVM_TESTS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
me=test
. "$root/resources/lib.sh"
stage "checking host packages"
"$root/resources/setup-host.sh"
stage "guest user space"
"$root/resources/build-rootfs.sh"
stage "Debian's stock kernel"
"$root/resources/fetch-debian-kernel.sh"
if [ -z "${EMBER_TEST_KERNEL:-}" ] || [ -z "${EMBER_TEST_BZIMAGE:-}" ] ||
   [ -z "${EMBER_TEST_ACPI_KERNEL:-}" ]; then
  stage "guest kernel (first run only: about 12 minutes on 2 cores)"
  "$root/resources/build-kernel.sh"
  export EMBER_TEST_KERNEL=${EMBER_TEST_KERNEL:-$root/build/guest/vmlinux}
  export EMBER_TEST_BZIMAGE=${EMBER_TEST_BZIMAGE:-$root/build/guest/bzImage}
  export EMBER_TEST_ACPI_KERNEL=${EMBER_TEST_ACPI_KERNEL:-$root/build/guest/vmlinux}
fi
stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy (the first build takes a few minutes)"
cargo clippy --workspace --all-targets -- -D warnings
stage "cargo test (Linux boots take minutes on an emulating KVM)"
status=0
"$root/resources/cargo-test.sh" --workspace || status=$?
if [ "${EMBER_SKIP_DEB_TESTS:-}" = 1 ]; then
  stage "Debian package: SKIPPED (EMBER_SKIP_DEB_TESTS=1)"
else
  stage "Debian package (resources/test-deb.sh; the last stage line says which check failed)"
  "$root/resources/test-deb.sh" || status=1
fi
if [ "${EMBER_SKIP_FUZZ:-}" = 1 ]; then
  stage "fuzzing: SKIPPED (EMBER_SKIP_FUZZ=1)"
else
  stage "fuzzing (resources/fuzz.sh; a crash's input is kept in fuzz/artifacts/)"
  "$root/resources/fuzz.sh" "${EMBER_FUZZ_SECONDS:-45}" || status=1
fi
stage "done"
exit $status
