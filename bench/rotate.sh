#!/usr/bin/env bash
# Key rotation (issue 14, item 3): what `recsync key rotate` costs a store of
# N records, against one snapshot of the same store and against re-wrapping
# every record's content key under the new key as Atuin's rekey does
# (bench_rotate.c says exactly what each figure times).
#
#   bench/rotate.sh [N...]    store sizes (default 100000 1000000)
#
# Environment:
#   BENCH_BUILD_DIR    build directory (default <repo>/build-bench, Release; built here
#                      when bench_rotate is missing)
#   BENCH_ROTATE_KEYS  kv keys the N writes go over (default 10000)
#
# stdout: bench_rotate's JSON lines, then per N one
#   {"bench":"ratio","what":"rotate_vs_snapshot"|"rewrap_vs_rotate","n":N,"value":R}
# Progress goes to stderr. The temporary directory is removed on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$REPO/build-bench}
KEYS=${BENCH_ROTATE_KEYS:-10000}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000 1000000)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/recsync-rotate-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '[rotate.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ ! -x "$BUILD/bin/bench_rotate" ]; then
    log "building bench_rotate in $BUILD (Release)"
    cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >&2
    cmake --build "$BUILD" -j2 --target bench_rotate >&2
fi

for n in "${SIZES[@]}"; do
    log "N=$n (load $(cut -d' ' -f1-3 /proc/loadavg))"
    out=$("$BUILD/bin/bench_rotate" "$WORK/n$n" "$n" "$KEYS")
    printf '%s\n' "$out"
    python3 - "$n" "$out" <<'PY'
import json, sys
n = int(sys.argv[1])
v = {}
for line in sys.argv[2].splitlines():
    d = json.loads(line)
    v[d["what"]] = d["value"]
print(json.dumps({"bench": "ratio", "what": "rotate_vs_snapshot", "n": n,
                  "value": round(v["rotate_ms"] / v["snapshot_ms"], 3)}))
print(json.dumps({"bench": "ratio", "what": "rewrap_vs_rotate", "n": n,
                  "value": round(v["rewrap_ms"] / v["rotate_ms"], 3)}))
print(json.dumps({"bench": "ratio", "what": "rotate_vs_snapshot_cpu", "n": n,
                  "value": round(v["rotate_cpu_ms"] / v["snapshot_cpu_ms"], 3)}))
print(json.dumps({"bench": "ratio", "what": "rewrap_vs_rotate_cpu", "n": n,
                  "value": round(v["rewrap_cpu_ms"] / v["rotate_cpu_ms"], 3)}))
PY
    rm -rf "$WORK/n$n"
done
