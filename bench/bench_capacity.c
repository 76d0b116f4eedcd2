/*
 * bench_capacity: how many users one recsyncd serves (issue 17). Driven by
 * bench/capacity, which starts the server; this program is the load.
 *
 *   bench_capacity URL SERVER_PID BACKEND
 *
 * Users have 3 devices each. Device 0 of the first CAP_WRITERS users is a
 * real store (rs_store in CAP_DIR, a tmpfs when the script finds one) that
 * registers, appends and syncs with the library (rs_register, rs_append,
 * rs_sync). Every other device is a token: it logs in with POST
 * /api/v1/login and syncs with the library's internal HTTP client the way
 * rs_sync does on the wire (GET /api/v1/index; when behind, GET
 * /api/v1/records pages and POST /api/v1/acks), without a local store, so
 * thousands of devices fit in one process. Every device holds one event
 * stream (GET /api/v1/events, raw sockets on one epoll thread) while the
 * steps run, up to what the file descriptor limits allow.
 *
 * Per step of CAP_STEPS users (cumulative: a step adds users to the last),
 * CAP_SECONDS of a mix run by CAP_WORKERS threads, each sync on a fresh
 * connection as rs_sync makes one: mostly syncs of a random device (no-op,
 * or a pull when another device pushed: "incr_pull"), CAP_INCR_PCT % pushes
 * of 1-100 records by a writer's store ("incr_push"), CAP_FULL_PERMILLE
 * per mille full pulls by a new device of a writer's user (fresh store,
 * rs_login, rs_sync: "full"; then rs_logout). Live propagation: from the
 * start of a push's rs_sync to the `records` event on each of the user's
 * other devices' streams. Server figures from /proc/SERVER_PID.
 *
 * Then optionally (CAP_INCR_RATE > 0) CAP_INCR_S seconds of pushes only,
 * paced at that rate, and (CAP_STORM_DEVICES > 0) the storm: streams
 * closed, token cache expired, every device syncs once (no-op, fresh
 * token), paced evenly over CAP_STORM_S seconds. Paced latencies count
 * from the scheduled start, so a generator that falls behind shows it.
 *
 * stdout: one JSON line per step and phase ({"bench":"capacity",...});
 * progress on stderr.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench_capacity"
#include "benchutil.h"
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <dirent.h>
#include <sodium.h>

#define PASSWORD "capacity-password-0123"
#define TAG "cap"
#define PAYLOAD 200
#define DEVICES 3
#define TOKEN_LEN 96
#define OPEN_INFLIGHT 128
#define STREAM_OPEN_S 10.0
#define PACED_LAG_S 5.0
#define BUSY_RETRIES 200

/* ---- settings ---- */

static struct {
    const char *url;
    int server_pid;
    const char *backend;
    char host[64];
    int port;
    const char *dir;
    size_t steps[16];
    size_t nsteps;
    double seconds;
    int workers;
    int paced_workers;
    size_t writers;
    double incr_pct;
    double full_permille;
    size_t seed;
    int streams;
    double incr_rate, incr_s;
    size_t storm_devices;
    double storm_s;
} cfg;

/* ---- users and devices ---- */

typedef struct user {
    char token[DEVICES][TOKEN_LEN + 1];
    rs_uuid host[DEVICES];
    uint64_t dev_end[DEVICES]; /* token devices: how far they pulled the writer's shard */
    char *key;                 /* writers: the store's key text */
    atomic_int busy;
    atomic_uint_fast64_t gen; /* pushes started */
    _Atomic double t0;        /* when the last push's rs_sync started */
    int writer;
} user;

static user *users;
static size_t nusers;

/* ---- latencies ---- */

enum { K_NOOP, K_INCR_PUSH, K_INCR_PULL, K_FULL, K_LIVE, K_STORM, K_COUNT };
static const char *kind_name[K_COUNT] = {"noop", "incr_push", "incr_pull", "full", "live", "storm"};

typedef struct lat {
    double *v;
    size_t n, cap;
    uint64_t errors;
} lat;

static struct {
    pthread_mutex_t lock;
    lat k[K_COUNT];
    uint64_t records;
    uint64_t syncs;
} stats = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void lat_add(int kind, double ms, uint64_t records)
{
    pthread_mutex_lock(&stats.lock);
    lat *l = &stats.k[kind];
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        l->v = realloc(l->v, l->cap * sizeof(double));
        if (l->v == NULL)
            die("out of memory for latencies", RS_ENOMEM);
    }
    l->v[l->n++] = ms;
    stats.records += records;
    if (kind != K_LIVE)
        stats.syncs++;
    pthread_mutex_unlock(&stats.lock);
}

static atomic_int errors_shown;

static void lat_error(int kind, const char *what, int err)
{
    pthread_mutex_lock(&stats.lock);
    stats.k[kind].errors++;
    pthread_mutex_unlock(&stats.lock);
    if (atomic_fetch_add(&errors_shown, 1) < 20)
        fprintf(stderr, "bench_capacity: %s: %s: %s\n", what, rs_strerror(err), rs_error_last());
}

static void stats_reset(void)
{
    pthread_mutex_lock(&stats.lock);
    for (int i = 0; i < K_COUNT; i++) {
        stats.k[i].n = 0;
        stats.k[i].errors = 0;
    }
    stats.records = 0;
    stats.syncs = 0;
    pthread_mutex_unlock(&stats.lock);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const lat *l, double p)
{
    if (l->n == 0)
        return 0;
    double x = p * (double)l->n;
    size_t i = (size_t)x + ((double)(size_t)x < x);
    return l->v[i == 0 ? 0 : (i > l->n ? l->n : i) - 1];
}

/* Appends ,"<kind>_n":..,"<kind>_p50_ms":.. (sorted in place) to `out`. */
static void put_kind(rs_buf *out, int kind)
{
    lat *l = &stats.k[kind];
    qsort(l->v, l->n, sizeof(double), cmp_double);
    rs_buf_printf(out,
                  ",\"%s_n\":%zu,\"%s_errors\":%llu,\"%s_p50_ms\":%.2f,\"%s_p99_ms\":%.2f,\"%s_max_"
                  "ms\":%.2f",
                  kind_name[kind], l->n, kind_name[kind], (unsigned long long)l->errors,
                  kind_name[kind], pct(l, 0.5), kind_name[kind], pct(l, 0.99), kind_name[kind],
                  l->n ? l->v[l->n - 1] : 0.0);
}

/* ---- the server's process ---- */

typedef struct proc_sample {
    double cpu_s;
    double rss_mib;
    double hwm_mib;
    size_t fds;
    double gen_cpu_s; /* this process's CPU time, for the generator's share */
} proc_sample;

static void sample_server(proc_sample *out)
{
    char path[64], buf[4096];
    memset(out, 0, sizeof(*out));
    snprintf(path, sizeof(path), "/proc/%d/stat", cfg.server_pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        die("the server's /proc entry is gone (did recsyncd die?)", RS_EIO);
    if (fgets(buf, sizeof(buf), f)) {
        /* utime and stime: fields 14 and 15, after the ")" that ends the name. */
        char *p = strrchr(buf, ')');
        unsigned long long ut = 0, st = 0;
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
            out->cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/status", cfg.server_pid);
    if ((f = fopen(path, "r")) != NULL) {
        while (fgets(buf, sizeof(buf), f)) {
            unsigned long kb;
            if (sscanf(buf, "VmRSS: %lu", &kb) == 1)
                out->rss_mib = (double)kb / 1024.0;
            if (sscanf(buf, "VmHWM: %lu", &kb) == 1)
                out->hwm_mib = (double)kb / 1024.0;
        }
        fclose(f);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    out->gen_cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    snprintf(path, sizeof(path), "/proc/%d/fd", cfg.server_pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.')
                out->fds++;
        closedir(d);
    }
}

static void loadavg(char *out, size_t size)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double a = 0, b = 0, c = 0;
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3)
            a = b = c = 0;
        fclose(f);
    }
    snprintf(out, size, "[%.2f,%.2f,%.2f]", a, b, c);
}

/* ---- HTTP with the library's client ---- */

static void sleep_ms(double ms)
{
    time_t sec = (time_t)(ms / 1000);
    struct timespec ts = {sec, (long)((ms - (double)sec * 1000.0) * 1e6)};
    nanosleep(&ts, NULL);
}

/* POST register or login of device `d` of user `u` (a token device); retries 503. */
static int token_login(size_t u, int d, int create)
{
    char name[32];
    rs_client *c = NULL;
    rs_buf body = {0};
    const rs_buf *resp;
    char *token = NULL, *who = NULL;
    int err;
    snprintf(name, sizeof(name), "cap%zu", u);
    rs_uuid_random(&users[u].host[d]);
    if ((err = rs__client_new(&c, cfg.url, NULL, NULL)) < 0 ||
        (err = rs_wire_credentials_encode_named(&body, name, PASSWORD, &users[u].host[d], NULL)) <
            0)
        goto done;
    for (int i = 0; i < BUSY_RETRIES; i++) {
        err = rs__client_request(&resp, NULL, c, create ? "/api/v1/register" : "/api/v1/login",
                                 body.ptr, body.len, 0);
        if (err != RS_EUNAVAIL && err != RS_ENET)
            break;
        sleep_ms(5 + i);
    }
    if (err < 0 || (err = rs_wire_token_decode(&token, &who, resp->ptr, resp->len)) < 0)
        goto done;
    if (strlen(token) != TOKEN_LEN) {
        err = rs__error(RS_ESERVER, "a token of %zu characters", strlen(token));
        goto done;
    }
    memcpy(users[u].token[d], token, TOKEN_LEN + 1);
done:
    rs_free(token);
    rs_free(who);
    rs_buf_free(&body);
    rs__client_free(c);
    return err;
}

static void store_dir(char *out, size_t size, size_t u, const char *kind)
{
    snprintf(out, size, "%s/%s%zu", cfg.dir, kind, u);
}

/* Retries what a busy server (503: every argon2 slot taken) refused. */
static int with_retry(int (*fn)(rs_store *, const char *, const char *, const char *), rs_store *st,
                      const char *name)
{
    int err = 0;
    for (int i = 0; i < BUSY_RETRIES; i++) {
        err = fn(st, cfg.url, name, PASSWORD);
        if (err != RS_EUNAVAIL && err != RS_ENET)
            break;
        sleep_ms(5 + i);
    }
    return err;
}

/* Appends `n` records of PAYLOAD bytes in one transaction. */
static int append_n(rs_store *st, size_t n)
{
    uint8_t payload[PAYLOAD];
    int err;
    if ((err = rs_store_begin(st)) < 0)
        return err;
    for (size_t i = 0; i < n; i++) {
        randombytes_buf(payload, sizeof(payload));
        if ((err = rs_append(NULL, st, TAG, 1, payload, sizeof(payload))) < 0) {
            rs_store_rollback(st);
            return err;
        }
    }
    return rs_store_commit(st);
}

/* A writer's store: init, register, seed records, sync; token and host kept. */
static int setup_writer(size_t u)
{
    char dir[512], name[32];
    rs_store *st = NULL;
    rs_sync_report *rep = NULL;
    char *tok = NULL;
    int err;
    store_dir(dir, sizeof(dir), u, "w");
    snprintf(name, sizeof(name), "cap%zu", u);
    if ((err = rs_store_init(&st, dir, NULL)) < 0 ||
        (err = with_retry(rs_register, st, name)) < 0 ||
        (err = rs_store_key_export(&users[u].key, st)) < 0 ||
        (err = rs_store_meta_get(&tok, st, RS_META_TOKEN)) < 0 ||
        (err = append_n(st, cfg.seed)) < 0 || (err = rs_sync(&rep, st, NULL)) < 0)
        goto done;
    snprintf(users[u].token[0], sizeof(users[u].token[0]), "%s", tok);
    rs_store_host(&users[u].host[0], st);
    users[u].writer = 1;
done:
    rs_sync_report_free(rep);
    rs_free(tok);
    rs_store_free(st);
    return err;
}

static int setup_user(size_t u)
{
    int err = u < cfg.writers ? setup_writer(u) : token_login(u, 0, 1);
    for (int d = 1; d < DEVICES && err == 0; d++)
        err = token_login(u, d, 0);
    return err;
}

/* ---- syncs ---- */

/*
 * A token device's sync, as rs_sync puts it on the wire: GET index; when
 * the writer's shard is past what this device has, its pages and an ack.
 */
static int token_sync(int *kind, uint64_t *moved, size_t u, int d)
{
    user *us = &users[u];
    rs_client *c = NULL;
    rs_index *remote = NULL;
    const rs_buf *resp;
    rs_client_opts opts = {.timeout_ms = 60000};
    int err;
    *kind = K_NOOP;
    *moved = 0;
    if ((err = rs__client_new(&c, cfg.url, us->token[d], &opts)) < 0 ||
        (err = rs__fetch_index(&remote, c)) < 0)
        goto done;
    const rs_shard *sh = us->writer ? rs_index_find(remote, &us->host[0], TAG) : NULL;
    if (sh == NULL || sh->end <= us->dev_end[d])
        goto done;
    *kind = K_INCR_PULL;
    uint64_t next = us->dev_end[d];
    char path[256], h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, &us->host[0]);
    while (next < sh->end) {
        rs_wire_batch batch;
        memset(&batch, 0, sizeof(batch));
        snprintf(path, sizeof(path), "/api/v1/records?host=%s&tag=%s&start=%llu&limit=%u", h, TAG,
                 (unsigned long long)next, (unsigned)RS_SYNC_DEFAULT_PAGE_RECORDS);
        if ((err = rs__client_request(&resp, NULL, c, path, NULL, 0, 1)) < 0)
            goto done;
        if ((err = rs_wire_decode_records(&batch, resp->ptr, resp->len, RS_WIRE_PAGE, 0)) < 0)
            goto done;
        size_t got = batch.count;
        *moved += got;
        next = batch.has_next ? batch.next : sh->end;
        rs_wire_batch_free(&batch);
        if (got == 0)
            break;
    }
    us->dev_end[d] = next;
    rs_index ack = {0};
    rs_buf body = {0};
    if ((err = rs_index_add(&ack, &us->host[0], TAG, 0, next)) < 0 ||
        (err = rs_wire_frontier_encode(&body, &ack)) < 0 ||
        (err = rs__client_request(&resp, NULL, c, "/api/v1/acks", body.ptr, body.len, 1)) < 0) {
        rs_free(ack.shards);
        rs_buf_free(&body);
        goto done;
    }
    rs_free(ack.shards);
    rs_buf_free(&body);
done:
    rs_index_free(remote);
    rs__client_free(c);
    return err;
}

/* A writer's store syncs; with `push` records appended first (untimed). t0 from *t. */
static int store_sync(int *kind, uint64_t *moved, size_t u, size_t push, double *t)
{
    char dir[512];
    rs_store *st = NULL;
    rs_sync_report *rep = NULL;
    int err;
    store_dir(dir, sizeof(dir), u, "w");
    if ((err = rs_store_open(&st, dir, NULL)) < 0)
        return err;
    if (push && (err = append_n(st, push)) < 0)
        goto done;
    if (push) {
        *t = now_s();
        atomic_store(&users[u].t0, *t);
        atomic_fetch_add(&users[u].gen, 1);
    }
    if ((err = rs_sync(&rep, st, NULL)) < 0)
        goto done;
    *moved = rep->uploaded + rep->downloaded;
    *kind = rep->outcome == RS_SYNC_NOOP ? K_NOOP : K_INCR_PUSH;
done:
    rs_sync_report_free(rep);
    rs_store_free(st);
    return err;
}

static atomic_uint_fast64_t fresh_devices;

/* A new device of writer `u`: fresh store with the key, login, full sync (timed), logout. */
static int full_pull(uint64_t *moved, double *ms, size_t u)
{
    char dir[512], name[32];
    rs_store *st = NULL;
    rs_sync_report *rep = NULL;
    int err;
    store_dir(dir, sizeof(dir), (size_t)atomic_fetch_add(&fresh_devices, 1), "new");
    snprintf(name, sizeof(name), "cap%zu", u);
    if ((err = rs_store_init_with_key(&st, dir, users[u].key, NULL)) < 0 ||
        (err = with_retry(rs_login, st, name)) < 0)
        goto done;
    double t = now_s();
    if ((err = rs_sync(&rep, st, NULL)) < 0)
        goto done;
    *ms = (now_s() - t) * 1e3;
    *moved = rep->downloaded;
    rs_logout(NULL, st);
done:
    rs_sync_report_free(rep);
    rs_store_free(st);
    remove_root(dir);
    return err;
}

/* ---- workers ---- */

enum { MODE_MIX, MODE_INCR, MODE_STORM };

static struct {
    int mode;
    double start, end;
    double rate; /* paced: ops/s from start; 0: as fast as possible */
    atomic_uint_fast64_t ticket;
    atomic_uint_fast64_t missed; /* paced: tickets dropped, the generator being behind */
    uint64_t tickets;            /* paced storm: how many */
    size_t *order;               /* storm: device numbers (u * DEVICES + d) in order */
} run;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

/* Takes a user who is not busy, from [0, n); SIZE_MAX when none came up. */
static size_t take_user(uint64_t *rs, size_t n)
{
    for (int i = 0; i < 64; i++) {
        size_t u = (size_t)(rng_next(rs) % n);
        if (atomic_exchange(&users[u].busy, 1) == 0)
            return u;
    }
    return SIZE_MAX;
}

static void one_op(uint64_t *rs, double scheduled)
{
    size_t nw = cfg.writers < nusers ? cfg.writers : nusers;
    double r = rng_unit(rs) * 100.0;
    int action = run.mode == MODE_INCR                               ? K_INCR_PUSH
                 : nw && r < cfg.full_permille / 10.0                ? K_FULL
                 : nw && r < cfg.full_permille / 10.0 + cfg.incr_pct ? K_INCR_PUSH
                                                                     : K_NOOP;
    size_t u = take_user(rs, action == K_NOOP ? nusers : nw);
    if (u == SIZE_MAX)
        return;
    int kind = K_NOOP, err;
    uint64_t moved = 0;
    double t = scheduled > 0 ? scheduled : now_s(), ms = -1;
    if (action == K_FULL) {
        kind = K_FULL;
        err = full_pull(&moved, &ms, u);
    } else if (action == K_INCR_PUSH) {
        double t1 = 0;
        err = store_sync(&kind, &moved, u, 1 + rng_next(rs) % 100, &t1);
        if (scheduled <= 0)
            t = t1;
    } else {
        int d = (int)(rng_next(rs) % DEVICES);
        err = d == 0 && users[u].writer ? store_sync(&kind, &moved, u, 0, &t)
                                        : token_sync(&kind, &moved, u, d);
    }
    if (ms < 0)
        ms = (now_s() - t) * 1e3;
    atomic_store(&users[u].busy, 0);
    if (err < 0)
        lat_error(action == K_NOOP ? kind : action, kind_name[action], err);
    else
        lat_add(kind, ms, moved);
}

/* A storm ticket: device `i` of the order syncs once (GET index), at its time. */
static void storm_op(uint64_t i, double scheduled)
{
    size_t dev = run.order[i], u = dev / DEVICES;
    int d = (int)(dev % DEVICES), kind;
    uint64_t moved = 0;
    rs_client *c = NULL;
    rs_index *remote = NULL;
    rs_client_opts opts = {.timeout_ms = 60000};
    int err = rs__client_new(&c, cfg.url, users[u].token[d], &opts);
    if (err == 0)
        err = rs__fetch_index(&remote, c);
    (void)kind;
    rs_index_free(remote);
    rs__client_free(c);
    if (err < 0)
        lat_error(K_STORM, "storm sync", err);
    else
        lat_add(K_STORM, (now_s() - scheduled) * 1e3, moved);
}

static void *worker_main(void *arg)
{
    uint64_t rs = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 88172645463325252ull;
    for (;;) {
        uint64_t i = atomic_fetch_add(&run.ticket, 1);
        double scheduled = 0;
        if (run.rate > 0) {
            if (run.tickets && i >= run.tickets)
                break;
            scheduled = run.start + (double)i / run.rate;
            double wait = scheduled - now_s();
            if (scheduled >= run.end)
                break;
            /* Behind by more than PACED_LAG_S: the rest are counted as missed, not run. */
            if (wait < -PACED_LAG_S) {
                atomic_fetch_add(&run.missed, 1);
                continue;
            }
            if (wait > 0)
                sleep_ms(wait * 1e3);
        } else if (now_s() >= run.end) {
            break;
        }
        if (run.mode == MODE_STORM)
            storm_op(i, scheduled);
        else
            one_op(&rs, scheduled);
    }
    return NULL;
}

static void run_workers(int mode, double seconds, double rate, uint64_t tickets)
{
    int workers = rate > 0 ? cfg.paced_workers : cfg.workers;
    pthread_t *th = calloc((size_t)workers, sizeof(*th));
    run.mode = mode;
    run.rate = rate;
    run.tickets = tickets;
    atomic_store(&run.ticket, 0);
    atomic_store(&run.missed, 0);
    run.start = now_s();
    run.end = run.start + seconds;
    for (int i = 0; i < workers; i++)
        if (pthread_create(&th[i], NULL, worker_main, (void *)(uintptr_t)(i + 1)) != 0)
            die("starting a worker", RS_ERROR);
    for (int i = 0; i < workers; i++)
        pthread_join(th[i], NULL);
    free(th);
}

/* ---- setup in parallel ---- */

static atomic_size_t setup_next;
static size_t setup_end;
static atomic_int setup_failed;

static void *setup_main(void *arg)
{
    (void)arg;
    for (;;) {
        size_t u = atomic_fetch_add(&setup_next, 1);
        if (u >= setup_end || atomic_load(&setup_failed))
            break;
        int err = setup_user(u);
        if (err < 0 && atomic_exchange(&setup_failed, 1) == 0)
            fprintf(stderr, "bench_capacity: setting up user %zu: %s: %s\n", u, rs_strerror(err),
                    rs_error_last());
    }
    return NULL;
}

static void setup_users(size_t from, size_t to)
{
    int n = cfg.workers < 16 ? cfg.workers : 16;
    pthread_t th[16];
    atomic_store(&setup_next, from);
    setup_end = to;
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, setup_main, NULL);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&setup_failed))
        exit(1);
}

/* ---- event streams: raw sockets on one epoll thread ---- */

enum { ST_IDLE, ST_CONNECTING, ST_HEADERS, ST_OPEN, ST_DEAD };

typedef struct stream {
    int fd;
    uint32_t user;
    uint8_t dev;
    uint8_t state;
    uint8_t carry_len;
    char carry[15];
    uint64_t seen_gen;
    double begun; /* when the connect began, for the open timeout */
} stream;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    stream *v;
    size_t n;          /* streams wanted (the first n devices) */
    size_t started;    /* streams begun */
    size_t open, dead; /* answered 200 / failed */
    size_t inflight;
    int stop;
    int epfd;
    char first_error[200];
    uint64_t events, heartbeats_bytes;
} sx = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void stream_dead(stream *s, const char *why)
{
    if (s->fd >= 0) {
        epoll_ctl(sx.epfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->state == ST_CONNECTING || s->state == ST_HEADERS)
        sx.inflight--;
    if (s->state == ST_OPEN)
        sx.open--;
    s->state = ST_DEAD;
    sx.dead++;
    if (sx.first_error[0] == '\0')
        snprintf(sx.first_error, sizeof(sx.first_error), "%s", why);
}

static void stream_begin(stream *s)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port)};
    inet_pton(AF_INET, cfg.host, &sa.sin_addr);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    s->state = ST_CONNECTING;
    s->begun = now_s();
    sx.inflight++;
    if (s->fd < 0) {
        char why[160];
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        stream_dead(s, why);
        return;
    }
    if (connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        char why[160];
        snprintf(why, sizeof(why), "connect: %s", strerror(errno));
        stream_dead(s, why);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)(s - sx.v)};
    epoll_ctl(sx.epfd, EPOLL_CTL_ADD, s->fd, &ev);
}

/* Finds "event: records" in what arrived (with the tail of the last read). */
static void stream_data(stream *s, const char *buf, size_t n)
{
    static const char needle[] = "event: records";
    char tmp[65536 + 16];
    memcpy(tmp, s->carry, s->carry_len);
    memcpy(tmp + s->carry_len, buf, n);
    size_t len = s->carry_len + n;
    const char *p = tmp;
    int hit = 0;
    while ((p = memmem(p, len - (size_t)(p - tmp), needle, sizeof(needle) - 1)) != NULL) {
        hit++;
        p += sizeof(needle) - 1;
    }
    size_t keep = len < sizeof(s->carry) ? len : sizeof(s->carry);
    memcpy(s->carry, tmp + len - keep, keep);
    s->carry_len = (uint8_t)keep;
    if (hit == 0)
        return;
    sx.events += (uint64_t)hit;
    user *us = &users[s->user];
    uint64_t g = atomic_load(&us->gen);
    if (s->dev != 0 && g != s->seen_gen) {
        s->seen_gen = g;
        lat_add(K_LIVE, (now_s() - atomic_load(&us->t0)) * 1e3, 0);
    }
}

static void stream_event(stream *s, uint32_t events)
{
    char buf[65536];
    if (s->state == ST_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            char why[160];
            snprintf(why, sizeof(why), "connect: %s", strerror(soerr));
            stream_dead(s, why);
            return;
        }
        if (!(events & EPOLLOUT))
            return;
        char req[400];
        user *us = &users[s->user];
        int n = snprintf(req, sizeof(req),
                         "GET /api/v1/events HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Token "
                         "%s\r\nAccept: text/event-stream\r\n\r\n",
                         cfg.host, cfg.port, us->token[s->dev]);
        if (write(s->fd, req, (size_t)n) != n) {
            stream_dead(s, "writing the request");
            return;
        }
        s->state = ST_HEADERS;
        s->seen_gen = atomic_load(&us->gen);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(s - sx.v)};
        epoll_ctl(sx.epfd, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    for (;;) {
        ssize_t n = read(s->fd, buf, sizeof(buf));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            stream_dead(s, n == 0 ? "the server closed a stream" : "reading a stream");
            return;
        }
        if (s->state == ST_HEADERS) {
            if (n < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) {
                char why[200];
                size_t l = strcspn(buf, "\r\n");
                snprintf(why, sizeof(why), "stream refused: %.*s", (int)(l < 120 ? l : 120), buf);
                stream_dead(s, why);
                return;
            }
            s->state = ST_OPEN;
            sx.inflight--;
            sx.open++;
        }
        stream_data(s, buf, (size_t)n);
    }
}

static void *stream_main(void *arg)
{
    (void)arg;
    struct epoll_event evs[256];
    double last_scan = 0;
    for (;;) {
        pthread_mutex_lock(&sx.lock);
        if (sx.stop) {
            pthread_mutex_unlock(&sx.lock);
            break;
        }
        while (sx.started < sx.n && sx.inflight < OPEN_INFLIGHT)
            stream_begin(&sx.v[sx.started++]);
        pthread_cond_broadcast(&sx.cond);
        pthread_mutex_unlock(&sx.lock);
        int n = epoll_wait(sx.epfd, evs, 256, 20);
        pthread_mutex_lock(&sx.lock);
        double now = now_s();
        if (sx.inflight > 0 && now - last_scan > 1.0) {
            last_scan = now;
            for (size_t i = 0; i < sx.started; i++)
                if ((sx.v[i].state == ST_CONNECTING || sx.v[i].state == ST_HEADERS) &&
                    now - sx.v[i].begun > STREAM_OPEN_S)
                    stream_dead(&sx.v[i], "no answer to a stream's request within 10 s");
        }
        for (int i = 0; i < n; i++) {
            stream *s = &sx.v[evs[i].data.u64];
            if (s->state != ST_DEAD && s->state != ST_IDLE)
                stream_event(s, evs[i].events);
        }
        pthread_mutex_unlock(&sx.lock);
    }
    return NULL;
}

/* Opens streams for devices [sx.n, want) and waits until they answered. */
static void streams_open(size_t want)
{
    pthread_mutex_lock(&sx.lock);
    for (size_t i = sx.n; i < want; i++) {
        sx.v[i].fd = -1;
        sx.v[i].user = (uint32_t)(i / DEVICES);
        sx.v[i].dev = (uint8_t)(i % DEVICES);
        sx.v[i].state = ST_IDLE;
    }
    sx.n = want;
    double deadline = now_s() + 60 + (double)want / 200.0;
    while ((sx.started < sx.n || sx.inflight > 0) && now_s() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&sx.cond, &sx.lock, &ts);
    }
    pthread_mutex_unlock(&sx.lock);
}

static void streams_close_all(void)
{
    pthread_mutex_lock(&sx.lock);
    for (size_t i = 0; i < sx.n; i++)
        if (sx.v[i].fd >= 0) {
            close(sx.v[i].fd);
            sx.v[i].fd = -1;
            sx.v[i].state = ST_IDLE;
        }
    sx.open = 0;
    sx.n = sx.started = 0;
    pthread_mutex_unlock(&sx.lock);
}

/* ---- main ---- */

static double env_num(const char *name, double def)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return def;
    char *end;
    double d = strtod(v, &end);
    if (*end || d < 0) {
        fprintf(stderr, "bench_capacity: %s=%s is not a number >= 0\n", name, v);
        exit(2);
    }
    return d;
}

static void parse_steps(const char *text)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", text);
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p && cfg.nsteps < 16;
         p = strtok_r(NULL, ",", &save)) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (*end || v == 0 || (cfg.nsteps && v <= cfg.steps[cfg.nsteps - 1])) {
            fprintf(stderr,
                    "bench_capacity: CAP_STEPS=%s: increasing user counts, e.g. 1000,5000\n", text);
            exit(2);
        }
        cfg.steps[cfg.nsteps++] = v;
    }
}

/* The streams this process and the server can hold: both under RLIMIT_NOFILE. */
static size_t stream_cap(void)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    size_t mine = rl.rlim_cur > 2000 ? (size_t)rl.rlim_cur - 1000 : 0;
    char path[64], buf[256];
    size_t theirs = SIZE_MAX;
    snprintf(path, sizeof(path), "/proc/%d/limits", cfg.server_pid);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long soft;
        while (fgets(buf, sizeof(buf), f))
            if (sscanf(buf, "Max open files %lu", &soft) == 1)
                theirs = soft > 1000 ? soft - 1000 : 0;
        fclose(f);
    }
    return mine < theirs ? mine : theirs;
}

static void print_line(const char *phase, size_t step_users, double seconds, proc_sample *a,
                       proc_sample *b, size_t streams, double stream_kib, size_t stream_cap_n)
{
    rs_buf out = {0};
    char la[64];
    loadavg(la, sizeof(la));
    double cpu_ms = (b->cpu_s - a->cpu_s) * 1e3;
    rs_buf_printf(&out,
                  "{\"bench\":\"capacity\",\"backend\":\"%s\",\"phase\":\"%s\",\"users\":%zu,"
                  "\"devices\":%zu,\"writers\":%zu,\"streams\":%zu,\"stream_cap\":%zu,"
                  "\"seconds\":%.1f,\"syncs\":%llu,\"syncs_per_s\":%.1f,\"records_per_s\":%.1f",
                  cfg.backend, phase, step_users, step_users * DEVICES,
                  cfg.writers < step_users ? cfg.writers : step_users, streams, stream_cap_n,
                  seconds, (unsigned long long)stats.syncs, (double)stats.syncs / seconds,
                  (double)stats.records / seconds);
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(phase, "storm") == 0 ? k == K_STORM : k != K_STORM)
            put_kind(&out, k);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double gen_cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    rs_buf_printf(&out, ",\"generator_cpu_ms\":%.0f", (gen_cpu_s - a->gen_cpu_s) * 1e3);
    rs_buf_printf(&out,
                  ",\"server_rss_mib\":%.1f,\"server_hwm_mib\":%.1f,\"server_fds\":%zu,"
                  "\"server_cpu_ms\":%.0f,\"server_cpu_ms_per_1k_syncs\":%.1f,"
                  "\"stream_kib\":%.1f,\"target_per_s\":%.1f,\"missed\":%llu,\"loadavg\":%s}",
                  b->rss_mib, b->hwm_mib, b->fds, cpu_ms,
                  stats.syncs ? cpu_ms * 1000.0 / (double)stats.syncs : 0.0, stream_kib, run.rate,
                  (unsigned long long)atomic_load(&run.missed), la);
    printf("%s\n", out.ptr);
    fflush(stdout);
    rs_buf_free(&out);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_capacity URL SERVER_PID BACKEND (see bench/capacity)\n");
        return 2;
    }
    cfg.url = argv[1];
    cfg.server_pid = atoi(argv[2]);
    cfg.backend = argv[3];
    if (sscanf(cfg.url, "http://%63[^:]:%d", cfg.host, &cfg.port) != 2) {
        fprintf(stderr, "bench_capacity: URL %s is not http://HOST:PORT\n", cfg.url);
        return 2;
    }
    cfg.dir = getenv("CAP_DIR");
    if (cfg.dir == NULL || *cfg.dir == '\0') {
        fprintf(stderr, "bench_capacity: CAP_DIR (a directory for the stores) is not set\n");
        return 2;
    }
    parse_steps(getenv("CAP_STEPS") && *getenv("CAP_STEPS") ? getenv("CAP_STEPS") : "1000,5000");
    cfg.seconds = env_num("CAP_SECONDS", 20);
    cfg.workers = (int)env_num("CAP_WORKERS", 16);
    cfg.paced_workers = (int)env_num("CAP_PACED_WORKERS", 64);
    cfg.writers = (size_t)env_num("CAP_WRITERS", 500);
    cfg.incr_pct = env_num("CAP_INCR_PCT", 10);
    cfg.full_permille = env_num("CAP_FULL_PERMILLE", 5);
    cfg.seed = (size_t)env_num("CAP_SEED", 20);
    cfg.streams = (int)env_num("CAP_STREAMS", 1);
    cfg.incr_rate = env_num("CAP_INCR_RATE", 0);
    cfg.incr_s = env_num("CAP_INCR_S", 20);
    cfg.storm_devices = (size_t)env_num("CAP_STORM_DEVICES", 0);
    cfg.storm_s = env_num("CAP_STORM_S", 60);
    if (cfg.workers < 1 || cfg.workers > 1024 || cfg.paced_workers < 1 ||
        cfg.paced_workers > 1024 || cfg.seconds <= 0) {
        fprintf(stderr,
                "bench_capacity: CAP_WORKERS and CAP_PACED_WORKERS 1-1024, CAP_SECONDS > 0\n");
        return 2;
    }
    if (sodium_init() < 0)
        die("libsodium", RS_ERROR);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    size_t max_users = cfg.steps[cfg.nsteps - 1];
    size_t storm_users = (cfg.storm_devices + DEVICES - 1) / DEVICES;
    if (storm_users > max_users)
        max_users = storm_users;
    users = calloc(max_users, sizeof(user));
    sx.v = calloc(max_users * DEVICES, sizeof(stream));
    if (users == NULL || sx.v == NULL)
        die("out of memory for the users", RS_ENOMEM);
    if ((sx.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1", RS_EIO);
    pthread_t st;
    pthread_create(&st, NULL, stream_main, NULL);
    size_t cap = stream_cap();
    fprintf(stderr, "bench_capacity: %s at %s (pid %d): steps", cfg.backend, cfg.url,
            cfg.server_pid);
    for (size_t i = 0; i < cfg.nsteps; i++)
        fprintf(stderr, " %zu", cfg.steps[i]);
    fprintf(stderr, " users, %.0f s each, %d workers; streams up to %zu (RLIMIT_NOFILE %llu)\n",
            cfg.seconds, cfg.workers, cap, (unsigned long long)rl.rlim_cur);

    proc_sample a, b;
    for (size_t i = 0; i < cfg.nsteps; i++) {
        size_t u = cfg.steps[i];
        double t = now_s();
        setup_users(nusers, u);
        nusers = u;
        fprintf(stderr, "bench_capacity: %zu users set up (%.1f s)\n", u, now_s() - t);
        size_t want = cfg.streams ? u * DEVICES : 0;
        if (want > cap)
            want = cap;
        proc_sample s0, s1;
        size_t open0 = sx.open;
        sample_server(&s0);
        t = now_s();
        streams_open(want);
        sleep_ms(500);
        sample_server(&s1);
        size_t opened = sx.open > open0 ? sx.open - open0 : 0;
        double kib = opened ? (s1.rss_mib - s0.rss_mib) * 1024.0 / (double)opened : 0;
        fprintf(stderr,
                "bench_capacity: %zu streams open (%zu failed%s%s), %.1f s; server RSS "
                "%.1f -> %.1f MiB\n",
                sx.open, sx.dead, sx.dead ? ": " : "", sx.first_error, now_s() - t, s0.rss_mib,
                s1.rss_mib);
        stats_reset();
        sample_server(&a);
        t = now_s();
        run_workers(MODE_MIX, cfg.seconds, 0, 0);
        double secs = now_s() - t;
        sleep_ms(200); /* the last events */
        sample_server(&b);
        print_line("mix", u, secs, &a, &b, sx.open, kib, cap);
    }
    if (cfg.incr_rate > 0 && cfg.writers > 0) {
        fprintf(stderr, "bench_capacity: pushes only, %.0f/s for %.0f s\n", cfg.incr_rate,
                cfg.incr_s);
        stats_reset();
        sample_server(&a);
        double t = now_s();
        run_workers(MODE_INCR, cfg.incr_s, cfg.incr_rate, 0);
        double secs = now_s() - t;
        sleep_ms(200);
        sample_server(&b);
        print_line("incr", nusers, secs, &a, &b, sx.open, 0, cap);
    }
    streams_close_all();
    if (cfg.storm_devices > 0) {
        size_t need = storm_users;
        if (need > nusers) {
            double t = now_s();
            size_t w = cfg.writers;
            cfg.writers = cfg.writers < nusers ? cfg.writers : nusers; /* no more stores */
            setup_users(nusers, need);
            cfg.writers = w;
            nusers = need;
            fprintf(stderr, "bench_capacity: %zu users set up for the storm (%.1f s)\n", need,
                    now_s() - t);
        }
        /* Every device once, in a shuffled order; tokens cached by the mix have expired. */
        run.order = malloc(cfg.storm_devices * sizeof(size_t));
        uint64_t rs = 0x2545F4914F6CDD1Dull;
        for (size_t i = 0; i < cfg.storm_devices; i++)
            run.order[i] = i;
        for (size_t i = cfg.storm_devices; i > 1; i--) {
            size_t j = (size_t)(rng_next(&rs) % i), tmp = run.order[i - 1];
            run.order[i - 1] = run.order[j];
            run.order[j] = tmp;
        }
        sleep_ms(3000);
        double rate = (double)cfg.storm_devices / cfg.storm_s;
        fprintf(stderr, "bench_capacity: storm: %zu devices' no-op syncs in %.0f s (%.0f/s)\n",
                cfg.storm_devices, cfg.storm_s, rate);
        stats_reset();
        sample_server(&a);
        double t = now_s();
        run_workers(MODE_STORM, cfg.storm_s + 30, rate, cfg.storm_devices);
        double secs = now_s() - t;
        sample_server(&b);
        print_line("storm", nusers, secs, &a, &b, 0, 0, cap);
        free(run.order);
    }
    pthread_mutex_lock(&sx.lock);
    sx.stop = 1;
    pthread_mutex_unlock(&sx.lock);
    pthread_join(st, NULL);
    return 0;
}
