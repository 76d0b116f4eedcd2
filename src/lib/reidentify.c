/*
 * A copied store gets its own identity (reidentify.h).
 *
 * A store directory copied to a second machine (cp -a, a restored backup)
 * carries the host id of the first: both append to the same shards, and
 * whichever syncs second holds a second history of them, which sync
 * refuses (RS_ECONFLICT, RS_EAHEAD). Reidentify gives the refused store a
 * new host id and moves what only it wrote there:
 *
 * - The server's records of an old shard are the store's own up to some
 *   idx (the copy point, or wherever the other machine's uploads start),
 *   then they differ: records written after a copy have fresh random ids.
 *   Equality is therefore a prefix, found by binary search with one
 *   single-record request per probe. Below a start the server pruned, the
 *   first record it still holds must chain from the store's head there.
 * - In one store transaction, each old shard is cut back to that idx (its
 *   records below are the server's, now another device's shard, and the
 *   next sync downloads the rest of it), and the records above are sealed
 *   again as the new host's shard from idx 0, in order, keeping their ids,
 *   clocks, versions and payloads (the header is the AEAD's associated
 *   data, so the envelope must be sealed again; the chain starts afresh
 *   from the new shard's start value). States keyed by (hlc, host) are
 *   rebuilt, so every device applies the same writes with the same hosts.
 * - The other machine keeps the old id and needs nothing.
 *
 * The login as a new device comes first (the server binds host ids to
 * users, and a host id's token is the other machine's): the new id is
 * noted in the store before it, so a crash after the login and before the
 * transaction leaves the store as it was but for the note, and running
 * again reuses that device instead of registering another.
 */
#include "client.h"
#include "reidentify_int.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SHARD_NAME (RS_UUID_STRLEN + RS_TAG_MAX + 2)
#define META_PENDING "reidentify.host"
#define META_ACKED "sync.acked"
#define BATCH_RECORDS 512
#define BATCH_BYTES ((size_t)8 << 20)

void rs_reidentify_report_free(rs_reidentify_report *report)
{
    if (report == NULL)
        return;
    rs_free(report->shards);
    rs_free(report);
}

static int prep(rs_store *store, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v2(store->db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0
                           : rs__sqlite_error(store->db, rc, "preparing a reidentify statement");
}

static int step_done(rs_store *store, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, what);
}

/* ---- the local half ---- */

/* Records of an old shard read ahead of being sealed again (their data copied). */
typedef struct batch {
    rs_record *recs;
    size_t count, cap;
} batch;

static void batch_clear(batch *b)
{
    for (size_t i = 0; i < b->count; i++)
        rs_free((void *)b->recs[i].data);
    b->count = 0;
}

/*
 * Reads records [from, end) of shard (host, tag), up to BATCH_RECORDS and
 * about BATCH_BYTES, into `b`; each must be the next idx (a hole is RS_EIO:
 * the store is damaged).
 */
static int batch_read(batch *b, rs_store *store, const rs_uuid *host, const char *tag,
                      uint64_t from, uint64_t end)
{
    sqlite3_stmt *st = NULL;
    size_t bytes = 0;
    int rc, err;
    if (b->cap == 0) {
        if ((b->recs = rs__calloc(BATCH_RECORDS, sizeof(*b->recs))) == NULL)
            return rs__error(RS_ENOMEM, "out of memory reidentifying a store");
        b->cap = BATCH_RECORDS;
    }
    if ((err = prep(store, &st,
                    "SELECT idx, id, hlc, version, data FROM records WHERE host = ?1 AND "
                    "tag = ?2 AND idx >= ?3 AND idx < ?4 ORDER BY idx LIMIT ?5")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)from);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)end);
    sqlite3_bind_int64(st, 5, BATCH_RECORDS);
    while (bytes < BATCH_BYTES && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_record *r = &b->recs[b->count];
        size_t len = (size_t)sqlite3_column_bytes(st, 4);
        uint8_t *data = rs__malloc(len ? len : 1);
        if (data == NULL) {
            err = rs__error(RS_ENOMEM, "out of memory reidentifying a store");
            goto done;
        }
        memset(r, 0, sizeof(*r));
        r->host = *host;
        snprintf(r->tag, sizeof(r->tag), "%s", tag);
        r->idx = (uint64_t)sqlite3_column_int64(st, 0);
        if (sqlite3_column_bytes(st, 1) == 16)
            memcpy(r->id.bytes, sqlite3_column_blob(st, 1), 16);
        r->hlc = (rs_hlc)sqlite3_column_int64(st, 2);
        r->version = (uint32_t)sqlite3_column_int64(st, 3);
        memcpy(data, sqlite3_column_blob(st, 4), len);
        r->data = data;
        r->data_len = len;
        b->count++;
        bytes += len;
        if (r->idx != from + b->count - 1) {
            char name[SHARD_NAME];
            rs__shard_name(name, sizeof(name), host, tag);
            err = rs__error(RS_EIO,
                            "shard %s of store %s has no record at idx %llu (the next is %llu): "
                            "the store is damaged; 'recsync verify' names what",
                            name, store->dir, (unsigned long long)(from + b->count - 1),
                            (unsigned long long)r->idx);
            goto done;
        }
    }
    if (bytes < BATCH_BYTES && rc != SQLITE_DONE && rc != SQLITE_ROW)
        err = rs__sqlite_error(store->db, rc, "reading records to reidentify");
done:
    sqlite3_finalize(st);
    return err;
}

/* The statements one shard's move uses, prepared once. */
typedef struct mover {
    rs_store *store;
    const rs_uuid *old_host, *new_host;
    sqlite3_stmt *del, *ins;
    uint8_t *plain, *env;
    size_t plain_cap, env_cap;
} mover;

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    if (*buf) {
        sodium_memzero(*buf, *cap);
        rs_free(*buf);
    }
    *cap = 0;
    if ((*buf = rs__malloc(need)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory reidentifying a store");
    *cap = need;
    return 0;
}

/*
 * Seals the record `old` again as idx `idx` of shard (new host, its tag),
 * chained from `prev` (which becomes its head), and stores it in place of
 * the old one (removed first: record ids are unique in the store).
 */
static int move_one(mover *m, const rs_record *old, uint64_t idx, uint8_t *prev)
{
    rs_record rec;
    size_t len = 0, need = old->data_len > RS_ENVELOPE_OVERHEAD ? old->data_len : 1;
    uint8_t head[RS_CHAIN_BYTES], check[RS_CHECK_BYTES];
    int err;

    if ((err = grow(&m->plain, &m->plain_cap, need)) < 0)
        return err;
    if ((err = rs__open(m->plain, &len, m->store->key, old)) < 0) {
        char name[200];
        rs__record_name(name, sizeof(name), old);
        return rs__error(err,
                         "%s does not open, so it cannot be sealed under a new host id (%s): "
                         "run 'recsync repair' first",
                         name, rs_error_last());
    }
    if ((err = grow(&m->env, &m->env_cap, rs__envelope_len(len) + RS_CHAIN_BYTES)) < 0)
        return err;
    rec = *old;
    rec.host = *m->new_host;
    rec.idx = idx;
    if ((err = rs__seal_chained(m->env, m->store->key, &rec, prev, m->plain, len)) < 0)
        return err;
    sodium_memzero(m->plain, len);
    rec.data = m->env;
    rec.data_len = rs__envelope_len(len) + RS_CHAIN_BYTES;
    rs__chain_head(head, m->store->key, &rec);
    rs__chain_check(check, m->store->key, &rec);

    sqlite3_bind_blob(m->del, 1, old->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(m->del, 2, old->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(m->del, 3, (sqlite3_int64)old->idx);
    if ((err = step_done(m->store, m->del, "removing a record to reidentify")) < 0)
        return err;
    sqlite3_bind_blob(m->ins, 1, rec.host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(m->ins, 2, rec.tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(m->ins, 3, (sqlite3_int64)rec.idx);
    sqlite3_bind_blob(m->ins, 4, rec.id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(m->ins, 5, (sqlite3_int64)rec.hlc);
    sqlite3_bind_int64(m->ins, 6, (sqlite3_int64)rec.version);
    sqlite3_bind_blob(m->ins, 7, rec.data, (int)rec.data_len, SQLITE_STATIC);
    sqlite3_bind_blob(m->ins, 8, head, RS_CHAIN_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(m->ins, 9, check, RS_CHECK_BYTES, SQLITE_STATIC);
    if ((err = step_done(m->store, m->ins, "storing a reidentified record")) < 0)
        return err;
    memcpy(prev, head, RS_CHAIN_BYTES);
    return 0;
}

/* Runs `sql` with (host, tag, n) bound as ?1 ?2 ?3. */
static int exec_shard(rs_store *store, const char *sql, const rs_uuid *host, const char *tag,
                      uint64_t n, const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = prep(store, &st, sql);
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)n);
    err = step_done(store, st, what);
    sqlite3_finalize(st);
    return err;
}

/*
 * Moves records [keep, end) of old shard `ls` to the new host's shard of
 * its tag (idx 0..), and cuts the old shard back to end at `keep`. *moved
 * counts the records moved. Inside the caller's transaction.
 */
static int move_shard(uint64_t *moved, mover *m, const rs_shard *ls, uint64_t keep)
{
    batch b = {NULL, 0, 0};
    uint8_t prev[RS_CHAIN_BYTES];
    uint64_t n = 0;
    int err = 0;

    rs__chain_start(prev, m->store->key, m->new_host, ls->tag);
    while (keep + n < ls->end) {
        if ((err = batch_read(&b, m->store, m->old_host, ls->tag, keep + n, ls->end)) < 0)
            goto done;
        if (b.count == 0) {
            char name[SHARD_NAME];
            rs__shard_name(name, sizeof(name), m->old_host, ls->tag);
            err = rs__error(RS_EIO,
                            "shard %s of store %s ends at idx %llu but holds no record at %llu: "
                            "the store is damaged; 'recsync verify' names what",
                            name, m->store->dir, (unsigned long long)ls->end,
                            (unsigned long long)(keep + n));
            goto done;
        }
        for (size_t i = 0; i < b.count; i++)
            if ((err = move_one(m, &b.recs[i], n + i, prev)) < 0)
                goto done;
        n += b.count;
        batch_clear(&b);
    }
    /* The old shard ends where the server's records stop being the store's. */
    if ((err = exec_shard(m->store,
                          "DELETE FROM unapplied WHERE host = ?1 AND tag = ?2 AND idx >= ?3",
                          m->old_host, ls->tag, keep, "reidentifying a shard")) < 0)
        goto done;
    if (keep == 0)
        err = exec_shard(m->store, "DELETE FROM shards WHERE host = ?1 AND tag = ?2 AND ?3 = 0",
                         m->old_host, ls->tag, keep, "reidentifying a shard");
    else
        err = exec_shard(m->store,
                         "UPDATE shards SET end = ?3, head = (SELECT head FROM records r WHERE "
                         "r.host = ?1 AND r.tag = ?2 AND r.idx = ?3 - 1) WHERE host = ?1 AND "
                         "tag = ?2",
                         m->old_host, ls->tag, keep, "reidentifying a shard");
    if (err < 0)
        goto done;
    if (n > 0) {
        sqlite3_stmt *st = NULL;
        if ((err = prep(m->store, &st,
                        "INSERT INTO shards(host, tag, start, end, head, start_head) "
                        "VALUES (?1, ?2, 0, ?3, ?4, NULL)")) < 0)
            goto done;
        sqlite3_bind_blob(st, 1, m->new_host->bytes, 16, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, ls->tag, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)n);
        sqlite3_bind_blob(st, 4, prev, RS_CHAIN_BYTES, SQLITE_STATIC);
        err = step_done(m->store, st, "reidentifying a shard");
        sqlite3_finalize(st);
    }
    *moved = n;
done:
    batch_clear(&b);
    rs_free(b.recs);
    return err;
}

/* The end `held` gives shard (host, tag), within [ls->start, ls->end]. */
static uint64_t keep_of(const rs_index *held, const rs_shard *ls)
{
    const rs_shard *h = rs_index_find(held, &ls->host, ls->tag);
    uint64_t k = h ? h->end : ls->start;
    return k < ls->start ? ls->start : k > ls->end ? ls->end : k;
}

/*
 * Drops the snapshots the store keeps whose frontier covers a record of an
 * old shard that moved (state the server's records there do not make):
 * no device may load them, and none is rebuilt from them here.
 */
static int drop_snapshots(rs_store *store, const rs_reidentify_report *rep)
{
    sqlite3_stmt *st = NULL, *del = NULL, *del_chunks = NULL;
    char old[RS_UUID_STRLEN + 1];
    rs_uuid *ids = NULL;
    size_t n = 0;
    int rc, err;

    rs_uuid_format(old, &rep->old_host);
    if ((err = prep(store, &st, "SELECT id, tag, frontier FROM snapshots")) < 0 ||
        (err = prep(store, &del, "DELETE FROM snapshots WHERE id = ?1")) < 0 ||
        (err = prep(store, &del_chunks, "DELETE FROM snapshot_chunks WHERE id = ?1")) < 0)
        goto done;
    /* Deleting rows behind the cursor of a WITHOUT ROWID table: collect ids first. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *tag = (const char *)sqlite3_column_text(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        json_t *arr = text ? json_loads(text, 0, NULL) : NULL;
        uint64_t covers = 0, keep = UINT64_MAX;
        for (size_t i = 0; json_is_array(arr) && i < json_array_size(arr); i++) {
            const json_t *e = json_array_get(arr, i);
            const char *h = json_string_value(json_object_get(e, "host"));
            if (h && strcmp(h, old) == 0 && json_is_integer(json_object_get(e, "end")))
                covers = (uint64_t)json_integer_value(json_object_get(e, "end"));
        }
        json_decref(arr);
        for (size_t i = 0; tag && i < rep->count; i++)
            if (strcmp(rep->shards[i].tag, tag) == 0)
                keep = rep->shards[i].kept;
        if (covers <= keep || sqlite3_column_bytes(st, 0) != 16)
            continue;
        rs_uuid *grown = rs__realloc(ids, (n + 1) * sizeof(*ids));
        if (grown == NULL) {
            err = rs__error(RS_ENOMEM, "out of memory reidentifying a store");
            goto done;
        }
        ids = grown;
        memcpy(ids[n++].bytes, sqlite3_column_blob(st, 0), 16);
    }
    if (rc != SQLITE_DONE)
        err = rs__sqlite_error(store->db, rc, "reading the store's snapshots");
    for (size_t i = 0; i < n && err == 0; i++) {
        sqlite3_bind_blob(del, 1, ids[i].bytes, 16, SQLITE_STATIC);
        sqlite3_bind_blob(del_chunks, 1, ids[i].bytes, 16, SQLITE_STATIC);
        if ((err = step_done(store, del, "dropping a snapshot")) == 0)
            err = step_done(store, del_chunks, "dropping a snapshot");
    }
done:
    rs_free(ids);
    sqlite3_finalize(st);
    sqlite3_finalize(del);
    sqlite3_finalize(del_chunks);
    return err;
}

/* Sets meta `name` (NULL value: removes it), names the store itself owns included. */
static int meta_write(rs_store *store, const char *name, const char *value)
{
    sqlite3_stmt *st = NULL;
    int err = prep(store, &st,
                   value ? "INSERT OR REPLACE INTO meta(name, value) VALUES (?1, ?2)"
                         : "DELETE FROM meta WHERE name = ?1");
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (value)
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    err = step_done(store, st, "keeping the new host id");
    sqlite3_finalize(st);
    return err;
}

/* Rebuilds the state of `tag` when a store is registered for it. */
static int rebuild_if_known(rs_store *store, const char *tag)
{
    int err = rs_store_rebuild(store, tag);
    return err == RS_ENOTFOUND ? 0 : err;
}

int rs__reidentify_local(rs_reidentify_report *rep, rs_store *store, const rs_uuid *new_host,
                         const char *token, const rs_index *held)
{
    rs_index *local = NULL;
    rs_uuid old = store->host;
    mover m;
    char host_text[RS_UUID_STRLEN + 1];
    int err, in_txn = 0;

    memset(&m, 0, sizeof(m));
    memset(rep, 0, sizeof(*rep));
    rep->old_host = old;
    rep->new_host = *new_host;
    if (rs_uuid_is_nil(new_host) || rs_uuid_cmp(new_host, &old) == 0)
        return rs__error(RS_EINVAL, "a new host id must differ from the old one and be non-nil");
    if ((err = rs_store_begin(store)) < 0)
        return err;
    in_txn = 1;
    /* Read under the write lock: an append by another process cannot slip in between. */
    if ((err = rs_store_index(&local, store)) < 0)
        goto done;
    if ((rep->shards = rs__calloc(local->count ? local->count : 1, sizeof(*rep->shards))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory reidentifying a store");
        goto done;
    }
    m.store = store;
    m.old_host = &old;
    m.new_host = new_host;
    if ((err = prep(store, &m.del,
                    "DELETE FROM records WHERE host = ?1 AND tag = ?2 AND idx = ?3")) < 0 ||
        (err = prep(store, &m.ins,
                    "INSERT INTO records(host, tag, idx, id, hlc, version, data, head, chk) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")) < 0)
        goto done;
    for (size_t i = 0; i < local->count; i++) {
        const rs_shard *ls = &local->shards[i];
        if (rs_uuid_cmp(&ls->host, &old) != 0)
            continue;
        rs_reidentify_shard *s = &rep->shards[rep->count++];
        uint64_t moved = 0, keep = keep_of(held, ls);
        snprintf(s->tag, sizeof(s->tag), "%s", ls->tag);
        s->kept = keep;
        if (keep < ls->end && (err = move_shard(&moved, &m, ls, keep)) < 0)
            goto done;
        s->resealed = moved;
        rep->kept += keep - ls->start;
        rep->resealed += moved;
    }
    rs_uuid_format(host_text, new_host);
    if ((err = meta_write(store, "host", host_text)) < 0 ||
        (token && (err = meta_write(store, RS_META_TOKEN, token)) < 0) ||
        (err = meta_write(store, META_PENDING, NULL)) < 0 ||
        (err = meta_write(store, META_ACKED, NULL)) < 0 || (err = drop_snapshots(store, rep)) < 0)
        goto done;
    /* States compare (hlc, host): every tag touched is applied again under the new id. */
    store->host = *new_host;
    for (size_t i = 0; i < rep->count; i++)
        if (rep->shards[i].resealed && (err = rebuild_if_known(store, rep->shards[i].tag)) < 0)
            goto done;
    err = rs_store_commit(store);
    in_txn = 0;
done:
    if (in_txn)
        rs_store_rollback(store);
    if (err < 0)
        store->host = old;
    sqlite3_finalize(m.del);
    sqlite3_finalize(m.ins);
    if (m.plain) {
        sodium_memzero(m.plain, m.plain_cap);
        rs_free(m.plain);
    }
    rs_free(m.env);
    rs_index_free(local);
    return err;
}

/* ---- what the server holds ---- */

typedef struct probe {
    rs_store *store;
    rs_client *client;
    rs_wire_batch one;
    uint64_t requests;
} probe;

typedef struct match {
    const rs_record *remote;
    int same;
} match;

static int compare_one(const rs_record *rec, void *payload)
{
    match *m = payload;
    m->same = memcmp(rec->id.bytes, m->remote->id.bytes, 16) == 0 && rec->hlc == m->remote->hlc &&
              rec->version == m->remote->version && rec->data_len == m->remote->data_len &&
              memcmp(rec->data, m->remote->data, rec->data_len) == 0;
    return 0;
}

static int fetch(probe *p, const rs_uuid *host, const char *tag, uint64_t idx)
{
    rs_wire_batch_free(&p->one);
    memset(&p->one, 0, sizeof(p->one));
    p->requests++;
    return rs__fetch_record(&p->one, p->client, host, tag, idx);
}

/* *same: whether the server's record at `idx` of the shard is the store's. */
static int same_at(int *same, probe *p, const rs_shard *ls, uint64_t idx)
{
    match m = {NULL, 0};
    int err = fetch(p, &ls->host, ls->tag, idx);
    if (err < 0)
        return err;
    m.remote = &p->one.records[0];
    err = rs_store_range(p->store, &ls->host, ls->tag, idx, idx + 1, compare_one, &m);
    *same = m.same;
    return err;
}

/*
 * *chains: whether the server's record at `idx` (> the store's start)
 * chains from the head the store holds before it: then the server's
 * records below idx, pruned or not, are the store's.
 */
static int chains_at(int *chains, probe *p, const rs_shard *ls, uint64_t idx)
{
    uint8_t prev[RS_CHAIN_BYTES], mine[RS_CHAIN_BYTES], *plain = NULL;
    int chained = 0, known = 0, err;
    *chains = 0;
    if ((err = fetch(p, &ls->host, ls->tag, idx)) < 0)
        return err;
    const rs_record *rec = &p->one.records[0];
    if ((plain = rs__malloc(rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len : 1)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory reidentifying a store");
    err = rs__open_chained(plain, NULL, prev, &chained, p->store->key, rec);
    sodium_memzero(plain, rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len : 1);
    rs_free(plain);
    if (err == RS_ECRYPTO)
        return 0; /* a damaged copy on the server proves nothing */
    if (err < 0)
        return err;
    if ((err = rs__chain_head_before(mine, &known, p->store, &ls->host, ls->tag, idx)) < 0)
        return err;
    *chains = chained && known && sodium_memcmp(prev, mine, RS_CHAIN_BYTES) == 0;
    return 0;
}

/*
 * *out: the idx below which the server's records of own shard `ls` are the
 * store's (records written after a copy have fresh ids, so the equal ones
 * are a prefix). `rs` is the server's shard (NULL: none).
 */
static int held_end(uint64_t *out, probe *p, const rs_shard *ls, const rs_shard *rs)
{
    char name[SHARD_NAME];
    uint64_t lo, hi;
    int same = 0, chains = 0, err;

    if (rs == NULL || rs->end == 0 || rs->end <= ls->start || ls->end <= ls->start) {
        *out = ls->start; /* the server holds nothing the store has */
        return 0;
    }
    lo = ls->start > rs->start ? ls->start : rs->start;
    hi = ls->end < rs->end ? ls->end : rs->end;
    if (hi > lo) {
        uint64_t a = lo, b = hi - 1;
        if ((err = same_at(&same, p, ls, hi - 1)) < 0)
            return err;
        if (same) {
            *out = hi;
            return 0;
        }
        while (a < b) { /* the first idx that differs, in [a, b]; b differs */
            uint64_t mid = a + (b - a) / 2;
            if ((err = same_at(&same, p, ls, mid)) < 0)
                return err;
            if (same)
                a = mid + 1;
            else
                b = mid;
        }
        if (a > lo || lo == ls->start) {
            *out = a;
            return 0;
        }
    } else if (rs->start != ls->end || rs->end <= rs->start) {
        lo = UINT64_MAX; /* the server pruned past the store's end: nothing to compare */
    }
    /* The first record the server holds is above the store's start: its chain tells. */
    if (lo != UINT64_MAX && (err = chains_at(&chains, p, ls, lo)) < 0)
        return err;
    if (chains) {
        *out = lo;
        return 0;
    }
    rs__shard_name(name, sizeof(name), &ls->host, ls->tag);
    return rs__error(RS_EGONE,
                     "cannot tell which records of shard %s the server holds: it pruned the "
                     "shard below idx %llu, and its records from there are not this store's "
                     "(which holds [%llu, %llu))",
                     name, (unsigned long long)rs->start, (unsigned long long)ls->start,
                     (unsigned long long)ls->end);
}

/* ---- the whole ---- */

static void secret_free(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        rs_free(s);
    }
}

/* The new host id: the one a run cut short noted, else a fresh one noted now. */
static int pending_host(rs_uuid *out, rs_store *store)
{
    char *text = NULL, buf[RS_UUID_STRLEN + 1];
    int err = rs_store_meta_get(&text, store, META_PENDING);
    if (err == 0) {
        err = rs_uuid_parse(out, text);
        rs_free(text);
        if (err == 0 && rs_uuid_cmp(out, &store->host) != 0 && !rs_uuid_is_nil(out))
            return 0;
    } else if (err != RS_ENOTFOUND) {
        return err;
    }
    do
        rs_uuid_random(out);
    while (rs_uuid_cmp(out, &store->host) == 0);
    rs_uuid_format(buf, out);
    return rs_store_meta_set(store, META_PENDING, buf);
}

/* POST /api/v1/login as device `host`; the token in *token (wipe and free it). */
static int login_as(char **token, rs_client *client, const char *user, const char *password,
                    const rs_uuid *host, const char *name)
{
    rs_buf body = {0};
    const rs_buf *resp = NULL;
    char dev[RS_WIRE_DEVICE_NAME_MAX + 1] = "", *who = NULL;
    int err;

    if (name == NULL || *name == '\0') {
        if (gethostname(dev, sizeof(dev) - 1) != 0 || !rs_wire_device_name_valid(dev))
            dev[0] = '\0';
        name = dev;
    }
    if ((err = rs_wire_credentials_encode_named(&body, user, password, host, name)) == 0 &&
        (err = rs__client_request(&resp, NULL, client, "/api/v1/login", body.ptr, body.len, 0)) ==
            0 &&
        (err = rs_wire_token_decode(token, &who, resp->ptr, resp->len)) < 0)
        err = rs__error(RS_ESERVER, "server %s answered a login with no token: %s",
                        rs__client_url(client), rs_error_last());
    if (body.ptr)
        sodium_memzero(body.ptr, body.len);
    rs_buf_free(&body);
    rs_free(who);
    return err;
}

int rs_reidentify(rs_reidentify_report **out, rs_store *store, const char *password,
                  const rs_login_opts *opts)
{
    char *url = NULL, *user = NULL, *old_token = NULL, *token = NULL;
    rs_reidentify_report *rep = NULL;
    rs_index *remote = NULL, *held = NULL, *local = NULL;
    rs_client *client = NULL;
    probe p;
    rs_uuid new_host;
    int err;

    memset(&p, 0, sizeof(p));
    memset(&new_host, 0, sizeof(new_host));
    if (out)
        *out = NULL;
    if (password == NULL || *password == '\0' || strlen(password) > RS_WIRE_PASSWORD_MAX)
        return rs__error(RS_EINVAL, "the account's password must be 1-%d bytes",
                         RS_WIRE_PASSWORD_MAX);
    if (opts && opts->device_name && *opts->device_name &&
        !rs_wire_device_name_valid(opts->device_name))
        return rs__error(RS_EINVAL,
                         "device name '%.70s' is not valid: 1-64 bytes, no control characters",
                         opts->device_name);
    err = rs_store_meta_get(&url, store, RS_META_SERVER);
    if (err == 0)
        err = rs_store_meta_get(&user, store, RS_META_USER);
    if (err == 0)
        err = rs_store_meta_get(&old_token, store, RS_META_TOKEN);
    if (err == RS_ENOTFOUND) {
        err = rs__error(RS_EAUTH,
                        "store %s is not logged in to a server: reidentify joins the account "
                        "this store syncs with as a new device, and asks its server which "
                        "records it holds. Log in first ('recsync login --server URL --user "
                        "NAME'), then run 'recsync reidentify'. Nothing was changed",
                        store->dir);
        goto done;
    }
    if (err < 0)
        goto done;
    if ((err = pending_host(&new_host, store)) < 0)
        goto done;
    /* The old token proves a device of the account: the login brake does not apply. */
    if ((err = rs__client_new(&client, url, old_token, NULL)) < 0 ||
        (err = login_as(&token, client, user, password, &new_host,
                        opts ? opts->device_name : NULL)) < 0)
        goto failed;
    rs__client_free(client);
    client = NULL;
    if ((err = rs__client_new(&client, url, token, NULL)) < 0 ||
        (err = rs__fetch_index(&remote, client)) < 0)
        goto failed;
    if ((held = rs__calloc(1, sizeof(*held))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory reidentifying a store");
        goto failed;
    }
    /* What the server holds of each old shard, asked before the write lock is taken. */
    if ((err = rs_store_index(&local, store)) < 0)
        goto failed;
    p.store = store;
    p.client = client;
    for (size_t i = 0; i < local->count && err == 0; i++) {
        const rs_shard *ls = &local->shards[i];
        uint64_t end = 0;
        if (rs_uuid_cmp(&ls->host, &store->host) != 0)
            continue;
        if ((err = held_end(&end, &p, ls, rs_index_find(remote, &ls->host, ls->tag))) == 0)
            err = rs_index_add(held, &ls->host, ls->tag, ls->start, end);
    }
    if (err < 0)
        goto failed;
    if ((rep = rs__calloc(1, sizeof(*rep))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory reidentifying a store");
        goto failed;
    }
    if ((err = rs__reidentify_local(rep, store, &new_host, token, held)) < 0)
        goto failed;
    if (out) {
        *out = rep;
        rep = NULL;
    }
    goto done;
failed : {
    char msg[900], h[RS_UUID_STRLEN + 1];
    snprintf(msg, sizeof(msg), "%s", rs_error_last());
    rs_uuid_format(h, &new_host);
    err = rs__error(err,
                    "%s. The store was not changed (but for a note of its new host id %s, "
                    "which running 'recsync reidentify' again reuses)",
                    msg, h);
}
done:
    rs_reidentify_report_free(rep);
    rs_wire_batch_free(&p.one);
    rs__client_free(client);
    rs_index_free(remote);
    rs_index_free(held);
    rs_index_free(local);
    rs_free(url);
    rs_free(user);
    secret_free(old_token);
    secret_free(token);
    return err;
}
