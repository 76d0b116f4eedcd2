#!/usr/bin/env bash
# bench_hooks.sh: the time the shell hooks (recsync init zsh|bash|fish) add
# to each command, as the shell sees it: the preexec and precmd hooks. Each
# appends a line to the shell's spool file with builtins, for the
# `recsync history agent` that the hook script started with the shell (the
# agent records it off the prompt path). Each sample is one command's pair
# of hooks.
#
#   bench/bench_hooks.sh [N]       N commands per shell (default 300)
#
# Environment: RECSYNC, the binary (default <repo>/build-bench/bin/recsync);
# BENCH_GAP, seconds between commands (default 0.05, as when a person types).
#
# stdout: one JSON line per shell,
#   {"bench":"hook_latency","shell":"zsh","n":300,"p50_ms":..,"p99_ms":..,"max_ms":..,
#    "shell_cpu_ms_per_cmd":..}
# and a "fork_baseline" line per shell: the same loop with two bare
# background forks instead of the hooks, which is what hooks that start a
# process per command (the hooks' fallback when no agent runs) cost at
# least. fish has no sub-second clock of its own: its line has the mean
# only, the loop's time less the same loop without the hooks, over N. Last,
# {"bench":"hook_background",...}: the fallback's `history start` and
# `history end` processes per command, run in the foreground.
# Shells that are not installed are skipped with a message on stderr.
set -euo pipefail

N=${1:-300}
GAP=${BENCH_GAP:-0.05}
REPO=$(cd "$(dirname "$0")/.." && pwd)
RECSYNC=${RECSYNC:-$REPO/build-bench/bin/recsync}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

CLK_TCK=$(getconf CLK_TCK)
export HOME=$TMP RECSYNC_DIR=$TMP/store RECSYNC_NO_CTRL_R=1
"$RECSYNC" init >/dev/null

# Reads microsecond samples on stdin; prints the JSON line for shell $1 and
# what $2 names ("hook_latency", or "fork_baseline": the same loop with two
# bare background forks of the shell instead of the hooks, the floor that
# any hook starting a process pays on this machine at this moment).
# A line "cpu TICKS" is the shell's own CPU time (user + system, from
# /proc/PID/stat) over the whole loop: reported per command, it is what the
# hooks cost whatever the machine's load (the fork is the shell's system time).
summary() {
    sort -n | awk -v shell="$1" -v what="$2" -v hz="$CLK_TCK" '
        $1 == "cpu" { cpu = $2; next }
        { v[++n] = $1 }
        END {
            if (n == 0) exit 1
            p50 = v[int((n - 1) * 0.50) + 1]; p99 = v[int((n - 1) * 0.99) + 1]
            printf "{\"bench\":\"%s\",\"shell\":\"%s\",\"n\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"shell_cpu_ms_per_cmd\":%.3f}\n",
                what, shell, n, p50 / 1000, p99 / 1000, v[n] / 1000, cpu * 1000 / hz / n
        }'
}

if command -v zsh >/dev/null; then
    zsh -f -c '
        zmodload zsh/datetime
        eval "$("$1" init zsh)"
        read -r -A st < /proc/$$/stat; c0=$(( st[14] + st[15] ))
        for (( i = 1; i <= $2; i++ )); do
            t0=$EPOCHREALTIME
            __recsync_preexec "echo bench $i"
            __recsync_precmd
            t1=$EPOCHREALTIME
            printf "%.0f\n" $(( (t1 - t0) * 1e6 ))
            sleep $3
        done
        read -r -A st < /proc/$$/stat; echo cpu $(( st[14] + st[15] - c0 ))' \
        zsh "$RECSYNC" "$N" "$GAP" | summary zsh hook_latency
    zsh -f -c '
        zmodload zsh/datetime
        read -r -A st < /proc/$$/stat; c0=$(( st[14] + st[15] ))
        for (( i = 1; i <= $1; i++ )); do
            t0=$EPOCHREALTIME
            true </dev/null >/dev/null 2>&1 &!
            true </dev/null >/dev/null 2>&1 &!
            t1=$EPOCHREALTIME
            printf "%.0f\n" $(( (t1 - t0) * 1e6 ))
            sleep $2
        done
        read -r -A st < /proc/$$/stat; echo cpu $(( st[14] + st[15] - c0 ))' \
        zsh "$N" "$GAP" | summary zsh fork_baseline
else
    echo "bench_hooks: zsh is not installed: skipped" >&2
fi

# bash without bash-preexec: the DEBUG trap calls __recsync_preexec with no
# argument (the command line is then read in the background process); here
# it is called with one, as bash-preexec does, and the trap is removed so
# that it does not fire on the loop's own commands.
bash -c '
    eval "$("$1" init bash)"
    trap - DEBUG
    read -r -a st < /proc/$$/stat; c0=$(( st[13] + st[14] ))
    for (( i = 1; i <= $2; i++ )); do
        t0=${EPOCHREALTIME/[.,]/}
        __recsync_preexec "echo bench $i"
        __recsync_precmd
        t1=${EPOCHREALTIME/[.,]/}
        echo $(( t1 - t0 ))
        sleep $3
    done
    read -r -a st < /proc/$$/stat; echo cpu $(( st[13] + st[14] - c0 ))' \
    bash "$RECSYNC" "$N" "$GAP" | summary bash hook_latency
bash -c '
    read -r -a st < /proc/$$/stat; c0=$(( st[13] + st[14] ))
    for (( i = 1; i <= $1; i++ )); do
        t0=${EPOCHREALTIME/[.,]/}
        { (true) </dev/null >/dev/null 2>&1 & } 2>/dev/null
        { (true) </dev/null >/dev/null 2>&1 & } 2>/dev/null
        t1=${EPOCHREALTIME/[.,]/}
        echo $(( t1 - t0 ))
        sleep $2
    done
    read -r -a st < /proc/$$/stat; echo cpu $(( st[13] + st[14] - c0 ))' \
    bash "$N" "$GAP" | summary bash fork_baseline

if command -v fish >/dev/null; then
    # shellcheck disable=SC2016
    fish -c '
        set -l bin $argv[1]; set -l n $argv[2]; set -l gap $argv[3]
        set -l base 0
        set -l with 0
        for round in without with
            if test $round = with
                $bin init fish | source
            end
            set -l total 0
            for i in (seq $n)
                set -l t0 (date +%s%N)
                emit fish_preexec "echo bench $i"
                emit fish_postexec "echo bench $i"
                set -l t1 (date +%s%N)
                set total (math $total + $t1 - $t0)
                sleep $gap
            end
            if test $round = with
                set with $total
            else
                set base $total
            end
        end
        printf "{\"bench\":\"hook_latency\",\"shell\":\"fish\",\"n\":%d,\"mean_ms\":%.3f}\n" \
            $n (math "($with - $base) / $n / 1000000")' "$RECSYNC" "$N" "$GAP"
else
    echo "bench_hooks: fish is not installed: skipped" >&2
fi

# The background work per command: history start and end, in the foreground.
bash -c '
    s=$("$1" history session)
    t0=${EPOCHREALTIME/[.,]/}
    for (( i = 1; i <= $2; i++ )); do
        "$1" history start --session "$s" --seq "$i" -- "echo background $i"
        "$1" history end --session "$s" --seq "$i" --exit 0 --duration-ms 1 -- "echo background $i"
    done
    t1=${EPOCHREALTIME/[.,]/}
    printf "{\"bench\":\"hook_background\",\"n\":%d,\"mean_ms\":%.3f}\n" "$2" \
        "$(( (t1 - t0) / $2 ))e-3"' bash "$RECSYNC" 100
