/*
 * What sqlite.c shares with sqlite_snap.c (snapshots and pruning): a
 * pooled connection, its database handle and the in-process write lock,
 * and the schema migration that adds snapshot tables and devices'
 * last_seen. Not used outside the SQLite backend.
 */
#ifndef RS_SERVER_SQLITE_INT_H
#define RS_SERVER_SQLITE_INT_H

#include "../backend.h"

#include <sqlite3.h>

/*
 * Migration: devices gain last_seen_ms (now, for the devices already
 * there), and snapshots are three tables: the snapshot, its frontier (one
 * row per host) and its chunks (a rowid table: chunks are large blobs).
 */
#define RS_SQLITE_SNAPSHOT_MIGRATION                                                               \
    "ALTER TABLE devices ADD COLUMN last_seen_ms INTEGER NOT NULL DEFAULT 0;"                      \
    "UPDATE devices SET last_seen_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;"             \
    "CREATE TABLE snapshots ("                                                                     \
    " user_id INTEGER NOT NULL, id BLOB NOT NULL, tag TEXT NOT NULL, chunks INTEGER NOT NULL,"     \
    " frontier_hash BLOB NOT NULL, stored INTEGER NOT NULL DEFAULT 0,"                             \
    " bytes INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0,"                      \
    " seq INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL,"                                \
    " PRIMARY KEY (user_id, id)) WITHOUT ROWID;"                                                   \
    "CREATE INDEX snapshots_newest ON snapshots(user_id, tag, complete, seq, created_ms);"         \
    "CREATE TABLE snapshot_frontier ("                                                             \
    " user_id INTEGER NOT NULL, id BLOB NOT NULL, host BLOB NOT NULL, end_idx INTEGER NOT NULL,"   \
    " PRIMARY KEY (user_id, id, host)) WITHOUT ROWID;"                                             \
    "CREATE TABLE snapshot_chunks ("                                                               \
    " user_id INTEGER NOT NULL, id BLOB NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL,"     \
    " PRIMARY KEY (user_id, id, chunk));"

/*
 * Migration: devices gain a name (set at login, "" until then) and the
 * time they were retired (NULL while they are not).
 */
#define RS_SQLITE_DEVICES_MIGRATION                                                                \
    "ALTER TABLE devices ADD COLUMN name TEXT NOT NULL DEFAULT '';"                                \
    "ALTER TABLE devices ADD COLUMN retired_ms INTEGER;"

typedef struct rs_sqlite_conn rs_sqlite_conn;

/* A connection from the pool (rs__sqlite_conn_put rolls back anything left open). */
int rs__sqlite_conn_get(rs_backend *b, rs_sqlite_conn **out);
void rs__sqlite_conn_put(rs_backend *b, rs_sqlite_conn *c);
sqlite3 *rs__sqlite_db(rs_sqlite_conn *c);
/* Takes (lock 1) or releases (lock 0) the writer mutex held around BEGIN IMMEDIATE ... COMMIT. */
void rs__sqlite_write_lock(rs_backend *b, int lock);

/* sqlite_snap.c: backend.h's operations of the same names. */
int rs__sqlite_device_touch(rs_backend *b, const rs_uuid *host);
int rs__sqlite_snapshot_put_chunk(rs_backend *b, rs_snapshot_put_result *out, int64_t user,
                                  const rs_snapshot_put *in);
int rs__sqlite_snapshot_list(rs_backend *b, int64_t user, const char *tag, rs_snapshot_cb cb,
                             void *payload);
int rs__sqlite_snapshot_chunk_get(rs_backend *b, int64_t user, const rs_uuid *id, uint64_t chunk,
                                  rs_chunk_cb cb, void *payload);
int rs__sqlite_prune(rs_backend *b, rs_prune_stats *out, const rs_prune_policy *policy);

/* sqlite_dev.c: backend.h's device and account operations. */
int rs__sqlite_device_list(rs_backend *b, int64_t user, rs_device_cb cb, void *payload);
int rs__sqlite_device_retire(rs_backend *b, uint64_t *out_retired_ms, int64_t user,
                             const rs_uuid *host, uint64_t now_ms);
int rs__sqlite_device_rename(rs_backend *b, int64_t user, const rs_uuid *host, const char *name);
int rs__sqlite_device_revoke(rs_backend *b, int64_t user, const rs_uuid *host,
                             const rs_token *token);
int rs__sqlite_user_password(rs_backend *b, int64_t user, const char *pwhash);
int rs__sqlite_user_delete(rs_backend *b, rs_user_delete_stats *out, int64_t user);

#endif
