#!/usr/bin/env bash
# Runs every test recsync has:
#   1. installs missing Debian packages (scripts/deps.sh),
#   2. builds everything with -Wall -Wextra -Werror under AddressSanitizer + UBSan,
#   3. runs the CTest suite: unit tests (cmocka) and integration tests that
#      start the real recsyncd on loopback (SQLite, and PostgreSQL in a
#      temporary directory when its binaries are installed),
#   4. builds the library, CLI, server and unit tests under ThreadSanitizer
#      and runs the unit suite and the whole integration suite on SQLite,
#   5. runs the unit tests under valgrind in a plain build (of those only),
#   6. builds the libFuzzer targets with clang and runs each briefly from
#      the kept corpora (fuzz/corpus/, grown by scripts/fuzz-long.sh), two
#      at a time.
# Each leg prints its wall time ("time: <leg> <s>s").
# Scheduling on a 2-core machine: once the ASan build is done, the TSan,
# plain and fuzz builds run one after the other in the background at nice 19
# while the ASan tests run (they take the CPU the tests leave idle: much of a
# test's time is spent waiting on the processes it starts), and the valgrind
# leg runs at nice 19 next to the TSan tests. Each leg waits for its build
# ("time: <leg>-build" is that wait; the build's own time is in its log).
# The fuzz leg runs alone (its runs are bounded by wall time).
# Environment: BUILD_ROOT (default ./build), SKIP_TSAN=1, SKIP_VALGRIND=1, SKIP_FUZZ=1,
# TSAN_QUICK=1 (TSan runs only the unit suite and the four thread-heavy
# integration modules), FUZZ_SECONDS (default 20), CTEST_JOBS (default 3),
# CTEST_ARGS (extra ctest arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/deps.sh

build=${BUILD_ROOT:-$root/build}
jobs=$(nproc)
# Integration modules mostly wait on processes they start; modules that
# keep two cores busy themselves carry PROCESSORS 2 (tests/CMakeLists.txt),
# so -j3 never runs more than three cores' worth of them.
ctest_jobs=${CTEST_JOBS:-3}
leg_start=$(date +%s)
leg_time() { # leg_time NAME: prints and restarts the leg clock
    local now
    now=$(date +%s)
    echo "time: $1 $((now - leg_start))s"
    leg_start=$now
}
# The unit test programs (one per tests/unit/test_*.c), as CMake targets.
unit_targets=$(for f in tests/unit/test_*.c; do basename "$f" .c; done)

echo "== build: -Werror, ASan + UBSan =="
cmake -S . -B "$build/asan" -DCMAKE_BUILD_TYPE=Debug -DRS_SANITIZE=ON -DRS_WERROR=ON >/dev/null
cmake --build "$build/asan" -j"$jobs"
leg_time asan-build

# The later legs' builds, in the background at nice 19 (see the top). Each
# step writes its exit status to $build/prebuild-<leg>.rc and its output to
# $build/prebuild-<leg>.log; wait_build waits for one (bounded) and stops the
# run if it failed.
run_tsan=0 run_plain=0 run_fuzz=0
[ "${SKIP_TSAN:-0}" != 1 ] && run_tsan=1
[ "${SKIP_VALGRIND:-0}" != 1 ] && run_plain=1
[ "${SKIP_FUZZ:-0}" != 1 ] && [ -d fuzz ] && [ -f fuzz/CMakeLists.txt ] && run_fuzz=1
rm -f "$build"/prebuild-*.rc
prebuild() { # prebuild LEG COMMAND...: runs COMMAND, logs it, records its status
    local leg=$1 t0 rc=0
    shift
    t0=$(date +%s)
    "$@" >"$build/prebuild-$leg.log" 2>&1 || rc=$?
    echo "prebuild $leg: exit $rc in $(($(date +%s) - t0))s" >>"$build/prebuild-$leg.log"
    echo "$rc" >"$build/prebuild-$leg.rc"
}
# shellcheck disable=SC2086
build_tsan() {
    cmake -S . -B "$build/tsan" -DCMAKE_BUILD_TYPE=Debug -DRS_SANITIZE=thread -DRS_WERROR=ON &&
        cmake --build "$build/tsan" -j"$jobs" --target recsync_cli recsyncd rs_tryopen $unit_targets
}
# shellcheck disable=SC2086
build_plain() {
    cmake -S . -B "$build/plain" -DCMAKE_BUILD_TYPE=Debug -DRS_WERROR=ON &&
        cmake --build "$build/plain" -j"$jobs" --target $unit_targets
}
build_fuzz() {
    CC=clang cmake -S . -B "$build/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRS_FUZZ=ON \
        -DBUILD_TESTING=OFF || return 1
    # Only the fuzz targets (and the library they link): the CLI, server
    # and benches are built and tested in the ASan leg.
    cmake --build "$build/fuzz" --target help | grep -o 'fuzz_[a-z0-9_]*' | sort -u \
        >"$build/fuzz-targets.txt" || return 1
    # shellcheck disable=SC2046
    cmake --build "$build/fuzz" -j"$jobs" --target $(cat "$build/fuzz-targets.txt")
}
# In a process group of its own (set -m), so that a failing run stops it, and every
# compiler it started, by that group's id.
set -m
(
    # Children inherit the nice value: every compiler the builds start runs at 19.
    renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
    [ $run_tsan = 1 ] && prebuild tsan build_tsan
    [ $run_plain = 1 ] && prebuild plain build_plain
    [ $run_fuzz = 1 ] && prebuild fuzz build_fuzz
    exit 0
) </dev/null >/dev/null 2>&1 &
prebuild_pid=$!
set +m
valgrind_pid=""
# shellcheck disable=SC2317
stop_background() { # a run that stops early stops what it started, by group id
    local running pid
    running=$(jobs -pr) # only jobs still running: an ended job's id may be reused
    for pid in $prebuild_pid $valgrind_pid; do
        if echo "$running" | grep -qx "$pid"; then
            kill -- -"$pid" 2>/dev/null || true
        fi
    done
}
trap stop_background EXIT
wait_build() { # wait_build LEG: waits (at most 40 min) for LEG's background build
    local waited=0
    while [ ! -f "$build/prebuild-$1.rc" ]; do
        if [ $waited -ge 2400 ] || ! kill -0 "$prebuild_pid" 2>/dev/null && [ ! -f "$build/prebuild-$1.rc" ]; then
            echo "the $1 build did not finish:" >&2
            tail -50 "$build/prebuild-$1.log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ "$(cat "$build/prebuild-$1.rc")" != 0 ]; then
        echo "the $1 build failed:" >&2
        tail -80 "$build/prebuild-$1.log" >&2
        exit 1
    fi
    tail -1 "$build/prebuild-$1.log"
}

echo "== tests under ASan + UBSan =="
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# shellcheck disable=SC2086
ctest --test-dir "$build/asan" --output-on-failure -j"$ctest_jobs" ${CTEST_ARGS:-}
leg_time asan-tests

# The valgrind leg: the unit programs, two at a time (this is a 2-core
# target); the property test's full 200+ scenarios run under ASan, so under
# valgrind (about 30x slower) a slice of them checks memory.
run_valgrind() {
    local programs count
    programs=$(for t in $unit_targets; do echo "$build/plain/tests/$t"; done)
    count=$(echo "$programs" | wc -l)
    # shellcheck disable=SC2016
    echo "$programs" | RS_CONV_SCENARIOS=20 xargs -P2 -I{} sh -c '
        valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
            "$1" >"$1.valgrind.log" 2>&1 || {
            echo "valgrind found errors in $(basename "$1"):" >&2
            tail -60 "$1.valgrind.log" >&2
            exit 255
        }' valgrind-one {} || return 1
    echo "valgrind: $count unit test programs clean"
}

if [ "${SKIP_TSAN:-0}" != 1 ]; then
    # ThreadSanitizer: library, server, CLI and unit tests (the benches
    # and the shared library are built and checked under ASan above); the
    # unit suite and every integration module on SQLite (the PostgreSQL
    # repeat runs under ASan above). tests/tsan.supp holds the
    # suppressions, each with its reason.
    echo "== build and tests under ThreadSanitizer =="
    wait_build tsan
    leg_time tsan-build
    if [ $run_plain = 1 ]; then
        # The valgrind leg at nice 19 next to these tests (see the top).
        wait_build plain
        set -m
        (
            renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
            run_valgrind
        ) </dev/null >"$build/valgrind.log" 2>&1 &
        valgrind_pid=$!
        set +m
        echo "valgrind leg started next to the TSan tests (pid $valgrind_pid)"
    fi
    if [ "${TSAN_QUICK:-0}" = 1 ]; then
        tsan_select=(-R '^(unit\..*|integration\.(test_sync_basic|test_watch_live|test_server_events|test_fault_injection))$')
    else
        tsan_select=(-L 'unit|sqlite')
    fi
    # The property tests run the PostgreSQL leg's reduced scenario count.
    # shellcheck disable=SC2086
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp" \
        RS_CONV_SCENARIOS=40 RS_CONV_CLI_SCENARIOS=2 \
        ctest --test-dir "$build/tsan" --output-on-failure -j"$ctest_jobs" "${tsan_select[@]}" ${CTEST_ARGS:-}
    leg_time tsan-tests
fi

if [ $run_plain = 1 ]; then
    echo "== unit tests under valgrind =="
    if [ -n "$valgrind_pid" ]; then
        # Started next to the TSan tests: what remains of it.
        vg_rc=0
        wait "$valgrind_pid" || vg_rc=$?
        cat "$build/valgrind.log"
        [ $vg_rc = 0 ] || exit 1
    else
        wait_build plain
        leg_time plain-build
        run_valgrind || exit 1
    fi
    leg_time valgrind
fi

if [ $run_fuzz = 1 ]; then
    echo "== fuzz targets (libFuzzer), ${FUZZ_SECONDS:-20}s each, two at a time =="
    wait_build fuzz
    fuzz_targets=$(cat "$build/fuzz-targets.txt")
    leg_time fuzz-build
    # Each target is one single-threaded process: two at a time on two
    # cores give each the same FUZZ_SECONDS of one core as one at a time.
    # shellcheck disable=SC2016
    for t in $fuzz_targets; do echo "$t"; done |
        ROOT="$root" BUILD="$build" FUZZ_SECONDS="${FUZZ_SECONDS:-20}" xargs -P2 -I{} sh -c '
        name=$1
        target="$BUILD/fuzz/fuzz/$name"
        corpus="$BUILD/fuzz/corpus-$name"
        mkdir -p "$corpus"
        seeds="$ROOT/fuzz/seeds/${name#fuzz_}"
        kept="$ROOT/fuzz/corpus/${name#fuzz_}"
        set -- "$corpus"
        [ -d "$seeds" ] && set -- "$@" "$seeds"
        [ -d "$kept" ] && set -- "$@" "$kept"
        "$target" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=1024 "$@" \
            >"$BUILD/fuzz/$name.log" 2>&1 || {
            echo "fuzz target $name failed:" >&2
            tail -50 "$BUILD/fuzz/$name.log" >&2
            exit 255
        }
        echo "$name: $(grep -E "^#[0-9]+.*(DONE|pulse)" "$BUILD/fuzz/$name.log" | tail -1)"
        ' fuzz-one {} || exit 1
    leg_time fuzz
fi
echo "== all tests passed =="
