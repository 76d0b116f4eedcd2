/*
 * bench_live: live propagation through a running recsyncd, a write on A
 * to the record applied on B, both devices live-syncing with rs_watch.
 *
 *   bench_live URL [N]
 *
 * N only labels the figures ("n", bench/run.sh's workload size). The
 * environment sets BENCH_LIVE_SAMPLES (300) and BENCH_LIVE_GAP_MS, the
 * idle time between samples (50, as the PouchDB and Hypercore peers).
 * Makes stores a and b (one user, one key) in a fresh directory under
 * $TMPDIR (removed at the end), registers a fresh user
 * at URL, and runs two watchers in threads: one on A (its own store
 * handle, so A's writes reach it the way another process's do: through
 * the store's files) and one on B. The main thread appends one 200-byte
 * record at a time on A and times it until B's watcher reports it applied
 * (committed in B's store). 20 warm-up writes are not counted. Prints
 * JSON lines:
 *   {"bench":"recsync","what":"live_p50","n":100000,"value":0.9,"unit":"ms","samples":300}
 * for p50, p90, p99 and max; live_push_* is the part until A's watcher
 * saw the server store the record, live_write_* the append on A alone.
 */
#define _GNU_SOURCE /* nftw */
#include <recsync.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PASSWORD "bench-password-0123"
#define TAG "live"
#define PAYLOAD 200
#define WARMUP 20
#define WAIT_S 10.0

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "bench_live: %s: %s: %s\n", what, rs_strerror(err), rs_error_last());
    exit(1);
}

typedef struct side {
    rs_store *store;
    int stop[2];
    pthread_t thread;
    int result;
    /* shared with the main thread, under `lock` */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int connected;
    uint64_t applied_end; /* B: how far A's shard is applied */
    double applied_at;
    uint64_t uploaded_end; /* A: how far A's shard is stored on the server */
    double uploaded_at;
} side;

static void on_batch(const rs_watch_batch *b, void *payload)
{
    side *s = payload;
    pthread_mutex_lock(&s->lock);
    if (b->kind == RS_WATCH_CONNECTED)
        s->connected++;
    if (b->kind == RS_WATCH_DOWNLOADED && strcmp(b->tag, TAG) == 0 && b->end > s->applied_end) {
        s->applied_end = b->end;
        s->applied_at = now_s();
    }
    if (b->kind == RS_WATCH_UPLOADED && strcmp(b->tag, TAG) == 0 && b->end > s->uploaded_end) {
        s->uploaded_end = b->end;
        s->uploaded_at = now_s();
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void *run_watch(void *arg)
{
    side *s = arg;
    rs_watch_opts opts;
    memset(&opts, 0, sizeof(opts));
    opts.stop_fd = s->stop[0];
    opts.on_batch = on_batch;
    opts.payload = s;
    s->result = rs_watch(s->store, &opts);
    if (s->result < 0)
        fprintf(stderr, "bench_live: watch: %s\n", rs_error_last());
    return NULL;
}

static void side_start(side *s, rs_store *store)
{
    memset(s, 0, sizeof(*s));
    s->store = store;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pipe(s->stop) != 0 || pthread_create(&s->thread, NULL, run_watch, s) != 0) {
        fprintf(stderr, "bench_live: cannot start a watcher: %s\n", strerror(errno));
        exit(1);
    }
}

static void side_stop(side *s)
{
    if (write(s->stop[1], "x", 1) != 1)
        fprintf(stderr, "bench_live: cannot stop a watcher: %s\n", strerror(errno));
    pthread_join(s->thread, NULL);
    close(s->stop[0]);
    close(s->stop[1]);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
}

/* Waits until `s` connected; exits after WAIT_S. */
static void wait_connected(side *s, const char *who)
{
    double deadline = now_s() + WAIT_S;
    pthread_mutex_lock(&s->lock);
    while (s->connected == 0 && now_s() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    if (s->connected == 0) {
        fprintf(stderr, "bench_live: watcher %s did not connect in %.0f s\n", who, WAIT_S);
        exit(1);
    }
}

/* Seconds from `t0` until B applied A's shard up to `end`; exits after WAIT_S. */
static double wait_applied(side *b, uint64_t end, double t0)
{
    double at = 0;
    pthread_mutex_lock(&b->lock);
    while (b->applied_end < end && now_s() < t0 + WAIT_S) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&b->cond, &b->lock, &ts);
    }
    at = b->applied_at;
    end = b->applied_end < end ? 0 : end;
    pthread_mutex_unlock(&b->lock);
    if (end == 0) {
        fprintf(stderr, "bench_live: a write on A did not reach B in %.0f s\n", WAIT_S);
        exit(1);
    }
    return at - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long label_n;

static void emit(const char *what, long n, double ms)
{
    printf("{\"bench\":\"recsync\",\"what\":\"%s\",\"n\":%ld,\"value\":%.3f,\"unit\":\"ms\","
           "\"samples\":%ld}\n",
           what, label_n, ms, n);
    fflush(stdout);
}

/* p50, p90, p99 and max of v[0..n) (sorts v), as "<what>_p50" and so on. */
static void report(const char *what, double *v, long n)
{
    char name[64];
    static const struct {
        const char *suffix;
        long permille;
    } at[] = {{"p50", 500}, {"p90", 900}, {"p99", 990}, {"max", 1000}};
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        long k = n * at[i].permille / 1000;
        snprintf(name, sizeof(name), "%s_%s", what, at[i].suffix);
        emit(name, n, v[k < n ? k : n - 1]);
    }
}

static long env_long(const char *name, long fallback)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : fallback;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    rs_store *a_write = NULL, *a_watch = NULL, *b_store = NULL;
    char dir[4096], dir_a[4200], dir_b[4200], user[64], payload[PAYLOAD];
    char *key = NULL;
    const char *tmp = getenv("TMPDIR");
    side a, b;
    long samples = env_long("BENCH_LIVE_SAMPLES", 300), gap_ms = env_long("BENCH_LIVE_GAP_MS", 50);
    double *lat, *up, *wr;
    uint32_t salt;
    int err;

    if (argc < 2 || argc > 3 || samples < 1 || gap_ms < 0) {
        fprintf(stderr, "usage: bench_live URL [N]   (BENCH_LIVE_SAMPLES >= 1, "
                        "BENCH_LIVE_GAP_MS >= 0)\n");
        return 2;
    }
    label_n = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    snprintf(dir, sizeof(dir), "%s/bench-live-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "bench_live: cannot make %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(dir_a, sizeof(dir_a), "%s/a", dir);
    snprintf(dir_b, sizeof(dir_b), "%s/b", dir);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    salt = (uint32_t)rand();
    snprintf(user, sizeof(user), "live-%08x", salt);
    if ((err = rs_store_init(&a_write, dir_a, NULL)) < 0)
        die(dir_a, err);
    if ((err = rs_register(a_write, argv[1], user, PASSWORD)) < 0)
        die("register", err);
    if ((err = rs_store_key_export(&key, a_write)) < 0)
        die("key export", err);
    if ((err = rs_store_init_with_key(&b_store, dir_b, key, NULL)) < 0)
        die(dir_b, err);
    rs_free(key);
    if ((err = rs_login(b_store, argv[1], user, PASSWORD)) < 0)
        die("login", err);
    if ((err = rs_store_open(&a_watch, dir_a, NULL)) < 0)
        die(dir_a, err);

    side_start(&a, a_watch);
    side_start(&b, b_store);
    wait_connected(&a, "A");
    wait_connected(&b, "B");

    lat = calloc((size_t)samples, sizeof(*lat));
    up = calloc((size_t)samples, sizeof(*up));
    wr = calloc((size_t)samples, sizeof(*wr));
    if (lat == NULL || up == NULL || wr == NULL)
        die("samples", RS_ENOMEM);
    memset(payload, 'p', sizeof(payload));
    for (long i = 0; i < WARMUP + samples; i++) {
        rs_record rec;
        struct timespec pause = {gap_ms / 1000, (gap_ms % 1000) * 1000000L};
        double t0 = now_s();
        if ((err = rs_append(&rec, a_write, TAG, 1, payload, sizeof(payload))) < 0)
            die("append", err);
        if (i >= WARMUP)
            wr[i - WARMUP] = (now_s() - t0) * 1000.0;
        double t = wait_applied(&b, rec.idx + 1, t0);
        if (i >= WARMUP) {
            lat[i - WARMUP] = t * 1000.0;
            pthread_mutex_lock(&a.lock);
            up[i - WARMUP] =
                a.uploaded_end > rec.idx ? (a.uploaded_at - t0) * 1000.0 : lat[i - WARMUP];
            pthread_mutex_unlock(&a.lock);
        }
        nanosleep(&pause, NULL);
    }
    side_stop(&a);
    side_stop(&b);

    report("live", lat, samples);
    report("live_push", up, samples);
    report("live_write", wr, samples);
    free(wr);
    free(lat);
    free(up);
    rs_store_free(a_write);
    rs_store_free(a_watch);
    rs_store_free(b_store);
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return a.result < 0 || b.result < 0 ? 1 : 0;
}
