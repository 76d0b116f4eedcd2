#!/usr/bin/env bash
# Long fuzzing of every libFuzzer target, its corpus kept in the repository.
#
#   scripts/fuzz-long.sh [SECONDS]
#
# SECONDS (default 3600, one hour) is the total wall time shared by all
# targets; targets run $FUZZ_JOBS at a time (default: every core), each for
# SECONDS * FUZZ_JOBS / targets. Each target starts from fuzz/corpus/<name>/
# (the kept corpus) and fuzz/seeds/<name>/; what it finds is merged back
# into fuzz/corpus/<name>/ with -merge=1 (minimized: only inputs that add
# coverage stay). A crash stops with the reproducer's path and a non-zero
# exit; the corpus is left as it was for that target. Reproducers are kept in
# <build>/fuzz-long/artifacts/. A timeout is run once more on its own: one
# that then finishes in time was the machine's load (a loaded 2-core machine
# can leave a fuzzer without a core for seconds), is reported as such, and
# the target's run counts; one that times out again is a failure.
#
# Prints per target the coverage (libFuzzer's cov:, edges) of the kept
# corpus before and after, and the inputs kept; the last lines are a table.
# Commit fuzz/corpus/ afterwards. scripts/test.sh reads these corpora too.
#
# Environment: BUILD_ROOT (default ./build), FUZZ_JOBS (default nproc),
# FUZZ_TARGETS (space-separated names without fuzz_, default all).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
total=${1:-3600}
jobs=${FUZZ_JOBS:-$(nproc)}
build=${BUILD_ROOT:-$root/build}/fuzz-long
work=$(mktemp -d "${TMPDIR:-/tmp}/recsync-fuzz-long-XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=$build/artifacts
mkdir -p "$artifacts"

scripts/deps.sh
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRS_FUZZ=ON \
    -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j"$jobs" >/dev/null

names=()
for t in "$build"/fuzz/fuzz_*; do
    [ -x "$t" ] || continue
    n=$(basename "$t")
    n=${n#fuzz_}
    if [ -n "${FUZZ_TARGETS:-}" ] && ! [[ " $FUZZ_TARGETS " == *" $n "* ]]; then
        continue
    fi
    names+=("$n")
done
[ ${#names[@]} -gt 0 ] || { echo "fuzz-long: no targets built in $build/fuzz" >&2; exit 1; }
each=$((total * jobs / ${#names[@]}))
[ "$each" -ge 1 ] || each=1
echo "fuzz-long: ${#names[@]} targets, $jobs at a time, ${each}s each (${total}s in all)"

# cov: of libFuzzer's INITED line for a run over the given directories (no fuzzing).
coverage() {
    local bin=$1
    shift
    "$bin" -runs=0 -rss_limit_mb=2048 "$@" 2>&1 | sed -n 's/.*INITED cov: \([0-9]*\).*/\1/p' | tail -1
}

# Fuzzes one target; writes "<name> <before> <after> <inputs>" to $work/<name>.result.
one() {
    local n=$1 bin="$build/fuzz/fuzz_$1" kept="$root/fuzz/corpus/$1" seeds="$root/fuzz/seeds/$1"
    local dirs=() found="$work/$1.found" merged="$work/$1.merged" log="$work/$1.log"
    mkdir -p "$kept" "$found" "$merged"
    [ -d "$seeds" ] && dirs+=("$seeds")
    local before
    before=$(coverage "$bin" "$kept" "${dirs[@]}")
    if ! "$bin" -max_total_time="$each" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$1-" "$found" "$kept" "${dirs[@]}" >"$log" 2>&1; then
        local t
        t=$(ls -t "$artifacts/$1-timeout-"* 2>/dev/null | head -1)
        if [ -n "$t" ] && grep -q 'ERROR: libFuzzer: timeout' "$log" &&
            "$bin" -timeout=10 -rss_limit_mb=2048 "$t" >"$log.again" 2>&1; then
            echo "fuzz-long: fuzz_$n: a unit timed out under load but runs in time on its own" \
                "($t: $(grep -o 'Executed .* in [0-9]* ms' "$log.again" | head -1)); its run counts"
        else
            echo "fuzz-long: fuzz_$n failed; reproducer and log:" >&2
            ls "$artifacts/$1-"* >&2 2>/dev/null || true
            tail -40 "$log" >&2
            return 1
        fi
    fi
    local final
    final=$(grep -E '^#[0-9]+.*DONE' "$log" | tail -1)
    "$bin" -merge=1 -rss_limit_mb=2048 "$merged" "$kept" "$found" "${dirs[@]}" >"$log.merge" 2>&1
    # Seeds stay in fuzz/seeds; the kept corpus holds what they do not cover.
    if [ -d "$seeds" ]; then
        for s in "$seeds"/*; do
            [ -f "$s" ] || continue
            rm -f "$merged/$(sha1sum "$s" | cut -d' ' -f1)"
        done
    fi
    rm -rf "$kept"
    mkdir -p "$kept"
    cp "$merged"/* "$kept"/ 2>/dev/null || true
    local after inputs
    after=$(coverage "$bin" "$kept" "${dirs[@]}")
    inputs=$(find "$kept" -type f | wc -l)
    echo "fuzz_$n: $final"
    echo "$n ${before:-0} ${after:-0} $inputs" >"$work/$n.result"
}

# A target that failed leaves no result file; the table says FAILED.
for n in "${names[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    one "$n" &
done
wait || true

failed=0
printf '%-16s %10s %10s %8s\n' target "cov before" "cov after" inputs
for n in "${names[@]}"; do
    [ -f "$work/$n.result" ] || { printf '%-16s %s\n' "$n" "FAILED"; failed=1; continue; }
    read -r _ b a i <"$work/$n.result"
    printf '%-16s %10s %10s %8s\n' "$n" "$b" "$a" "$i"
done
exit $failed
