/*
 * bench_sync: full, no-op and incremental sync through a running recsyncd,
 * timed in-process with the library (no process start-up in the figures).
 * bench/run.sh drives it; each phase is its own process so that the peak
 * RSS it reports belongs to that phase only.
 *
 *   bench_sync write  URL USER DIR_A N     init A, register USER, append N records of 200 B
 *   bench_sync push   DIR_A N              A syncs: uploads its N records
 *   bench_sync pull   URL USER DIR_B DIR_A N
 *                                          init B with A's key, log in, sync: downloads N
 *   bench_sync steady DIR_A DIR_B N REPEAT INCR
 *                                          no-op syncs, then REPEAT rounds of A appending
 *                                          INCR records and A sync + B sync (medians)
 *   bench_sync token  DIR                  prints the device's token (for wrk)
 *
 * Every figure is one JSON line on stdout:
 *   {"bench":"recsync","what":"push","n":100000,"value":52000,"unit":"records/s"}
 * The password is "bench-password-0123"; records go to tag "bench".
 */
#include <recsync.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define PASSWORD "bench-password-0123"
#define TAG "bench"
#define PAYLOAD 200
#define WRITE_BATCH 1000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "bench_sync: %s: %s: %s\n", what, rs_strerror(err), rs_error_last());
    exit(1);
}

static void emit(const char *what, long n, double value, const char *unit)
{
    printf("{\"bench\":\"recsync\",\"what\":\"%s\",\"n\":%ld,\"value\":%.3f,\"unit\":\"%s\"}\n",
           what, n, value, unit);
    fflush(stdout);
}

/* The process's peak resident set so far, in MiB. */
static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n) (sorts v). */
static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A 200-byte payload for record i: JSON-ish text, like the peers' documents. */
static void make_payload(char *out, long i, const char *prefix)
{
    int len = snprintf(out, PAYLOAD + 1, "{\"_id\":\"%s-%010ld\",\"n\":%ld,\"v\":\"", prefix, i, i);
    for (int k = len; k < PAYLOAD - 2; k++)
        out[k] = (char)('a' + (i * 7 + k) % 26);
    out[PAYLOAD - 2] = '"';
    out[PAYLOAD - 1] = '}';
}

/* Appends n records to `store` in transactions of WRITE_BATCH. */
static void append_n(rs_store *store, long first, long n, const char *prefix)
{
    char payload[PAYLOAD + 1];
    int err;
    for (long i = 0; i < n; i += WRITE_BATCH) {
        long end = i + WRITE_BATCH < n ? i + WRITE_BATCH : n;
        if ((err = rs_store_begin(store)) < 0)
            die("begin", err);
        for (long j = i; j < end; j++) {
            make_payload(payload, first + j, prefix);
            if ((err = rs_append(NULL, store, TAG, 1, payload, PAYLOAD)) < 0)
                die("append", err);
        }
        if ((err = rs_store_commit(store)) < 0)
            die("commit", err);
    }
}

/* One sync; its report in *up and *down; returns the seconds it took. */
static double timed_sync(rs_store *store, uint64_t *up, uint64_t *down, const char *who)
{
    rs_sync_report *report = NULL;
    double t = now_s();
    int err = rs_sync(&report, store, NULL);
    t = now_s() - t;
    if (err < 0)
        die(who, err);
    *up = report->uploaded;
    *down = report->downloaded;
    rs_sync_report_free(report);
    return t;
}

static rs_store *open_store(const char *dir)
{
    rs_store *store = NULL;
    int err = rs_store_open(&store, dir, NULL);
    if (err < 0)
        die(dir, err);
    return store;
}

static int cmd_write(const char *url, const char *user, const char *dir, long n)
{
    rs_store *a = NULL;
    int err;
    double t;
    if ((err = rs_store_init(&a, dir, NULL)) < 0)
        die(dir, err);
    if ((err = rs_register(a, url, user, PASSWORD)) < 0)
        die("register", err);
    t = now_s();
    append_n(a, 0, n, "doc");
    t = now_s() - t;
    emit("write", n, (double)n / t, "records/s");
    rs_store_free(a);
    return 0;
}

/*
 * The figures of a push or pull (`what`) that took t seconds: its rate,
 * its time and, once `store` is freed, the peak RSS. Returns 0, or 1 when
 * the sync did not move exactly n records the one way (push: up, pull:
 * down) and none the other.
 */
static int report_moved(const char *what, rs_store *store, long n, uint64_t up, uint64_t down,
                        double t)
{
    bool push = strcmp(what, "push") == 0;
    char name[32];
    if ((push ? up : down) != (uint64_t)n || (push ? down : up) != 0) {
        fprintf(stderr, "bench_sync: %s moved %llu up, %llu down; expected %ld %s\n", what,
                (unsigned long long)up, (unsigned long long)down, n, push ? "up" : "down");
        return 1;
    }
    emit(what, n, (double)n / t, "records/s");
    snprintf(name, sizeof(name), "%s_ms", what);
    emit(name, n, t * 1e3, "ms");
    rs_store_free(store);
    snprintf(name, sizeof(name), "rss_client_%s", what);
    emit(name, n, peak_rss_mib(), "MiB");
    return 0;
}

static int cmd_push(const char *dir, long n)
{
    rs_store *a = open_store(dir);
    uint64_t up, down;
    double t = timed_sync(a, &up, &down, "push sync");
    return report_moved("push", a, n, up, down, t);
}

static int cmd_pull(const char *url, const char *user, const char *dir_b, const char *dir_a, long n)
{
    rs_store *a = open_store(dir_a), *b = NULL;
    char *key = NULL;
    uint64_t up, down;
    double t;
    int err;
    if ((err = rs_store_key_export(&key, a)) < 0)
        die("key export", err);
    rs_store_free(a);
    if ((err = rs_store_init_with_key(&b, dir_b, key, NULL)) < 0)
        die(dir_b, err);
    rs_free(key);
    if ((err = rs_login(b, url, user, PASSWORD)) < 0)
        die("login", err);
    t = timed_sync(b, &up, &down, "pull sync");
    return report_moved("pull", b, n, up, down, t);
}

static int cmd_steady(const char *dir_a, const char *dir_b, long n, long repeat, long incr)
{
    rs_store *a = open_store(dir_a), *b = open_store(dir_b);
    double *one = calloc((size_t)repeat, sizeof(double));
    double *pair = calloc((size_t)repeat, sizeof(double));
    double *tot = calloc((size_t)repeat, sizeof(double));
    double *pu = calloc((size_t)repeat, sizeof(double));
    double *pl = calloc((size_t)repeat, sizeof(double));
    uint64_t up, down, up2, down2;
    if (one == NULL || pair == NULL || tot == NULL || pu == NULL || pl == NULL)
        die("allocating samples", RS_ENOMEM);

    /* No-op: B alone (the target's figure), then A + B (PouchDB's push + pull). */
    for (long r = 0; r < repeat; r++) {
        one[r] = timed_sync(b, &up, &down, "noop sync") * 1e3;
        if (up || down)
            die("no-op sync moved records", RS_ERROR);
    }
    for (long r = 0; r < repeat; r++) {
        double t = timed_sync(a, &up, &down, "noop sync A");
        t += timed_sync(b, &up2, &down2, "noop sync B");
        if (up || down || up2 || down2)
            die("no-op sync moved records", RS_ERROR);
        pair[r] = t * 1e3;
    }
    emit("noop", n, median(one, (size_t)repeat), "ms");
    emit("noop_push_pull", n, median(pair, (size_t)repeat), "ms");

    /* Incremental: A appends `incr` records (untimed), A pushes, B pulls. */
    for (long r = 0; r < repeat; r++) {
        append_n(a, n + r * incr, incr, "inc");
        pu[r] = timed_sync(a, &up, &down, "incr push") * 1e3;
        pl[r] = timed_sync(b, &up2, &down2, "incr pull") * 1e3;
        if (up != (uint64_t)incr || down2 != (uint64_t)incr || down || up2)
            die("incremental sync moved the wrong count", RS_ERROR);
        tot[r] = pu[r] + pl[r];
    }
    emit("incr", n, median(tot, (size_t)repeat), "ms");
    emit("incr_push", n, median(pu, (size_t)repeat), "ms");
    emit("incr_pull", n, median(pl, (size_t)repeat), "ms");
    free(one);
    free(pair);
    free(tot);
    free(pu);
    free(pl);
    rs_store_free(a);
    rs_store_free(b);
    return 0;
}

static int cmd_token(const char *dir)
{
    rs_store *s = open_store(dir);
    char *token = NULL;
    int err = rs_store_meta_get(&token, s, RS_META_TOKEN);
    if (err < 0)
        die("reading the token", err);
    printf("%s\n", token);
    rs_free(token);
    rs_store_free(s);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_sync write URL USER DIR_A N | push DIR_A N |\n"
                    "       pull URL USER DIR_B DIR_A N | steady DIR_A DIR_B N REPEAT INCR |\n"
                    "       token DIR\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "write") == 0 && argc == 6 && atol(argv[5]) > 0)
        return cmd_write(argv[2], argv[3], argv[4], atol(argv[5]));
    if (strcmp(cmd, "push") == 0 && argc == 4 && atol(argv[3]) > 0)
        return cmd_push(argv[2], atol(argv[3]));
    if (strcmp(cmd, "pull") == 0 && argc == 7 && atol(argv[6]) > 0)
        return cmd_pull(argv[2], argv[3], argv[4], argv[5], atol(argv[6]));
    if (strcmp(cmd, "steady") == 0 && argc == 7 && atol(argv[5]) > 0 && atol(argv[6]) > 0)
        return cmd_steady(argv[2], argv[3], atol(argv[4]), atol(argv[5]), atol(argv[6]));
    if (strcmp(cmd, "token") == 0 && argc == 3)
        return cmd_token(argv[2]);
    return usage();
}
