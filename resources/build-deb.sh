#!/usr/bin/env bash
# Builds ember's Debian package, target/debian/ember_<version>_amd64.deb, and prints its path
# on stdout: cargo-deb (installed with `cargo install --locked` if missing) packages the release
# binaries (ember and ember-jailer) with what is generated here into build/deb/: the man pages and shell
# completions (the `packaging` crate, from ember's clap definitions), the DEP-5 copyright file
# (resources/deb-copyright.sh) and a Debian changelog entry; then lintian checks it (no error or
# warning). The version is deb_version's
# (resources/lib.sh); every date in the package is the commit's (SOURCE_DATE_EPOCH), so the
# same commit always gives the same bytes. Needs a git checkout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
me=build-deb
. "$here/lib.sh"
cd "$root"

"$here/setup-host.sh" jq dpkg-dev lintian
if ! command -v cargo-deb >/dev/null; then
  stage "installing cargo-deb (cargo install --locked cargo-deb)"
  cargo install --locked cargo-deb
fi
git rev-parse HEAD >/dev/null 2>&1 || { stage "$root is not a git checkout: cannot version the package"; exit 1; }
version=$(deb_version "$root")
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH
case $version in *.dirty) stage "warning: uncommitted changes: version $version" ;; esac

out="$root/build/deb"
rm -rf "$out"
mkdir -p "$out"
stage "man pages and completions (build/deb)"
cargo run --release --locked --quiet -p packaging -- "$out" "$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)"
stage "copyright file of the crates compiled in"
"$here/deb-copyright.sh" > "$out/copyright"
maintainer=$(cargo metadata --format-version 1 --locked --no-deps |
  jq -r '.packages[] | select(.name == "ember") | .metadata.deb.maintainer')
cat > "$out/changelog.Debian" <<END
ember ($version) unstable; urgency=medium

  * Built from commit $(git rev-parse HEAD).
    The changes are in /usr/share/doc/ember/changelog.gz (CHANGELOG.md).

 -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
END
stage "cargo deb (a release build: about a minute on 2 cores)"
# cargo deb builds the ember package's binary; ember-jailer is another package's.
cargo build --release --locked -p jailer
mkdir -p "$root/target/debian"
deb="$root/target/debian/ember_${version}_amd64.deb"
rm -f "$deb"
cargo deb --locked -p ember --deb-version "$version" --output "$deb" >&2
lint_deb "$deb"
stage "built $deb"
echo "$deb"
