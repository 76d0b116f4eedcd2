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
#   BENCH_PG          0: skip the PostgreSQL leg (default 1 when initdb is found)
#   BENCH_PG_BIN      PostgreSQL's bin directory (default: the newest /usr/lib/postgresql/*/bin)
#   BENCH_PG_SYNC_COMMIT  the cluster's synchronous_commit (default on, PostgreSQL's own default)
#   BENCH_SNAPSHOT    1: also run bench/snapshot.sh (snapshots and pruning) at the end (default 0)
#   BENCH_SNAPSHOT_N  its writes per workload (default 1000000)
#   BENCH_ROTATE      1: also run bench/rotate.sh (key rotation against re-wrapping) at the end (default 0)
#   BENCH_ROTATE_N    its store sizes (default "100000 1000000")
#
# stdout: one JSON line per measurement,
#   {"bench":"recsync","what":"push","n":100000,"value":51234.5,"unit":"records/s"}
# then the peers' own lines ({"bench":"pouchdb",...}, {"bench":"hypercore",...}),
# then one {"bench":"ratio",...} line per comparable figure. Every recsync line
# carries "backend":"sqlite" or "backend":"postgres": the same workload runs on
# a fresh recsyncd on each, and {"bench":"backends",...} lines set them side by
# side. Progress goes to stderr.
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
PG_PID=""
BACKEND=sqlite

log() { printf '[run.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    pg_stop
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A JSON line of ours, on stdout and in the results file.
emit() {
    local line
    line=$(printf '{"bench":"recsync","backend":"%s","what":"%s","n":%s,"value":%s,"unit":"%s"}' \
        "$BACKEND" "$1" "$2" "$3" "$4")
    printf '%s\n' "$line" | tee -a "$RESULTS"
}

# Runs a command whose stdout is JSON lines: shown and kept, recsync's own
# lines marked with the backend of the server they ran against.
collect() {
    "$@" | sed -u "s/^{\"bench\":\"recsync\",/{\"bench\":\"recsync\",\"backend\":\"$BACKEND\",/" |
        tee -a "$RESULTS"
}

# Starts recsyncd on 127.0.0.1, port 0, its log in directory $1, on the
# database $2 (default: a fresh SQLite file in $1). Sets SERVER_PID and URL.
start_server() {
    local dir=$1 db=${2:-$1/server.db} port="" i
    mkdir -p "$dir"
    "$BIN/recsyncd" --db "$db" --listen 127.0.0.1:0 >"$dir/server.log" 2>&1 &
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

# PostgreSQL binaries run as the postgres system user when this runs as root
# (initdb refuses root).
pg_run() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A real PostgreSQL cluster in directory $1, listening only on a Unix socket
# there, with database "bench". Sets PG_PID and PG_URL.
pg_start() {
    local dir=$1
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chmod 755 "$WORK"
        chown postgres: "$dir"
    fi
    pg_run "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    pg_run "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-k $dir -c listen_addresses='' -c max_connections=200 -c synchronous_commit=$PG_SYNC_COMMIT" \
        start >&2 || {
        cat "$dir/postgres.log" >&2
        exit 1
    }
    PG_PID=$(head -n1 "$dir/data/postmaster.pid")
    PG_DIR=$dir
    pg_run "$PG_BIN/psql" -X -q -h "$dir" -U postgres -d postgres -c "CREATE DATABASE bench" >&2
    PG_URL="postgres:///bench?host=$dir&user=postgres"
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $NF}') pid $PG_PID in $dir (synchronous_commit=$PG_SYNC_COMMIT)"
}

# Stops the cluster (fast shutdown), SIGKILL by PID if it is still there.
pg_stop() {
    local i
    [ -n "$PG_PID" ] || return 0
    pg_run "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PG_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$PG_PID" 2>/dev/null || true
    PG_PID=""
}

# Peak resident set of a running process, in MiB (VmHWM).
peak_rss() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# Write, push and pull of n records through a fresh server in $2 (on the
# database $3, default SQLite); leaves devices a and b and the server running.
full_sync() {
    local n=$1 dir=$2
    start_server "$dir" "${3:-}"
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
# No-op and incremental syncs of devices a and b in $1 (n records), in-process.
steady() {
    log "$BACKEND N=$2: no-op syncs and incremental syncs of $INCR records (x$REPEAT, in-process)"
    collect "$BIN/bench_sync" steady "$1/a" "$1/b" "$2" "$REPEAT" "$INCR"
}

# wrk on GET /api/v1/index of the running server with device a's token in $1.
index_reads() {
    local token
    token=$("$BIN/bench_sync" token "$1/a")
    log "$BACKEND N=$2: wrk -t2 -c64 -d${WRK_SECONDS}s GET /api/v1/index"
    wrk -t2 -c64 -d"${WRK_SECONDS}s" -H "Authorization: Token $token" "$URL/api/v1/index" >"$WORK/wrk.txt" 2>&1 || {
        cat "$WORK/wrk.txt" >&2
        exit 1
    }
    cat "$WORK/wrk.txt" >&2
    if grep -q 'Non-2xx' "$WORK/wrk.txt"; then
        log "wrk saw error answers; the figure below is not of successful reads"
        exit 1
    fi
    emit index_rps "$2" "$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.txt")" requests/s
    emit rss_server "$2" "$(peak_rss "$SERVER_PID")" MiB
}

steady "$D" "$N"

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
index_reads "$D" "$N"

# ----------------------------------------------------------------- live ----
if [ -x "$BIN/bench_live" ]; then
    log "N=$N: live propagation (bench_live $URL $N)"
    "$BIN/bench_live" "$URL" "$N" >"$WORK/live.jsonl" || log "bench_live failed (exit $?); no live figures"
    collect grep '^{' "$WORK/live.jsonl" || true
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

# ----------------------------------------------------------- PostgreSQL ----
# The same workload on a fresh recsyncd on a real PostgreSQL: full sync,
# no-op and incremental syncs, index reads.
PG_SYNC_COMMIT=${BENCH_PG_SYNC_COMMIT:-on}
PG_BIN=${BENCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)}
if [ "${BENCH_PG:-1}" = 0 ]; then
    log "BENCH_PG=0: PostgreSQL leg skipped"
elif [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    log "no PostgreSQL (initdb) found: PostgreSQL leg skipped (apt-get install postgresql)"
else
    BACKEND=postgres
    pg_start "$WORK/pg"
    full_sync "$N" "$WORK/pg-n$N" "$PG_URL"
    steady "$WORK/pg-n$N" "$N"
    index_reads "$WORK/pg-n$N" "$N"
    stop_server
    pg_stop
    rm -rf "$WORK/pg-n$N" "$WORK/pg"
    BACKEND=sqlite
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

# ------------------------------------------------------------ snapshots ----
if [ "${BENCH_ROTATE:-0}" = 1 ]; then
    log "key rotation: bench/rotate.sh ${BENCH_ROTATE_N:-100000 1000000}"
    # shellcheck disable=SC2086
    BENCH_BUILD_DIR=$BUILD "$REPO/bench/rotate.sh" ${BENCH_ROTATE_N:-100000 1000000}
fi
if [ "${BENCH_SNAPSHOT:-0}" = 1 ]; then
    log "snapshots and pruning: bench/snapshot.sh ${BENCH_SNAPSHOT_N:-1000000}"
    BENCH_BUILD_DIR=$BUILD "$REPO/bench/snapshot.sh" "${BENCH_SNAPSHOT_N:-1000000}"
fi
log "done"
