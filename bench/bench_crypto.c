/*
 * Envelope micro-benchmark: rs__seal and rs__open per second for one
 * payload size (default 200 bytes), single thread. Not wired into CMake;
 * build against a release build's static library:
 *
 *   cc -O2 -Iinclude -Isrc/lib bench/bench_crypto.c \
 *      build-rel/src/lib/librecsync_static.a -lsodium -lsqlite3 -lcurl -ljansson \
 *      -lpthread -o /tmp/bench_crypto
 *   /tmp/bench_crypto [payload-bytes] [seconds]
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    size_t len = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 200;
    double budget = argc > 2 ? strtod(argv[2], NULL) : 3.0, start, elapsed;
    rs_key *key = NULL;
    rs_record rec;
    uint8_t *plain, *env, *out;
    unsigned long n;

    if (sodium_init() < 0 || rs__key_new(&key) < 0) {
        fprintf(stderr, "bench_crypto: cannot set up libsodium or the key\n");
        return 1;
    }
    plain = malloc(len ? len : 1);
    env = malloc(rs__envelope_len(len));
    out = malloc(len ? len : 1);
    if (plain == NULL || env == NULL || out == NULL) {
        fprintf(stderr, "bench_crypto: out of memory\n");
        return 1;
    }
    memset(plain, 'x', len);
    memset(&rec, 0, sizeof(rec));
    rs_uuid_v7(&rec.id, rs_now_ms());
    rs_uuid_random(&rec.host);
    strcpy(rec.tag, "bench");
    rec.hlc = RS_HLC_MAKE(rs_now_ms(), 0);
    rec.version = 1;

    n = 0;
    start = seconds_now();
    do {
        for (int i = 0; i < 1000; i++, n++) {
            rec.idx = n;
            if (rs__seal(env, key, &rec, plain, len) < 0) {
                fprintf(stderr, "bench_crypto: seal: %s\n", rs_error_last());
                return 1;
            }
        }
        elapsed = seconds_now() - start;
    } while (elapsed < budget);
    printf("seal %zu B: %.0f records/s (%lu in %.2f s)\n", len, (double)n / elapsed, n, elapsed);

    rec.data = env;
    rec.data_len = rs__envelope_len(len);
    n = 0;
    start = seconds_now();
    do {
        for (int i = 0; i < 1000; i++, n++) {
            size_t got = 0;
            if (rs__open(out, &got, key, &rec) < 0 || got != len) {
                fprintf(stderr, "bench_crypto: open: %s\n", rs_error_last());
                return 1;
            }
        }
        elapsed = seconds_now() - start;
    } while (elapsed < budget);
    printf("open %zu B: %.0f records/s (%lu in %.2f s)\n", len, (double)n / elapsed, n, elapsed);

    free(plain);
    free(env);
    free(out);
    rs__key_free(key);
    return 0;
}
