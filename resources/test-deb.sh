#!/usr/bin/env bash
# Tests ember's Debian packages, as root (resources/test.sh runs it after the cargo tests):
#   - builds ember_<version>_amd64.deb (resources/build-deb.sh, which fails unless lintian
#     reports no error or warning);
#   - dpkg -i; /usr/bin/ember --version, ember-jailer --version; man -w finds ember(1),
#     ember-run(1) and ember-jailer(1); bash
#     completion of `ember --me<TAB>` offers --memory; the installed ember boots a tiny guest,
#     and the unit's command runs /etc/ember/NAME.json (tests/deb.rs, `--ignored`);
#     systemd-analyze verify accepts ember@.service without a word of complaint;
#   - ember-guest-kernel from $EMBER_TEST_ACPI_KERNEL (the kernel build-kernel.sh builds, or
#     the prebuilt one .ci/run names), when set: built and linted the same way, installed at
#     /usr/lib/ember/vmlinux;
#   - dpkg -P removes every file and directory the packages created;
#   - the same commit built again in a fresh clone, with its own target directory (a full
#     release build, about a minute on 2 cores), gives a byte-identical ember package.
# Stops at the first failed check, naming it, with a non-zero status. Packages already
# installed are refused rather than replaced; the ones it installs are purged on any exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
me=test-deb
. "$here/lib.sh"
cd "$root"

fail() {
  stage "FAILED: $*"
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i, /etc/ember)"
"$here/setup-host.sh" lintian man-db bash-completion systemd
for pkg in ember ember-guest-kernel; do
  if dpkg -s "$pkg" >/dev/null 2>&1; then
    fail "$pkg is already installed; this test installs and purges it: dpkg -P $pkg first"
  fi
done

installed=()
clone=
cleanup() {
  [ ${#installed[@]} -eq 0 ] || dpkg -P "${installed[@]}" >/dev/null 2>&1 || true
  [ -z "$clone" ] || rm -rf "$clone"
}
trap cleanup EXIT

# Prints the paths a package holds that do not exist yet: what dpkg -P must remove again.
new_paths() {
  dpkg-deb --fsys-tarfile "$1" | tar -t | sed 's#^\./#/#; s#/$##' | grep -v '^$' |
    while read -r path; do [ -e "$path" ] || echo "$path"; done
}

stage "building the package"
deb=$("$here/build-deb.sh") || fail "building the package (lintian included)"
new_paths "$deb" > "$root/build/deb/new-paths"

stage "dpkg -i"
dpkg -i "$deb" >/dev/null
installed+=(ember)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
out=$(/usr/bin/ember --version)
[ "$out" = "ember v$version" ] || fail "/usr/bin/ember --version printed '$out', not 'ember v$version'"
out=$(/usr/bin/ember-jailer --version)
[ "$out" = "ember-jailer v$version" ] || fail "/usr/bin/ember-jailer --version printed '$out'"
for page in ember ember-run ember-jailer; do
  path=$(man -w "$page") || fail "man -w $page finds no page"
  [ "$path" = "/usr/share/man/man1/$page.1.gz" ] || fail "man -w $page found $path, not the package's"
done

stage "bash completion of 'ember --me<TAB>'"
# What an interactive bash does on <TAB>: bash-completion loads ember's completion on demand,
# then the completion function fills COMPREPLY.
offered=$(bash --norc --noprofile -c '
  . /usr/share/bash-completion/bash_completion
  __load_completion ember || exit 1
  fn=$(complete -p ember | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
  COMP_WORDS=(ember --me) COMP_CWORD=1 COMP_LINE="ember --me" COMP_POINT=10
  "$fn" ember --me ember
  printf "%s\n" "${COMPREPLY[@]}"') || fail "bash-completion finds no completion for ember"
grep -qx -- --memory <<<"$offered" || fail "completing 'ember --me' offered: $offered"

stage "the installed ember and its unit's command boot tiny guests (tests/deb.rs)"
cargo test --locked -p ember --test deb -- --ignored || fail "tests/deb.rs"

stage "systemd-analyze verify ember@vm.service"
# verify exits 0 on directives it ignores (a typo, a bad value) and only says so: any word
# from it is a failure.
complaints=$(systemd-analyze verify ember@vm.service 2>&1) || fail "systemd-analyze verify: $complaints"
[ -z "$complaints" ] || fail "systemd-analyze verify: $complaints"

kernel=${EMBER_TEST_ACPI_KERNEL:-}
if [ -n "$kernel" ] && [ -f "$kernel" ]; then
  stage "ember-guest-kernel from $kernel"
  kdeb=$("$here/build-kernel-deb.sh" "$kernel") || fail "building ember-guest-kernel (lintian included)"
  new_paths "$kdeb" >> "$root/build/deb/new-paths"
  dpkg -i "$kdeb" >/dev/null
  installed+=(ember-guest-kernel)
  cmp "$kernel" /usr/lib/ember/vmlinux || fail "/usr/lib/ember/vmlinux is not $kernel"
else
  stage "ember-guest-kernel: skipped, no kernel (EMBER_TEST_ACPI_KERNEL is unset)"
fi

stage "dpkg -P"
dpkg -P "${installed[@]}" >/dev/null
installed=()
left=$(while read -r path; do [ ! -e "$path" ] || echo "$path"; done < "$root/build/deb/new-paths")
[ -z "$left" ] || fail "dpkg -P left behind: $left"

stage "reproducibility: the same commit built in a fresh clone"
case $deb in
  *.dirty_amd64.deb) fail "uncommitted changes: the check builds the commit, which is not what" \
    "was packaged; commit, then run again" ;;
esac
clone=$(mktemp -d /tmp/ember-repro.XXXXXX)
git clone --quiet --no-checkout --shared "$root" "$clone/src"
git -C "$clone/src" checkout --quiet --detach "$(git rev-parse HEAD)"
again=$(env -u CARGO_TARGET_DIR "$clone/src/resources/build-deb.sh") || fail "the second build"
cmp "$deb" "$again" || fail "two builds of $(git rev-parse --short HEAD) differ:" \
  "$deb and $again (diffoscope shows how)"
stage "passed"
