/*
 * Repairing a store whose records were damaged on disk (sync.h, rs_repair).
 *
 * A record that no longer opens is never uploaded (sync.c holds its shard
 * back), so the damage stays on this device. Repair takes each damaged
 * record back to a state every device agrees on:
 *
 * - another device's record: the local copy of that shard is cut back to
 *   just below it, and the next sync downloads the rest again;
 * - this device's record that the server holds: the server's copy, when it
 *   opens and is the same record (id, clock, version), replaces the local one;
 * - this device's record the server never received: its content is lost on
 *   every device. The shard is cut back to it and the records after it,
 *   none of which left this device either, are sealed again one position
 *   lower, keeping their ids and clocks, so nothing else is lost and no
 *   other device ever saw the positions that move.
 *
 * A cut shard's store state is rebuilt from its records, all in one
 * transaction: a crash leaves the store as it was before, or repaired.
 */
#include "client.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define SHARD_NAME (RS_UUID_STRLEN + RS_TAG_MAX + 2)

typedef struct damage {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t idx;
    rs_uuid id;
} damage;

typedef struct scan_state {
    rs_store *store;
    damage *list;
    size_t count, cap;
    uint8_t *plain;
    size_t plain_cap;
    uint64_t records;
} scan_state;

/* Grows `*buf` to at least `need` bytes (scratch for opened payloads). */
static int reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    uint8_t *grown = rs__realloc(*buf, need);
    if (grown == NULL)
        return rs__error(RS_ENOMEM, "out of memory repairing a store");
    *buf = grown;
    *cap = need;
    return 0;
}

static void scratch_free(uint8_t *buf, size_t cap)
{
    if (buf) {
        sodium_memzero(buf, cap);
        rs_free(buf);
    }
}

static size_t plain_need(const rs_record *rec)
{
    return rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len - RS_ENVELOPE_OVERHEAD : 1;
}

/* Notes `rec` when it does not open under the store's key for a reason of its own bytes. */
static int scan_one(const rs_record *rec, void *payload)
{
    scan_state *st = payload;
    int err;
    st->records++;
    if ((err = reserve(&st->plain, &st->plain_cap, plain_need(rec))) < 0)
        return err;
    err = rs__open(st->plain, NULL, st->store->key, rec);
    if (err != RS_ECRYPTO)
        return 0; /* opens, or sealed under another key: not damage */
    if (st->count == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 16;
        damage *grown = rs__realloc(st->list, cap * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory listing damaged records");
        st->list = grown;
        st->cap = cap;
    }
    damage *d = &st->list[st->count++];
    d->host = rec->host;
    snprintf(d->tag, sizeof(d->tag), "%s", rec->tag);
    d->idx = rec->idx;
    d->id = rec->id;
    return 0;
}

static void step(rs_repair_report *r, rs_problem_cb cb, void *payload, int code, const char *fmt,
                 ...) RS_PRINTF(5, 6);

/* Tells the caller one thing repair found or did. */
static void step(rs_repair_report *r, rs_problem_cb cb, void *payload, int code, const char *fmt,
                 ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (code < 0)
        r->unrepaired++;
    if (cb)
        cb(code, msg, payload);
}

static int exec_shard(rs_store *store, const char *sql, const rs_uuid *host, const char *tag,
                      uint64_t idx, const char *what)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(store->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(store->db, rc, what);
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)idx);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, what);
}

/* Stores `rec` (sealed) in place of whatever is at its idx. */
static int put_record(rs_store *store, const rs_record *rec)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(store->db,
                                "INSERT OR REPLACE INTO records(host, tag, idx, id, hlc, version, "
                                "data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(store->db, rc, "repairing a record");
    sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
    sqlite3_bind_blob(st, 4, rec->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)rec->hlc);
    sqlite3_bind_int64(st, 6, rec->version);
    sqlite3_bind_blob(st, 7, rec->data, (int)rec->data_len, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "repairing a record");
}

/* Cuts shard (host, tag) back to end at `idx`: its records from idx on are removed. */
static int cut_shard(rs_store *store, const rs_uuid *host, const char *tag, uint64_t idx)
{
    int err = exec_shard(store, "DELETE FROM records WHERE host = ?1 AND tag = ?2 AND idx >= ?3",
                         host, tag, idx, "cutting a damaged shard back");
    if (err == 0)
        err = exec_shard(store, "DELETE FROM unapplied WHERE host = ?1 AND tag = ?2 AND idx >= ?3",
                         host, tag, idx, "cutting a damaged shard back");
    if (err == 0)
        err = exec_shard(store, "UPDATE shards SET end = ?3 WHERE host = ?1 AND tag = ?2", host,
                         tag, idx, "cutting a damaged shard back");
    if (err == 0)
        err = rs__chain_reshard(store, host, tag);
    return err;
}

/* The records of this device's shard after a lost one, opened, to be sealed again lower. */
typedef struct moved {
    rs_record rec; /* header; data is the plaintext */
    uint8_t *plain;
    size_t len;
} moved;

typedef struct collect_state {
    rs_store *store;
    uint64_t lost_from;
    moved *list;
    size_t count, cap;
    uint64_t lost; /* damaged records among them, dropped too */
} collect_state;

static int collect_one(const rs_record *rec, void *payload)
{
    collect_state *cs = payload;
    size_t need = plain_need(rec), len = 0;
    uint8_t *plain;
    int err;
    if (rec->idx == cs->lost_from)
        return 0;
    if ((plain = rs__malloc(need)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory repairing a shard");
    if ((err = rs__open(plain, &len, cs->store->key, rec)) < 0) {
        rs_free(plain);
        if (err != RS_ECRYPTO)
            return err;
        cs->lost++;
        return 0;
    }
    if (cs->count == cs->cap) {
        size_t cap = cs->cap ? 2 * cs->cap : 16;
        moved *grown = rs__realloc(cs->list, cap * sizeof(*grown));
        if (grown == NULL) {
            rs_free(plain);
            return rs__error(RS_ENOMEM, "out of memory repairing a shard");
        }
        cs->list = grown;
        cs->cap = cap;
    }
    moved *m = &cs->list[cs->count++];
    m->rec = *rec;
    m->rec.data = NULL;
    m->rec.data_len = 0;
    m->plain = plain;
    m->len = len;
    return 0;
}

/*
 * This device's shard (host, tag) lost its record at `idx`, which the server
 * never received: cut the shard there and seal the later records again one
 * position lower each (damaged ones among them are dropped too). Inside the
 * caller's transaction.
 */
static int drop_lost(rs_repair_report *r, rs_store *store, const rs_uuid *host, const char *tag,
                     uint64_t idx)
{
    collect_state cs = {store, idx, NULL, 0, 0, 0};
    uint8_t *env = NULL, prev[RS_CHAIN_BYTES];
    size_t env_cap = 0;
    int err, known = 0;

    if ((err = rs_store_range(store, host, tag, idx, UINT64_MAX, collect_one, &cs)) < 0 ||
        (err = rs__chain_head_before(prev, &known, store, host, tag, idx)) < 0 ||
        (err = cut_shard(store, host, tag, idx)) < 0)
        goto done;
    if (!known)
        rs__chain_start(prev, store->key, host, tag);
    for (size_t i = 0; i < cs.count; i++) {
        moved *m = &cs.list[i];
        m->rec.idx = idx + i;
        if ((err = reserve(&env, &env_cap, rs__envelope_len(m->len) + RS_CHAIN_BYTES)) < 0 ||
            (err = rs__seal_chained(env, store->key, &m->rec, prev, m->plain, m->len)) < 0)
            goto done;
        m->rec.data = env;
        m->rec.data_len = rs__envelope_len(m->len) + RS_CHAIN_BYTES;
        rs__chain_head(prev, store->key, &m->rec);
        if ((err = put_record(store, &m->rec)) < 0)
            goto done;
        m->rec.data = NULL;
    }
    if ((err = exec_shard(store, "UPDATE shards SET end = ?3 WHERE host = ?1 AND tag = ?2", host,
                          tag, idx + cs.count, "repairing a shard")) == 0)
        err = rs__chain_reshard(store, host, tag);
    r->dropped += 1 + cs.lost;
    r->resealed += cs.count;
done:
    for (size_t i = 0; i < cs.count; i++) {
        sodium_memzero(cs.list[i].plain, cs.list[i].len);
        rs_free(cs.list[i].plain);
    }
    rs_free(cs.list);
    rs_free(env);
    return err;
}

/*
 * This device's damaged record `d`, which the server holds: the server's
 * copy replaces it when it is the same record and opens. 1 when it did not
 * (named through the callback), 0 when restored.
 */
static int restore_own(rs_repair_report *r, rs_store *store, rs_client *client, rs_wire_batch *one,
                       const damage *d, rs_problem_cb cb, void *payload)
{
    char shard[SHARD_NAME];
    uint8_t *plain = NULL;
    size_t cap = 0;
    int err;

    rs__shard_name(shard, sizeof(shard), &d->host, d->tag);
    if ((err = rs__fetch_record(one, client, &d->host, d->tag, d->idx)) < 0)
        return err;
    const rs_record *rec = &one->records[0];
    if (rs_uuid_cmp(&rec->id, &d->id) != 0) {
        step(r, cb, payload, RS_ECONFLICT,
             "shard %s idx %llu: the server holds another record there; not restored", shard,
             (unsigned long long)d->idx);
        return 1;
    }
    if ((err = reserve(&plain, &cap, plain_need(rec))) < 0)
        return err;
    err = rs__open(plain, NULL, store->key, rec);
    scratch_free(plain, cap);
    if (err < 0) {
        step(r, cb, payload, err,
             "shard %s idx %llu: the server's copy does not open either (%s); not restored", shard,
             (unsigned long long)d->idx, rs_error_last());
        return 1;
    }
    if ((err = put_record(store, rec)) < 0 ||
        (err = rs__chain_reshard(store, &d->host, d->tag)) < 0)
        return err;
    r->restored++;
    step(r, cb, payload, 0, "shard %s idx %llu: restored from the server's copy", shard,
         (unsigned long long)d->idx);
    return 0;
}

/* Rebuilds the state of `tag` if a store is registered for it (else its records are only kept). */
static int rebuild_if_known(rs_store *store, const char *tag)
{
    int err = rs_store_rebuild(store, tag);
    return err == RS_ENOTFOUND ? 0 : err;
}

int rs_repair(rs_repair_report *out, rs_store *store, rs_problem_cb on_step, void *payload)
{
    scan_state scan = {store, NULL, 0, 0, NULL, 0, 0};
    rs_repair_report r;
    rs_index *local = NULL, *remote = NULL;
    rs_client *client = NULL;
    rs_wire_batch one = {0};
    char shard[SHARD_NAME];
    int err, in_txn = 0;

    memset(&r, 0, sizeof(r));
    if ((err = rs_store_index(&local, store)) < 0)
        goto done;
    for (size_t i = 0; i < local->count; i++)
        if ((err = rs_store_range(store, &local->shards[i].host, local->shards[i].tag, 0,
                                  UINT64_MAX, scan_one, &scan)) < 0)
            goto done;
    r.records = scan.records;
    r.damaged = scan.count;
    if (scan.count == 0)
        goto done;

    /* This device's damaged records: what the server holds of each decides. */
    for (size_t i = 0; i < scan.count; i++) {
        if (rs_uuid_cmp(&scan.list[i].host, &store->host) != 0)
            continue;
        if (client == NULL) {
            err = rs__store_client(&client, store, NULL);
            if (err == 0)
                err = rs__fetch_index(&remote, client);
            if (err < 0) {
                /* Without the server's word, nothing of this device's may be dropped. */
                err = rs__error(err,
                                "repairing this device's records needs its server, to restore "
                                "what it holds and to know what it never received: %s",
                                rs_error_last());
                goto done;
            }
        }
        break;
    }
    if ((err = rs_store_begin(store)) < 0)
        goto done;
    in_txn = 1;
    for (size_t i = 0; i < scan.count; i++) {
        const damage *d = &scan.list[i];
        int own = rs_uuid_cmp(&d->host, &store->host) == 0;
        rs__shard_name(shard, sizeof(shard), &d->host, d->tag);
        if (!own) {
            /* Cut back to it; the next sync downloads the rest again. */
            if ((err = cut_shard(store, &d->host, d->tag, d->idx)) < 0 ||
                (err = rebuild_if_known(store, d->tag)) < 0)
                goto done;
            r.cut++;
            step(&r, on_step, payload, 0,
                 "shard %s: cut back to idx %llu below a damaged record; the next sync "
                 "downloads it again",
                 shard, (unsigned long long)d->idx);
            while (i + 1 < scan.count && rs_uuid_cmp(&scan.list[i + 1].host, &d->host) == 0 &&
                   strcmp(scan.list[i + 1].tag, d->tag) == 0)
                i++; /* the later ones went with the cut */
            continue;
        }
        const rs_shard *rs = NULL;
        for (size_t j = 0; remote && j < remote->count; j++)
            if (rs_uuid_cmp(&remote->shards[j].host, &d->host) == 0 &&
                strcmp(remote->shards[j].tag, d->tag) == 0)
                rs = &remote->shards[j];
        if (rs && d->idx < rs->end && d->idx >= rs->start) {
            if ((err = restore_own(&r, store, client, &one, d, on_step, payload)) < 0)
                goto done;
            continue;
        }
        if (rs && d->idx < rs->start) {
            step(&r, on_step, payload, RS_EHOLE,
                 "shard %s idx %llu: the server pruned it; not restored", shard,
                 (unsigned long long)d->idx);
            continue;
        }
        /* Never uploaded: lost. Later damaged records of the shard go with it. */
        uint64_t dropped = r.dropped, resealed = r.resealed;
        if ((err = drop_lost(&r, store, &d->host, d->tag, d->idx)) < 0 ||
            (err = rebuild_if_known(store, d->tag)) < 0)
            goto done;
        step(&r, on_step, payload, 0,
             "shard %s: the record at idx %llu never reached the server and its content is "
             "lost; dropped %llu damaged record(s), sealed the %llu after again one position "
             "lower each",
             shard, (unsigned long long)d->idx, (unsigned long long)(r.dropped - dropped),
             (unsigned long long)(r.resealed - resealed));
        while (i + 1 < scan.count && rs_uuid_cmp(&scan.list[i + 1].host, &d->host) == 0 &&
               strcmp(scan.list[i + 1].tag, d->tag) == 0)
            i++;
    }
    err = rs_store_commit(store);
    in_txn = 0;
    if (err == 0 && r.unrepaired)
        err = rs__error(RS_ECRYPTO, "%llu damaged record(s) could not be repaired (named above)",
                        (unsigned long long)r.unrepaired);
done:
    if (in_txn)
        rs_store_rollback(store);
    if (out)
        *out = r;
    rs_free(scan.list);
    scratch_free(scan.plain, scan.plain_cap);
    rs_wire_batch_free(&one);
    rs__client_free(client);
    rs_index_free(local);
    rs_index_free(remote);
    return err;
}
