#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time, one at a time.
#
#   bash .ci/fuzz.sh                  # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=120 bash .ci/fuzz.sh v4_radix mutate_v4
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20)
#   FUZZ_JOBS       libFuzzer -jobs/-workers per target (default 1; the CI box has 2 cores)
#   FUZZ_RSS_MB     libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_KEEP_CORPUS=1  let the run add new inputs to fuzz/corpus/<target>/ (default: the
#                   checked-in corpus is only read; new inputs go to a temporary directory)
#
# Prints one line per target with the executions and the rate, and exits non-zero if any
# target crashed, leaked, timed out or ran out of memory (the reproducer is left in
# fuzz/artifacts/<target>/).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}

if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
    echo "fuzz.sh: the $TOOLCHAIN toolchain is needed (rustup toolchain install $TOOLCHAIN)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
mapfile -t ALL < <(cargo "+$TOOLCHAIN" fuzz list)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi

echo "fuzz.sh: building ${#ALL[@]} targets"
cargo "+$TOOLCHAIN" fuzz build

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/kho-fuzz.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT
failed=()
printf '%-16s %12s %10s %8s %s\n' target executions exec/s seconds result
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
        dirs=("corpus/$t")
    else
        mkdir -p "$LOGDIR/new-$t"
        dirs=("$LOGDIR/new-$t" "corpus/$t")
    fi
    log="$LOGDIR/$t.log"
    par=()
    if [ "$FUZZ_JOBS" -gt 1 ]; then par=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
    start=$(date +%s)
    set +e
    cargo "+$TOOLCHAIN" fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -rss_limit_mb="$FUZZ_RSS_MB" \
        -timeout=30 "${par[@]}" \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    secs=$(( $(date +%s) - start ))
    # libFuzzer's final stats: "stat::number_of_executed_units: N" (summed over jobs).
    execs=$(cat "$log" fuzz-*.log 2>/dev/null | awk '/^stat::number_of_executed_units:/ {s += $2} END {print s + 0}' || true)
    rm -f fuzz-*.log
    rate=$(( secs > 0 ? execs / secs : execs ))
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
        echo "---- $t: last lines of the libFuzzer log ----"
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|artifact' "$log" | head -20 || true
        tail -n 30 "$log"
        echo "----"
    fi
    printf '%-16s %12s %10s %8s %s\n' "$t" "$execs" "$rate" "$secs" "$result"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: FAILED targets: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: all ${#TARGETS[@]} targets ran ${FUZZ_SECONDS}s without a crash"
