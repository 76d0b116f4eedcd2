/*
 * Heads remembered and exchanged (issue 15): what lets a device notice a
 * server that rolls a shard back, hides it, or shows two devices two
 * histories of it.
 *
 * - Remembered: the store holds every shard's (end, head) it has checked
 *   (chain.c), and the last sync's view of the server (RS_META_LAST_INDEX).
 *   A server index ending a shard below either is a rollback.
 * - Exchanged: now and then a sync writes a checkpoint, a record of the
 *   reserved tag rs.checkpoint carrying this device's (host, tag, end,
 *   head) for every shard it holds, sealed and chained like any record.
 *   Other devices keep the latest claim of each device for each shard
 *   (table chain_claims) and check them: a server whose index ends a shard
 *   below what another device claims to have seen hides records from this
 *   one; a record this store holds at a claimed position with another head
 *   means the two devices were shown different histories.
 *
 * Any of these sets an alarm in the store (meta chain.alarm): every later
 * sync with that server refuses, `recsync status` says so, until the user
 * logs in to a server again (sync.c forgets it then).
 */
#include "builtin.h"
#include "client.h"
#include "keyring.h"
#include "snapshot_int.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_ALARM "chain.alarm"
#define META_CHECKPOINT_MS "chain.checkpoint_ms" /* the last checkpoint, or the clock start */

/* A device's claim about a shard: kept when it reaches at least as far as the one held. */
#define CLAIM_SQL                                                                                  \
    "INSERT INTO chain_claims(writer, host, tag, end, head) VALUES (?1, ?2, ?3, ?4, ?5) "          \
    "ON CONFLICT(writer, host, tag) DO UPDATE SET end = excluded.end, head = excluded.head "       \
    "WHERE excluded.end >= chain_claims.end"

typedef struct checkpoint_state {
    rs_store *store;
} checkpoint_state;

static int exec_ok(sqlite3 *db, int rc, const char *what)
{
    return rc == SQLITE_DONE || rc == SQLITE_OK ? 0 : rs__sqlite_error(db, rc, what);
}

static int ck_setup(sqlite3 *db, void *payload)
{
    (void)db;
    (void)payload;
    return 0; /* chain_claims is the store's own table (store.c schema 3) */
}

static int ck_reset(sqlite3 *db, void *payload)
{
    (void)payload;
    return exec_ok(db, sqlite3_exec(db, "DELETE FROM chain_claims", NULL, NULL, NULL),
                   "emptying the chain claims");
}

/*
 * A checkpoint of another device: keeps, per shard, its claim with the
 * highest end. A payload that does not parse is kept unapplied (builtin.h).
 */
static int ck_apply(sqlite3 *db, const rs_record *rec, const uint8_t *plain, size_t len,
                    void *payload)
{
    checkpoint_state *cs = payload;
    json_t *root = json_loadb((const char *)plain, len, 0, NULL), *heads;
    sqlite3_stmt *st = NULL;
    int rc, err = 0;

    if (rs_uuid_cmp(&rec->host, &cs->store->host) == 0) {
        json_decref(root);
        return 0;
    }
    heads = json_object_get(root, "heads");
    if ((err = rs__keyring_device_seen(
             cs->store, rec, json_string_value(json_object_get(root, "device_key")))) < 0) {
        json_decref(root);
        return err;
    }
    if (!json_is_array(heads)) {
        json_decref(root);
        return rs__keep_unapplied(cs->store, rec, "checkpoint payload has no heads");
    }
    rc = sqlite3_prepare_v2(db, CLAIM_SQL, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        json_decref(root);
        return rs__sqlite_error(db, rc, "keeping a checkpoint");
    }
    for (size_t i = 0; i < json_array_size(heads) && err == 0; i++) {
        const json_t *e = json_array_get(heads, i), *end = json_object_get(e, "end");
        const char *tag = json_string_value(json_object_get(e, "tag"));
        const char *hex = json_string_value(json_object_get(e, "head"));
        rs_uuid host;
        uint8_t head[RS_CHAIN_BYTES];
        if (rs_uuid_parse(&host, json_string_value(json_object_get(e, "host"))) < 0 ||
            tag == NULL || !rs_tag_valid(tag) || !json_is_integer(end) ||
            json_integer_value(end) < 0 || hex == NULL || rs__unhex(head, RS_CHAIN_BYTES, hex) < 0)
            continue; /* a newer build's entry this one does not read */
        sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, host.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, tag, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, json_integer_value(end));
        sqlite3_bind_blob(st, 5, head, RS_CHAIN_BYTES, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        err = exec_ok(db, rc, "keeping a checkpoint");
    }
    sqlite3_finalize(st);
    json_decref(root);
    return err;
}

static int ck_snapshot_write(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                             void *emit_ctx, void *payload)
{
    (void)payload;
    return rs__snap_emit_rows(db, "SELECT writer, host, tag, end, head FROM chain_claims", emit,
                              emit_ctx);
}

static int ck_snapshot_load(sqlite3 *db, const uint8_t *item, size_t len, void *payload)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    (void)payload;
    rc = sqlite3_prepare_v2(db, CLAIM_SQL, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(db, rc, "loading checkpoints");
    if ((err = rs__snap_bind_row(st, item, len)) == 0)
        err = exec_ok(db, sqlite3_step(st), "loading checkpoints");
    sqlite3_finalize(st);
    return err;
}

static void ck_release(void *payload)
{
    rs_free(payload);
}

int rs__checkpoint_register(rs_store *store)
{
    checkpoint_state *cs = rs__calloc(1, sizeof(*cs));
    rs_tag_def def;
    int err;
    if (cs == NULL)
        return rs__error(RS_ENOMEM, "out of memory registering checkpoints");
    cs->store = store;
    memset(&def, 0, sizeof(def));
    def.tag = RS_CHECKPOINT_TAG;
    def.version = 1;
    def.setup = ck_setup;
    def.apply = ck_apply;
    def.reset = ck_reset;
    def.payload = cs;
    def.release = ck_release;
    def.snapshot_write = ck_snapshot_write;
    def.snapshot_load = ck_snapshot_load;
    if ((err = rs_store_register(store, &def)) < 0)
        rs_free(cs);
    return err;
}

/* ---- the alarm ---- */

int rs_chain_alarm(char **out, rs_store *store)
{
    return rs_store_meta_get(out, store, META_ALARM);
}

/* Keeps the alarm (the first one stays) and returns RS_ECHAIN with it. */
int rs__chain_raise(rs_store *store, const char *fmt, ...)
{
    char msg[1024], *old = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (rs_store_meta_get(&old, store, META_ALARM) == RS_ENOTFOUND)
        (void)rs_store_meta_set(store, META_ALARM, msg);
    rs_free(old);
    return rs__error(RS_ECHAIN, "%s", msg);
}

int rs__chain_forget_alarm(rs_store *store)
{
    int err = rs_store_meta_del(store, META_ALARM);
    return err == RS_ENOTFOUND ? 0 : err;
}

int rs__chain_preflight(rs_store *store, const char *url, const rs_index *local,
                        const rs_index *remote, const rs_index *last)
{
    char *alarm = NULL, name[RS_UUID_STRLEN + RS_TAG_MAX + 2];
    sqlite3_stmt *st = NULL;
    int rc, err = 0;

    if (rs_store_meta_get(&alarm, store, META_ALARM) == 0) {
        err = rs__error(RS_ECHAIN,
                        "refusing to sync with %s: %s. Nothing was written. Investigate the "
                        "server; 'recsync login' to a server again clears this",
                        url, alarm);
        rs_free(alarm);
        return err;
    }
    /* Rollback: an end below what this device saw there, or checked itself. */
    for (size_t i = 0; last && i < last->count; i++) {
        const rs_shard *was = &last->shards[i], *now = rs_index_find(remote, &was->host, was->tag);
        if (now && now->end >= was->end)
            continue;
        rs__shard_name(name, sizeof(name), &was->host, was->tag);
        return rs__chain_raise(
            store,
            "server %s ends shard %s at idx %llu, but it ended it at %llu at the "
            "last sync: the server rolled the shard back",
            url, name, (unsigned long long)(now ? now->end : 0), (unsigned long long)was->end);
    }
    /*
     * The same for what this device checked itself, for the shards this
     * server showed it (a store that moved to another server holds shards
     * that server never had).
     */
    for (size_t i = 0; local && last && i < local->count; i++) {
        const rs_shard *ls = &local->shards[i], *now = rs_index_find(remote, &ls->host, ls->tag);
        rs_uuid self;
        rs_store_host(&self, store);
        if (rs_uuid_cmp(&ls->host, &self) == 0 || rs_index_find(last, &ls->host, ls->tag) == NULL ||
            (now && now->end >= ls->end))
            continue;
        rs__shard_name(name, sizeof(name), &ls->host, ls->tag);
        return rs__chain_raise(
            store,
            "server %s ends shard %s at idx %llu, but this device has checked it "
            "up to %llu: the server rolled the shard back or hides it",
            url, name, (unsigned long long)(now ? now->end : 0), (unsigned long long)ls->end);
    }
    /* Hiding: another device's checkpoint saw more of a shard than the server shows. */
    if ((err = rs__stmt(&st, store,
                        "SELECT writer, host, tag, end FROM chain_claims ORDER BY writer")) < 0)
        return err;
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_uuid writer, host;
        char wtext[RS_UUID_STRLEN + 1];
        const char *tag = (const char *)sqlite3_column_text(st, 2);
        uint64_t end = (uint64_t)sqlite3_column_int64(st, 3);
        memcpy(writer.bytes, sqlite3_column_blob(st, 0), 16);
        memcpy(host.bytes, sqlite3_column_blob(st, 1), 16);
        const rs_shard *now = rs_index_find(remote, &host, tag);
        if (now && now->end >= end)
            continue;
        rs_uuid_format(wtext, &writer);
        rs__shard_name(name, sizeof(name), &host, tag);
        err = rs__chain_raise(
            store,
            "server %s ends shard %s at idx %llu, but device %s has seen it up to "
            "%llu (its checkpoint): the server shows devices different histories",
            url, name, (unsigned long long)(now ? now->end : 0), wtext, (unsigned long long)end);
    }
    rs__stmt_done(store, st);
    return err;
}

int rs__chain_audit(rs_store *store, const char *url)
{
    sqlite3_stmt *st = NULL;
    int rc, err = 0;
    /* A record this store holds at a position another device claims, with another head. */
    if ((err = rs__stmt(&st, store,
                        "SELECT c.writer, c.host, c.tag, c.end FROM chain_claims c "
                        "JOIN records r ON r.host = c.host AND r.tag = c.tag AND "
                        "r.idx = c.end - 1 WHERE c.end > 0 AND r.head IS NOT NULL AND "
                        "r.head != c.head LIMIT 1")) < 0)
        return err;
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_uuid writer, host;
        char wtext[RS_UUID_STRLEN + 1], name[RS_UUID_STRLEN + RS_TAG_MAX + 2];
        memcpy(writer.bytes, sqlite3_column_blob(st, 0), 16);
        memcpy(host.bytes, sqlite3_column_blob(st, 1), 16);
        rs_uuid_format(wtext, &writer);
        rs__shard_name(name, sizeof(name), &host, (const char *)sqlite3_column_text(st, 2));
        err = rs__chain_raise(store,
                              "shard %s at idx %lld holds another record here than device %s saw "
                              "(its checkpoint): server %s showed the two devices different "
                              "histories of the shard",
                              name, (long long)sqlite3_column_int64(st, 3) - 1, wtext, url);
    } else if (rc != SQLITE_DONE) {
        err = rs__sqlite_error(store->db, rc, "checking checkpoints");
    } else {
        store->audit_due = 0;
    }
    rs__stmt_done(store, st);
    return err;
}

/* ---- writing checkpoints ---- */

/*
 * The first checkpoint is due `every` after the store's first completed
 * sync: that sync keeps its time here, in the same transaction as the rest
 * of what it keeps. (Counted from the last sync instead, it moved on with
 * each one, and a device syncing more often never wrote its first.)
 */
int rs__checkpoint_clock_start(rs_store *store)
{
    char *text = NULL, buf[32];
    int err = rs_store_meta_get(&text, store, META_CHECKPOINT_MS);
    rs_free(text);
    if (err != RS_ENOTFOUND)
        return err;
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)rs__store_now_ms(store));
    return rs_store_meta_set(store, META_CHECKPOINT_MS, buf);
}

int rs__checkpoint_maybe(int *wrote, rs_store *store, const rs_index *last, uint64_t every_ms)
{
    char *text = NULL;
    uint64_t now = rs__store_now_ms(store), last_ms = 0;
    rs_index *local = NULL;
    rs_buf body = {0};
    int err, known;

    *wrote = 0;
    if (every_ms == UINT64_MAX)
        return 0;
    err = rs_store_meta_get(&text, store, META_CHECKPOINT_MS);
    if (err == 0)
        last_ms = strtoull(text, NULL, 10);
    rs_free(text);
    /* None yet: the clock starts when the first sync completes (rs__checkpoint_clock_start). */
    if (err < 0 && every_ms > 1)
        return 0;
    if (now - last_ms < every_ms)
        return 0;
    if ((err = rs_store_index(&local, store)) < 0)
        return err;
    err = rs_buf_puts(&body, "{\"heads\":[");
    size_t n = 0;
    rs_uuid self;
    rs_store_host(&self, store);
    for (size_t i = 0; i < local->count && err == 0; i++) {
        const rs_shard *sh = &local->shards[i], *there = rs_index_find(last, &sh->host, sh->tag);
        uint8_t head[RS_CHAIN_BYTES];
        char hex[2 * RS_CHAIN_BYTES + 1], host[RS_UUID_STRLEN + 1];
        uint64_t end = sh->end;
        /* Of its own shards a device claims only what the server has acknowledged. */
        if (rs_uuid_cmp(&sh->host, &self) == 0)
            end = there == NULL ? 0 : there->end < end ? there->end : end;
        if (strcmp(sh->tag, RS_CHECKPOINT_TAG) == 0 || end == 0 || end < sh->start ||
            (err = rs__chain_head_before(head, &known, store, &sh->host, sh->tag, end)) < 0 ||
            !known)
            continue;
        rs__hex(hex, head, RS_CHAIN_BYTES);
        rs_uuid_format(host, &sh->host);
        err =
            rs_buf_printf(&body, "%s{\"host\":\"%s\",\"tag\":\"%s\",\"end\":%llu,\"head\":\"%s\"}",
                          n++ ? "," : "", host, sh->tag, (unsigned long long)end, hex);
    }
    if (err == 0 && (err = rs_buf_puts(&body, "]")) == 0 &&
        (err = rs__keyring_checkpoint_key(&body, store)) == 0)
        err = rs_buf_puts(&body, "}");
    if (err == 0 && (err = rs_append(NULL, store, RS_CHECKPOINT_TAG, 1, body.ptr, body.len)) == 0) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)now);
        err = rs_store_meta_set(store, META_CHECKPOINT_MS, buf);
        *wrote = 1;
    }
    rs_buf_free(&body);
    rs_index_free(local);
    return err;
}
