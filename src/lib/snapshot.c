/*
 * Snapshots of a store's materialized state (snapshot.h), so a server that
 * cannot read the data can still prune it and a new device starts from
 * state, not history.
 *
 * A snapshot of tag T covers a frontier: for every shard (host, T) the end
 * it includes. Its state, as items from the tag's snapshot_write, is cut
 * into chunks of about CHUNK_TARGET bytes, each sealed with
 * XChaCha20-Poly1305 under the master key:
 *
 *   chunk     = [u32 length | item] ...          (chunk 0 starts with the header below)
 *   header    = u64 clock | u32 n | n x (host (16) | u64 end | chain head (32))
 *   envelope  = "RSS1" | key id (8) | nonce (24) | ciphertext + tag (16)
 *   AD        = "RSS1" | snapshot id (16) | u8 tag length | tag | u32 chunk index
 *               | u8 last | frontier digest (32) | key id (8)
 *
 * The frontier digest is BLAKE2b-256 of the frontier's entries sorted by
 * host (host | u64 end), so a server can neither alter a frontier, move a
 * chunk to another snapshot or position, nor cut a snapshot short (the last
 * chunk says it is the last). The clock is the writer's HLC when it wrote:
 * a loading device merges it, so its next writes order after the state.
 * The heads are the hash chain's head at each frontier end (chain.c): the
 * first record a loading device pulls above the frontier must chain from
 * it, so the server cannot splice another history onto a snapshot.
 *
 * The store keeps the newest snapshot of each tag it wrote or loaded
 * (tables snapshots and snapshot_chunks), sealed: it is what a rebuild
 * starts from once shards are compacted (start > 0), what `verify` checks
 * such shards against, and, until uploaded, the outbox.
 */
#include "client.h"
#include "snapshot_int.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define SNAP_MAGIC "RSS1"
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define SNAP_OVERHEAD (4 + RS_KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES)
#define DIGEST_BYTES 32
#define AD_MAX (4 + 16 + 1 + RS_TAG_MAX + 4 + 1 + DIGEST_BYTES + RS_KEY_ID_BYTES)
#define CHUNK_TARGET (1u << 20)
#define SHARD_NAME (RS_UUID_STRLEN + RS_TAG_MAX + 2)

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int b = 0; b < 8; b++)
        p[b] = (uint8_t)(v >> (56 - 8 * b));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int b = 0; b < 8; b++)
        v = v << 8 | p[b];
    return v;
}

/* ---- frontiers ---- */

static int host_cmp(const void *a, const void *b)
{
    return rs_uuid_cmp(&((const rs_shard *)a)->host, &((const rs_shard *)b)->host);
}

/* Sorts the frontier by host and digests it (see the top of the file). */
static void frontier_digest(uint8_t *out, rs_index *frontier)
{
    crypto_generichash_state st;
    if (frontier->count > 1) /* an empty frontier has no array at all */
        qsort(frontier->shards, frontier->count, sizeof(rs_shard), host_cmp);
    crypto_generichash_init(&st, NULL, 0, DIGEST_BYTES);
    for (size_t i = 0; i < frontier->count; i++) {
        uint8_t end[8];
        for (int b = 0; b < 8; b++)
            end[b] = (uint8_t)(frontier->shards[i].end >> (56 - 8 * b));
        crypto_generichash_update(&st, frontier->shards[i].host.bytes, 16);
        crypto_generichash_update(&st, end, 8);
    }
    crypto_generichash_final(&st, out, DIGEST_BYTES);
}

static uint64_t frontier_end(const rs_index *frontier, const rs_uuid *host)
{
    for (size_t i = 0; frontier && i < frontier->count; i++)
        if (rs_uuid_cmp(&frontier->shards[i].host, host) == 0)
            return frontier->shards[i].end;
    return 0;
}

/* [{"host": "<uuid>", "end": N}, ...] */
static int frontier_json(rs_buf *out, const rs_index *frontier)
{
    char h[RS_UUID_STRLEN + 1];
    int err = rs_buf_puts(out, "[");
    for (size_t i = 0; i < frontier->count && err == 0; i++) {
        rs_uuid_format(h, &frontier->shards[i].host);
        err = rs_buf_printf(out, "%s{\"host\":\"%s\",\"end\":%llu}", i ? "," : "", h,
                            (unsigned long long)frontier->shards[i].end);
    }
    return err ? err : rs_buf_puts(out, "]");
}

/* The frontier of tag `tag` from a JSON array; RS_EINVAL if malformed. */
static int frontier_parse(rs_index **out, const json_t *arr, const char *tag)
{
    rs_index *f = rs__calloc(1, sizeof(*f));
    size_t i;
    json_t *e;
    int err = 0;
    if (f == NULL)
        return rs__error(RS_ENOMEM, "out of memory reading a frontier");
    if (!json_is_array(arr))
        err = rs__error(RS_EINVAL, "a snapshot's frontier is not an array");
    for (i = 0; err == 0 && i < json_array_size(arr); i++) {
        rs_uuid host;
        e = json_array_get(arr, i);
        const json_t *end = json_object_get(e, "end");
        if (rs_uuid_parse(&host, json_string_value(json_object_get(e, "host"))) < 0 ||
            !json_is_integer(end) || json_integer_value(end) < 0 || frontier_end(f, &host) != 0) {
            err =
                rs__error(RS_EINVAL, "entry %zu of a snapshot's frontier is not a host and end", i);
            break;
        }
        err = rs_index_add(f, &host, tag, 0, (uint64_t)json_integer_value(end));
    }
    if (err < 0) {
        rs_index_free(f);
        return err;
    }
    *out = f;
    return 0;
}

static int frontier_parse_text(rs_index **out, const char *text, const char *tag)
{
    json_t *arr = json_loads(text ? text : "", 0, NULL);
    int err = frontier_parse(out, arr, tag);
    json_decref(arr);
    return err;
}

/* ---- sealing ---- */

typedef struct snap_key {
    rs_uuid id;
    char tag[RS_TAG_MAX + 1];
    uint8_t digest[DIGEST_BYTES];
} snap_key;

static size_t build_ad(uint8_t *ad, const snap_key *sk, uint32_t n, int last, const uint8_t *kid)
{
    size_t len, tl = strlen(sk->tag);
    memcpy(ad, SNAP_MAGIC, 4);
    len = 4;
    memcpy(ad + len, sk->id.bytes, 16);
    len += 16;
    ad[len++] = (uint8_t)tl;
    memcpy(ad + len, sk->tag, tl);
    len += tl;
    for (int b = 0; b < 4; b++)
        ad[len++] = (uint8_t)(n >> (24 - 8 * b));
    ad[len++] = (uint8_t)(last != 0);
    memcpy(ad + len, sk->digest, DIGEST_BYTES);
    len += DIGEST_BYTES;
    memcpy(ad + len, kid, RS_KEY_ID_BYTES);
    return len + RS_KEY_ID_BYTES;
}

/* Seals `len` bytes of chunk `n` into *out (rs__malloc'd, *out_len bytes). */
static int seal_chunk(uint8_t **out, size_t *out_len, const rs_key *key, const snap_key *sk,
                      uint32_t n, int last, const uint8_t *plain, size_t len)
{
    uint8_t ad[AD_MAX], *env = rs__malloc(len + SNAP_OVERHEAD);
    size_t adlen = build_ad(ad, sk, n, last, key->id);
    if (env == NULL)
        return rs__error(RS_ENOMEM, "out of memory sealing a snapshot chunk");
    memcpy(env, SNAP_MAGIC, 4);
    memcpy(env + 4, key->id, RS_KEY_ID_BYTES);
    rs__random(env + 4 + RS_KEY_ID_BYTES, NONCE_BYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(env + 4 + RS_KEY_ID_BYTES + NONCE_BYTES, NULL, plain,
                                               len, ad, adlen, NULL, env + 4 + RS_KEY_ID_BYTES,
                                               key->bytes);
    *out = env;
    *out_len = len + SNAP_OVERHEAD;
    return 0;
}

/* Opens chunk `n` of snapshot `sk` into *out (rs__malloc'd). RS_EKEY, RS_ECRYPTO naming it. */
static int open_chunk(uint8_t **out, size_t *out_len, const rs_key *key, const snap_key *sk,
                      uint32_t n, int last, const uint8_t *env, size_t len)
{
    char id[RS_UUID_STRLEN + 1], theirs[2 * RS_KEY_ID_BYTES + 1], ours[2 * RS_KEY_ID_BYTES + 1];
    uint8_t ad[AD_MAX], *plain;
    size_t adlen;
    rs_uuid_format(id, &sk->id);
    if (len < SNAP_OVERHEAD || memcmp(env, SNAP_MAGIC, 4) != 0)
        return rs__error(RS_ECRYPTO, "chunk %u of snapshot %s of %s is not a sealed chunk", n, id,
                         sk->tag);
    if (memcmp(env + 4, key->id, RS_KEY_ID_BYTES) != 0 && rs__key_find(key, env + 4))
        key = rs__key_find(key, env + 4); /* an older key of the ring (keyring.c) */
    if (memcmp(env + 4, key->id, RS_KEY_ID_BYTES) != 0) {
        rs__hex(theirs, env + 4, RS_KEY_ID_BYTES);
        rs__hex(ours, key->id, RS_KEY_ID_BYTES);
        return rs__error(RS_EKEY, "snapshot %s of %s is sealed under key %s, this store's is %s",
                         id, sk->tag, theirs, ours);
    }
    if ((plain = rs__malloc(len - SNAP_OVERHEAD + 1)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory opening a snapshot chunk");
    adlen = build_ad(ad, sk, n, last, key->id);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            plain, NULL, NULL, env + 4 + RS_KEY_ID_BYTES + NONCE_BYTES,
            len - 4 - RS_KEY_ID_BYTES - NONCE_BYTES, ad, adlen, env + 4 + RS_KEY_ID_BYTES,
            key->bytes) != 0) {
        rs_free(plain);
        return rs__error(RS_ECRYPTO,
                         "chunk %u of snapshot %s of %s does not open: it was altered, moved, "
                         "cut short or its frontier changed",
                         n, id, sk->tag);
    }
    *out = plain;
    *out_len = len - SNAP_OVERHEAD;
    return 0;
}

/* ---- statements ---- */

static int prep(rs_store *store, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v2(store->db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(store->db, rc, "preparing a snapshot statement");
}

static int done_step(rs_store *store, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, what);
}

/* Binds (host, tag, n) as ?1 ?2 ?3: the shape of every per-shard statement here. */
static void bind_shard(sqlite3_stmt *st, const rs_uuid *host, const char *tag, uint64_t n)
{
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)n);
}

/* Runs a per-shard statement (see bind_shard). */
static int shard_exec(rs_store *store, const char *sql, const rs_uuid *host, const char *tag,
                      uint64_t n, const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = prep(store, &st, sql);
    if (err < 0)
        return err;
    bind_shard(st, host, tag, n);
    return done_step(store, st, what);
}

/* Removes the snapshots of `tag` the store keeps, except `keep`. */
static int drop_others(rs_store *store, const char *tag, const rs_uuid *keep)
{
    sqlite3_stmt *st = NULL;
    int err;
    if ((err = prep(store, &st,
                    "DELETE FROM snapshot_chunks WHERE id IN (SELECT id FROM snapshots "
                    "WHERE tag = ?1 AND id != ?2)")) < 0)
        return err;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, keep->bytes, 16, SQLITE_STATIC);
    if ((err = done_step(store, st, "dropping older snapshots")) < 0 ||
        (err = prep(store, &st, "DELETE FROM snapshots WHERE tag = ?1 AND id != ?2")) < 0)
        return err;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, keep->bytes, 16, SQLITE_STATIC);
    return done_step(store, st, "dropping older snapshots");
}

static int put_chunk(rs_store *store, const rs_uuid *id, uint32_t n, const uint8_t *data,
                     size_t len)
{
    sqlite3_stmt *st = NULL;
    int err =
        prep(store, &st, "INSERT OR REPLACE INTO snapshot_chunks(id, n, data) VALUES (?1, ?2, ?3)");
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, n);
    sqlite3_bind_blob(st, 3, data, (int)len, SQLITE_STATIC);
    return done_step(store, st, "keeping a snapshot chunk");
}

static int put_snapshot(rs_store *store, const snap_key *sk, const char *frontier, uint32_t chunks,
                        int uploaded, int loaded)
{
    sqlite3_stmt *st = NULL;
    int err = prep(store, &st,
                   "INSERT OR REPLACE INTO snapshots(id, tag, frontier, chunks, hlc, uploaded, "
                   "loaded, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, sk->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, sk->tag, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, frontier, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, chunks);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)store->clock.last);
    sqlite3_bind_int(st, 6, uploaded);
    sqlite3_bind_int(st, 7, loaded);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)rs_now_ms());
    return done_step(store, st, "keeping a snapshot");
}

/* The snapshot of a tag the store keeps. */
typedef struct kept {
    snap_key sk;
    rs_index *frontier;
    uint32_t chunks;
} kept;

static void kept_clear(kept *k)
{
    rs_index_free(k->frontier);
    memset(k, 0, sizeof(*k));
}

/* The snapshot of `tag` the store keeps: 1 found (clear it with kept_clear), 0 none. */
static int kept_get(kept *out, rs_store *store, const char *tag)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    memset(out, 0, sizeof(*out));
    if ((err = prep(store, &st,
                    "SELECT id, frontier, chunks FROM snapshots WHERE tag = ?1 "
                    "ORDER BY created_ms DESC LIMIT 1")) < 0)
        return err;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memcpy(out->sk.id.bytes, sqlite3_column_blob(st, 0), 16);
        snprintf(out->sk.tag, sizeof(out->sk.tag), "%s", tag);
        out->chunks = (uint32_t)sqlite3_column_int64(st, 2);
        if (frontier_parse_text(&out->frontier, (const char *)sqlite3_column_text(st, 1), tag) ==
            0) {
            frontier_digest(out->sk.digest, out->frontier);
            err = 1;
        } else {
            err =
                rs__error(RS_EIO, "store %s: the kept snapshot of %s is corrupt", store->dir, tag);
        }
    } else if (rc != SQLITE_DONE) {
        err = rs__sqlite_error(store->db, rc, "reading the kept snapshot");
    }
    sqlite3_finalize(st);
    if (err < 1)
        kept_clear(out);
    return err;
}

/* ---- writing ---- */

typedef struct writer {
    rs_store *store;
    snap_key sk;
    rs_buf chunk;
    uint32_t n;
    uint64_t items;
    uint64_t bytes;
} writer;

/* Seals and keeps the chunk collected so far as chunk w->n. */
static int flush_chunk(writer *w, int last)
{
    uint8_t *env = NULL;
    size_t len = 0;
    int err = seal_chunk(&env, &len, w->store->key, &w->sk, w->n, last,
                         (const uint8_t *)w->chunk.ptr, w->chunk.len);
    if (err == 0)
        err = put_chunk(w->store, &w->sk.id, w->n, env, len);
    if (w->chunk.ptr)
        sodium_memzero(w->chunk.ptr, w->chunk.len);
    rs_buf_clear(&w->chunk);
    rs_free(env);
    if (err == 0) {
        w->n++;
        w->bytes += len;
    }
    return err;
}

static int emit(void *ctx, const void *item, size_t len)
{
    writer *w = ctx;
    uint8_t hdr[4];
    int err;
    if (len > RS_SNAPSHOT_ITEM_MAX)
        return rs__error(RS_ETOOBIG, "a snapshot item of tag %s has %zu bytes, over %u", w->sk.tag,
                         len, RS_SNAPSHOT_ITEM_MAX);
    if (w->chunk.len > 0 && w->chunk.len + 4 + len > CHUNK_TARGET && (err = flush_chunk(w, 0)) < 0)
        return err;
    for (int b = 0; b < 4; b++)
        hdr[b] = (uint8_t)(len >> (24 - 8 * b));
    if ((err = rs_buf_put(&w->chunk, hdr, 4)) < 0 || (err = rs_buf_put(&w->chunk, item, len)) < 0)
        return err;
    w->items++;
    return 0;
}

/* The header's heads: each frontier entry's host, end and the chain's head there. */
static int put_heads(rs_buf *out, rs_store *store, const rs_index *frontier)
{
    uint8_t n[4], entry[16 + 8 + RS_CHAIN_BYTES];
    int err, known;
    for (int b = 0; b < 4; b++)
        n[b] = (uint8_t)(frontier->count >> (24 - 8 * b));
    if ((err = rs_buf_put(out, n, 4)) < 0)
        return err;
    for (size_t i = 0; i < frontier->count; i++) {
        const rs_shard *f = &frontier->shards[i];
        memcpy(entry, f->host.bytes, 16);
        put_u64(entry + 16, f->end);
        if ((err = rs__chain_head_before(entry + 24, &known, store, &f->host, f->tag, f->end)) < 0)
            return err;
        if (!known)
            memset(entry + 24, 0, RS_CHAIN_BYTES);
        if ((err = rs_buf_put(out, entry, sizeof(entry))) < 0)
            return err;
    }
    return 0;
}

/* The size of chunk 0's header, or 0 when it is malformed. */
static size_t header_len(const uint8_t *p, size_t len)
{
    if (len < 12)
        return 0;
    size_t n = (size_t)p[8] << 24 | (size_t)p[9] << 16 | (size_t)p[10] << 8 | p[11];
    if (n > (len - 12) / (16 + 8 + RS_CHAIN_BYTES))
        return 0;
    return 12 + n * (16 + 8 + RS_CHAIN_BYTES);
}

/* The head chunk 0's header gives for `host` at `end`: 1 found (non-zero), else 0. */
static int header_head(uint8_t *out, const uint8_t *p, size_t len, const rs_uuid *host,
                       uint64_t end)
{
    static const uint8_t zero[RS_CHAIN_BYTES] = {0};
    size_t hl = header_len(p, len);
    for (size_t off = 12; hl && off < hl; off += 16 + 8 + RS_CHAIN_BYTES)
        if (memcmp(p + off, host->bytes, 16) == 0 && get_u64(p + off + 16) == end &&
            memcmp(p + off + 24, zero, RS_CHAIN_BYTES) != 0) {
            memcpy(out, p + off + 24, RS_CHAIN_BYTES);
            return 1;
        }
    return 0;
}

/* The store's shards of `tag` as a frontier (host -> end); *covered = records below it. */
static int tag_frontier(rs_index **out, uint64_t *covered, rs_store *store, const char *tag)
{
    rs_index *all = NULL, *f = rs__calloc(1, sizeof(*f));
    int err = f ? rs_store_index(&all, store) : rs__error(RS_ENOMEM, "out of memory");
    *covered = 0;
    for (size_t i = 0; err == 0 && i < all->count; i++) {
        if (strcmp(all->shards[i].tag, tag) != 0)
            continue;
        *covered += all->shards[i].end;
        err = rs_index_add(f, &all->shards[i].host, tag, 0, all->shards[i].end);
    }
    rs_index_free(all);
    if (err < 0) {
        rs_index_free(f);
        return err;
    }
    *out = f;
    return 0;
}

static const rs_tag_def *snapshot_def(rs_store *store, const char *tag)
{
    for (size_t i = 0; i < store->tag_count; i++)
        if (strcmp(store->tags[i].tag, tag) == 0)
            return store->tags[i].def.snapshot_write && store->tags[i].def.snapshot_load
                       ? &store->tags[i].def
                       : NULL;
    return NULL;
}

int rs_snapshot_supported(rs_store *store, const char *tag)
{
    return tag && snapshot_def(store, tag) != NULL;
}

static int count_unapplied(uint64_t *out, rs_store *store, const char *tag)
{
    sqlite3_stmt *st = NULL;
    int rc, err = prep(store, &st, "SELECT count(*) FROM unapplied WHERE tag = ?1");
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : rs__sqlite_error(store->db, rc, "counting unapplied records");
}

int rs_snapshot_write(rs_snapshot_info *out, rs_store *store, const char *tag)
{
    const rs_tag_def *def = snapshot_def(store, tag ? tag : "");
    uint64_t started = rs_now_ms(), unapplied = 0, covered = 0;
    rs_index *frontier = NULL;
    rs_buf fj = {0};
    writer w;
    uint8_t clock[8];
    int err;

    memset(&w, 0, sizeof(w));
    if (def == NULL)
        return rs__error(RS_ENOTFOUND, "tag %s has no registered store that can be snapshotted",
                         tag ? tag : "(null)");
    if ((err = rs_store_begin(store)) < 0)
        return err;
    if ((err = count_unapplied(&unapplied, store, tag)) < 0)
        goto fail;
    if (unapplied > 0) {
        err = rs__error(RS_EVERSION,
                        "store %s holds %llu records of %s that this build cannot apply: a "
                        "snapshot would leave them out; upgrade recsync first",
                        store->dir, (unsigned long long)unapplied, tag);
        goto fail;
    }
    w.store = store;
    rs_uuid_v7(&w.sk.id, rs_now_ms());
    snprintf(w.sk.tag, sizeof(w.sk.tag), "%s", tag);
    if ((err = tag_frontier(&frontier, &covered, store, tag)) < 0)
        goto fail;
    frontier_digest(w.sk.digest, frontier);
    put_u64(clock, store->clock.last);
    if ((err = rs_buf_put(&w.chunk, clock, 8)) < 0 ||
        (err = put_heads(&w.chunk, store, frontier)) < 0)
        goto fail;
    if ((err = def->snapshot_write(store->db, emit, &w, def->payload)) < 0) {
        rs__error(err, "writing the snapshot of %s: %s", tag, rs_error_last());
        goto fail;
    }
    if ((err = flush_chunk(&w, 1)) < 0 || (err = frontier_json(&fj, frontier)) < 0 ||
        (err = put_snapshot(store, &w.sk, fj.ptr, w.n, 0, 0)) < 0 ||
        (err = drop_others(store, tag, &w.sk.id)) < 0 || (err = rs_store_commit(store)) < 0)
        goto fail;
    if (out) {
        memset(out, 0, sizeof(*out));
        out->id = w.sk.id;
        snprintf(out->tag, sizeof(out->tag), "%s", tag);
        out->covered = covered;
        out->items = w.items;
        out->chunks = w.n;
        out->bytes = w.bytes;
        out->elapsed_ms = rs_now_ms() - started;
    }
    goto done;
fail:
    rs_store_rollback(store);
done:
    if (w.chunk.ptr)
        sodium_memzero(w.chunk.ptr, w.chunk.cap);
    rs_buf_free(&w.chunk);
    rs_buf_free(&fj);
    rs_index_free(frontier);
    return err;
}

/* ---- uploading ---- */

/* A snapshot written here and not yet on the server. */
typedef struct pending {
    snap_key sk;
    char *frontier;
    uint32_t chunks;
} pending;

/* POSTs every chunk of `p` (idempotent on the server), then notes it uploaded. */
static int upload_one(rs_client *client, rs_store *store, const pending *p)
{
    char id[RS_UUID_STRLEN + 1];
    sqlite3_stmt *st = NULL;
    rs_buf body = {0};
    int rc, err;

    rs_uuid_format(id, &p->sk.id);
    if ((err = prep(store, &st, "SELECT n, data FROM snapshot_chunks WHERE id = ?1 ORDER BY n")) <
        0)
        return err;
    sqlite3_bind_blob(st, 1, p->sk.id.bytes, 16, SQLITE_STATIC);
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const uint8_t *data = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        const rs_buf *resp;
        rs_buf_clear(&body);
        if ((err = rs_buf_printf(&body,
                                 "{\"id\":\"%s\",\"tag\":\"%s\",\"frontier\":%s,"
                                 "\"chunk\":%lld,\"chunks\":%u,\"data\":\"",
                                 id, p->sk.tag, p->frontier, (long long)sqlite3_column_int64(st, 0),
                                 p->chunks)) < 0 ||
            (err = rs_buf_reserve(&body, RS_BASE64_LEN(len) + 4)) < 0)
            break;
        body.len += rs_base64_encode(body.ptr + body.len, data, len);
        if ((err = rs_buf_puts(&body, "\"}")) < 0)
            break;
        err = rs__client_request(&resp, NULL, client, "/api/v1/snapshots", body.ptr, body.len, 1);
        rc = SQLITE_DONE;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = rs__sqlite_error(store->db, rc, "reading snapshot chunks");
    sqlite3_finalize(st);
    rs_buf_free(&body);
    if (err < 0)
        return rs__error(err, "uploading snapshot %s of %s: %s", id, p->sk.tag, rs_error_last());
    if ((err = prep(store, &st, "UPDATE snapshots SET uploaded = 1 WHERE id = ?1")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, p->sk.id.bytes, 16, SQLITE_STATIC);
    return done_step(store, st, "noting a snapshot uploaded");
}

/*
 * Whether pending snapshot `p` covers a shard only below where the server
 * now starts it (a store that fell behind while the others pruned: a
 * `recsync snapshot` before its next sync). No device could ever load it
 * (a loader needs the records between), and uploaded it would be the
 * newest and push a usable one out of the server's retention, leaving new
 * and returning devices with no snapshot to start from. It is kept here
 * (it may be this store's compaction base) and noted as done, never sent:
 * 1 stale, 0 not, < 0 an error.
 */
static int below_start(rs_store *store, const pending *p, const rs_index *remote)
{
    char id[RS_UUID_STRLEN + 1], name[SHARD_NAME];
    rs_index *f = NULL;
    sqlite3_stmt *st = NULL;
    int err, stale = 0;
    if ((err = frontier_parse_text(&f, p->frontier, p->sk.tag)) < 0)
        return err;
    for (size_t i = 0; remote && i < remote->count && !stale; i++) {
        const rs_shard *rs = &remote->shards[i];
        if (strcmp(rs->tag, p->sk.tag) != 0 || frontier_end(f, &rs->host) >= rs->start)
            continue;
        stale = 1;
        rs_uuid_format(id, &p->sk.id);
        rs__shard_name(name, sizeof(name), &rs->host, rs->tag);
        rs__warn(store,
                 "snapshot %s of %s covers shard %s only up to idx %llu, below where the server "
                 "starts it (%llu): not uploaded (sync, then write a snapshot)",
                 id, p->sk.tag, name, (unsigned long long)frontier_end(f, &rs->host),
                 (unsigned long long)rs->start);
    }
    rs_index_free(f);
    if (!stale)
        return 0;
    if ((err = prep(store, &st, "UPDATE snapshots SET uploaded = 1 WHERE id = ?1")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, p->sk.id.bytes, 16, SQLITE_STATIC);
    return (err = done_step(store, st, "noting a stale snapshot")) < 0 ? err : 1;
}

int rs__snapshot_push(uint64_t *out, rs_store *store, rs_client *client)
{
    sqlite3_stmt *st = NULL;
    pending *list = NULL;
    rs_index *remote = NULL;
    size_t count = 0, cap = 0;
    uint64_t n = 0;
    int rc, err;

    if ((err = rs__stmt(&st, store,
                        "SELECT id, tag, frontier, chunks FROM snapshots WHERE uploaded = 0 "
                        "ORDER BY created_ms")) < 0)
        return err;
    /* Collected first: uploading updates the table being read. */
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 4;
            pending *grown = rs__realloc(list, ncap * sizeof(*grown));
            if (grown == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory");
                break;
            }
            list = grown;
            cap = ncap;
        }
        pending *p = &list[count++];
        memset(p, 0, sizeof(*p));
        memcpy(p->sk.id.bytes, sqlite3_column_blob(st, 0), 16);
        snprintf(p->sk.tag, sizeof(p->sk.tag), "%s", (const char *)sqlite3_column_text(st, 1));
        p->frontier = rs__strdup((const char *)sqlite3_column_text(st, 2));
        p->chunks = (uint32_t)sqlite3_column_int64(st, 3);
        if (p->frontier == NULL)
            err = rs__error(RS_ENOMEM, "out of memory");
    }
    rs__stmt_done(store, st);
    if (err == 0 && count > 0)
        err = rs__fetch_index(&remote, client);
    for (size_t i = 0; i < count && err == 0; i++) {
        int stale = below_start(store, &list[i], remote);
        if (stale < 0)
            err = stale;
        else if (stale == 0 && (err = upload_one(client, store, &list[i])) == 0)
            n++;
    }
    rs_index_free(remote);
    for (size_t i = 0; i < count; i++)
        rs_free(list[i].frontier);
    rs_free(list);
    if (out)
        *out = n;
    return err;
}

int rs_snapshot_push(uint64_t *out, rs_store *store)
{
    rs_client *client = NULL;
    int err = rs__store_client(&client, store, NULL);
    if (err == 0)
        err = rs__snapshot_push(out, store, client);
    rs__client_free(client);
    return err;
}

/* ---- loading ---- */

/* Hands each item of opened chunk `n` to the tag's snapshot_load. */
static int load_items(rs_store *store, const rs_tag_def *def, const snap_key *sk, uint32_t n,
                      const uint8_t *p, size_t len, rs_hlc *clock)
{
    char id[RS_UUID_STRLEN + 1];
    size_t off = 0;
    int err;
    rs_uuid_format(id, &sk->id);
    if (n == 0) {
        if ((off = header_len(p, len)) == 0)
            return rs__error(RS_ECRYPTO, "snapshot %s of %s has no header", id, sk->tag);
        *clock = get_u64(p);
    }
    while (off < len) {
        uint32_t il;
        if (len - off < 4)
            return rs__error(RS_ECRYPTO, "chunk %u of snapshot %s of %s ends inside an item", n, id,
                             sk->tag);
        il = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 | (uint32_t)p[off + 2] << 8 |
             p[off + 3];
        off += 4;
        if (il > len - off)
            return rs__error(RS_ECRYPTO, "chunk %u of snapshot %s of %s ends inside an item", n, id,
                             sk->tag);
        if ((err = def->snapshot_load(store->db, p + off, il, def->payload)) < 0)
            return rs__error(err, "loading snapshot %s of %s: %s", id, sk->tag, rs_error_last());
        off += il;
    }
    return 0;
}

/*
 * Opens every chunk of the kept snapshot `k` (all of them, in order, the
 * last one marked last) and, when `def` is given, loads its items; the
 * writer's clock goes to *clock.
 */
static int walk_kept(rs_store *store, const kept *k, const rs_tag_def *def, rs_hlc *clock)
{
    sqlite3_stmt *st = NULL;
    uint32_t expect = 0;
    int rc, err;
    char id[RS_UUID_STRLEN + 1];
    rs_uuid_format(id, &k->sk.id);
    if ((err = prep(store, &st, "SELECT n, data FROM snapshot_chunks WHERE id = ?1 ORDER BY n")) <
        0)
        return err;
    sqlite3_bind_blob(st, 1, k->sk.id.bytes, 16, SQLITE_STATIC);
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint8_t *plain = NULL;
        size_t len = 0;
        uint32_t n = (uint32_t)sqlite3_column_int64(st, 0);
        if (n != expect) {
            err = rs__error(RS_EHOLE, "the kept snapshot %s of %s lacks chunk %u", id, k->sk.tag,
                            expect);
            break;
        }
        err = open_chunk(&plain, &len, store->key, &k->sk, n, n + 1 == k->chunks,
                         sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1));
        if (err == 0 && def)
            err = load_items(store, def, &k->sk, n, plain, len, clock);
        else if (err == 0 && n == 0 && len >= 8)
            *clock = get_u64(plain);
        if (plain) {
            sodium_memzero(plain, len);
            rs_free(plain);
        }
        expect++;
    }
    sqlite3_finalize(st);
    if (err == 0 && expect != k->chunks)
        err = rs__error(RS_EHOLE, "the kept snapshot %s of %s has %u of its %u chunks", id,
                        k->sk.tag, expect, k->chunks);
    return err;
}

/* Merges a snapshot's clock into the store's, as a received record's is. */
static int merge_clock(rs_store *store, rs_hlc clock, const snap_key *sk)
{
    rs_uuid nobody = {{0}};
    int err = rs_hlc_recv(&store->clock, clock, &nobody);
    if (err < 0) {
        char id[RS_UUID_STRLEN + 1];
        rs_uuid_format(id, &sk->id);
        return rs__error(err, "snapshot %s of %s: %s", id, sk->tag, rs_error_last());
    }
    return 0;
}

int rs__snapshot_load_base(rs_store *store, const char *tag, const rs_tag_def *def)
{
    kept k;
    rs_hlc clock = 0;
    int err;
    if (def->snapshot_load == NULL)
        return 0;
    if ((err = kept_get(&k, store, tag)) <= 0)
        return err;
    err = walk_kept(store, &k, def, &clock);
    if (err == 0)
        err = merge_clock(store, clock, &k.sk);
    kept_clear(&k);
    return err;
}

int rs__snapshot_covers(rs_store *store, const rs_shard *shard)
{
    char name[SHARD_NAME];
    kept k;
    rs_hlc clock = 0;
    int err;
    rs__shard_name(name, sizeof(name), &shard->host, shard->tag);
    if ((err = kept_get(&k, store, shard->tag)) < 0)
        return err;
    if (err == 0)
        return rs__error(RS_EHOLE,
                         "shard %s starts at idx %llu but the store keeps no snapshot of %s "
                         "covering the records below",
                         name, (unsigned long long)shard->start, shard->tag);
    if (frontier_end(k.frontier, &shard->host) < shard->start)
        err = rs__error(RS_EHOLE,
                        "shard %s starts at idx %llu but the kept snapshot of %s covers it only "
                        "up to %llu",
                        name, (unsigned long long)shard->start, shard->tag,
                        (unsigned long long)frontier_end(k.frontier, &shard->host));
    else
        err = walk_kept(store, &k, NULL, &clock);
    kept_clear(&k);
    return err;
}

/* ---- bootstrap: a device starts from a snapshot, then pulls the tail ---- */

/* A snapshot the server lists. */
typedef struct listed {
    snap_key sk;
    rs_index *frontier;
    uint32_t chunks;
} listed;

static void listed_free(listed *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        rs_index_free(list[i].frontier);
    rs_free(list);
}

static int list_snapshots(listed **out, size_t *count, rs_client *client, const char *tag)
{
    char path[128];
    const rs_buf *resp;
    json_t *root, *arr;
    listed *list;
    size_t n = 0;
    int err;

    snprintf(path, sizeof(path), "/api/v1/snapshots?tag=%s", tag);
    if ((err = rs__client_request(&resp, NULL, client, path, NULL, 0, 1)) < 0)
        return err;
    root = json_loadb(resp->ptr, resp->len, 0, NULL);
    arr = json_object_get(root, "snapshots");
    if (!json_is_array(arr)) {
        json_decref(root);
        return rs__error(RS_ESERVER, "server %s sent a snapshot list that does not parse",
                         rs__client_url(client));
    }
    if ((list = rs__calloc(json_array_size(arr) + 1, sizeof(*list))) == NULL) {
        json_decref(root);
        return rs__error(RS_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *e = json_array_get(arr, i), *chunks = json_object_get(e, "chunks");
        listed *l = &list[n];
        if (rs_uuid_parse(&l->sk.id, json_string_value(json_object_get(e, "id"))) < 0 ||
            !json_is_integer(chunks) || json_integer_value(chunks) < 1 ||
            json_integer_value(chunks) > 1000000 ||
            frontier_parse(&l->frontier, json_object_get(e, "frontier"), tag) < 0) {
            err = rs__error(RS_ESERVER, "server %s listed snapshot %zu of %s malformed",
                            rs__client_url(client), i, tag);
            break;
        }
        snprintf(l->sk.tag, sizeof(l->sk.tag), "%s", tag);
        frontier_digest(l->sk.digest, l->frontier);
        l->chunks = (uint32_t)json_integer_value(chunks);
        n++;
    }
    json_decref(root);
    if (err < 0) {
        listed_free(list, n);
        return err;
    }
    *out = list;
    *count = n;
    return 0;
}

/*
 * Whether snapshot `l` of `tag` can be loaded here: it covers every shard
 * of the server up to at least its start (else the records between are
 * gone), no further than its end, and no shard of this store starts above
 * it (the store must hold every record above the frontier it keeps).
 * 0 usable, else RS_ESERVER or RS_EHOLE naming why.
 */
static int usable(const listed *l, const char *tag, const rs_index *local, const rs_index *remote,
                  const char *url)
{
    char id[RS_UUID_STRLEN + 1], name[SHARD_NAME];
    rs_uuid_format(id, &l->sk.id);
    for (size_t i = 0; remote && i < remote->count; i++) {
        const rs_shard *rs = &remote->shards[i];
        uint64_t f = frontier_end(l->frontier, &rs->host);
        if (strcmp(rs->tag, tag) != 0)
            continue;
        rs__shard_name(name, sizeof(name), &rs->host, tag);
        if (f < rs->start)
            return rs__error(RS_ESERVER,
                             "server %s offers snapshot %s of %s, which covers shard %s only up "
                             "to idx %llu, but the shard starts at %llu there: an older "
                             "snapshot than its index allows",
                             url, id, tag, name, (unsigned long long)f,
                             (unsigned long long)rs->start);
        if (f > rs->end)
            return rs__error(RS_ESERVER,
                             "server %s offers snapshot %s of %s covering shard %s up to idx "
                             "%llu, but its index ends the shard at %llu",
                             url, id, tag, name, (unsigned long long)f,
                             (unsigned long long)rs->end);
    }
    for (size_t i = 0; i < l->frontier->count; i++)
        if (l->frontier->shards[i].end > 0 &&
            rs_index_find(remote, &l->frontier->shards[i].host, tag) == NULL)
            return rs__error(RS_ESERVER,
                             "server %s offers snapshot %s of %s covering a shard its index "
                             "does not have",
                             url, id, tag);
    for (size_t i = 0; local && i < local->count; i++) {
        const rs_shard *ls = &local->shards[i];
        uint64_t f = frontier_end(l->frontier, &ls->host);
        if (strcmp(ls->tag, tag) != 0 || f >= ls->start)
            continue;
        rs__shard_name(name, sizeof(name), &ls->host, tag);
        return rs__error(RS_EHOLE,
                         "snapshot %s of %s covers shard %s only up to idx %llu, below what this "
                         "store holds (from %llu): not applied over newer state",
                         id, tag, name, (unsigned long long)f, (unsigned long long)ls->start);
    }
    return 0;
}

/* Fetches chunk n of `l`, checks it opens, and keeps it (sealed) in the store. */
static int fetch_chunk(rs_store *store, rs_client *client, const listed *l, uint32_t n,
                       uint8_t **buf, size_t *cap, uint64_t *bytes, uint8_t **first,
                       size_t *first_len)
{
    char path[160], id[RS_UUID_STRLEN + 1];
    const rs_buf *resp;
    json_t *root;
    const char *data;
    uint8_t *plain = NULL;
    size_t len = 0, plain_len = 0, dl, need;
    int err;

    rs_uuid_format(id, &l->sk.id);
    snprintf(path, sizeof(path), "/api/v1/snapshot?id=%s&chunk=%u", id, n);
    if ((err = rs__client_request(&resp, NULL, client, path, NULL, 0, 1)) < 0)
        return err;
    root = json_loadb(resp->ptr, resp->len, 0, NULL);
    data = json_string_value(json_object_get(root, "data"));
    if (data == NULL) {
        json_decref(root);
        return rs__error(RS_ESERVER, "server %s sent chunk %u of snapshot %s with no data",
                         rs__client_url(client), n, id);
    }
    dl = strlen(data);
    need = dl / 4 * 3 + 3;
    if (need > *cap) {
        uint8_t *grown = rs__realloc(*buf, need);
        if (grown == NULL) {
            json_decref(root);
            return rs__error(RS_ENOMEM, "out of memory fetching a snapshot");
        }
        *buf = grown;
        *cap = need;
    }
    err = rs_base64_decode(*buf, &len, data, dl);
    json_decref(root);
    if (err < 0)
        return rs__error(RS_ESERVER, "server %s sent chunk %u of snapshot %s not in base64",
                         rs__client_url(client), n, id);
    if ((err = open_chunk(&plain, &plain_len, store->key, &l->sk, n, n + 1 == l->chunks, *buf,
                          len)) < 0)
        return err;
    if (n == 0 && header_len(plain, plain_len) == 0) {
        rs_free(plain);
        return rs__error(RS_ECRYPTO, "snapshot %s has no header", id);
    }
    if (n == 0) {
        *first = plain;
        *first_len = plain_len;
    } else {
        sodium_memzero(plain, plain_len);
        rs_free(plain);
    }
    *bytes += len;
    return put_chunk(store, &l->sk.id, n, *buf, len);
}

/*
 * Cuts every shard of `tag` to start at the frontier: records below it go
 * (the snapshot holds their state); a shard the store lacks, or holds less
 * of, starts and ends there.
 */
static int cut_to_frontier(rs_store *store, const char *tag, const rs_index *frontier,
                           const rs_index *local, const uint8_t *first, size_t first_len)
{
    int err = 0;
    for (size_t i = 0; i < frontier->count && err == 0; i++) {
        const rs_shard *f = &frontier->shards[i], *ls = rs_index_find(local, &f->host, tag);
        uint64_t end = ls && ls->end > f->end ? ls->end : f->end;
        uint8_t head[RS_CHAIN_BYTES], mine[RS_CHAIN_BYTES];
        int has = header_head(head, first, first_len, &f->host, f->end), known = 0;
        sqlite3_stmt *st = NULL;
        /* Where this store holds the chain at the frontier, the snapshot must agree. */
        if (has && ls && ls->end >= f->end &&
            (err = rs__chain_head_before(mine, &known, store, &f->host, tag, f->end)) == 0 &&
            known && sodium_memcmp(mine, head, RS_CHAIN_BYTES) != 0) {
            char name[SHARD_NAME];
            rs__shard_name(name, sizeof(name), &f->host, tag);
            err = rs__error(RS_ECHAIN,
                            "the snapshot says shard %s reaches idx %llu through another history "
                            "than this store holds: the server forked the shard",
                            name, (unsigned long long)f->end);
        }
        if (err < 0 ||
            (err =
                 shard_exec(store, "DELETE FROM records WHERE host = ?1 AND tag = ?2 AND idx < ?3",
                            &f->host, tag, f->end, "cutting a shard to a snapshot")) < 0 ||
            (err = prep(store, &st,
                        "INSERT INTO shards(host, tag, start, end, start_head) "
                        "VALUES (?1, ?2, ?3, ?4, ?5) "
                        "ON CONFLICT(host, tag) DO UPDATE SET start = excluded.start, "
                        "end = excluded.end, start_head = excluded.start_head")) < 0)
            break;
        bind_shard(st, &f->host, tag, f->end);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)end);
        if (has)
            sqlite3_bind_blob(st, 5, head, RS_CHAIN_BYTES, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
        if ((err = done_step(store, st, "cutting a shard to a snapshot")) == 0 && end == f->end)
            err = shard_exec(store,
                             "UPDATE shards SET head = start_head WHERE host = ?1 AND "
                             "tag = ?2 AND end = ?3",
                             &f->host, tag, end, "cutting a shard to a snapshot");
    }
    return err;
}

/*
 * Loads snapshot `l` of `tag`: its chunks are fetched, checked and kept, the
 * tag's shards cut to its frontier, and the state rebuilt from it plus every
 * record the store holds above it, in one transaction: all or nothing.
 */
static int load_listed(rs_snapshot_info *info, rs_store *store, rs_client *client, const listed *l,
                       const char *tag, const rs_index *local)
{
    uint8_t *buf = NULL, *first = NULL;
    size_t cap = 0, first_len = 0;
    uint64_t bytes = 0, started = rs_now_ms();
    rs_buf fj = {0};
    int err;

    if ((err = rs_store_begin(store)) < 0)
        return err;
    for (uint32_t n = 0; n < l->chunks && err == 0; n++)
        err = fetch_chunk(store, client, l, n, &buf, &cap, &bytes, &first, &first_len);
    if (err == 0 && (err = frontier_json(&fj, l->frontier)) == 0 &&
        (err = put_snapshot(store, &l->sk, fj.ptr, l->chunks, 1, 1)) == 0 &&
        (err = drop_others(store, tag, &l->sk.id)) == 0 &&
        (err = cut_to_frontier(store, tag, l->frontier, local, first, first_len)) == 0)
        err = rs_store_rebuild(store, tag);
    if (first) {
        sodium_memzero(first, first_len);
        rs_free(first);
    }
    if (err == 0)
        err = rs_store_commit(store);
    else
        rs_store_rollback(store);
    rs_free(buf);
    rs_buf_free(&fj);
    if (err == 0 && info) {
        memset(info, 0, sizeof(*info));
        info->id = l->sk.id;
        snprintf(info->tag, sizeof(info->tag), "%s", tag);
        for (size_t i = 0; i < l->frontier->count; i++)
            info->covered += l->frontier->shards[i].end;
        info->chunks = l->chunks;
        info->bytes = bytes;
        info->elapsed_ms = rs_now_ms() - started;
    }
    return err;
}

int rs__snapshot_bootstrap(rs_snapshot_info *info, int *loaded, rs_store *store, rs_client *client,
                           const char *tag, const rs_index *local, const rs_index *remote, int must)
{
    listed *list = NULL;
    size_t count = 0;
    int err, first = 0;
    char first_msg[700] = "";

    *loaded = 0;
    if (snapshot_def(store, tag) == NULL)
        return must ? rs__error(RS_EGONE,
                                "server %s pruned records of %s this store lacks, and this build "
                                "has no store for %s to load a snapshot into",
                                rs__client_url(client), tag, tag)
                    : 0;
    if ((err = list_snapshots(&list, &count, client, tag)) < 0)
        return err;
    for (size_t i = 0; i < count && !*loaded; i++) {
        if ((err = usable(&list[i], tag, local, remote, rs__client_url(client))) == 0 &&
            (err = load_listed(info, store, client, &list[i], tag, local)) == 0) {
            *loaded = 1;
            break;
        }
        if (err != RS_ECRYPTO && err != RS_EKEY && err != RS_ESERVER && err != RS_EHOLE)
            break;
        if (first == 0) {
            first = err;
            snprintf(first_msg, sizeof(first_msg), "%s", rs_error_last());
        }
        err = 0;
    }
    listed_free(list, count);
    if (err == 0 && !*loaded && (must || first))
        err = first ? rs__error(first, "%s", first_msg)
                    : rs__error(RS_EGONE,
                                "server %s pruned records of %s this store lacks but offers no "
                                "snapshot of it",
                                rs__client_url(client), tag);
    return err;
}

/* ---- after a sync ---- */

int rs__snapshot_due(uint64_t *out, rs_store *store, const char *tag)
{
    kept k;
    rs_index *f = NULL;
    uint64_t covered = 0, base = 0;
    int err;
    *out = 0;
    if (snapshot_def(store, tag) == NULL)
        return 0;
    if ((err = kept_get(&k, store, tag)) < 0)
        return err;
    if ((err = tag_frontier(&f, &covered, store, tag)) == 0) {
        for (size_t i = 0; k.frontier && i < k.frontier->count; i++)
            base += k.frontier->shards[i].end;
        *out = covered > base ? covered - base : 0;
    }
    kept_clear(&k);
    rs_index_free(f);
    return err;
}

int rs__snapshot_compact(uint64_t *out, rs_store *store, const rs_index *remote)
{
    rs_index *local = NULL;
    uint64_t dropped = 0;
    int err, begun = 0;
    *out = 0;
    if ((err = rs_store_index(&local, store)) < 0)
        return err;
    for (size_t i = 0; i < local->count && err == 0; i++) {
        const rs_shard *ls = &local->shards[i], *rs = rs_index_find(remote, &ls->host, ls->tag);
        kept k;
        uint64_t to;
        int found;
        if (rs == NULL || rs->start <= ls->start || snapshot_def(store, ls->tag) == NULL)
            continue;
        if ((found = kept_get(&k, store, ls->tag)) <= 0) {
            err = found;
            continue;
        }
        to = frontier_end(k.frontier, &ls->host);
        kept_clear(&k);
        to = to < rs->start ? to : rs->start;
        to = to < ls->end ? to : ls->end;
        if (to <= ls->start)
            continue;
        if (!begun && (err = rs_store_begin(store)) < 0)
            break;
        begun = 1;
        uint8_t head[RS_CHAIN_BYTES];
        int known = 0;
        sqlite3_stmt *st = NULL;
        if ((err = rs__chain_head_before(head, &known, store, &ls->host, ls->tag, to)) < 0 ||
            (err =
                 shard_exec(store, "DELETE FROM records WHERE host = ?1 AND tag = ?2 AND idx < ?3",
                            &ls->host, ls->tag, to, "compacting a shard")) < 0 ||
            (err = prep(store, &st,
                        "UPDATE shards SET start = ?3, start_head = ?4 WHERE host = ?1 AND "
                        "tag = ?2")) < 0)
            break;
        bind_shard(st, &ls->host, ls->tag, to);
        if (known)
            sqlite3_bind_blob(st, 4, head, RS_CHAIN_BYTES, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 4);
        if ((err = done_step(store, st, "compacting a shard")) < 0)
            break;
        dropped += to - ls->start;
    }
    if (begun) {
        if (err == 0)
            err = rs_store_commit(store);
        else
            rs_store_rollback(store);
    }
    rs_index_free(local);
    *out = err == 0 ? dropped : 0;
    return err;
}
