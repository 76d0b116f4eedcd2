/*
 * What postgres.c shares with postgres_snap.c (snapshots and pruning):
 * binary parameters and result columns, a pooled connection and the two
 * ways to run SQL on it, and the schema migration that adds snapshot
 * tables and devices' last_seen. Not used outside the PostgreSQL backend.
 */
#ifndef RS_SERVER_POSTGRES_INT_H
#define RS_SERVER_POSTGRES_INT_H

#include "../backend.h"

#include <libpq-fe.h>

#include <stdio.h>
#include <string.h>

#define MAX_PARAMS 8

/*
 * Migration: devices gain last_seen_ms (now, for the devices already
 * there), and snapshots are three tables: the snapshot, its frontier (one
 * row per host) and its chunks (stored uncompressed, out of line).
 */
#define RS_PG_SNAPSHOT_MIGRATION                                                                   \
    "ALTER TABLE devices ADD COLUMN last_seen_ms bigint NOT NULL DEFAULT 0;"                       \
    "UPDATE devices SET last_seen_ms = (extract(epoch FROM now()) * 1000)::bigint;"                \
    "CREATE TABLE snapshots ("                                                                     \
    " user_id bigint NOT NULL, id bytea NOT NULL, tag text COLLATE \"C\" NOT NULL,"                \
    " chunks bigint NOT NULL, frontier_hash bytea NOT NULL, stored bigint NOT NULL DEFAULT 0,"     \
    " bytes bigint NOT NULL DEFAULT 0, complete integer NOT NULL DEFAULT 0,"                       \
    " seq bigint NOT NULL DEFAULT 0, created_ms bigint NOT NULL,"                                  \
    " PRIMARY KEY (user_id, id));"                                                                 \
    "CREATE INDEX snapshots_newest ON snapshots(user_id, tag, complete, seq, created_ms);"         \
    "CREATE TABLE snapshot_frontier ("                                                             \
    " user_id bigint NOT NULL, id bytea NOT NULL, host bytea NOT NULL, end_idx bigint NOT NULL,"   \
    " PRIMARY KEY (user_id, id, host));"                                                           \
    "CREATE TABLE snapshot_chunks ("                                                               \
    " user_id bigint NOT NULL, id bytea NOT NULL, chunk bigint NOT NULL, data bytea NOT NULL,"     \
    " PRIMARY KEY (user_id, id, chunk));"                                                          \
    "ALTER TABLE snapshot_chunks ALTER COLUMN data SET STORAGE EXTERNAL;"

/*
 * Migration: devices gain a name (set at login, "" until then) and the
 * time they were retired (NULL while they are not).
 */
#define RS_PG_DEVICES_MIGRATION                                                                    \
    "ALTER TABLE devices ADD COLUMN name text NOT NULL DEFAULT '';"                                \
    "ALTER TABLE devices ADD COLUMN retired_ms bigint;"

/* Positional parameters in binary format; integers kept in network order here. */
typedef struct params {
    int n;
    const char *v[MAX_PARAMS];
    int len[MAX_PARAMS];
    int fmt[MAX_PARAMS];
    unsigned char ints[MAX_PARAMS][8];
} params;

static inline void p_i64(params *p, int64_t x)
{
    uint64_t u = (uint64_t)x;
    for (int i = 0; i < 8; i++)
        p->ints[p->n][i] = (unsigned char)(u >> (56 - 8 * i));
    p->v[p->n] = (const char *)p->ints[p->n];
    p->len[p->n] = 8;
    p->fmt[p->n] = 1;
    p->n++;
}

static inline void p_bytes(params *p, const void *data, size_t len)
{
    p->v[p->n] = len ? (const char *)data : "";
    p->len[p->n] = (int)len;
    p->fmt[p->n] = 1;
    p->n++;
}

/* SQL NULL. */
static inline void p_null(params *p)
{
    p->v[p->n] = NULL;
    p->len[p->n] = 0;
    p->fmt[p->n] = 1;
    p->n++;
}

static inline void p_text(params *p, const char *s)
{
    p_bytes(p, s, strlen(s));
}

static inline void p_uuid(params *p, const rs_uuid *id)
{
    p_bytes(p, id->bytes, sizeof(id->bytes));
}

static inline int is_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col);
}

/* An integer column of a binary result (int8 or int4); 0 for NULL. */
static inline int64_t get_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    uint64_t u = 0;
    for (int i = 0; i < len && i < 8; i++)
        u = (u << 8) | p[i];
    if (len == 4)
        return (int32_t)(uint32_t)u;
    return (int64_t)u;
}

static inline void get_uuid(rs_uuid *out, const PGresult *r, int row, int col)
{
    if (!PQgetisnull(r, row, col) && PQgetlength(r, row, col) == (int)sizeof(out->bytes))
        memcpy(out->bytes, PQgetvalue(r, row, col), sizeof(out->bytes));
    else
        memset(out->bytes, 0, sizeof(out->bytes));
}

static inline void get_tag(char *out, const PGresult *r, int row, int col)
{
    snprintf(out, RS_TAG_MAX + 1, "%s", PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

typedef struct rs_pg_conn rs_pg_conn;

/* A live connection from the pool; rs__pg_conn_put rolls back anything left open. */
int rs__pg_conn_get(rs_backend *b, rs_pg_conn **out);
void rs__pg_conn_put(rs_backend *b, rs_pg_conn *c);
/* Runs `sql` with `p` (binary results in *out, or NULL when no rows are wanted). */
int rs__pg_query(rs_pg_conn *c, PGresult **out, const char *sql, const params *p, const char *what);
/* Runs `sql` (simple protocol, no parameters, no rows wanted). */
int rs__pg_exec(rs_pg_conn *c, const char *sql, const char *what);

/* postgres_snap.c: backend.h's operations of the same names. */
int rs__pg_device_touch(rs_backend *b, const rs_uuid *host);
int rs__pg_snapshot_put_chunk(rs_backend *b, rs_snapshot_put_result *out, int64_t user,
                              const rs_snapshot_put *in);
int rs__pg_snapshot_list(rs_backend *b, int64_t user, const char *tag, rs_snapshot_cb cb,
                         void *payload);
int rs__pg_snapshot_chunk_get(rs_backend *b, int64_t user, const rs_uuid *id, uint64_t chunk,
                              rs_chunk_cb cb, void *payload);
int rs__pg_prune(rs_backend *b, rs_prune_stats *out, const rs_prune_policy *policy);

/* postgres_dev.c: backend.h's device and account operations. */
int rs__pg_device_list(rs_backend *b, int64_t user, rs_device_cb cb, void *payload);
int rs__pg_device_retire(rs_backend *b, uint64_t *out_retired_ms, int64_t user, const rs_uuid *host,
                         uint64_t now_ms);
int rs__pg_device_rename(rs_backend *b, int64_t user, const rs_uuid *host, const char *name);
int rs__pg_device_revoke(rs_backend *b, int64_t user, const rs_uuid *host, const rs_token *token);
int rs__pg_user_password(rs_backend *b, int64_t user, const char *pwhash);
int rs__pg_user_delete(rs_backend *b, rs_user_delete_stats *out, int64_t user);

#endif
