/*
 * Convergence property test of the kv and history stores, in-process.
 *
 * Each scenario is made from one seed: 3-5 devices of one user (one behind
 * the others' clocks), random kv sets and deletes, history creates,
 * deletes and imports of one shared file (so two devices create the same
 * entry ids), pairs of writes to one key in the same millisecond, pairs of
 * history imports and deletes in the same millisecond, devices joining
 * mid-scenario, and random partial exchanges in random orders. After a
 * final full exchange every device's materialized state (tombstones and
 * winning clocks included) must be identical, and equal to a reference
 * computed here from every record ever written, replayed in (HLC, host)
 * order: the order is this file's own (clock as a number, then host id
 * bytes), never the library's rs_hlc_cmp, and the records come from a log
 * the test keeps as each is written (rs_store_range of the writer's shard
 * right after the step), since compaction and pruning remove them from
 * stores and the server.
 *
 * Two ways to exchange records:
 *   relay (the default, unit.test_convergence): an in-memory server; each
 *     exchange moves a random prefix of each shard, in pages, shards in
 *     random order, so every order of arrival gets exercised.
 *   server: a real recsyncd at $RS_CONV_SERVER (run with --test-hooks),
 *     through rs_register, rs_login and rs_sync of random device subsets in
 *     random order (tests/integration/test_convergence.py runs this). Here
 *     scenarios also write snapshots by hand (rs_snapshot_write, and
 *     rs_snapshot_push or not) and through syncs (a low snapshot_every),
 *     run prune passes (POST /api/v1/test/prune), and take devices offline
 *     while the others prune past them: they keep writing, and when they
 *     come back their sync must load a snapshot and keep what they wrote.
 *     No sync may ever hold a shard back.
 * Environment: RS_CONV_SCENARIOS (count; default 200), RS_CONV_SEED (the
 * first scenario's seed; default fixed), RS_CONV_ONLY (run that one seed).
 * A failure prints the scenario's seed and the states that differ; a run
 * prints how many snapshots were written and loaded, records pruned, and
 * devices that joined or came back.
 *
 * Clocks are virtual (the store's clock hook), so a seed replays the same
 * scenario; host ids are derived from the seed too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin.h"
#include "client.h"
#include "testutil.h"
#include "wire.h"

#include <jansson.h>
#include <time.h>

#define MAX_DEVICES 8 /* 3-5 at the start, the others join later */
#define DEFAULT_SEED UINT64_C(20261123)
#define DEFAULT_SCENARIOS 200

/* splitmix64: small, fast, and the same everywhere. */
typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint32_t below(rng *r, uint32_t n)
{
    return n ? (uint32_t)(rng_next(r) % n) : 0;
}

static void rng_uuid(rs_uuid *out, rng *r)
{
    uint64_t a = rng_next(r), b = rng_next(r);
    memcpy(out->bytes, &a, 8);
    memcpy(out->bytes + 8, &b, 8);
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x40);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
}

/* The in-memory server of relay mode: one array of records per shard. */
typedef struct relay_shard {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    test_recs r;
} relay_shard;

typedef struct scenario scenario;

typedef struct device {
    scenario *sc;
    rs_store *store;
    rs_uuid host;
    int64_t offset_ms; /* the device's clock against the scenario's */
    char dir[TEST_PATH_MAX + 16];
    uint64_t logged[2]; /* records of its own kv and history shards in the scenario's log */
    int silent;         /* offline: syncs only when it comes back (server mode) */
} device;

/* What the scenarios exercised, summed over a run. */
typedef struct tally {
    uint64_t records;   /* records written */
    uint64_t written;   /* snapshots written (by hand and by syncs) */
    uint64_t loaded;    /* snapshots loaded by syncs */
    uint64_t pruned;    /* records the server pruned */
    uint64_t compacted; /* records dropped locally below the server's start */
    uint64_t joined;    /* devices that joined mid-scenario */
    uint64_t returned;  /* devices that came back after pruning past them */
} tally;

struct scenario {
    uint64_t seed;
    rng r;
    int ndev;
    device dev[MAX_DEVICES];
    uint64_t now;    /* the scenario's clock, Unix ms */
    uint64_t pinned; /* when nonzero every device's clock reads this */
    const char *server;
    char root[TEST_PATH_MAX];
    char import_file[TEST_PATH_MAX + 16];
    char user[64];
    relay_shard shards[2 * MAX_DEVICES];
    int nshards;
    char *key;           /* the master key, for devices that join later */
    test_recs log;       /* every record any device ever wrote, logged right after writing */
    uint64_t snap_every; /* rs_sync_opts.snapshot_every of this scenario (server mode) */
    tally t;
    char failure[512];
};

static uint64_t device_now(void *ctx)
{
    device *d = ctx;
    if (d->sc->pinned)
        return d->sc->pinned;
    return (uint64_t)((int64_t)d->sc->now + d->offset_ms);
}

/* Records the first failure of a scenario; returns -1 for `return scenario_fail(...)`. */
static int scenario_fail(scenario *sc, const char *fmt, ...) RS_PRINTF(2, 3);
static int scenario_fail(scenario *sc, const char *fmt, ...)
{
    va_list ap;
    if (sc->failure[0])
        return -1;
    va_start(ap, fmt);
    vsnprintf(sc->failure, sizeof(sc->failure), fmt, ap);
    va_end(ap);
    return -1;
}

#define CHECK(sc, call)                                                                            \
    do {                                                                                           \
        int check_err_ = (call);                                                                   \
        if (check_err_ < 0)                                                                        \
            return scenario_fail((sc), "%s: %d %s", #call, check_err_, rs_error_last());           \
    } while (0)

static int set_host(device *d, rng *r)
{
    sqlite3_stmt *st = NULL;
    char text[RS_UUID_STRLEN + 1];
    int rc;
    rng_uuid(&d->host, r);
    rs_uuid_format(text, &d->host);
    if (sqlite3_prepare_v2(rs_store_db(d->store), "UPDATE meta SET value = ?1 WHERE name = 'host'",
                           -1, &st, NULL) != SQLITE_OK)
        return scenario_fail(d->sc, "preparing the host update");
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return scenario_fail(d->sc, "setting host id %s", text);
    d->store->host = d->host;
    return 0;
}

/* Device i: its store (under the user's key), a host id from the seed, its clock, its login. */
static int make_device(scenario *sc, int i, int64_t offset_ms)
{
    device *d = &sc->dev[i];
    d->sc = sc;
    snprintf(d->dir, sizeof(d->dir), "%s/d%d", sc->root, i);
    if (i == 0) {
        CHECK(sc, rs_store_init(&d->store, d->dir, NULL));
        CHECK(sc, rs_store_key_export(&sc->key, d->store));
    } else {
        CHECK(sc, rs_store_init_with_key(&d->store, d->dir, sc->key, NULL));
    }
    if (set_host(d, &sc->r) < 0)
        return -1;
    d->offset_ms = offset_ms;
    d->store->clock.now_ms = device_now;
    d->store->clock.now_ctx = d;
    if (sc->server) {
        if (i == 0)
            CHECK(sc, rs_register(d->store, sc->server, sc->user, "convergence-pw"));
        else
            CHECK(sc, rs_login(d->store, sc->server, sc->user, "convergence-pw"));
    }
    return 0;
}

static int make_devices(scenario *sc)
{
    int behind = (int)below(&sc->r, (uint32_t)sc->ndev);
    for (int i = 0; i < sc->ndev; i++) {
        int64_t offset = i == behind ? -(int64_t)(1000 + below(&sc->r, 119000)) : 0;
        if (make_device(sc, i, offset) < 0)
            return -1;
    }
    return 0;
}

/*
 * The scenario's log: the records of d's own shards it has not logged yet,
 * right after it wrote them (before a sync could compact them away, or the
 * server prune them), so the reference sees every record ever written.
 */
static int log_device(scenario *sc, device *d)
{
    static const char *const tags[] = {RS_KV_TAG, RS_HISTORY_TAG};
    rs_index *index = NULL;
    CHECK(sc, rs_store_index(&index, d->store));
    for (int t = 0; t < 2; t++) {
        uint64_t end = test_index_end(index, &d->host, tags[t]);
        size_t before = sc->log.n;
        if (end > d->logged[t]) {
            int err = rs_store_range(d->store, &d->host, tags[t], d->logged[t], end, test_collect,
                                     &sc->log);
            if (err < 0 || sc->log.n - before != end - d->logged[t]) {
                rs_index_free(index);
                return scenario_fail(sc, "logging %llu new records of %s: %s",
                                     (unsigned long long)(end - d->logged[t]), tags[t],
                                     err < 0 ? rs_error_last() : "some are missing");
            }
            sc->t.records += end - d->logged[t];
            d->logged[t] = end;
        }
    }
    rs_index_free(index);
    return 0;
}

static int log_all(scenario *sc)
{
    for (int i = 0; i < sc->ndev; i++)
        if (log_device(sc, &sc->dev[i]) < 0)
            return -1;
    return 0;
}

/* ---- operations ---- */

static const char *const namespaces[] = {"a", "b"};
static const char *const keys[] = {"k0", "k1", "k2", "k3"};
static const char *const commands[] = {"ls -la", "git status", "make test", "cd /tmp",
                                       "echo héllo"};

typedef struct names {
    char v[64][48];
    int n;
} names;

static int collect_key(const char *ns, const char *key, const char *value, void *payload)
{
    names *k = payload;
    (void)value;
    if (k->n < 64)
        snprintf(k->v[k->n++], sizeof(k->v[0]), "%s\t%s", ns, key);
    return 0;
}

static int collect_entry(const rs_history_entry *e, void *payload)
{
    names *k = payload;
    if (k->n < 64)
        rs_uuid_format(k->v[k->n++], &e->id);
    return 0;
}

static int op_kv_set(scenario *sc, device *d, int step)
{
    char value[64];
    snprintf(value, sizeof(value), "v%d-d%d", step, (int)(d - sc->dev));
    CHECK(sc, rs_kv_set(d->store, namespaces[below(&sc->r, 2)], keys[below(&sc->r, 4)], value));
    return 0;
}

static int op_kv_del(scenario *sc, device *d)
{
    names k;
    char *name, *tab;
    k.n = 0;
    CHECK(sc, rs_kv_list(d->store, NULL, collect_key, &k));
    if (k.n == 0)
        return 0;
    name = k.v[below(&sc->r, (uint32_t)k.n)];
    tab = strchr(name, '\t');
    *tab = '\0';
    CHECK(sc, rs_kv_del(d->store, name, tab + 1));
    return 0;
}

static int op_same_ms_pair(scenario *sc, int step)
{
    int a = (int)below(&sc->r, (uint32_t)sc->ndev);
    int b = (a + 1 + (int)below(&sc->r, (uint32_t)sc->ndev - 1)) % sc->ndev;
    const char *ns = namespaces[below(&sc->r, 2)], *key = keys[below(&sc->r, 4)];
    char value[64];
    sc->pinned = sc->now + 1;
    snprintf(value, sizeof(value), "pair%d-d%d", step, a);
    CHECK(sc, rs_kv_set(sc->dev[a].store, ns, key, value));
    snprintf(value, sizeof(value), "pair%d-d%d", step, b);
    CHECK(sc, rs_kv_set(sc->dev[b].store, ns, key, value));
    sc->pinned = 0;
    sc->now += 1;
    return 0;
}

static int op_history_add(scenario *sc, device *d, int step)
{
    rs_history_entry e;
    char command[64], cwd[32];
    memset(&e, 0, sizeof(e));
    rng_uuid(&e.id, &sc->r);
    snprintf(command, sizeof(command), "%s #%d", commands[below(&sc->r, 5)], step);
    snprintf(cwd, sizeof(cwd), "/home/d%d", (int)(d - sc->dev));
    e.command = command;
    e.cwd = cwd;
    e.session = "s";
    e.hostname = "h";
    e.exit_code = below(&sc->r, 3);
    e.duration_ms = below(&sc->r, 1000);
    e.time_ms = (int64_t)(sc->now - below(&sc->r, 100000));
    CHECK(sc, rs_history_add(NULL, d->store, &e));
    return 0;
}

static int op_history_delete(scenario *sc, device *d)
{
    names k;
    rs_uuid id;
    k.n = 0;
    CHECK(sc, rs_history_list(d->store, 0, collect_entry, &k));
    if (k.n == 0)
        return 0;
    CHECK(sc, rs_uuid_parse(&id, k.v[below(&sc->r, (uint32_t)k.n)]));
    CHECK(sc, rs_history_delete(d->store, &id));
    return 0;
}

static int op_history_import(scenario *sc, device *d)
{
    CHECK(sc, rs_history_import(NULL, d->store, RS_HISTORY_ZSH, sc->import_file));
    return 0;
}

/* An entry id from d's live history, chosen by the seed; 0 when it has none. */
static int pick_entry(scenario *sc, device *d, rs_uuid *id)
{
    names k;
    k.n = 0;
    CHECK(sc, rs_history_list(d->store, 0, collect_entry, &k));
    if (k.n == 0)
        return 0;
    CHECK(sc, rs_uuid_parse(id, k.v[below(&sc->r, (uint32_t)k.n)]));
    return 1;
}

/* Deletes `id` on d unless d does not hold it live (then nothing is written). */
static int delete_if_live(scenario *sc, device *d, const rs_uuid *id)
{
    int err = rs_history_delete(d->store, id);
    if (err < 0 && err != RS_ENOTFOUND)
        return scenario_fail(sc, "rs_history_delete: %d %s", err, rs_error_last());
    return 0;
}

/*
 * Two devices change history in one millisecond: both import the shared
 * file (the same entry ids at the same clock from two hosts), both delete
 * one entry, or one imports while the other deletes.
 */
static int op_same_ms_history(scenario *sc)
{
    int a = (int)below(&sc->r, (uint32_t)sc->ndev);
    int b = (a + 1 + (int)below(&sc->r, (uint32_t)sc->ndev - 1)) % sc->ndev;
    uint32_t kind = below(&sc->r, 3);
    rs_uuid id;
    int err = 0, found;
    sc->pinned = sc->now + 1;
    if (kind == 0) {
        err = op_history_import(sc, &sc->dev[a]);
        if (err == 0)
            err = op_history_import(sc, &sc->dev[b]);
    } else if ((found = pick_entry(sc, &sc->dev[a], &id)) < 0) {
        err = -1;
    } else if (kind == 1 && found) {
        err = delete_if_live(sc, &sc->dev[a], &id);
        if (err == 0)
            err = delete_if_live(sc, &sc->dev[b], &id);
    } else if (kind == 2) {
        err = op_history_import(sc, &sc->dev[b]);
        if (err == 0 && found)
            err = delete_if_live(sc, &sc->dev[a], &id);
    }
    sc->pinned = 0;
    sc->now += 1;
    return err;
}

/* ---- exchanges ---- */

static relay_shard *relay_shard_of(scenario *sc, const rs_uuid *host, const char *tag)
{
    for (int i = 0; i < sc->nshards; i++)
        if (rs_uuid_cmp(&sc->shards[i].host, host) == 0 && strcmp(sc->shards[i].tag, tag) == 0)
            return &sc->shards[i];
    if (sc->nshards == (int)(sizeof(sc->shards) / sizeof(sc->shards[0])))
        return NULL;
    memset(&sc->shards[sc->nshards], 0, sizeof(sc->shards[0]));
    sc->shards[sc->nshards].host = *host;
    snprintf(sc->shards[sc->nshards].tag, sizeof(sc->shards[0].tag), "%s", tag);
    return &sc->shards[sc->nshards++];
}

static uint64_t local_end(device *d, const rs_uuid *host, const char *tag)
{
    rs_index *index = NULL;
    uint64_t end;
    if (rs_store_index(&index, d->store) < 0)
        return UINT64_MAX;
    end = test_index_end(index, host, tag);
    rs_index_free(index);
    return end;
}

/* A random end in [from, to], half the time `to` itself. */
static uint64_t random_end(rng *r, uint64_t from, uint64_t to)
{
    if (to <= from || below(r, 2))
        return to;
    return from + below(r, (uint32_t)(to - from + 1));
}

/* Relay mode: a random prefix of each of d's shards goes up. */
static int relay_upload(scenario *sc, device *d, bool all)
{
    static const char *const tags[] = {RS_KV_TAG, RS_HISTORY_TAG};
    for (int t = 0; t < 2; t++) {
        relay_shard *rs = relay_shard_of(sc, &d->host, tags[t]);
        uint64_t end = local_end(d, &d->host, tags[t]), to;
        if (rs == NULL || end == UINT64_MAX)
            return scenario_fail(sc, "relay: no room for shard of %s", tags[t]);
        to = all ? end : random_end(&sc->r, rs->r.n, end);
        if (to > rs->r.n)
            CHECK(sc,
                  rs_store_range(d->store, &d->host, tags[t], rs->r.n, to, test_collect, &rs->r));
    }
    return 0;
}

/* Relay mode: of each other shard, in random order, a random prefix comes down in pages. */
static int relay_download(scenario *sc, device *d, bool all)
{
    int order[2 * MAX_DEVICES];
    for (int i = 0; i < sc->nshards; i++)
        order[i] = i;
    for (int i = sc->nshards - 1; i > 0; i--) {
        int j = (int)below(&sc->r, (uint32_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < sc->nshards; i++) {
        relay_shard *rs = &sc->shards[order[i]];
        uint64_t from, to;
        if (rs_uuid_cmp(&rs->host, &d->host) == 0)
            continue;
        from = local_end(d, &rs->host, rs->tag);
        to = all ? rs->r.n : random_end(&sc->r, from, rs->r.n);
        while (from < to) {
            uint64_t page = 1 + below(&sc->r, 4);
            if (page > to - from)
                page = to - from;
            CHECK(sc, rs_store_insert(NULL, d->store, rs->r.v + from, (size_t)page));
            from += page;
        }
    }
    return 0;
}

/*
 * One device exchanges with the server (or the relay). A sync that holds a
 * shard back fails the scenario: every device, back from offline or not,
 * must always be able to sync, from a snapshot where the log was pruned.
 */
static int sync_device(scenario *sc, device *d, bool all)
{
    rs_sync_report *report = NULL;
    rs_sync_opts opts;
    int err = 0;
    if (!sc->server) {
        if (relay_upload(sc, d, all) < 0 || relay_download(sc, d, all) < 0)
            return -1;
        return 0;
    }
    memset(&opts, 0, sizeof(opts));
    opts.snapshot_every = sc->snap_every;
    CHECK(sc, rs_sync(&report, d->store, &opts));
    if (report->held_count > 0) {
        char name[RS_UUID_STRLEN + 1];
        rs_uuid_format(name, &report->held[0].host);
        err = scenario_fail(sc, "device %d: sync held back shard %s/%s at %llu: %s",
                            (int)(d - sc->dev), name, report->held[0].tag,
                            (unsigned long long)report->held[0].idx, report->held[0].reason);
    }
    for (size_t i = 0; i < report->snapshot_count; i++) {
        if (report->snapshots[i].loaded)
            sc->t.loaded++;
        else
            sc->t.written++;
    }
    sc->t.compacted += report->compacted;
    rs_sync_report_free(report);
    return err;
}

/* Some devices (not the silent ones), in random order, exchange with the server. */
static int op_sync(scenario *sc)
{
    int order[MAX_DEVICES], n = 0;
    for (int i = 0; i < sc->ndev; i++)
        if (below(&sc->r, 2) && !sc->dev[i].silent)
            order[n++] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)below(&sc->r, (uint32_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < n; i++)
        if (sync_device(sc, &sc->dev[order[i]], false) < 0)
            return -1;
    return 0;
}

/* ---- snapshots, pruning, devices that join late or go away (server mode) ---- */

static const char *const snap_tags[] = {RS_KV_TAG, RS_HISTORY_TAG};

/* The server's index, through d's token. */
static int server_index(scenario *sc, device *d, rs_index **out)
{
    rs_client *client = NULL;
    int err = rs__store_client(&client, d->store, NULL);
    if (err == 0)
        err = rs__fetch_index(out, client);
    rs__client_free(client);
    if (err < 0)
        return scenario_fail(sc, "device %d: fetching the server's index: %d %s",
                             (int)(d - sc->dev), err, rs_error_last());
    return 0;
}

/*
 * A device writes a snapshot of a tag by hand, and half the time uploads it
 * (and any other it has not uploaded yet) at once. An upload the server
 * refuses because a snapshot claims records of this device not uploaded
 * yet (409) is what the contract says; the next sync uploads it after the
 * records. Anything else fails.
 */
static int op_snapshot(scenario *sc, device *d)
{
    const char *tag = snap_tags[below(&sc->r, 2)];
    rs_snapshot_info info;
    rs_index *remote = NULL;
    uint64_t ahead = 0;
    int err;
    CHECK(sc, rs_snapshot_write(&info, d->store, tag));
    sc->t.written++;
    if (d->silent || below(&sc->r, 2))
        return 0;
    if ((err = rs_snapshot_push(NULL, d->store)) == 0)
        return 0;
    if (err != RS_ECONFLICT)
        return scenario_fail(sc, "device %d: rs_snapshot_push: %d %s", (int)(d - sc->dev), err,
                             rs_error_last());
    if (server_index(sc, d, &remote) < 0)
        return -1;
    for (int t = 0; t < 2; t++) {
        uint64_t mine = local_end(d, &d->host, snap_tags[t]);
        uint64_t there = test_index_end(remote, &d->host, snap_tags[t]);
        ahead += mine > there ? mine - there : 0;
    }
    rs_index_free(remote);
    if (ahead == 0)
        return scenario_fail(sc,
                             "device %d: a snapshot upload was refused (%s) though the server "
                             "holds all of its records",
                             (int)(d - sc->dev), rs_error_last());
    return 0;
}

/* Acks, in d's name, every shard the server has up to its end. */
static int ack_everything(scenario *sc, device *d)
{
    rs_client *client = NULL;
    rs_index *remote = NULL;
    const rs_buf *resp;
    rs_buf body = {0};
    int err;
    if (server_index(sc, d, &remote) < 0)
        return -1;
    for (size_t i = 0; i < remote->count; i++)
        remote->shards[i].start = 0;
    if ((err = rs_wire_frontier_encode(&body, remote)) == 0 &&
        (err = rs__store_client(&client, d->store, NULL)) == 0 && remote->count > 0)
        err = rs__client_request(&resp, NULL, client, "/api/v1/acks", body.ptr, body.len, 1);
    rs__client_free(client);
    rs_buf_free(&body);
    rs_index_free(remote);
    if (err < 0)
        return scenario_fail(sc, "device %d: acking for a silent device: %d %s", (int)(d - sc->dev),
                             err, rs_error_last());
    return 0;
}

/*
 * One prune pass on the server now (POST /api/v1/test/prune, --test-hooks).
 * Half the time the devices online sync first (so their acks are fresh) and
 * one of them uploads a snapshot, so the pass has something to prune below.
 * A silent device must not hold the floor: as if it were past
 * --device-expiry, it acks in its name every shard up to the server's end
 * (it does not hold those records; its next sync must find the gap and load
 * a snapshot). Waiting out a real --device-expiry costs seconds per
 * scenario; test_snapshots.py does that once.
 */
static int op_prune(scenario *sc)
{
    rs_client *client = NULL;
    const rs_buf *resp = NULL;
    json_t *root;
    int err = 0, online[MAX_DEVICES], n = 0;
    for (int i = 0; i < sc->ndev; i++)
        if (!sc->dev[i].silent)
            online[n++] = i;
    if (below(&sc->r, 2)) {
        for (int i = 0; i < n && err == 0; i++)
            err = sync_device(sc, &sc->dev[online[i]], true);
        if (err == 0 && n > 0) {
            device *d = &sc->dev[online[below(&sc->r, (uint32_t)n)]];
            rs_snapshot_info info;
            CHECK(sc, rs_snapshot_write(&info, d->store, snap_tags[below(&sc->r, 2)]));
            CHECK(sc, rs_snapshot_push(NULL, d->store));
            sc->t.written++;
        }
    }
    for (int i = 0; i < sc->ndev && err == 0; i++)
        if (sc->dev[i].silent)
            err = ack_everything(sc, &sc->dev[i]);
    if (err < 0)
        return -1;
    CHECK(sc, rs__store_client(&client, sc->dev[0].store, NULL));
    err = rs__client_request(&resp, NULL, client, "/api/v1/test/prune", "{}", 2, 0);
    if (err == 0) {
        root = json_loadb(resp->ptr, resp->len, 0, NULL);
        if (!json_is_integer(json_object_get(root, "records_pruned")))
            err = scenario_fail(sc, "the prune hook answered %.*s", (int)resp->len, resp->ptr);
        else
            sc->t.pruned += (uint64_t)json_integer_value(json_object_get(root, "records_pruned"));
        json_decref(root);
    } else {
        err = scenario_fail(sc,
                            "POST /api/v1/test/prune (is recsyncd run with --test-hooks?): "
                            "%d %s",
                            err, rs_error_last());
    }
    rs__client_free(client);
    return err;
}

/* A new device of the user joins mid-scenario; its first sync starts from a snapshot. */
static int op_join(scenario *sc)
{
    if (sc->ndev == MAX_DEVICES)
        return 0;
    if (make_device(sc, sc->ndev, 0) < 0)
        return -1;
    sc->ndev++;
    sc->t.joined++;
    if (below(&sc->r, 2))
        return sync_device(sc, &sc->dev[sc->ndev - 1], false);
    return 0;
}

/* A device goes offline: it still writes, but syncs only when it comes back. */
static int op_go_silent(scenario *sc, device *d)
{
    int online = 0;
    for (int i = 0; i < sc->ndev; i++)
        online += !sc->dev[i].silent;
    if (online > 1)
        d->silent = 1;
    return 0;
}

/* A silent device comes back: its sync must load a snapshot if the log was pruned past it. */
static int op_come_back(scenario *sc)
{
    for (int i = 0; i < sc->ndev; i++)
        if (sc->dev[i].silent) {
            sc->dev[i].silent = 0;
            sc->t.returned++;
            return sync_device(sc, &sc->dev[i], below(&sc->r, 2));
        }
    return 0;
}

/* ---- states ---- */

typedef struct text {
    char *s;
    size_t len;
    size_t cap;
} text;

static void text_add(text *t, const char *fmt, ...) RS_PRINTF(2, 3);
static void text_add(text *t, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = 2 * (t->len + (size_t)n + 1);
        t->s = realloc(t->s, t->cap);
        assert_non_null(t->s);
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void dump_kv_line(text *t, const char *ns, const char *key, const char *value, rs_hlc hlc,
                         const rs_uuid *host)
{
    char h[RS_HLC_STRLEN + 1], id[RS_UUID_STRLEN + 1];
    rs_hlc_format(h, hlc);
    rs_uuid_format(id, host);
    text_add(t, "%s\t%s\t%s\t%s\t%s\n", ns, key, value ? value : "(deleted)", h, id);
}

static void dump_history_line(text *t, const rs_history_entry *e)
{
    char h[RS_HLC_STRLEN + 1], id[RS_UUID_STRLEN + 1], host[RS_UUID_STRLEN + 1];
    rs_hlc_format(h, e->hlc);
    rs_uuid_format(id, &e->id);
    rs_uuid_format(host, &e->host);
    if (e->deleted)
        text_add(t, "%s\t(deleted)\t%s\t%s\n", id, h, host);
    else
        text_add(t, "%s\t%s\t%lld\t%s\t%lld\t%lld\t%s\t%s\t%s\t%s\n", id, e->command,
                 (long long)e->time_ms, e->cwd, (long long)e->exit_code, (long long)e->duration_ms,
                 e->session, e->hostname, h, host);
}

static int dump_kv(const rs_kv_entry *e, void *payload)
{
    dump_kv_line(payload, e->ns, e->key, e->value, e->hlc, &e->host);
    return 0;
}

static int dump_history(const rs_history_entry *e, void *payload)
{
    dump_history_line(payload, e);
    return 0;
}

/*
 * The reference: every record ever written (the scenario's log, not what a
 * store or the server still holds after pruning) opened and replayed in
 * (HLC, host) order.
 */
typedef struct ref_kv {
    char ns[16];
    char key[16];
    char *value; /* NULL: deleted */
    rs_hlc hlc;
    rs_uuid host;
} ref_kv;

typedef struct ref_entry {
    rs_history_entry e;
    char *command, *cwd, *session, *hostname;
} ref_entry;

/*
 * (HLC, host) order, written here and not taken from the library (rs_hlc_cmp
 * is under test): the clocks as numbers, then the host ids byte by byte.
 */
static int by_clock(const void *a, const void *b)
{
    const rs_record *x = a, *y = b;
    if (x->hlc != y->hlc)
        return x->hlc < y->hlc ? -1 : 1;
    for (int i = 0; i < 16; i++)
        if (x->host.bytes[i] != y->host.bytes[i])
            return x->host.bytes[i] < y->host.bytes[i] ? -1 : 1;
    return 0;
}

static int by_kv_name(const void *a, const void *b)
{
    const ref_kv *x = a, *y = b;
    int c = strcmp(x->ns, y->ns);
    return c ? c : strcmp(x->key, y->key);
}

static int by_entry_id(const void *a, const void *b)
{
    const ref_entry *x = a, *y = b;
    return rs_uuid_cmp(&x->e.id, &y->e.id);
}

static char *dup_or_empty(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    return strdup(json_is_string(v) ? json_string_value(v) : "");
}

static void free_entry_text(ref_entry *r)
{
    free(r->command);
    free(r->cwd);
    free(r->session);
    free(r->hostname);
    r->command = r->cwd = r->session = r->hostname = NULL;
}

static int reference(scenario *sc, text *kv_out, text *history_out)
{
    test_recs all = sc->log;
    ref_kv kv[64];
    ref_entry *entries = NULL;
    size_t nkv = 0, nentries = 0;
    int err = 0;

    entries = calloc(all.n + 1, sizeof(*entries));
    assert_non_null(entries);
    if (all.n > 1)
        qsort(all.v, all.n, sizeof(*all.v), by_clock);
    for (size_t i = 0; i < all.n && err == 0; i++) {
        const rs_record *rec = &all.v[i];
        uint8_t *plain = NULL;
        size_t len = 0, k;
        json_t *root;
        const char *op;
        if ((err = rs_record_open(&plain, &len, sc->dev[0].store, rec)) < 0)
            break;
        root = json_loadb((const char *)plain, len, 0, NULL);
        rs_free(plain);
        op = json_string_value(json_object_get(root, "op"));
        if (root == NULL || op == NULL) {
            err = scenario_fail(sc, "reference: a record does not parse");
        } else if (strcmp(rec->tag, RS_KV_TAG) == 0) {
            const char *ns = json_string_value(json_object_get(root, "ns"));
            const char *key = json_string_value(json_object_get(root, "key"));
            for (k = 0; k < nkv; k++)
                if (strcmp(kv[k].ns, ns) == 0 && strcmp(kv[k].key, key) == 0)
                    break;
            if (k == nkv) {
                assert_true(nkv < 64);
                snprintf(kv[k].ns, sizeof(kv[k].ns), "%s", ns);
                snprintf(kv[k].key, sizeof(kv[k].key), "%s", key);
                kv[k].value = NULL;
                nkv++;
            }
            free(kv[k].value);
            kv[k].value = strcmp(op, "set") == 0
                              ? strdup(json_string_value(json_object_get(root, "value")))
                              : NULL;
            kv[k].hlc = rec->hlc;
            kv[k].host = rec->host;
        } else if (strcmp(rec->tag, RS_HISTORY_TAG) == 0) {
            rs_uuid id;
            ref_entry *r;
            if (rs_uuid_parse(&id, json_string_value(json_object_get(root, "id"))) < 0) {
                err = scenario_fail(sc, "reference: a history record without an id");
                json_decref(root);
                break;
            }
            for (k = 0; k < nentries; k++)
                if (rs_uuid_cmp(&entries[k].e.id, &id) == 0)
                    break;
            r = &entries[k];
            if (k == nentries) {
                nentries++;
                r->e.id = id;
            } else if (r->e.deleted) {
                /* A tombstone only moves to a later delete. */
                if (strcmp(op, "delete") == 0) {
                    r->e.hlc = rec->hlc;
                    r->e.host = rec->host;
                }
                json_decref(root);
                continue;
            }
            free_entry_text(r);
            r->e.hlc = rec->hlc;
            r->e.host = rec->host;
            r->e.deleted = strcmp(op, "delete") == 0;
            if (!r->e.deleted) {
                r->command = dup_or_empty(root, "command");
                r->cwd = dup_or_empty(root, "cwd");
                r->session = dup_or_empty(root, "session");
                r->hostname = dup_or_empty(root, "hostname");
                r->e.time_ms = json_integer_value(json_object_get(root, "time"));
                r->e.exit_code = json_integer_value(json_object_get(root, "exit"));
                r->e.duration_ms = json_integer_value(json_object_get(root, "duration"));
            }
        }
        json_decref(root);
    }
    if (err == 0) {
        qsort(kv, nkv, sizeof(kv[0]), by_kv_name);
        for (size_t k = 0; k < nkv; k++)
            dump_kv_line(kv_out, kv[k].ns, kv[k].key, kv[k].value, kv[k].hlc, &kv[k].host);
        qsort(entries, nentries, sizeof(*entries), by_entry_id);
        for (size_t k = 0; k < nentries; k++) {
            ref_entry *r = &entries[k];
            r->e.command = r->command;
            r->e.cwd = r->cwd;
            r->e.session = r->session;
            r->e.hostname = r->hostname;
            dump_history_line(history_out, &r->e);
        }
    }
    for (size_t k = 0; k < nkv; k++)
        free(kv[k].value);
    for (size_t k = 0; k < nentries; k++)
        free_entry_text(&entries[k]);
    free(entries);
    if (err < 0 && !sc->failure[0])
        return scenario_fail(sc, "reference: %s", rs_error_last());
    return err < 0 ? -1 : 0;
}

static int compare(scenario *sc, const char *what, const text *want, const text *got,
                   const char *who)
{
    if (strcmp(want->s ? want->s : "", got->s ? got->s : "") == 0)
        return 0;
    fprintf(stderr, "--- %s expected:\n%s--- %s of %s:\n%s", what, want->s ? want->s : "", what,
            who, got->s ? got->s : "");
    return scenario_fail(sc, "%s of %s differs from %s", what, who, "the reference");
}

static int check_converged(scenario *sc)
{
    text want_kv = {NULL, 0, 0}, want_history = {NULL, 0, 0};
    int err = reference(sc, &want_kv, &want_history);

    for (int i = 0; i < sc->ndev && err == 0; i++) {
        text kv = {NULL, 0, 0}, history = {NULL, 0, 0};
        rs_index *index = NULL;
        char who[32];
        uint64_t records = 0;
        snprintf(who, sizeof(who), "device %d", i);
        if (rs_kv_foreach(sc->dev[i].store, NULL, dump_kv, &kv) < 0 ||
            rs_history_foreach(sc->dev[i].store, dump_history, &history) < 0 ||
            rs_store_index(&index, sc->dev[i].store) < 0) {
            err = scenario_fail(sc, "reading %s: %s", who, rs_error_last());
        } else {
            /* Every shard ends where its writer's log does (what lies below a
               start was compacted away, its state kept by a snapshot). */
            for (size_t s = 0; s < index->count; s++)
                records += index->shards[s].end;
            for (int w = 0; w < sc->ndev && err == 0; w++)
                for (int t = 0; t < 2 && err == 0; t++) {
                    uint64_t end = test_index_end(index, &sc->dev[w].host, snap_tags[t]);
                    if (end != sc->dev[w].logged[t])
                        err = scenario_fail(sc,
                                            "%s holds shard %s of device %d up to %llu, "
                                            "which wrote %llu",
                                            who, snap_tags[t], w, (unsigned long long)end,
                                            (unsigned long long)sc->dev[w].logged[t]);
                }
            if (err == 0 && records != sc->log.n)
                err =
                    scenario_fail(sc,
                                  "%s has shards ending at %llu records in all; %llu "
                                  "were written",
                                  who, (unsigned long long)records, (unsigned long long)sc->log.n);
            if (err == 0)
                err = compare(sc, "kv state", &want_kv, &kv, who);
            if (err == 0)
                err = compare(sc, "history state", &want_history, &history, who);
        }
        rs_index_free(index);
        free(kv.s);
        free(history.s);
    }
    free(want_kv.s);
    free(want_history.s);
    return err;
}

static void write_import_file(scenario *sc)
{
    FILE *f;
    snprintf(sc->import_file, sizeof(sc->import_file), "%s/zsh_history", sc->root);
    f = fopen(sc->import_file, "w");
    assert_non_null(f);
    fprintf(f, ": %llu:1;ls\n: %llu:0;ls\n: %llu:2;vim notes\\\nmore\n",
            (unsigned long long)(sc->now / 1000 - 100), (unsigned long long)(sc->now / 1000 - 100),
            (unsigned long long)(sc->now / 1000 - 50));
    fclose(f);
}

/* One scenario; 0 when it converged, else -1 with sc->failure set. */
static int run_scenario(scenario *sc)
{
    int steps, err = 0;

    sc->r.s = sc->seed;
    sc->ndev = 3 + (int)below(&sc->r, 3);
    sc->now = UINT64_C(1750000000000) + below(&sc->r, 1000000000);
    /* Syncs write snapshots past a few records; one scenario in four never. */
    sc->snap_every = below(&sc->r, 4) ? 3 + below(&sc->r, 12) : UINT64_MAX;
    if (test_tempdir(sc->root) < 0)
        return scenario_fail(sc, "no temporary directory");
    snprintf(sc->user, sizeof(sc->user), "conv-%llx-%llx", (unsigned long long)sc->seed,
             (unsigned long long)time(NULL));
    write_import_file(sc);
    if (make_devices(sc) < 0)
        return -1;
    steps = 8 + (int)below(&sc->r, 20);
    for (int step = 0; step < steps && err == 0; step++) {
        device *d = &sc->dev[below(&sc->r, (uint32_t)sc->ndev)];
        /* Snapshots, pruning and devices going away need the server. */
        uint32_t pick = below(&sc->r, sc->server ? 124 : 103);
        if (pick < 24)
            err = op_kv_set(sc, d, step);
        else if (pick < 33)
            err = op_kv_del(sc, d);
        else if (pick < 40)
            err = op_same_ms_pair(sc, step);
        else if (pick < 52)
            err = op_history_add(sc, d, step);
        else if (pick < 58)
            err = op_history_delete(sc, d);
        else if (pick < 62)
            err = op_history_import(sc, d);
        else if (pick < 68)
            err = op_same_ms_history(sc);
        else if (pick < 100)
            err = op_sync(sc);
        else if (pick < 103)
            err = op_join(sc);
        else if (pick < 110)
            err = op_snapshot(sc, d);
        else if (pick < 115)
            err = op_prune(sc);
        else if (pick < 120)
            err = op_go_silent(sc, d);
        else
            err = op_come_back(sc);
        /* Logged before any later sync can compact them away. */
        if (err == 0)
            err = log_all(sc);
        sc->now += below(&sc->r, 4);
    }
    /* The final round: everyone (the silent ones back) sends everything, then receives it. */
    for (int i = 0; i < sc->ndev; i++)
        if (sc->dev[i].silent) {
            sc->dev[i].silent = 0;
            sc->t.returned++;
        }
    for (int round = 0; round < 2 && err == 0; round++)
        for (int i = 0; i < sc->ndev && err == 0; i++)
            err = sync_device(sc, &sc->dev[i], true);
    if (err == 0)
        err = check_converged(sc);
    return err;
}

static void free_scenario(scenario *sc)
{
    for (int i = 0; i < sc->ndev; i++)
        rs_store_free(sc->dev[i].store);
    for (int i = 0; i < sc->nshards; i++)
        test_recs_free(&sc->shards[i].r);
    test_recs_free(&sc->log);
    if (sc->key) {
        memset(sc->key, 0, strlen(sc->key));
        rs_free(sc->key);
    }
    if (sc->root[0])
        test_rmtree(sc->root);
}

static uint64_t env_u64(const char *name, uint64_t fallback)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : fallback;
}

static void run_all(const char *server)
{
    uint64_t seed = env_u64("RS_CONV_SEED", DEFAULT_SEED);
    uint64_t count = env_u64("RS_CONV_SCENARIOS", DEFAULT_SCENARIOS);
    uint64_t only = env_u64("RS_CONV_ONLY", 0), done = 0;
    struct timespec t0, t1;
    tally sum;

    if (only) {
        seed = only;
        count = 1;
    }
    memset(&sum, 0, sizeof(sum));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = 0; i < count; i++) {
        scenario *sc = calloc(1, sizeof(*sc));
        assert_non_null(sc);
        sc->seed = seed + i;
        sc->server = server;
        if (run_scenario(sc) < 0) {
            char msg[700];
            snprintf(msg, sizeof(msg),
                     "convergence (%s): scenario with seed %llu failed: %s\n"
                     "replay it with RS_CONV_ONLY=%llu",
                     server ? "server" : "relay", (unsigned long long)sc->seed, sc->failure,
                     (unsigned long long)sc->seed);
            free_scenario(sc);
            free(sc);
            fail_msg("%s", msg);
        }
        sum.records += sc->t.records;
        sum.written += sc->t.written;
        sum.loaded += sc->t.loaded;
        sum.pruned += sc->t.pruned;
        sum.compacted += sc->t.compacted;
        sum.joined += sc->t.joined;
        sum.returned += sc->t.returned;
        free_scenario(sc);
        free(sc);
        done++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("convergence (%s): %llu scenarios converged (seeds %llu..%llu) in %.1f s\n",
           server ? server : "relay", (unsigned long long)done, (unsigned long long)seed,
           (unsigned long long)(seed + count - 1),
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    printf("convergence (%s): %llu records written; snapshots: %llu written, %llu loaded; "
           "%llu records pruned, %llu compacted locally; %llu devices joined late, %llu came "
           "back from offline\n",
           server ? "server" : "relay", (unsigned long long)sum.records,
           (unsigned long long)sum.written, (unsigned long long)sum.loaded,
           (unsigned long long)sum.pruned, (unsigned long long)sum.compacted,
           (unsigned long long)sum.joined, (unsigned long long)sum.returned);
    assert_int_equal(done, count);
    assert_true(done > 0);
}

static void convergence_scenarios(void **state)
{
    (void)state;
    run_all(getenv("RS_CONV_SERVER") && *getenv("RS_CONV_SERVER") ? getenv("RS_CONV_SERVER")
                                                                  : NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(convergence_scenarios),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
