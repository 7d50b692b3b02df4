#!/usr/bin/env bash
# Fuzzes ember's parsers and device models with cargo-fuzz (libFuzzer, AddressSanitizer, debug
# assertions) on the nightly toolchain: every target in fuzz/fuzz_targets for SECONDS each
# (default 45; CI's short run), from the committed seeds (fuzz/seeds/TARGET) plus the corpus a
# previous run on this machine grew (fuzz/corpus/TARGET, not committed). Exits non-zero if any
# target crashed, hung or broke an invariant; the input that did it is saved in
# fuzz/artifacts/TARGET/ (replay: cargo +nightly fuzz run -a TARGET FILE, from fuzz/).
# Run longer to search deeper, e.g. resources/fuzz.sh 600; name targets to run only those:
# resources/fuzz.sh 300 virtio_net vsock.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
me=fuzz
. "$root/resources/lib.sh"
seconds=${1:-45}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "usage: resources/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
cd "$root/fuzz"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz or the nightly toolchain is missing; run resources/setup-host.sh" >&2
  exit 1
fi
# Files the targets hand ember by path (disk images, kernels, sockets), in memory.
scratch_base=/dev/shm
[ -d "$scratch_base" ] || scratch_base=${TMPDIR:-/tmp}
EMBER_FUZZ_SCRATCH=$(mktemp -d "$scratch_base/ember-fuzz.XXXXXX")
export EMBER_FUZZ_SCRATCH
trap 'rm -rf "$EMBER_FUZZ_SCRATCH"' EXIT
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
stage "building ${#targets[@]} fuzz targets (nightly, sanitizers; a few minutes the first time)"
cargo +nightly fuzz build -O -a
failed=()
for t in "${targets[@]}"; do
  stage "fuzzing $t for ${seconds}s"
  mkdir -p "corpus/$t"
  extra=()
  # The API server is one thread serving every input in turn, so libFuzzer's per-input leak
  # check would count the allocations it holds between inputs as leaks; its memory is still
  # bounded by -rss_limit_mb.
  [ "$t" = api_http ] && extra=(-detect_leaks=0)
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: unbounded growth is a bug.
  if ! cargo +nightly fuzz run -O -a "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
    2> >(grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==|SUMMARY|thread .* panicked|.*(panicked at|Test unit written))' >&2); then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  stage "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
stage "done: ${targets[*]}"
