#!/usr/bin/env bash
# Snapshots and pruning (issue 11): a kv workload and a history workload on
# several devices through a fresh recsyncd (--test-hooks --prune-interval-ms
# 0), then, for each: a new device replaying the whole log, the server's
# rows before and after one prune pass against a printed bound, and a new
# device starting from the snapshot; ready times and bytes downloaded.
#
#   bench/snapshot.sh [N]     N writes per workload (default 1000000)
#
# Environment:
#   BENCH_BUILD_DIR          build directory (default <repo>/build-bench, Release)
#   BENCH_SNAP_WORKLOADS     "kv history" (default), or one of them
#   BENCH_SNAP_KEYS          kv keys written over (default 10000)
#   BENCH_SNAP_DEVICES       devices taking turns (default 3)
#   BENCH_SNAP_BATCH         writes per turn, one transaction, then a sync (default 10000)
#   BENCH_SNAP_EVERY         rs_sync_opts.snapshot_every of the workload devices
#                            (default 0: RS_SNAPSHOT_DEFAULT_EVERY)
#   BENCH_SNAP_HISTORY_EVERY the same for the history workload (default: BENCH_SNAP_EVERY)
#   BENCH_SNAP_REPEAT        new devices timed per mode (default 3; medians)
#   BENCH_PG                 1: also on PostgreSQL (default 0; needs initdb)
#   BENCH_PG_BIN             PostgreSQL's bin directory (default: the newest /usr/lib/postgresql/*/bin)
#
# stdout: JSON lines, bench_snapshot's own (with "backend" added) and the
# driver's, then one {"bench":"snapshot_median",...} line per figure: the
# median of the BENCH_SNAP_REPEAT new devices. Progress goes to stderr.
# Every process this script starts is killed by PID on exit, pass or fail;
# its temporary directory is removed.
set -euo pipefail

N=${1:-${BENCH_N:-1000000}}
WORKLOADS=${BENCH_SNAP_WORKLOADS:-kv history}
KEYS=${BENCH_SNAP_KEYS:-10000}
DEVICES=${BENCH_SNAP_DEVICES:-3}
BATCH=${BENCH_SNAP_BATCH:-10000}
EVERY=${BENCH_SNAP_EVERY:-0}
HISTORY_EVERY=${BENCH_SNAP_HISTORY_EVERY:-$EVERY}
REPEAT=${BENCH_SNAP_REPEAT:-3}
KEPT=2 # recsyncd's --snapshots-kept default
USER_NAME=bench

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$REPO/build-bench}
BIN=$BUILD/bin
WORK=$(mktemp -d "${TMPDIR:-/tmp}/recsync-snapbench-XXXXXX")
RESULTS=$WORK/results.jsonl
PIDS=()
PG_PID=""
BACKEND=sqlite

log() { printf '[snapshot.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

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

# A JSON line of the driver's ($1 workload, $2 what, $3 value, $4 unit), on stdout and kept.
emit() {
    printf '{"bench":"recsync","backend":"%s","workload":"%s","what":"%s","mode":"","n":%s,"value":%s,"unit":"%s"}\n' \
        "$BACKEND" "$1" "$2" "$N" "$3" "$4" | tee -a "$RESULTS"
}

# Runs a command whose stdout is JSON lines: shown and kept, with the backend added.
collect() {
    "$@" | sed -u "s/^{\"bench\":\"recsync\",/{\"bench\":\"recsync\",\"backend\":\"$BACKEND\",/" |
        tee -a "$RESULTS"
}

# Starts recsyncd on 127.0.0.1, port 0, with the test hooks and no prune
# thread, its log in directory $1, on the database $2. Sets SERVER_PID and URL.
start_server() {
    local dir=$1 db=$2 port="" i
    mkdir -p "$dir"
    "$BIN/recsyncd" --db "$db" --listen 127.0.0.1:0 --test-hooks --prune-interval-ms 0 \
        >"$dir/server.log" 2>&1 &
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
    log "recsyncd pid $SERVER_PID on $URL ($BACKEND)"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# PostgreSQL binaries run as the postgres system user when this runs as root.
pg_run() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A PostgreSQL cluster in directory $1 on a Unix socket there, database "bench". Sets PG_URL.
pg_start() {
    local dir=$1
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chmod 755 "$WORK"
        chown postgres: "$dir"
    fi
    pg_run "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    pg_run "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-k $dir -c listen_addresses='' -c max_connections=200" start >&2 || {
        cat "$dir/postgres.log" >&2
        exit 1
    }
    PG_PID=$(head -n1 "$dir/data/postmaster.pid")
    PG_DIR=$dir
    pg_run "$PG_BIN/psql" -X -q -h "$dir" -U postgres -d postgres -c "CREATE DATABASE bench" >&2
    PG_URL="postgres:///bench?host=$dir&user=postgres"
    log "PostgreSQL pid $PG_PID in $dir"
}

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

# The server's rows of the one user: records + snapshot chunks (the database $DB).
server_rows() {
    local sql="SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM snapshot_chunks)"
    if [ "$BACKEND" = sqlite ]; then
        sqlite3 "$DB" "$sql"
    else
        pg_run "$PG_BIN/psql" -X -q -t -A -h "$PG_DIR" -U postgres -d bench -c "$sql"
    fi
}

# recsyncd's count of bytes served (record envelopes and decoded snapshot chunks).
served() {
    curl -sf -H "Authorization: Token $TOKEN" "$URL/metrics" |
        awk '/^recsyncd_bytes_served_total / { print $2 }'
}

# recsyncd's CPU time so far (user + system), in ms.
server_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' "/proc/$SERVER_PID/stat"
}

# The value of figure $2 in bench_snapshot's lines in file $1.
figure() {
    sed -n "s/.*\"what\":\"$2\",.*\"value\":\([0-9.]*\),.*/\1/p" "$1" | tail -n1
}

# One new device ($1 its directory, $2 mode, $3 tag), with the server's count of bytes served.
ready() {
    local before after cpu_before cpu_after
    before=$(served)
    cpu_before=$(server_cpu)
    collect "$BIN/bench_snapshot" ready "$URL" "$USER_NAME" "$1" "$D/d0" "$2" "$3" || {
        log "the new device ($2) failed or its state differs"
        exit 1
    }
    after=$(served)
    cpu_after=$(server_cpu)
    printf '{"bench":"recsync","backend":"%s","workload":"%s","what":"server_cpu_ms","mode":"%s","n":%s,"value":%s,"unit":"ms"}\n' \
        "$BACKEND" "$3" "$2" "$N" "$((cpu_after - cpu_before))" | tee -a "$RESULTS"
    printf '{"bench":"recsync","backend":"%s","workload":"%s","what":"served_bytes","mode":"%s","n":%s,"value":%s,"unit":"bytes"}\n' \
        "$BACKEND" "$3" "$2" "$N" "$((after - before))" | tee -a "$RESULTS"
}

# One workload ($1: kv or history) through a fresh server on database $2 (default SQLite).
workload() {
    local tag=$1 every dir rows_before rows_after pruned chunks_max every_eff bound i
    D=$WORK/$BACKEND-$tag
    DB=${2:-$D/server.db}
    start_server "$D" "$DB"
    if [ "$tag" = kv ]; then
        every=$EVERY
        log "$BACKEND kv: $N sets over $KEYS keys, $DEVICES devices in turns of $BATCH, snapshot_every $every"
        collect "$BIN/bench_snapshot" kv "$URL" "$USER_NAME" "$D" "$N" "$KEYS" "$DEVICES" "$BATCH" "$every" \
            >"$D/workload.jsonl"
    else
        every=$HISTORY_EVERY
        log "$BACKEND history: $N entries (10 % deleted), $DEVICES devices in turns of $BATCH, snapshot_every $every"
        collect "$BIN/bench_snapshot" history "$URL" "$USER_NAME" "$D" "$N" "$DEVICES" "$BATCH" "$every" \
            >"$D/workload.jsonl"
    fi
    cat "$D/workload.jsonl"
    TOKEN=$("$BIN/bench_sync" token "$D/d0")

    log "$BACKEND $tag: $REPEAT new devices replaying the log (before pruning)"
    for ((i = 1; i <= REPEAT; i++)); do
        ready "$D/replay$i" replay "$tag"
    done
    log "$BACKEND $tag: writing a snapshot on each replayed device (cost per item and per MiB)"
    for ((i = 1; i <= REPEAT; i++)); do
        collect "$BIN/bench_snapshot" cost "$D/replay$i" "$tag"
    done

    rows_before=$(server_rows)
    pruned=$(curl -sf -X POST "$URL/api/v1/test/prune")
    log "$BACKEND $tag: prune pass: $pruned"
    rows_after=$(server_rows)
    # The bound: the state, as the snapshots kept (--snapshots-kept, each at
    # most the largest written), plus the tail above the newest snapshot's
    # frontier. Every device acked everything, so the floor is that frontier;
    # the device that synced last wrote a snapshot unless fewer than
    # snapshot_every records lay past its own last one, and snapshots are
    # written in turn, each at the server's end then, so the tail is below
    # snapshot_every.
    every_eff=$every
    if [ "$every_eff" = 0 ]; then
        every_eff=$(sed -n 's/^#define RS_SNAPSHOT_DEFAULT_EVERY \([0-9]*\).*/\1/p' \
            "$REPO/include/recsync/snapshot.h")
    fi
    chunks_max=$(figure "$D/workload.jsonl" snapshot_chunks_max)
    chunks_max=${chunks_max%.*}
    bound=$((KEPT * ${chunks_max:-0} + every_eff))
    emit "$tag" server_rows_before_prune "$rows_before" rows
    emit "$tag" server_rows_after_prune "$rows_after" rows
    emit "$tag" server_rows_bound "$bound" rows
    emit "$tag" server_rows_bound_met "$([ "$rows_after" -le "$bound" ] && echo 1 || echo 0)" bool
    log "$BACKEND $tag: server rows $rows_before before the prune pass, $rows_after after; bound $bound = $KEPT snapshots x $chunks_max chunks + snapshot_every $every_eff"

    log "$BACKEND $tag: $REPEAT new devices starting from the snapshot (after pruning)"
    for ((i = 1; i <= REPEAT; i++)); do
        ready "$D/snap$i" snapshot "$tag"
    done
    stop_server
    rm -rf "$D"
}

# ---------------------------------------------------------------- build ----
log "building Release in $BUILD"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$BUILD" -j2 >&2
for exe in recsyncd bench_sync bench_snapshot; do
    [ -x "$BIN/$exe" ] || {
        log "missing $BIN/$exe after the build"
        exit 1
    }
done
for tool in curl sqlite3 python3; do
    command -v "$tool" >/dev/null || {
        log "$tool is not installed"
        exit 1
    }
done
log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

for w in $WORKLOADS; do
    workload "$w"
done

PG_BIN=${BENCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)}
if [ "${BENCH_PG:-0}" = 1 ]; then
    if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
        log "no PostgreSQL (initdb) found: PostgreSQL leg skipped"
    else
        BACKEND=postgres
        pg_start "$WORK/pg"
        for w in $WORKLOADS; do
            pg_run "$PG_BIN/psql" -X -q -h "$PG_DIR" -U postgres -d postgres \
                -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" >&2
            workload "$w" "$PG_URL"
        done
        pg_stop
        BACKEND=sqlite
    fi
fi
log "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------- medians ----
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
groups = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("mode") in ("replay", "snapshot") or r["what"].startswith("snapshot_write"):
        key = (r["backend"], r["workload"], r["what"], r["mode"], r["unit"])
        groups.setdefault(key, []).append(r["value"])
for (backend, workload, what, mode, unit), v in groups.items():
    print(json.dumps({"bench": "snapshot_median", "backend": backend, "workload": workload,
                      "what": what, "mode": mode, "samples": len(v),
                      "median": statistics.median(v), "min": min(v), "max": max(v),
                      "unit": unit}))
EOF
log "done"
