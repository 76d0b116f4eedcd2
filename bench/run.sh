#!/usr/bin/env bash
# recsync's benchmark: every figure of DESIGN.md's Targets table in one run,
# then the PouchDB and Hypercore peers on the same workload, then the ratios.
#
#   bench/run.sh [N]          N records of 200 B (default 100000)
#
# Environment:
#   BENCH_BUILD_DIR   build directory (default <repo>/build-bench, Release)
#   BENCH_RSS_N       also run write/push/pull at this N for peak RSS (e.g. 1000000); unset: skip
#   BENCH_REPEAT      samples of the no-op and incremental syncs (default 20; medians)
#   BENCH_INCR        records of the incremental sync (default 100)
#   BENCH_CLI_RUNS    runs of the CLI no-op sync under hyperfine (default 30)
#   BENCH_WRK_SECONDS duration of the wrk run (default 10)
#   BENCH_PEERS       0: skip the PouchDB and Hypercore peers (default 1)
#   BENCH_SHARED      the shared directory holding peers/ (default: found next to the repo)
#
# stdout: one JSON line per measurement,
#   {"bench":"recsync","what":"push","n":100000,"value":51234.5,"unit":"records/s"}
# then the peers' own lines ({"bench":"pouchdb",...}, {"bench":"hypercore",...}),
# then one {"bench":"ratio",...} line per comparable figure. Progress goes to stderr.
# Every process this script starts is killed by PID on exit, pass or fail.
set -euo pipefail

N=${1:-${BENCH_N:-100000}}
REPEAT=${BENCH_REPEAT:-20}
INCR=${BENCH_INCR:-100}
CLI_RUNS=${BENCH_CLI_RUNS:-30}
WRK_SECONDS=${BENCH_WRK_SECONDS:-10}
PEERS=${BENCH_PEERS:-1}
RSS_N=${BENCH_RSS_N:-}

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$REPO/build-bench}
BIN=$BUILD/bin
WORK=$(mktemp -d "${TMPDIR:-/tmp}/recsync-bench-XXXXXX")
RESULTS=$WORK/results.jsonl
PIDS=()

log() { printf '[run.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A JSON line of ours, on stdout and in the results file.
emit() {
    local line
    line=$(printf '{"bench":"recsync","what":"%s","n":%s,"value":%s,"unit":"%s"}' "$1" "$2" "$3" "$4")
    printf '%s\n' "$line" | tee -a "$RESULTS"
}

# Runs a command whose stdout is JSON lines: shown and kept.
collect() {
    "$@" | tee -a "$RESULTS"
}

# Starts recsyncd on a fresh SQLite database in $1 on 127.0.0.1, port 0.
# Sets SERVER_PID and URL.
start_server() {
    local dir=$1 port="" i
    mkdir -p "$dir"
    "$BIN/recsyncd" --db "$dir/server.db" --listen 127.0.0.1:0 >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for ((i = 0; i < 100; i++)); do
        port=$(sed -n 's/.*recsyncd listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$dir/server.log")
        [ -n "$port" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        log "recsyncd did not start:"
        cat "$dir/server.log" >&2
        exit 1
    fi
    URL=http://127.0.0.1:$port
    log "recsyncd pid $SERVER_PID on $URL"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# Peak resident set of a running process, in MiB (VmHWM).
peak_rss() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# Write, push and pull of n records through a fresh server in $2;
# leaves devices a and b and the server running.
full_sync() {
    local n=$1 dir=$2
    start_server "$dir"
    log "N=$n: device A writes $n records of 200 B"
    collect "$BIN/bench_sync" write "$URL" bench "$dir/a" "$n"
    log "N=$n: push A -> server"
    collect "$BIN/bench_sync" push "$dir/a" "$n"
    log "N=$n: pull server -> fresh B"
    collect "$BIN/bench_sync" pull "$URL" bench "$dir/b" "$dir/a" "$n"
    emit rss_server_sync "$n" "$(peak_rss "$SERVER_PID")" MiB
}

# ---------------------------------------------------------------- build ----
log "building Release in $BUILD"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$BUILD" -j2 >&2
for exe in recsync recsyncd bench_sync; do
    [ -x "$BIN/$exe" ] || {
        log "missing $BIN/$exe after the build"
        exit 1
    }
done
for tool in wrk hyperfine python3; do
    command -v "$tool" >/dev/null || {
        log "$tool is not installed"
        exit 1
    }
done
log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

# ------------------------------------------------------ full sync, N ----
D=$WORK/n$N
full_sync "$N" "$D"

# ---------------------------------------------- no-op and incremental ----
log "N=$N: no-op syncs and incremental syncs of $INCR records (x$REPEAT, in-process)"
collect "$BIN/bench_sync" steady "$D/a" "$D/b" "$N" "$REPEAT" "$INCR"

log "N=$N: CLI no-op sync (recsync sync, a whole process) and CLI start-up (recsync --version)"
hyperfine -N --warmup 2 --runs "$CLI_RUNS" --export-json "$WORK/cli.json" \
    "$BIN/recsync --dir $D/b sync" "$BIN/recsync --version" >/dev/null 2>&1 || {
    log "hyperfine failed; running the CLI sync once to show why:"
    "$BIN/recsync" --dir "$D/b" sync >&2 || true
    exit 1
}
# Wall medians, then CPU (user + system, means): on a loaded machine the
# wall time of a short process is mostly waiting for a core.
read -r cli_sync cli_start cpu_sync cpu_start < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(" ".join(["%.3f" % (x["median"] * 1e3) for x in r] +
               ["%.3f" % ((x["user"] + x["system"]) * 1e3) for x in r]))' "$WORK/cli.json")
emit noop_cli "$N" "$cli_sync" ms
emit cli_startup "$N" "$cli_start" ms
emit noop_cli_cpu "$N" "$cpu_sync" ms
emit cli_startup_cpu "$N" "$cpu_start" ms

# ------------------------------------------------------------------ wrk ----
TOKEN=$("$BIN/bench_sync" token "$D/a")
log "N=$N: wrk -t2 -c64 -d${WRK_SECONDS}s GET /api/v1/index"
wrk -t2 -c64 -d"${WRK_SECONDS}s" -H "Authorization: Token $TOKEN" "$URL/api/v1/index" >"$WORK/wrk.txt" 2>&1 || {
    cat "$WORK/wrk.txt" >&2
    exit 1
}
cat "$WORK/wrk.txt" >&2
if grep -q 'Non-2xx' "$WORK/wrk.txt"; then
    log "wrk saw error answers; the figure below is not of successful reads"
    exit 1
fi
emit index_rps "$N" "$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.txt")" requests/s
emit rss_server "$N" "$(peak_rss "$SERVER_PID")" MiB

# ----------------------------------------------------------------- live ----
if [ -x "$BIN/bench_live" ]; then
    log "N=$N: live propagation (bench_live $URL $N)"
    "$BIN/bench_live" "$URL" "$N" >"$WORK/live.jsonl" || log "bench_live failed (exit $?); no live figures"
    grep '^{' "$WORK/live.jsonl" | tee -a "$RESULTS" || true
else
    log "no $BIN/bench_live: live propagation not measured"
fi
stop_server

# -------------------------------------------------- optional large N ----
if [ -n "$RSS_N" ]; then
    log "N=$RSS_N: write, push and pull for peak RSS"
    full_sync "$RSS_N" "$WORK/n$RSS_N"
    stop_server
    rm -rf "$WORK/n$RSS_N"
fi

# ---------------------------------------------------------------- peers ----
SHARED=""
for cand in ${BENCH_SHARED:+"$BENCH_SHARED"} "$REPO/../shared" "$(dirname "$REPO")/shared" \
    "$(git -C "$REPO" rev-parse --show-toplevel 2>/dev/null || echo "$REPO")/../shared"; do
    if [ -d "$cand/peers" ]; then
        SHARED=$(cd "$cand" && pwd)
        break
    fi
done
if [ "$PEERS" = 0 ]; then
    log "BENCH_PEERS=0: peers skipped"
elif [ -z "$SHARED" ]; then
    log "no shared/peers directory next to $REPO (set BENCH_SHARED): peers skipped, no ratios"
else
    for peer in pouchdb hypercore; do
        if [ -x "$SHARED/peers/$peer/run.sh" ]; then
            log "peer $peer, N=$N ($SHARED/peers/$peer/run.sh)"
            "$SHARED/peers/$peer/run.sh" "$N" | tee -a "$RESULTS" ||
                log "peer $peer failed (exit $?); its ratios are missing"
        else
            log "no $SHARED/peers/$peer/run.sh: $peer skipped"
        fi
    done
fi

# --------------------------------------------------------------- ratios ----
python3 "$REPO/bench/ratios.py" "$N" <"$RESULTS"
log "done"
