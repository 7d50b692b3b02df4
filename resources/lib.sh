# Shared by the scripts in resources/ (sourced, not run): progress lines with the time spent.
# Each script sets `me` to its name first.

# Prints "me [M:SS] message" on stderr; SECONDS counts from the sourcing script's start.
stage() {
  printf '%s [%d:%02d] %s\n' "$me" $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2
}
