/*
 * Hash chains per shard (internal.h), so a server that cannot read the data
 * cannot drop, reorder, roll back or fork a shard unnoticed either.
 *
 * Every record written since format 2 seals the head of its predecessor
 * with its payload (crypto.c), authenticated and bound to its header. The
 * head of a record is BLAKE2b-256 keyed with the chain key (derived from
 * the master key, so the server cannot compute one) over:
 *
 *   "RSH1" | host (16) | u8 tag length | tag | u64 idx | id (16) | u64 hlc
 *   | u32 version | u32 envelope length | envelope
 *
 * and a shard's first record chains from BLAKE2b-256 keyed with the chain
 * key over "RSC1" | host | u8 tag length | tag. The store keeps each
 * record's head, each shard's head at its end, and, for a shard that starts
 * above 0 (cut to a snapshot, compacted), the head its first record chains
 * from. Snapshots carry the heads of their frontier (snapshot.c).
 *
 * Beside the head of each record it writes the store keeps a check tag
 * (schema 4): a SipHash-2-4 keyed with the check key (also derived from the
 * master key) over "RSK1" | the same header | SipHash of the envelope. Only
 * this store reads it, to tell cheaply that a record about to be uploaded
 * is the one it wrote (sync.c). A row without one (received from another
 * device, which a push sends only when the server lost it, or stored before
 * tags) is checked by its head.
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* Writes v big-endian in `bytes` bytes at p; returns the byte after. */
static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    return p + bytes;
}

void rs__chain_start(uint8_t *out, const rs_key *key, const rs_uuid *host, const char *tag)
{
    crypto_generichash_state st;
    uint8_t tl = (uint8_t)strlen(tag);
    crypto_generichash_init(&st, key->chain, RS_CHAIN_BYTES, RS_CHAIN_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)"RSC1", 4);
    crypto_generichash_update(&st, host->bytes, 16);
    crypto_generichash_update(&st, &tl, 1);
    crypto_generichash_update(&st, (const uint8_t *)tag, tl);
    crypto_generichash_final(&st, out, RS_CHAIN_BYTES);
}

/* The fixed part of what a record's head covers, after a 4-byte magic; returns its length. */
static size_t record_header(uint8_t *hdr, const char *magic, const rs_record *rec)
{
    size_t tl = strlen(rec->tag);
    uint8_t *p = hdr;
    memcpy(p, magic, 4);
    memcpy(p + 4, rec->host.bytes, 16);
    p[20] = (uint8_t)tl;
    memcpy(p + 21, rec->tag, tl);
    p += 21 + tl;
    p = put_be(p, rec->idx, 8);
    memcpy(p, rec->id.bytes, 16);
    p = put_be(p + 16, rec->hlc, 8);
    p = put_be(p, rec->version, 4);
    p = put_be(p, rec->data_len, 4);
    return (size_t)(p - hdr);
}

#define HEADER_MAX (4 + 16 + 1 + 255 + 8 + 16 + 8 + 4 + 4)

void rs__chain_head(uint8_t *out, const rs_key *key, const rs_record *rec)
{
    /* The fixed part in one buffer, one update: ten small updates cost a tenth of the hash. */
    uint8_t hdr[HEADER_MAX];
    size_t n = record_header(hdr, "RSH1", rec);
    crypto_generichash_state st;
    if (key->next) /* keyed with the chain key of the key that sealed it (keyring.c) */
        key = rs__key_for(key, rec->data, rec->data_len);
    crypto_generichash_init(&st, key->chain, RS_CHAIN_BYTES, RS_CHAIN_BYTES);
    crypto_generichash_update(&st, hdr, (unsigned long long)n);
    crypto_generichash_update(&st, rec->data, rec->data_len);
    crypto_generichash_final(&st, out, RS_CHAIN_BYTES);
}

/*
 * SipHash has no incremental form in libsodium: the envelope is hashed
 * first, and its tag closes the header ("RSK1" | the head's fields | tag).
 */
void rs__chain_check(uint8_t *out, const rs_key *key, const rs_record *rec)
{
    uint8_t hdr[HEADER_MAX + RS_CHECK_BYTES];
    size_t n = record_header(hdr, "RSK1", rec);
    _Static_assert(RS_CHECK_BYTES == crypto_shorthash_BYTES, "check tag size");
    if (key->next)
        key = rs__key_for(key, rec->data, rec->data_len);
    crypto_shorthash(hdr + n, rec->data, rec->data_len, key->check);
    crypto_shorthash(out, hdr, n + RS_CHECK_BYTES, key->check);
}

void rs__chain_open(rs_opened *out, const rs_key *key, const rs_record *rec)
{
    out->ok =
        rs__open_chained(out->plain, &out->plain_len, out->prev, &out->chained, key, rec) == 0;
    if (out->ok)
        rs__chain_head(out->head, key, rec);
}

int rs__chain_break(const rs_record *rec, const uint8_t *prev, const uint8_t *expected)
{
    char name[200], got[17], want[17];
    rs__record_name(name, sizeof(name), rec);
    rs__hex(got, prev, 8);
    rs__hex(want, expected, 8);
    return rs__error(RS_ECHAIN,
                     "%s chains from head %s… but the record this store holds before it (idx "
                     "%llu) has head %s…: the server dropped, reordered or forked the shard",
                     name, got, (unsigned long long)(rec->idx ? rec->idx - 1 : 0), want);
}

/* Binds (host, tag) as ?1 ?2. */
static void bind_shard(sqlite3_stmt *st, const rs_uuid *host, const char *tag)
{
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
}

static int prep(rs_store *store, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v2(store->db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(store->db, rc, "preparing a chain statement");
}

int rs__chain_head_before(uint8_t *out, int *known, rs_store *store, const rs_uuid *host,
                          const char *tag, uint64_t idx)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    *known = 0;
    if (idx > 0) {
        if ((err = prep(store, &st,
                        "SELECT head FROM records WHERE host = ?1 AND tag = ?2 AND idx = ?3")) < 0)
            return err;
        bind_shard(st, host, tag);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)(idx - 1));
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == RS_CHAIN_BYTES) {
            memcpy(out, sqlite3_column_blob(st, 0), RS_CHAIN_BYTES);
            *known = 1;
        }
        sqlite3_finalize(st);
        if (*known)
            return 0;
        if ((err = prep(store, &st,
                        "SELECT start_head FROM shards WHERE host = ?1 AND tag = ?2 AND "
                        "start = ?3")) < 0)
            return err;
        bind_shard(st, host, tag);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)idx);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == RS_CHAIN_BYTES) {
            memcpy(out, sqlite3_column_blob(st, 0), RS_CHAIN_BYTES);
            *known = 1;
        }
        sqlite3_finalize(st);
        return 0;
    }
    rs__chain_start(out, store->key, host, tag);
    *known = 1;
    return 0;
}

/* Heads for the records of one shard from `from` on, chaining from `prev`; the shard's head. */
typedef struct backfill {
    rs_store *store;
    sqlite3_stmt *put;
    uint8_t head[RS_CHAIN_BYTES];
    int err;
} backfill;

static int backfill_one(const rs_record *rec, void *payload)
{
    backfill *b = payload;
    int rc;
    rs__chain_head(b->head, b->store->key, rec);
    bind_shard(b->put, &rec->host, rec->tag);
    sqlite3_bind_int64(b->put, 3, (sqlite3_int64)rec->idx);
    sqlite3_bind_blob(b->put, 4, b->head, RS_CHAIN_BYTES, SQLITE_STATIC);
    rc = sqlite3_step(b->put);
    sqlite3_reset(b->put);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(b->store->db, rc, "computing chain heads");
}

int rs__chain_reshard(rs_store *store, const rs_uuid *host, const char *tag)
{
    backfill b = {store, NULL, {0}, 0};
    sqlite3_stmt *st = NULL;
    uint64_t start = 0, end = 0;
    int rc, err, known = 0;

    if ((err = prep(store, &st, "SELECT start, end FROM shards WHERE host = ?1 AND tag = ?2")) < 0)
        return err;
    bind_shard(st, host, tag);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        start = (uint64_t)sqlite3_column_int64(st, 0);
        end = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return 0;
    if ((err = rs__chain_head_before(b.head, &known, store, host, tag, start)) < 0 ||
        (err = prep(store, &b.put,
                    "UPDATE records SET head = ?4 WHERE host = ?1 AND tag = ?2 AND idx = ?3")) < 0)
        return err;
    err = rs_store_range(store, host, tag, start, end, backfill_one, &b);
    sqlite3_finalize(b.put);
    if (err < 0)
        return err;
    if ((err = prep(store, &st, "UPDATE shards SET head = ?3 WHERE host = ?1 AND tag = ?2")) < 0)
        return err;
    bind_shard(st, host, tag);
    if (end > start || known)
        sqlite3_bind_blob(st, 3, b.head, RS_CHAIN_BYTES, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "computing chain heads");
}

int rs__chain_backfill(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    rs_uuid *hosts = NULL;
    char(*tags)[RS_TAG_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    int rc, err;

    if ((err = prep(store, &st,
                    "SELECT host, tag FROM shards s WHERE head IS NULL AND end > start OR "
                    "EXISTS (SELECT 1 FROM records r WHERE r.host = s.host AND r.tag = s.tag "
                    "AND r.head IS NULL)")) < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            void *h = rs__realloc(hosts, cap * sizeof(*hosts));
            if (h)
                hosts = h;
            void *t = rs__realloc(tags, cap * sizeof(*tags));
            if (t)
                tags = t;
            if (h == NULL || t == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory computing chain heads");
                break;
            }
        }
        memcpy(hosts[n].bytes, sqlite3_column_blob(st, 0), 16);
        snprintf(tags[n], sizeof(tags[n]), "%s", (const char *)sqlite3_column_text(st, 1));
        n++;
    }
    sqlite3_finalize(st);
    if (err == 0 && n > 0) {
        if ((err = rs__exec(store, "BEGIN IMMEDIATE", "computing chain heads")) == 0) {
            for (size_t i = 0; i < n && err == 0; i++)
                err = rs__chain_reshard(store, &hosts[i], tags[i]);
            if (err == 0)
                err = rs__exec(store, "COMMIT", "computing chain heads");
            else
                sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
        }
    }
    rs_free(hosts);
    rs_free(tags);
    return err;
}
