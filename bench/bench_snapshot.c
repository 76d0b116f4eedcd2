/*
 * bench_snapshot: snapshots and pruning (issue 11) through a running
 * recsyncd, timed in-process with the library. bench/snapshot.sh drives it
 * (it starts recsyncd with --test-hooks --prune-interval-ms 0, counts the
 * server's rows and runs the prune pass between the phases); each phase is
 * its own process.
 *
 *   bench_snapshot kv URL USER DIR N KEYS DEVICES BATCH EVERY
 *       DEVICES stores DIR/d0.. (d0 registers USER, the others log in with
 *       d0's key) take turns: each sets BATCH keys of KEYS (values of about
 *       100 B) in one transaction, then syncs (snapshot_every EVERY, 0 for
 *       the default), until N writes; then two rounds of syncs so that every
 *       device holds and acks every record.
 *   bench_snapshot history URL USER DIR N DEVICES BATCH EVERY
 *       The same with history: each device adds BATCH entries per turn and
 *       deletes one of its earlier live entries after every tenth add, so N
 *       entries of which 10 % are deleted (N + N/10 records).
 *   bench_snapshot ready URL USER DIR_NEW DIR_REF MODE TAG
 *       A fresh device (DIR_REF's key, same user) syncs once and is timed:
 *       MODE "replay" (rs_sync_opts.replay = 1: the whole log) or "snapshot"
 *       (the default: the newest snapshot, then the records above it). Its
 *       own snapshot writing is off (snapshot_every UINT64_MAX) so the time
 *       is to a usable state only. Then its state of TAG (kv or history,
 *       tombstones, HLCs and hosts included) is compared with DIR_REF's:
 *       exit 1 when they differ. Bytes downloaded = sealed snapshot bytes
 *       (the report) + envelope bytes of the records pulled (what the store
 *       holds of TAG afterwards).
 *   bench_snapshot cost DIR TAG
 *       Writes one snapshot of TAG in DIR (a device that never syncs again,
 *       so it is never uploaded): its time per state item and per MiB.
 *
 * Every figure is one JSON line on stdout:
 *   {"bench":"recsync","workload":"kv","what":"ready_ms","mode":"snapshot","n":1000000,
 *    "value":120.5,"unit":"ms"}
 * The password is "bench-password-0123".
 */
#define _GNU_SOURCE /* nftw, in benchutil.h */
#define BENCH_NAME "bench_snapshot"
#include "benchutil.h"

#include <recsync.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define PASSWORD "bench-password-0123"
#define MAX_DEVICES 16

static const char *workload = "";
static const char *mode = "";

static void emit(const char *what, long n, double value, const char *unit)
{
    printf("{\"bench\":\"recsync\",\"workload\":\"%s\",\"what\":\"%s\",\"mode\":\"%s\",\"n\":%ld,"
           "\"value\":%.3f,\"unit\":\"%s\"}\n",
           workload, what, mode, n, value, unit);
    fflush(stdout);
}

/* xorshift64*: the same sequence on every run. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static rs_store *open_store(const char *dir)
{
    rs_store *store = NULL;
    int err = rs_store_open(&store, dir, NULL);
    if (err < 0)
        die(dir, err);
    return store;
}

/* A fresh store in `dir` with `ref`'s key, logged in as `user`. */
static rs_store *join(const char *url, const char *user, const char *dir, rs_store *ref)
{
    rs_store *s = NULL;
    char *key = NULL;
    int err;
    if ((err = rs_store_key_export(&key, ref)) < 0)
        die("key export", err);
    if ((err = rs_store_init_with_key(&s, dir, key, NULL)) < 0)
        die(dir, err);
    rs_free(key);
    if ((err = rs_login(s, url, user, PASSWORD)) < 0)
        die("login", err);
    return s;
}

/* Totals over the syncs of the workload. */
typedef struct totals {
    long syncs;
    double sync_s;
    long snapshots;
    double snapshot_ms;
    uint64_t snapshot_bytes, snapshot_items, snapshot_chunks_max;
} totals;

/* One sync of a workload device; dies on failure or on a partial sync. */
static void sync_one(rs_store *s, uint64_t every, totals *tot)
{
    rs_sync_opts opts = {0};
    rs_sync_report *r = NULL;
    double t = now_s();
    int err;
    opts.snapshot_every = every;
    if ((err = rs_sync(&r, s, &opts)) < 0)
        die("sync", err);
    tot->sync_s += now_s() - t;
    tot->syncs++;
    if (r->held_count > 0) {
        fprintf(stderr, "bench_snapshot: a sync held back %s: %s\n", r->held[0].tag,
                r->held[0].reason);
        exit(1);
    }
    for (size_t i = 0; i < r->snapshot_count; i++) {
        const rs_snapshot_info *si = &r->snapshots[i];
        if (si->loaded)
            continue;
        tot->snapshots++;
        tot->snapshot_ms += (double)si->elapsed_ms;
        tot->snapshot_bytes += si->bytes;
        tot->snapshot_items += si->items;
        if (si->chunks > tot->snapshot_chunks_max)
            tot->snapshot_chunks_max = si->chunks;
    }
    rs_sync_report_free(r);
}

/* One turn of a kv device: `batch` sets of random keys in one transaction. */
static void kv_turn(rs_store *s, long batch, long keys, long *written)
{
    char key[32], value[128];
    int err;
    if ((err = rs_store_begin(s)) < 0)
        die("begin", err);
    for (long i = 0; i < batch; i++) {
        long k = (long)(rnd() % (uint64_t)keys);
        snprintf(key, sizeof(key), "key-%06ld", k);
        snprintf(value, sizeof(value),
                 "value %ld of key %ld, about a hundred bytes long: the quick brown fox jumps",
                 *written + i, k);
        if ((err = rs_kv_set(s, "bench", key, value)) < 0)
            die("kv set", err);
    }
    if ((err = rs_store_commit(s)) < 0)
        die("commit", err);
    *written += batch;
}

/* The history entries one device added, and which it deleted. */
typedef struct added {
    rs_uuid *ids;
    unsigned char *gone;
    size_t n, cap, live;
} added;

/* One turn of a history device: `batch` adds, a delete of an earlier live one after every 10th. */
static void history_turn(rs_store *s, added *a, long batch, long *written)
{
    char command[160], cwd[64];
    int err;
    if ((err = rs_store_begin(s)) < 0)
        die("begin", err);
    for (long i = 0; i < batch; i++) {
        long n = *written + i;
        rs_history_entry e = {0};
        snprintf(command, sizeof(command), "git commit -am 'change %ld' && make -j2 test-%ld", n,
                 n % 97);
        snprintf(cwd, sizeof(cwd), "/home/bench/src/project-%ld", n % 31);
        e.command = command;
        e.cwd = cwd;
        e.session = "0190e3b2-bench-session";
        e.exit_code = n % 5 == 0;
        e.duration_ms = (int64_t)(n % 1000);
        if (a->n == a->cap) {
            a->cap = a->cap ? 2 * a->cap : 4096;
            a->ids = realloc(a->ids, a->cap * sizeof(*a->ids));
            a->gone = realloc(a->gone, a->cap);
            if (a->ids == NULL || a->gone == NULL)
                die("allocating", RS_ENOMEM);
        }
        if ((err = rs_history_add(&a->ids[a->n], s, &e)) < 0)
            die("history add", err);
        a->gone[a->n++] = 0;
        a->live++;
        if (n % 10 == 9) {
            size_t j;
            do
                j = (size_t)(rnd() % a->n);
            while (a->gone[j]);
            if ((err = rs_history_delete(s, &a->ids[j])) < 0)
                die("history delete", err);
            a->gone[j] = 1;
            a->live--;
        }
    }
    if ((err = rs_store_commit(s)) < 0)
        die("commit", err);
    *written += batch;
}

/*
 * The workload (kv or history): `devices` stores take turns writing a batch
 * and syncing until n writes, then two rounds of syncs (every device holds
 * and acks everything).
 */
static int cmd_workload(const char *url, const char *user, const char *dir, long n, long keys,
                        long devices, long batch, uint64_t every)
{
    rs_store *dev[MAX_DEVICES];
    added hist[MAX_DEVICES];
    char path[1024];
    totals tot = {0};
    long written = 0;
    double t0, write_s = 0;
    int err;

    memset(hist, 0, sizeof(hist));
    snprintf(path, sizeof(path), "%s/d0", dir);
    if ((err = rs_store_init(&dev[0], path, NULL)) < 0)
        die(path, err);
    if ((err = rs_register(dev[0], url, user, PASSWORD)) < 0)
        die("register", err);
    for (long d = 1; d < devices; d++) {
        snprintf(path, sizeof(path), "%s/d%ld", dir, d);
        dev[d] = join(url, user, path, dev[0]);
    }
    t0 = now_s();
    for (long turn = 0; written < n; turn++) {
        long d = turn % devices, b = n - written < batch ? n - written : batch;
        double t = now_s();
        if (keys > 0)
            kv_turn(dev[d], b, keys, &written);
        else
            history_turn(dev[d], &hist[d], b, &written);
        write_s += now_s() - t;
        sync_one(dev[d], every, &tot);
    }
    for (int round = 0; round < 2; round++)
        for (long d = 0; d < devices; d++)
            sync_one(dev[d], every, &tot);
    double total = now_s() - t0;
    emit("workload_s", n, total, "s");
    emit("write", n, (double)n / write_s, "records/s");
    emit("syncs", n, (double)tot.syncs, "count");
    emit("sync_s", n, tot.sync_s, "s");
    emit("snapshots_written", n, (double)tot.snapshots, "count");
    emit("snapshots_written_ms", n, tot.snapshot_ms, "ms");
    if (tot.snapshots > 0) {
        emit("snapshot_write_ms_mean", n, tot.snapshot_ms / (double)tot.snapshots, "ms");
        emit("snapshot_bytes_mean", n, (double)tot.snapshot_bytes / (double)tot.snapshots, "bytes");
        emit("snapshot_chunks_max", n, (double)tot.snapshot_chunks_max, "chunks");
    }
    for (long d = 0; d < devices; d++) {
        rs_store_free(dev[d]);
        free(hist[d].ids);
        free(hist[d].gone);
    }
    return 0;
}

/* ---- comparing states ---- */

/* An order-independent digest of a set of rows: count, and sums of two 64-bit hashes of each. */
typedef struct digest {
    uint64_t count, h1, h2;
} digest;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* FNV-1a over a field, its length first so that fields cannot run into each other. */
static void feed(uint64_t *h, const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t l = len;
    for (size_t i = 0; i < sizeof(l); i++) {
        *h ^= (l >> (8 * i)) & 0xff;
        *h *= 0x100000001b3ull;
    }
    for (size_t i = 0; i < len; i++) {
        *h ^= b[i];
        *h *= 0x100000001b3ull;
    }
}

static void feed_str(uint64_t *h, const char *s)
{
    if (s == NULL)
        feed(h, "\xff", 1); /* NULL (a tombstone's value) differs from "" */
    else
        feed(h, s, strlen(s) + 1);
}

static void digest_add(digest *d, uint64_t h)
{
    d->count++;
    d->h1 += mix(h);
    d->h2 += mix(h ^ 0x5851f42d4c957f2dull) * 3 + 1;
}

static int kv_row(const rs_kv_entry *e, void *payload)
{
    uint64_t h = 0xcbf29ce484222325ull;
    feed_str(&h, e->ns);
    feed_str(&h, e->key);
    feed_str(&h, e->value);
    feed(&h, &e->hlc, sizeof(e->hlc));
    feed(&h, &e->host, sizeof(e->host));
    digest_add(payload, h);
    return 0;
}

static int history_row(const rs_history_entry *e, void *payload)
{
    uint64_t h = 0xcbf29ce484222325ull;
    feed(&h, &e->id, sizeof(e->id));
    feed_str(&h, e->command);
    feed_str(&h, e->cwd);
    feed_str(&h, e->session);
    feed_str(&h, e->hostname);
    feed(&h, &e->exit_code, sizeof(e->exit_code));
    feed(&h, &e->duration_ms, sizeof(e->duration_ms));
    feed(&h, &e->time_ms, sizeof(e->time_ms));
    feed(&h, &e->deleted, sizeof(e->deleted));
    feed(&h, &e->hlc, sizeof(e->hlc));
    feed(&h, &e->host, sizeof(e->host));
    digest_add(payload, h);
    return 0;
}

static digest state_digest(rs_store *s, const char *tag)
{
    digest d = {0, 0, 0};
    int err = strcmp(tag, RS_KV_TAG) == 0 ? rs_kv_foreach(s, NULL, kv_row, &d)
                                          : rs_history_foreach(s, history_row, &d);
    if (err < 0)
        die("reading the state", err);
    return d;
}

static int sum_bytes(const rs_record *rec, void *payload)
{
    uint64_t *sum = payload;
    sum[0]++;
    sum[1] += rec->data_len;
    return 0;
}

/* A fresh device syncs once (replay or snapshot), timed; its state checked against DIR_REF's. */
static int cmd_ready(const char *url, const char *user, const char *dir, const char *ref_dir,
                     const char *tag)
{
    rs_store *ref = open_store(ref_dir), *s = join(url, user, dir, ref);
    rs_sync_opts opts = {0};
    rs_sync_report *r = NULL;
    uint64_t held[2] = {0, 0}, snap_bytes = 0, snap_items_covered = 0, snap_ms = 0;
    long loaded = 0;
    double t, cpu;
    int err;

    opts.snapshot_every = UINT64_MAX;
    opts.replay = strcmp(mode, "replay") == 0;
    cpu = cpu_s();
    t = now_s();
    if ((err = rs_sync(&r, s, &opts)) < 0)
        die("sync", err);
    t = now_s() - t;
    cpu = cpu_s() - cpu;
    if (r->held_count > 0) {
        fprintf(stderr, "bench_snapshot: the new device held back %s: %s\n", r->held[0].tag,
                r->held[0].reason);
        return 1;
    }
    for (size_t i = 0; i < r->snapshot_count; i++)
        if (r->snapshots[i].loaded) {
            loaded++;
            snap_bytes += r->snapshots[i].bytes;
            snap_items_covered += r->snapshots[i].covered;
            snap_ms += r->snapshots[i].elapsed_ms;
        }
    if ((err = rs_store_foreach(s, tag, sum_bytes, held)) < 0)
        die("reading the records pulled", err);
    digest mine = state_digest(s, tag), want = state_digest(ref, tag);
    bool same = mine.count == want.count && mine.h1 == want.h1 && mine.h2 == want.h2;
    if (!same)
        fprintf(stderr,
                "bench_snapshot: the new device's %s state differs from %s's: %llu rows, "
                "%llu there\n",
                tag, ref_dir, (unsigned long long)mine.count, (unsigned long long)want.count);
    if (!opts.replay && loaded == 0)
        fprintf(stderr, "bench_snapshot: the new device loaded no snapshot\n");
    emit("ready_ms", (long)want.count, t * 1e3, "ms");
    emit("ready_cpu_ms", (long)want.count, cpu * 1e3, "ms");
    emit("snapshots_loaded", (long)want.count, (double)loaded, "count");
    emit("snapshot_load_ms", (long)want.count, (double)snap_ms, "ms");
    emit("snapshot_covered", (long)want.count, (double)snap_items_covered, "records");
    emit("records_pulled", (long)want.count, (double)r->downloaded, "records");
    emit("snapshot_bytes", (long)want.count, (double)snap_bytes, "bytes");
    emit("record_bytes", (long)want.count, (double)held[1], "bytes");
    emit("download_bytes", (long)want.count, (double)(snap_bytes + held[1]), "bytes");
    emit("state_rows", (long)want.count, (double)mine.count, "rows");
    emit("identical", (long)want.count, same ? 1 : 0, "bool");
    rs_sync_report_free(r);
    rs_store_free(s);
    rs_store_free(ref);
    return same && (opts.replay || loaded > 0) ? 0 : 1;
}

/* One snapshot of `tag` written in `dir`: per item and per MiB. */
static int cmd_cost(const char *dir, const char *tag)
{
    rs_store *s = open_store(dir);
    rs_snapshot_info info;
    double cpu = cpu_s(), t = now_s();
    int err = rs_snapshot_write(&info, s, tag);
    t = now_s() - t;
    cpu = cpu_s() - cpu;
    if (err < 0)
        die("writing a snapshot", err);
    emit("snapshot_write_ms", (long)info.items, t * 1e3, "ms");
    emit("snapshot_items", (long)info.items, (double)info.items, "items");
    emit("snapshot_write_bytes", (long)info.items, (double)info.bytes, "bytes");
    emit("snapshot_write_us_per_item", (long)info.items, t * 1e6 / (double)info.items, "us");
    emit("snapshot_write_ms_per_mib", (long)info.items, t * 1e3 / ((double)info.bytes / 1048576.0),
         "ms");
    emit("snapshot_write_cpu_us_per_item", (long)info.items, cpu * 1e6 / (double)info.items, "us");
    emit("snapshot_write_cpu_ms_per_mib", (long)info.items,
         cpu * 1e3 / ((double)info.bytes / 1048576.0), "ms");
    rs_store_free(s);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_snapshot kv URL USER DIR N KEYS DEVICES BATCH EVERY |\n"
                    "       history URL USER DIR N DEVICES BATCH EVERY |\n"
                    "       ready URL USER DIR_NEW DIR_REF replay|snapshot kv|history |\n"
                    "       cost DIR kv|history\n");
    return 2;
}

static bool devices_ok(const char *s)
{
    long d = atol(s);
    return d >= 1 && d <= MAX_DEVICES;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "kv") == 0 && argc == 10 && atol(argv[5]) > 0 && atol(argv[6]) > 0 &&
        devices_ok(argv[7]) && atol(argv[8]) > 0) {
        workload = "kv";
        return cmd_workload(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]), atol(argv[7]),
                            atol(argv[8]), strtoull(argv[9], NULL, 10));
    }
    if (strcmp(cmd, "history") == 0 && argc == 9 && atol(argv[5]) > 0 && devices_ok(argv[6]) &&
        atol(argv[7]) > 0) {
        workload = "history";
        return cmd_workload(argv[2], argv[3], argv[4], atol(argv[5]), 0, atol(argv[6]),
                            atol(argv[7]), strtoull(argv[8], NULL, 10));
    }
    if (strcmp(cmd, "ready") == 0 && argc == 8 &&
        (strcmp(argv[6], "replay") == 0 || strcmp(argv[6], "snapshot") == 0) &&
        (strcmp(argv[7], "kv") == 0 || strcmp(argv[7], "history") == 0)) {
        mode = argv[6];
        workload = argv[7];
        return cmd_ready(argv[2], argv[3], argv[4], argv[5], argv[7]);
    }
    if (strcmp(cmd, "cost") == 0 && argc == 4 &&
        (strcmp(argv[3], "kv") == 0 || strcmp(argv[3], "history") == 0)) {
        workload = argv[3];
        return cmd_cost(argv[2], argv[3]);
    }
    return usage();
}
