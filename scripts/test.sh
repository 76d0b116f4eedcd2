#!/usr/bin/env bash
# Runs every test recsync has:
#   1. installs missing Debian packages (scripts/deps.sh),
#   2. builds with -Wall -Wextra -Werror under AddressSanitizer + UBSan,
#   3. runs the CTest suite: unit tests (cmocka) and integration tests that
#      start the real recsyncd on loopback (SQLite, and PostgreSQL in a
#      temporary directory when its binaries are installed),
#   4. builds under ThreadSanitizer and runs the unit tests and the
#      integration tests on SQLite again,
#   5. runs the unit tests under valgrind in a plain build,
#   6. builds the libFuzzer targets with clang and runs each briefly from
#      the kept corpora (fuzz/corpus/, grown by scripts/fuzz-long.sh).
# Environment: BUILD_ROOT (default ./build), SKIP_TSAN=1, SKIP_VALGRIND=1, SKIP_FUZZ=1,
# FUZZ_SECONDS (default 20), CTEST_ARGS (extra ctest arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/deps.sh

build=${BUILD_ROOT:-$root/build}
jobs=$(nproc)

echo "== build: -Werror, ASan + UBSan =="
cmake -S . -B "$build/asan" -DCMAKE_BUILD_TYPE=Debug -DRS_SANITIZE=ON -DRS_WERROR=ON >/dev/null
cmake --build "$build/asan" -j"$jobs"

echo "== tests under ASan + UBSan =="
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# shellcheck disable=SC2086
ctest --test-dir "$build/asan" --output-on-failure -j2 ${CTEST_ARGS:-}

if [ "${SKIP_TSAN:-0}" != 1 ]; then
    # ThreadSanitizer: library, server and tests; the unit suite, and the
    # integration modules whose point is threads (the sync pipelines, the
    # server's event hub and workers, live sync, the fault proxy's
    # concurrent requests) on SQLite. The whole integration suite under
    # TSan (5-15x slower) does not fit CI's 25 minutes on 2 cores: run it
    # by hand with TSAN_ALL=1. tests/tsan.supp holds the suppressions, each
    # with its reason.
    echo "== build and tests under ThreadSanitizer =="
    tsan_start=$(date +%s)
    cmake -S . -B "$build/tsan" -DCMAKE_BUILD_TYPE=Debug -DRS_SANITIZE=thread -DRS_WERROR=ON >/dev/null
    cmake --build "$build/tsan" -j"$jobs"
    if [ "${TSAN_ALL:-0}" = 1 ]; then
        tsan_select=(-L 'unit|sqlite' -E '^integration\.(test_cli_store|test_history_sync)$')
    else
        tsan_select=(-R '^(unit\..*|integration\.(test_sync_basic|test_watch_live|test_server_events|test_fault_injection))$')
    fi
    # shellcheck disable=SC2086
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp" \
        RS_CONV_SCENARIOS=40 RS_CONV_CLI_SCENARIOS=2 \
        ctest --test-dir "$build/tsan" --output-on-failure -j2 "${tsan_select[@]}" ${CTEST_ARGS:-}
    echo "tsan: $(($(date +%s) - tsan_start))s"
fi

if [ "${SKIP_VALGRIND:-0}" != 1 ]; then
    echo "== unit tests under valgrind =="
    cmake -S . -B "$build/plain" -DCMAKE_BUILD_TYPE=Debug -DRS_WERROR=ON >/dev/null
    cmake --build "$build/plain" -j"$jobs"
    # Two at a time (this is a 2-core target); the property test's full 200+
    # scenarios run under ASan above, so under valgrind (about 30x slower) a
    # slice of them checks memory.
    programs=$(find "$build/plain/tests" -maxdepth 1 -name 'test_*' -type f -executable | sort)
    count=$(echo "$programs" | wc -l)
    echo "$programs" | RS_CONV_SCENARIOS=20 xargs -P2 -I{} sh -c '
        valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
            "$1" >"$1.valgrind.log" 2>&1 || {
            echo "valgrind found errors in $(basename "$1"):" >&2
            tail -60 "$1.valgrind.log" >&2
            exit 255
        }' valgrind-one {} || exit 1
    echo "valgrind: $count unit test programs clean"
fi

if [ "${SKIP_FUZZ:-0}" != 1 ] && [ -d fuzz ] && [ -f fuzz/CMakeLists.txt ]; then
    echo "== fuzz targets (libFuzzer), ${FUZZ_SECONDS:-20}s each =="
    CC=clang cmake -S . -B "$build/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRS_FUZZ=ON \
        -DBUILD_TESTING=OFF >/dev/null
    cmake --build "$build/fuzz" -j"$jobs"
    for target in "$build"/fuzz/fuzz/fuzz_*; do
        [ -x "$target" ] || continue
        name=$(basename "$target")
        corpus="$build/fuzz/corpus-$name"
        mkdir -p "$corpus"
        seeds="$root/fuzz/seeds/${name#fuzz_}"
        "$target" -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 -rss_limit_mb=1024 \
            "$corpus" $( [ -d "$seeds" ] && echo "$seeds" ) \
            $( [ -d "$root/fuzz/corpus/${name#fuzz_}" ] && echo "$root/fuzz/corpus/${name#fuzz_}" ) \
            >"$build/fuzz/$name.log" 2>&1 || {
            echo "fuzz target $name failed:" >&2
            tail -50 "$build/fuzz/$name.log" >&2
            exit 1
        }
        echo "$name: $(grep -E '^#[0-9]+.*(DONE|pulse)' "$build/fuzz/$name.log" | tail -1)"
    done
fi
echo "== all tests passed =="
