#!/usr/bin/env bash
# The main job: builds recsync, starts recsyncd on SQLite on a free loopback
# port, makes two devices that share one account and one key, writes on the
# first, syncs both, shows that the second sees the records, and stops the
# server. Everything lives in a temporary directory that is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/deps.sh

build=${BUILD_ROOT:-$root/build}/release
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
recsync=$build/bin/recsync
recsyncd=$build/bin/recsyncd

work=$(mktemp -d /tmp/recsync-demo.XXXXXX)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "start recsyncd on SQLite, on a free loopback port"
"$recsyncd" --db "$work/server.db" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/^recsyncd listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/server.out")
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
    sleep 0.05
done
[ -n "$port" ] || { echo "recsyncd did not start" >&2; cat "$work/server.err" >&2; exit 1; }
url="http://127.0.0.1:$port"
echo "recsyncd (pid $server_pid) at $url"

export RECSYNC_PASSWORD="correct horse battery staple"
A=(--dir "$work/laptop")
B=(--dir "$work/desktop")

step "device A: init and register"
run "$recsync" "${A[@]}" init
run "$recsync" "${A[@]}" register --server "$url" --user alice

step "device B: the same key (moved as text), then login"
"$recsync" "${A[@]}" key export | run "$recsync" "${B[@]}" key import
run "$recsync" "${B[@]}" login --server "$url" --user alice

step "device A writes: kv, shell history and raw records"
run "$recsync" "${A[@]}" kv set settings theme dark
run "$recsync" "${A[@]}" kv set settings editor vim
run "$recsync" "${A[@]}" history add --cwd /home/alice --exit 0 --duration 120 -- make test
printf 'note %s\n' one two three | run "$recsync" "${A[@]}" append notes --lines

step "device A syncs (push)"
run "$recsync" "${A[@]}" sync
step "device B syncs (pull)"
run "$recsync" "${B[@]}" sync --json

step "device B sees A's records"
run "$recsync" "${B[@]}" kv get settings theme
run "$recsync" "${B[@]}" kv list settings
run "$recsync" "${B[@]}" history list
run "$recsync" "${B[@]}" log --tag notes
run "$recsync" "${B[@]}" verify

step "both write, then sync: a merge"
run "$recsync" "${B[@]}" kv set settings theme light
run "$recsync" "${A[@]}" kv set settings font mono
run "$recsync" "${A[@]}" sync
run "$recsync" "${B[@]}" sync
run "$recsync" "${A[@]}" sync
run "$recsync" "${A[@]}" kv list settings
run "$recsync" "${B[@]}" status

step "stop recsyncd"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
echo "done."
