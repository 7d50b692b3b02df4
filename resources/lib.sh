# Shared by the scripts in resources/ (sourced, not run): progress lines with the time spent.
# Each script sets `me` to its name first.

# Prints "me [M:SS] message" on stderr; SECONDS counts from the sourcing script's start.
stage() {
  printf '%s [%d:%02d] %s\n' "$me" $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2
}

# Prints the Debian version of the checkout at $1: the workspace version when HEAD is tagged
# v<version>; "<version>+git<N>.<hash>" N commits after that tag; "<version>~git<N>.<hash>"
# (before <version>, N commits in all) when there is no such tag; ".dirty" appended when
# tracked files have uncommitted changes.
deb_version() {
  local root=$1 version desc count hash
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
  [ -n "$version" ] || { echo "no workspace version in $root/Cargo.toml" >&2; return 1; }
  hash=$(git -C "$root" rev-parse --short=12 HEAD)
  if desc=$(git -C "$root" describe --tags --long --abbrev=12 --match "v$version" 2>/dev/null); then
    count=${desc%-g*}
    count=${count##*-}
    [ "$count" = 0 ] && desc=$version || desc="$version+git$count.$hash"
  else
    desc="$version~git$(git -C "$root" rev-list --count HEAD).$hash"
  fi
  git -C "$root" diff --quiet HEAD -- || desc="$desc.dirty"
  echo "$desc"
}

# Runs lintian on the package $1; fails unless it reports no error and no warning (overrides,
# each with its reason, are in the package's /usr/share/lintian/overrides/).
lint_deb() {
  stage "lintian $(basename "$1")"
  lintian --fail-on error,warning "$1" >&2 || { stage "lintian found errors or warnings (above)"; return 1; }
}
