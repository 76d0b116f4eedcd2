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

echo "== tests under ASan + UBSan =="
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# shellcheck disable=SC2086
ctest --test-dir "$build/asan" --output-on-failure -j"$ctest_jobs" ${CTEST_ARGS:-}
leg_time asan-tests

if [ "${SKIP_TSAN:-0}" != 1 ]; then
    # ThreadSanitizer: library, server, CLI and unit tests (the benches
    # and the shared library are built and checked under ASan above); the
    # unit suite and every integration module on SQLite (the PostgreSQL
    # repeat runs under ASan above). tests/tsan.supp holds the
    # suppressions, each with its reason.
    echo "== build and tests under ThreadSanitizer =="
    cmake -S . -B "$build/tsan" -DCMAKE_BUILD_TYPE=Debug -DRS_SANITIZE=thread -DRS_WERROR=ON >/dev/null
    # shellcheck disable=SC2086
    cmake --build "$build/tsan" -j"$jobs" --target recsync_cli recsyncd rs_tryopen $unit_targets
    leg_time tsan-build
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

if [ "${SKIP_VALGRIND:-0}" != 1 ]; then
    echo "== unit tests under valgrind =="
    cmake -S . -B "$build/plain" -DCMAKE_BUILD_TYPE=Debug -DRS_WERROR=ON >/dev/null
    # shellcheck disable=SC2086
    cmake --build "$build/plain" -j"$jobs" --target $unit_targets
    leg_time plain-build
    # Two at a time (this is a 2-core target); the property test's full 200+
    # scenarios run under ASan above, so under valgrind (about 30x slower) a
    # slice of them checks memory.
    programs=$(for t in $unit_targets; do echo "$build/plain/tests/$t"; done)
    count=$(echo "$programs" | wc -l)
    # shellcheck disable=SC2016
    echo "$programs" | RS_CONV_SCENARIOS=20 xargs -P2 -I{} sh -c '
        valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
            "$1" >"$1.valgrind.log" 2>&1 || {
            echo "valgrind found errors in $(basename "$1"):" >&2
            tail -60 "$1.valgrind.log" >&2
            exit 255
        }' valgrind-one {} || exit 1
    echo "valgrind: $count unit test programs clean"
    leg_time valgrind
fi

if [ "${SKIP_FUZZ:-0}" != 1 ] && [ -d fuzz ] && [ -f fuzz/CMakeLists.txt ]; then
    echo "== fuzz targets (libFuzzer), ${FUZZ_SECONDS:-20}s each, two at a time =="
    CC=clang cmake -S . -B "$build/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRS_FUZZ=ON \
        -DBUILD_TESTING=OFF >/dev/null
    # Only the fuzz targets (and the library they link): the CLI, server
    # and benches are built and tested above.
    fuzz_targets=$(cmake --build "$build/fuzz" --target help | grep -o 'fuzz_[a-z0-9_]*' | sort -u)
    # shellcheck disable=SC2086
    cmake --build "$build/fuzz" -j"$jobs" --target $fuzz_targets
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
