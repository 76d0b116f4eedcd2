/*
 * The PostgreSQL backend's devices and accounts (backend.h; the wire is
 * docs/protocol.md "Devices and accounts"). The same tables and rules as
 * sqlite_dev.c. Deleting a user first locks the user's row, as every
 * writer of that user does (postgres.c), so an upload of another recsyncd
 * process either commits before the deletion (and is deleted with it) or
 * finds no user after it.
 */
#include "postgres_int.h"

/* As sqlite_dev.c's list_sql. */
static const char list_sql[] =
    "SELECT d.host, d.name, d.created_ms, d.last_seen_ms, d.retired_ms,"
    " (SELECT coalesce(sum(greatest(0, s.end_idx - coalesce((SELECT a.end_idx FROM acks a"
    "  WHERE a.user_id = s.user_id AND a.host = s.host AND a.tag = s.tag AND a.device = d.host),"
    "  0))), 0)::int8 FROM shards s WHERE s.user_id = d.user_id AND s.host <> d.host)"
    " FROM devices d WHERE d.user_id = $1::int8 ORDER BY d.created_ms, d.host";

/* The tables holding a user's rows, children first; `users` last. */
static const char *const user_tables[] = {
    "records",           "events",    "acks",    "shards", "snapshot_chunks",
    "snapshot_frontier", "snapshots", "devices", "users",
};

static int no_device(int64_t user, const rs_uuid *host)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    return rs__error(RS_ENOTFOUND, "user %lld has no device %s", (long long)user, h);
}

int rs__pg_device_list(rs_backend *b, int64_t user, rs_device_cb cb, void *payload)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    params p = {0};
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    p_i64(&p, user);
    if ((err = rs__pg_query(c, &r, list_sql, &p, "listing devices")) < 0)
        goto done;
    for (int i = 0; err == 0 && i < PQntuples(r); i++) {
        rs_device_row row;
        memset(&row, 0, sizeof(row));
        get_uuid(&row.host, r, i, 0);
        snprintf(row.name, sizeof(row.name), "%s", is_null(r, i, 1) ? "" : PQgetvalue(r, i, 1));
        row.created_ms = (uint64_t)get_i64(r, i, 2);
        row.last_seen_ms = (uint64_t)get_i64(r, i, 3);
        if (!is_null(r, i, 4))
            row.retired_ms = get_i64(r, i, 4) > 0 ? (uint64_t)get_i64(r, i, 4) : 1;
        row.behind = (uint64_t)get_i64(r, i, 5);
        err = cb(&row, payload);
    }
    PQclear(r);
done:
    rs__pg_conn_put(b, c);
    return err;
}

/*
 * Runs `sql`, an UPDATE of device ($1 user, $2 host, more parameters in
 * `p` after those) ending in RETURNING one column; RS_ENOTFOUND when no
 * row matched; *out (may be NULL) gets the returned integer.
 */
static int update_device(rs_backend *b, uint64_t *out, const char *sql, const params *p,
                         int64_t user, const rs_uuid *host, const char *what)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    if ((err = rs__pg_query(c, &r, sql, p, what)) < 0)
        goto done;
    if (PQntuples(r) == 0)
        err = no_device(user, host);
    else if (out)
        *out = (uint64_t)get_i64(r, 0, 0);
    PQclear(r);
done:
    rs__pg_conn_put(b, c);
    return err;
}

int rs__pg_device_retire(rs_backend *b, uint64_t *out_retired_ms, int64_t user, const rs_uuid *host,
                         uint64_t now_ms)
{
    params p = {0};
    p_i64(&p, user);
    p_uuid(&p, host);
    p_i64(&p, (int64_t)now_ms);
    return update_device(b, out_retired_ms,
                         "UPDATE devices SET retired_ms = coalesce(retired_ms, $3::int8)"
                         " WHERE user_id = $1::int8 AND host = $2::bytea RETURNING retired_ms",
                         &p, user, host, "retiring a device");
}

int rs__pg_device_rename(rs_backend *b, int64_t user, const rs_uuid *host, const char *name)
{
    params p = {0};
    p_i64(&p, user);
    p_uuid(&p, host);
    p_text(&p, name);
    return update_device(b, NULL,
                         "UPDATE devices SET name = $3::text"
                         " WHERE user_id = $1::int8 AND host = $2::bytea RETURNING user_id",
                         &p, user, host, "renaming a device");
}

int rs__pg_device_revoke(rs_backend *b, int64_t user, const rs_uuid *host, const rs_token *token)
{
    params p = {0};
    p_i64(&p, user);
    p_uuid(&p, host);
    p_bytes(&p, token->id, RS_TOKEN_ID_BYTES);
    p_bytes(&p, token->hash, RS_TOKEN_HASH_BYTES);
    return update_device(b, NULL,
                         "UPDATE devices SET token_id = $3::bytea, token_hash = $4::bytea"
                         " WHERE user_id = $1::int8 AND host = $2::bytea RETURNING user_id",
                         &p, user, host, "revoking a device's token");
}

int rs__pg_user_password(rs_backend *b, int64_t user, const char *pwhash)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    params p = {0};
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    p_i64(&p, user);
    p_text(&p, pwhash);
    if ((err = rs__pg_query(c, &r,
                            "UPDATE users SET pwhash = $2::text WHERE user_id = $1::int8"
                            " RETURNING user_id",
                            &p, "changing a password")) == 0) {
        if (PQntuples(r) == 0)
            err = rs__error(RS_ENOTFOUND, "no user %lld", (long long)user);
        PQclear(r);
    }
    rs__pg_conn_put(b, c);
    return err;
}

/* *out = the integer `sql` ($1 = user) answers. */
static int count_of(rs_pg_conn *c, uint64_t *out, const char *sql, int64_t user)
{
    PGresult *r = NULL;
    params p = {0};
    p_i64(&p, user);
    int err = rs__pg_query(c, &r, sql, &p, "counting a user's rows");
    if (err == 0) {
        *out = PQntuples(r) > 0 ? (uint64_t)get_i64(r, 0, 0) : 0;
        PQclear(r);
    }
    return err;
}

int rs__pg_user_delete(rs_backend *b, rs_user_delete_stats *out, int64_t user)
{
    rs_pg_conn *c;
    uint64_t users = 0;
    int err = rs__pg_conn_get(b, &c);
    memset(out, 0, sizeof(*out));
    if (err < 0)
        return err;
    if ((err = rs__pg_exec(c, "BEGIN", "starting a user's deletion")) < 0 ||
        (err = count_of(c, &users,
                        "SELECT count(*) FROM (SELECT 1 FROM users WHERE user_id = $1::int8"
                        " FOR UPDATE) u",
                        user)) < 0)
        goto done;
    if (users == 0) {
        err = rs__error(RS_ENOTFOUND, "no user %lld", (long long)user);
        goto done;
    }
    if ((err = count_of(c, &out->devices, "SELECT count(*) FROM devices WHERE user_id = $1::int8",
                        user)) < 0 ||
        (err = count_of(c, &out->records, "SELECT count(*) FROM records WHERE user_id = $1::int8",
                        user)) < 0 ||
        (err = count_of(c, &out->snapshots,
                        "SELECT count(*) FROM snapshots WHERE user_id = $1::int8", user)) < 0)
        goto done;
    for (size_t i = 0; i < sizeof(user_tables) / sizeof(user_tables[0]); i++) {
        char sql[96];
        params p = {0};
        p_i64(&p, user);
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE user_id = $1::int8", user_tables[i]);
        if ((err = rs__pg_query(c, NULL, sql, &p, "deleting a user's rows")) < 0)
            goto done;
    }
    err = rs__pg_exec(c, "COMMIT", "committing a user's deletion");
done:
    rs__pg_conn_put(b, c); /* rolls back on failure */
    return err;
}
