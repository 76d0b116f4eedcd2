/*
 * The kv store (include/recsync/kv.h): records of tag "kv" applied into the
 * table kv(ns, key, value, deleted, hlc, host), one row per key, keeping
 * the write with the highest (hlc, host). Tombstones stay in the table: they
 * are the baseline a late older set is compared against.
 */
#include "builtin.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct kv_state {
    rs_store *store;
    sqlite3_stmt *st_apply;
    sqlite3_stmt *st_get;
} kv_state;

static const char kv_schema[] =
    "CREATE TABLE IF NOT EXISTS kv("
    "  ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT, deleted INTEGER NOT NULL,"
    "  hlc INTEGER NOT NULL, host BLOB NOT NULL,"
    "  PRIMARY KEY(ns, key)) WITHOUT ROWID;";

/*
 * The one write path of the state. SQLite compares the 16-byte host blobs
 * bytewise, as rs_hlc_cmp does, so the tie-break agrees with the library's
 * order of writes.
 */
static const char kv_apply_sql[] =
    "INSERT INTO kv(ns, key, value, deleted, hlc, host) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
    "ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value, deleted = excluded.deleted, "
    "hlc = excluded.hlc, host = excluded.host "
    "WHERE excluded.hlc > kv.hlc OR (excluded.hlc = kv.hlc AND excluded.host > kv.host)";

static int kv_setup(sqlite3 *db, void *payload)
{
    kv_state *kv = payload;
    int rc = sqlite3_exec(db, kv_schema, NULL, NULL, NULL);
    int err;
    if (rc != SQLITE_OK)
        return rs__sqlite_error(db, rc, "creating the kv table");
    if (kv->st_apply == NULL &&
        (err = rs__prepare_kept(db, &kv->st_apply, kv_apply_sql, "preparing the kv store")) < 0)
        return err;
    if (kv->st_get == NULL &&
        (err = rs__prepare_kept(db, &kv->st_get,
                                "SELECT value FROM kv WHERE ns = ?1 AND key = ?2 AND deleted = 0",
                                "preparing the kv store")) < 0)
        return err;
    return 0;
}

static int kv_reset(sqlite3 *db, void *payload)
{
    int rc = sqlite3_exec(db, "DELETE FROM kv", NULL, NULL, NULL);
    (void)payload;
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(db, rc, "emptying the kv table");
}

static void kv_release(void *payload)
{
    kv_state *kv = payload;
    if (kv == NULL)
        return;
    sqlite3_finalize(kv->st_apply);
    sqlite3_finalize(kv->st_get);
    rs_free(kv);
}

/*
 * Applies one kv record. A payload that does not parse as a version-1 set
 * or delete is kept unapplied with a warning (builtin.h says why); only a
 * database failure fails the record's transaction.
 */
static int kv_apply(sqlite3 *db, const rs_record *rec, const uint8_t *plain, size_t len,
                    void *payload)
{
    kv_state *kv = payload;
    sqlite3_stmt *st = kv->st_apply;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)plain, len, 0, &jerr), *jvalue;
    const char *op = NULL, *ns = NULL, *key = NULL, *value = NULL;
    char why[300];
    int rc, err = 0;

    if (root == NULL) {
        snprintf(why, sizeof(why), "kv payload is not JSON (%s)", jerr.text);
        return rs__keep_unapplied(kv->store, rec, why);
    }
    if (json_unpack(root, "{s:s, s:s, s:s}", "op", &op, "ns", &ns, "key", &key) != 0 || !*ns ||
        !*key) {
        err = rs__keep_unapplied(kv->store, rec, "kv payload lacks a string op, ns or key");
        goto done;
    }
    if (strcmp(op, "set") == 0) {
        jvalue = json_object_get(root, "value");
        if (!json_is_string(jvalue)) {
            err = rs__keep_unapplied(kv->store, rec, "kv set has no string value");
            goto done;
        }
        value = json_string_value(jvalue);
    } else if (strcmp(op, "del") != 0) {
        snprintf(why, sizeof(why), "kv payload has unknown op '%.40s'", op);
        err = rs__keep_unapplied(kv->store, rec, why);
        goto done;
    }
    sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    if (value)
        sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int(st, 4, value == NULL);
    rs__bind_writer(st, 5, 6, rec);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        err = rs__sqlite_error(db, rc, "updating the kv table");
done:
    json_decref(root);
    return err;
}

/* The state as snapshot items: one per row, tombstones included (a device may still need them). */
static int kv_snapshot_write(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                             void *emit_ctx, void *payload)
{
    (void)payload;
    return rs__snap_emit_rows(db, "SELECT ns, key, value, deleted, hlc, host FROM kv", emit,
                              emit_ctx);
}

static int kv_snapshot_load(sqlite3 *db, const uint8_t *item, size_t len, void *payload)
{
    kv_state *kv = payload;
    sqlite3_stmt *st = kv->st_apply;
    int rc, err;
    (void)db;
    /* The apply statement keeps the higher clock, so loading over records agrees with them. */
    if ((err = rs__snap_bind_row(st, item, len)) == 0) {
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            err = rs__sqlite_error(db, rc, "loading a kv snapshot");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

int rs__kv_register(rs_store *store)
{
    kv_state *kv = rs__calloc(1, sizeof(*kv));
    rs_tag_def def;
    int err;

    if (kv == NULL)
        return rs__error(RS_ENOMEM, "out of memory registering the kv store");
    kv->store = store;
    memset(&def, 0, sizeof(def));
    def.tag = RS_KV_TAG;
    def.version = rs__kv_version;
    def.setup = kv_setup;
    def.apply = kv_apply;
    def.reset = kv_reset;
    def.payload = kv;
    def.release = kv_release;
    def.snapshot_write = kv_snapshot_write;
    def.snapshot_load = kv_snapshot_load;
    if ((err = rs_store_register(store, &def)) < 0)
        kv_release(kv);
    return err;
}

/* The kv store registered on `store` at open. */
static kv_state *kv_of(rs_store *store)
{
    for (size_t i = 0; i < store->tag_count; i++)
        if (store->tags[i].def.apply == kv_apply)
            return store->tags[i].def.payload;
    return NULL;
}

static int check_text(const char *what, const char *s, bool nonempty)
{
    if (s == NULL)
        return rs__error(RS_EINVAL, "kv: no %s given", what);
    if (nonempty && *s == '\0')
        return rs__error(RS_EINVAL, "kv: the %s is empty", what);
    if (!rs__utf8_valid(s, strlen(s)))
        return rs__error(RS_EINVAL, "kv: the %s is not valid UTF-8", what);
    return 0;
}

/* Appends one kv record: a set when value is non-NULL, else a delete. */
static int kv_write(rs_store *store, const char *ns, const char *key, const char *value)
{
    json_t *root;
    char *text = NULL;
    int err;

    if (value)
        root = json_pack("{s:s, s:s, s:s, s:s}", "op", "set", "ns", ns, "key", key, "value", value);
    else
        root = json_pack("{s:s, s:s, s:s}", "op", "del", "ns", ns, "key", key);
    if (root == NULL || (text = json_dumps(root, JSON_COMPACT)) == NULL) {
        json_decref(root);
        return rs__error(RS_ENOMEM, "out of memory writing key '%.100s' of namespace '%.100s'", key,
                         ns);
    }
    json_decref(root);
    if ((err = rs_append(NULL, store, RS_KV_TAG, RS_KV_VERSION, text, strlen(text))) < 0)
        rs__error(err, "kv %s %.100s/%.100s: %s", value ? "set" : "del", ns, key, rs_error_last());
    free(text);
    return err;
}

int rs_kv_set(rs_store *store, const char *ns, const char *key, const char *value)
{
    int err;
    if ((err = check_text("namespace", ns, true)) < 0 || (err = check_text("key", key, true)) < 0 ||
        (err = check_text("value", value, false)) < 0)
        return err;
    return kv_write(store, ns, key, value);
}

/* The live value of (ns, key) into *out when out is non-NULL. */
static int kv_lookup(char **out, rs_store *store, const char *ns, const char *key)
{
    kv_state *kv = kv_of(store);
    sqlite3_stmt *st;
    int rc, err = 0;

    if (kv == NULL)
        return rs__error(RS_ENOTFOUND, "store %s has no kv store registered", store->dir);
    if (ns == NULL || key == NULL)
        return rs__error(RS_EINVAL, "kv: a namespace and a key are needed");
    st = kv->st_get;
    sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (out && (*out = rs__strdup((const char *)sqlite3_column_text(st, 0))) == NULL)
            err = rs__error(RS_ENOMEM, "out of memory reading key '%.100s'", key);
    } else if (rc == SQLITE_DONE) {
        err = rs__error(RS_ENOTFOUND, "no key '%.100s' in namespace '%.100s'", key, ns);
    } else {
        err = rs__sqlite_error(store->db, rc, "reading the kv table");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

int rs_kv_get(char **out, rs_store *store, const char *ns, const char *key)
{
    return kv_lookup(out, store, ns, key);
}

int rs_kv_del(rs_store *store, const char *ns, const char *key)
{
    int err;
    if ((err = check_text("namespace", ns, true)) < 0 || (err = check_text("key", key, true)) < 0)
        return err;
    if ((err = kv_lookup(NULL, store, ns, key)) < 0)
        return err;
    return kv_write(store, ns, key, NULL);
}

typedef struct list_state {
    rs_kv_cb cb;
    void *payload;
} list_state;

static int list_one(const rs_kv_entry *e, void *payload)
{
    list_state *ls = payload;
    return ls->cb(e->ns, e->key, e->value, ls->payload);
}

/* Walks the table (live rows only unless `tombstones`), ordered by ns, key. */
static int kv_walk(rs_store *store, const char *ns, bool tombstones, rs_kv_entry_cb cb,
                   void *payload)
{
    sqlite3_stmt *st = NULL;
    char sql[200];
    rs_kv_entry e;
    int rc, ret = 0;

    snprintf(sql, sizeof(sql),
             "SELECT ns, key, value, hlc, host FROM kv WHERE %s%s ORDER BY ns, key",
             tombstones ? "1" : "deleted = 0", ns ? " AND ns = ?1" : "");
    rc = sqlite3_prepare_v2(store->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(store->db, rc, "reading the kv table");
    if (ns)
        sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(&e, 0, sizeof(e));
        e.ns = (const char *)sqlite3_column_text(st, 0);
        e.key = (const char *)sqlite3_column_text(st, 1);
        e.value = (const char *)sqlite3_column_text(st, 2);
        e.hlc = (rs_hlc)sqlite3_column_int64(st, 3);
        if (sqlite3_column_bytes(st, 4) == 16)
            memcpy(e.host.bytes, sqlite3_column_blob(st, 4), 16);
        if ((ret = cb(&e, payload)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = rs__sqlite_error(store->db, rc, "reading the kv table");
    sqlite3_finalize(st);
    return ret;
}

int rs_kv_list(rs_store *store, const char *ns, rs_kv_cb cb, void *payload)
{
    list_state ls = {cb, payload};
    return kv_walk(store, ns, false, list_one, &ls);
}

int rs_kv_foreach(rs_store *store, const char *ns, rs_kv_entry_cb cb, void *payload)
{
    return kv_walk(store, ns, true, cb, payload);
}
