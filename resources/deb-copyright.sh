#!/usr/bin/env bash
# Writes the ember package's Debian copyright file (machine-readable, DEP-5) to stdout: a
# paragraph for ember's own crates, one per crate compiled into the ember binary (the normal
# dependencies of the `ember` package on x86_64 Linux, from `cargo metadata`; proc-macro crates
# and build dependencies run at build time only and are left out), then one License paragraph
# per licence named, with its text from resources/deb/licenses/. Fails, naming the crate, when
# a crate's licence has no text there, so that a new dependency cannot slip in unlisted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
licenses="$here/deb/licenses"

# One line per crate: name, version, licence (SPDX), copyright holders; sorted.
crates=$(cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu \
    --manifest-path "$root/Cargo.toml" | jq -r '
  (.packages | map({key: .id, value: .}) | from_entries) as $pkg
  | (.resolve.nodes | map({key: .id, value: [.deps[]
      | select(any(.dep_kinds[]; .kind == null))
      | select(any($pkg[.pkg].targets[]; .kind == ["proc-macro"]) | not) | .pkg]})
     | from_entries) as $deps
  | [.packages[] | select(.name == "ember") | .id]
  | until(. as $seen | ([$seen[] | $deps[.][]] - $seen) == [];
          (. + [.[] | $deps[.][]]) | unique)
  | map($pkg[.]) | map(select(.source != null)) | sort_by(.name, .version)[]
  | [.name, .version, (.license // error("crate \(.name) declares no licence")),
     (if .authors == [] then "the \(.name) authors" else .authors | join(", ") end)]
  | @tsv')

# SPDX expression to DEP-5: lower-case operators, the old "A/B" spelling, and the one nesting
# crates use, "(A OR B) AND C", as "A or B, and C" (a comma binds loosest in DEP-5).
dep5_license() {
  local expr=$1
  expr=$(sed -E 's#^\((.*)\) AND (.*)$#\1, AND \2#; s#/# OR #g; s# OR # or #g; s# AND # and #g' <<<"$expr")
  case $expr in
    *'('*|*')'*) echo "deb-copyright: cannot express the licence '$1' in DEP-5" >&2; return 1 ;;
  esac
  echo "$expr"
}

cat <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ember
Comment: /usr/bin/ember is compiled from ember's own crates (Files: *) and the
 crates.io crates listed below as crates.io/NAME-VERSION. Generated at build
 time by resources/deb-copyright.sh from `cargo metadata`.

Files: *
Copyright: The ember authors
License: Apache-2.0
EOF
names=(Apache-2.0)
while IFS=$'\t' read -r name version license holders; do
  license=$(dep5_license "$license")
  for short in $(sed -E 's/,? (and|or) /\n/g' <<<"$license"); do
    [ -f "$licenses/$short" ] || {
      echo "deb-copyright: crate $name $version is under $short, which has no text in" \
        "$licenses: add it there" >&2
      exit 1
    }
    names+=("$short")
  done
  printf '\nFiles: crates.io/%s-%s/*\nCopyright: %s\nLicense: %s\n' \
    "$name" "$version" "$holders" "$license"
done <<<"$crates"
for short in $(printf '%s\n' "${names[@]}" | sort -u); do
  printf '\nLicense: %s\n' "$short"
  sed 's/^$/./; s/^/ /' "$licenses/$short"
done
