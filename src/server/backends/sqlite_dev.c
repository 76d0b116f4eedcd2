/*
 * The SQLite backend's devices and accounts (backend.h; the wire is
 * docs/protocol.md "Devices and accounts"): listing a user's devices,
 * retiring, renaming and logging one out, changing a password and deleting
 * a user with everything it stored. Statements run once per request, so
 * they are prepared per call on a pooled connection of sqlite.c; every
 * write holds sqlite.c's writer mutex around BEGIN IMMEDIATE ... COMMIT.
 */
#include "sqlite_int.h"

#include <stdio.h>
#include <string.h>

/*
 * Every device of user ?1 with how far behind its acks are: over the
 * shards of the user's other devices, the records above what it acked
 * (a shard it never acked counts from 0).
 */
static const char list_sql[] =
    "SELECT d.host, d.name, d.created_ms, d.last_seen_ms, d.retired_ms,"
    " (SELECT coalesce(sum(max(0, s.end_idx - coalesce((SELECT a.end_idx FROM acks a"
    "  WHERE a.user_id = s.user_id AND a.host = s.host AND a.tag = s.tag AND a.device = d.host),"
    "  0))), 0) FROM shards s WHERE s.user_id = d.user_id AND s.host <> d.host)"
    " FROM devices d WHERE d.user_id = ?1 ORDER BY d.created_ms, d.host";

/* The tables holding a user's rows, children first; `users` last. */
static const char *const user_tables[] = {
    "records",           "events",    "acks",    "shards", "snapshot_chunks",
    "snapshot_frontier", "snapshots", "devices", "users",
};

static int db_error(sqlite3 *db, int rc, const char *what)
{
    return rs__sqlite_error_in(db, rc, what, 0);
}

static int prep(sqlite3 *db, sqlite3_stmt **out, const char *sql)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, out, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, "preparing a statement");
}

static int exec(sqlite3 *db, const char *sql, const char *what)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, what);
}

static void bind_uuid(sqlite3_stmt *st, int col, const rs_uuid *id)
{
    sqlite3_bind_blob(st, col, id->bytes, sizeof(id->bytes), SQLITE_STATIC);
}

static int no_device(int64_t user, const rs_uuid *host)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    return rs__error(RS_ENOTFOUND, "user %lld has no device %s", (long long)user, h);
}

int rs__sqlite_device_list(rs_backend *b, int64_t user, rs_device_cb cb, void *payload)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    if ((err = exec(db, "BEGIN", "starting a read")) < 0 || (err = prep(db, &st, list_sql)) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_device_row row;
        memset(&row, 0, sizeof(row));
        const void *h = sqlite3_column_blob(st, 0);
        if (h && sqlite3_column_bytes(st, 0) == (int)sizeof(row.host.bytes))
            memcpy(row.host.bytes, h, sizeof(row.host.bytes));
        const unsigned char *name = sqlite3_column_text(st, 1);
        snprintf(row.name, sizeof(row.name), "%s", name ? (const char *)name : "");
        row.created_ms = (uint64_t)sqlite3_column_int64(st, 2);
        row.last_seen_ms = (uint64_t)sqlite3_column_int64(st, 3);
        row.retired_ms = (uint64_t)sqlite3_column_int64(st, 4);
        if (sqlite3_column_type(st, 4) != SQLITE_NULL && row.retired_ms == 0)
            row.retired_ms = 1;
        row.behind = (uint64_t)sqlite3_column_int64(st, 5);
        if ((err = cb(&row, payload)) < 0)
            goto done;
    }
    if (rc != SQLITE_DONE)
        err = db_error(db, rc, "listing devices");
    else
        err = exec(db, "COMMIT", "ending a read");
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c);
    return err;
}

/*
 * Runs one UPDATE of a device row of user ?1, host ?2 (with a third and
 * fourth parameter from `p3`/`p3_len` and `p4`/`p4_len`, text when the
 * length is -1) in a write transaction; RS_ENOTFOUND when no row matched.
 * With `retired` non-NULL, reads the device's retired_ms into it after.
 */
static int update_device(rs_backend *b, const char *sql, int64_t user, const rs_uuid *host,
                         const void *p3, int p3_len, const void *p4, int p4_len, uint64_t *retired,
                         const char *what)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    rs__sqlite_write_lock(b, 1);
    if ((err = exec(db, "BEGIN IMMEDIATE", "starting a write")) < 0 ||
        (err = prep(db, &st, sql)) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, host);
    if (p3 && p3_len < 0)
        sqlite3_bind_text(st, 3, p3, -1, SQLITE_STATIC);
    else if (p3)
        sqlite3_bind_blob(st, 3, p3, p3_len, SQLITE_STATIC);
    if (p4)
        sqlite3_bind_blob(st, 4, p4, p4_len, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        err = db_error(db, rc, what);
        goto done;
    }
    if (sqlite3_changes(db) == 0) {
        err = no_device(user, host);
        goto done;
    }
    if (retired) {
        sqlite3_finalize(st);
        st = NULL;
        if ((err = prep(db, &st, "SELECT retired_ms FROM devices WHERE host = ?1")) < 0)
            goto done;
        bind_uuid(st, 1, host);
        if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
            err = db_error(db, rc, "reading a device's retirement");
            goto done;
        }
        *retired = (uint64_t)sqlite3_column_int64(st, 0);
    }
    err = exec(db, "COMMIT", "committing");
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c); /* rolls back on failure */
    rs__sqlite_write_lock(b, 0);
    return err;
}

int rs__sqlite_device_retire(rs_backend *b, uint64_t *out_retired_ms, int64_t user,
                             const rs_uuid *host, uint64_t now_ms)
{
    char now[24];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)now_ms);
    return update_device(b,
                         "UPDATE devices SET retired_ms = coalesce(retired_ms, CAST(?3 AS INTEGER))"
                         " WHERE user_id = ?1 AND host = ?2",
                         user, host, now, -1, NULL, 0, out_retired_ms, "retiring a device");
}

int rs__sqlite_device_rename(rs_backend *b, int64_t user, const rs_uuid *host, const char *name)
{
    return update_device(b, "UPDATE devices SET name = ?3 WHERE user_id = ?1 AND host = ?2", user,
                         host, name, -1, NULL, 0, NULL, "renaming a device");
}

int rs__sqlite_device_revoke(rs_backend *b, int64_t user, const rs_uuid *host,
                             const rs_token *token)
{
    return update_device(b,
                         "UPDATE devices SET token_id = ?3, token_hash = ?4"
                         " WHERE user_id = ?1 AND host = ?2",
                         user, host, token->id, RS_TOKEN_ID_BYTES, token->hash, RS_TOKEN_HASH_BYTES,
                         NULL, "revoking a device's token");
}

int rs__sqlite_user_password(rs_backend *b, int64_t user, const char *pwhash)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    rs__sqlite_write_lock(b, 1);
    if ((err = prep(db, &st, "UPDATE users SET pwhash = ?2 WHERE user_id = ?1")) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    sqlite3_bind_text(st, 2, pwhash, -1, SQLITE_STATIC);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE)
        err = db_error(db, rc, "changing a password");
    else if (sqlite3_changes(db) == 0)
        err = rs__error(RS_ENOTFOUND, "no user %lld", (long long)user);
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c);
    rs__sqlite_write_lock(b, 0);
    return err;
}

/* *out = the first column of `sql` bound with ?1 = user. */
static int count_of(sqlite3 *db, uint64_t *out, const char *sql, int64_t user)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st, sql), rc;
    if (err < 0)
        return err;
    sqlite3_bind_int64(st, 1, user);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW)
        *out = (uint64_t)sqlite3_column_int64(st, 0);
    else
        err = db_error(db, rc, "counting a user's rows");
    sqlite3_finalize(st);
    return err;
}

int rs__sqlite_user_delete(rs_backend *b, rs_user_delete_stats *out, int64_t user)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    uint64_t users = 0;
    int err = rs__sqlite_conn_get(b, &c);
    memset(out, 0, sizeof(*out));
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    rs__sqlite_write_lock(b, 1);
    if ((err = exec(db, "BEGIN IMMEDIATE", "starting a write")) < 0 ||
        (err = count_of(db, &users, "SELECT count(*) FROM users WHERE user_id = ?1", user)) < 0)
        goto done;
    if (users == 0) {
        err = rs__error(RS_ENOTFOUND, "no user %lld", (long long)user);
        goto done;
    }
    if ((err = count_of(db, &out->devices, "SELECT count(*) FROM devices WHERE user_id = ?1",
                        user)) < 0 ||
        (err = count_of(db, &out->records, "SELECT count(*) FROM records WHERE user_id = ?1",
                        user)) < 0 ||
        (err = count_of(db, &out->snapshots, "SELECT count(*) FROM snapshots WHERE user_id = ?1",
                        user)) < 0)
        goto done;
    for (size_t i = 0; i < sizeof(user_tables) / sizeof(user_tables[0]); i++) {
        char sql[96];
        int rc;
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE user_id = ?1", user_tables[i]);
        if ((err = prep(db, &st, sql)) < 0)
            goto done;
        sqlite3_bind_int64(st, 1, user);
        if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
            err = db_error(db, rc, "deleting a user's rows");
            goto done;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    err = exec(db, "COMMIT", "committing a user's deletion");
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c); /* rolls back on failure */
    rs__sqlite_write_lock(b, 0);
    return err;
}
