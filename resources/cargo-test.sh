#!/usr/bin/env bash
# Runs `cargo test --no-fail-fast ARGS...` (every test binary, even after one fails) and ends
# with one summary line over the whole suite, alone on its line, which CI reads:
#   N passed, N failed, N ignored
# Exits non-zero if any test failed or cargo itself failed (a build error, a test binary that
# crashed before reporting).
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --no-fail-fast "$@" 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
# "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; ..."
read -r passed failed ignored < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored;.*/\1 \2 \3/p' "$log" |
  awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}')
echo
echo "$passed passed, $failed failed, $ignored ignored"
if [ "$cargo_status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "cargo test failed (status $cargo_status) outside any test: see the errors above" >&2
fi
[ "$cargo_status" -eq 0 ] && [ "$failed" -eq 0 ]
