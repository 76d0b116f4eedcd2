/*
 * The SQLite backend of recsyncd (backend.h): one database file in WAL mode,
 * a pool of connections with their statements prepared once, and one
 * writer at a time (an in-process mutex in front of BEGIN IMMEDIATE, so
 * writers queue on a mutex instead of spinning in SQLite's busy handler).
 * Tables are WITHOUT ROWID and clustered by user first, records by
 * (user, host, tag, idx), so a page of a shard is one range scan.
 */
#include "../backend.h"
#include "sqlite_int.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SCHEMA_VERSION 4

/*
 * Migrations: entry i takes the schema from version i to i + 1. Each runs
 * in one transaction with the new user_version, so a crash never leaves a
 * half-migrated database.
 */
static const char *const migrations[SCHEMA_VERSION] = {
    "CREATE TABLE users ("
    " user_id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE,"
    " pwhash TEXT NOT NULL,"
    " seq INTEGER NOT NULL DEFAULT 0,"
    " floor INTEGER NOT NULL DEFAULT 0,"
    " records INTEGER NOT NULL DEFAULT 0,"
    " bytes INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL);"
    "CREATE TABLE devices ("
    " host BLOB PRIMARY KEY,"
    " user_id INTEGER NOT NULL,"
    " token_id BLOB NOT NULL UNIQUE,"
    " token_hash BLOB NOT NULL,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX devices_user ON devices(user_id);"
    "CREATE TABLE shards ("
    " user_id INTEGER NOT NULL, host BLOB NOT NULL, tag TEXT NOT NULL,"
    " start_idx INTEGER NOT NULL DEFAULT 0, end_idx INTEGER NOT NULL,"
    " PRIMARY KEY (user_id, host, tag)) WITHOUT ROWID;"
    "CREATE TABLE records ("
    " user_id INTEGER NOT NULL, host BLOB NOT NULL, tag TEXT NOT NULL, idx INTEGER NOT NULL,"
    " id BLOB NOT NULL, hlc INTEGER NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (user_id, host, tag, idx)) WITHOUT ROWID;"
    "CREATE TABLE events ("
    " user_id INTEGER NOT NULL, seq INTEGER NOT NULL, host BLOB NOT NULL, tag TEXT NOT NULL,"
    " start_idx INTEGER NOT NULL, end_idx INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
    " PRIMARY KEY (user_id, seq)) WITHOUT ROWID;"
    "CREATE INDEX events_created ON events(created_ms);"
    "CREATE TABLE acks ("
    " user_id INTEGER NOT NULL, host BLOB NOT NULL, tag TEXT NOT NULL, device BLOB NOT NULL,"
    " end_idx INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
    " PRIMARY KEY (user_id, host, tag, device)) WITHOUT ROWID;",
    /* 2: case-insensitive user names (backend.h) and invites. */
    "ALTER TABLE users ADD COLUMN name_key TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE users ADD COLUMN name_dup INTEGER NOT NULL DEFAULT 0;"
    "UPDATE users SET name_key = lower(name);"
    "UPDATE users SET name_dup = user_id WHERE EXISTS (SELECT 1 FROM users o"
    " WHERE o.name_key = users.name_key AND o.user_id < users.user_id);"
    "CREATE UNIQUE INDEX users_name_folded ON users(name_key, name_dup);"
    "CREATE TABLE invites (code_hash BLOB PRIMARY KEY, name_key TEXT,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID;",
    /* 3: snapshots and pruning (issue 11; sqlite_snap.c). */
    RS_SQLITE_SNAPSHOT_MIGRATION,
    /* 4: devices' names and retirement (issue 14; sqlite_dev.c). */
    RS_SQLITE_DEVICES_MIGRATION,
};

enum stmt_id {
    ST_BEGIN,
    ST_BEGIN_WRITE,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_USER_INSERT,
    ST_USER_BY_NAME,
    ST_DEVICE_USER,
    ST_DEVICE_PUT,
    ST_TOKEN_GET,
    ST_USER_SEQ,
    ST_SHARDS,
    ST_SHARD_GET,
    ST_SHARD_PUT,
    ST_RECORD_GET,
    ST_RECORD_PUT,
    ST_USER_ADVANCE,
    ST_EVENT_PUT,
    ST_PAGE,
    ST_EVENTS,
    ST_ACK_PUT,
    ST_DEVICE_COUNT,
    ST_ACK_FLOOR,
    ST_INVITE_PUT,
    ST_INVITE_TAKE,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN",
    [ST_BEGIN_WRITE] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_USER_INSERT] =
        "INSERT INTO users(name, name_key, pwhash, created_ms) VALUES (?1, ?2, ?3, ?4)",
    /* The exact name first, else the key's owner. */
    [ST_USER_BY_NAME] = "SELECT user_id, pwhash, name FROM users"
                        " WHERE name = ?1 OR (name_key = ?2 AND name_dup = 0)"
                        " ORDER BY name = ?1 DESC LIMIT 1",
    [ST_DEVICE_USER] = "SELECT user_id FROM devices WHERE host = ?1",
    [ST_DEVICE_PUT] = "INSERT INTO devices(host, user_id, token_id, token_hash, created_ms,"
                      " last_seen_ms, name) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT(host)"
                      " DO UPDATE SET token_id = excluded.token_id,"
                      " token_hash = excluded.token_hash, last_seen_ms = excluded.last_seen_ms,"
                      " name = CASE WHEN excluded.name = '' THEN name ELSE excluded.name END,"
                      " retired_ms = NULL",
    [ST_TOKEN_GET] = "SELECT d.user_id, d.host, d.token_hash, u.name, d.retired_ms FROM devices d"
                     " JOIN users u ON u.user_id = d.user_id WHERE d.token_id = ?1",
    [ST_USER_SEQ] = "SELECT seq, floor, bytes FROM users WHERE user_id = ?1",
    [ST_SHARDS] = "SELECT host, tag, start_idx, end_idx FROM shards WHERE user_id = ?1",
    [ST_SHARD_GET] = "SELECT start_idx, end_idx FROM shards"
                     " WHERE user_id = ?1 AND host = ?2 AND tag = ?3",
    [ST_SHARD_PUT] = "INSERT INTO shards(user_id, host, tag, end_idx) VALUES (?1, ?2, ?3, ?4)"
                     " ON CONFLICT(user_id, host, tag) DO UPDATE SET end_idx = excluded.end_idx",
    [ST_RECORD_GET] = "SELECT id, hlc, version, data FROM records"
                      " WHERE user_id = ?1 AND host = ?2 AND tag = ?3 AND idx = ?4",
    [ST_RECORD_PUT] = "INSERT INTO records(user_id, host, tag, idx, id, hlc, version, data)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_USER_ADVANCE] = "UPDATE users SET seq = ?2, records = records + ?3, bytes = bytes + ?4"
                        " WHERE user_id = ?1",
    [ST_EVENT_PUT] = "INSERT INTO events(user_id, seq, host, tag, start_idx, end_idx, created_ms)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_PAGE] = "SELECT idx, id, hlc, version, data FROM records"
                " WHERE user_id = ?1 AND host = ?2 AND tag = ?3 AND idx >= ?4"
                " ORDER BY idx LIMIT ?5",
    [ST_EVENTS] = "SELECT seq, host, tag, start_idx, end_idx FROM events"
                  " WHERE user_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [ST_ACK_PUT] = "INSERT INTO acks(user_id, host, tag, device, end_idx, updated_ms)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(user_id, host, tag, device)"
                   " DO UPDATE SET end_idx = excluded.end_idx, updated_ms = excluded.updated_ms",
    [ST_DEVICE_COUNT] = "SELECT count(*) FROM devices WHERE user_id = ?1 AND retired_ms IS NULL",
    [ST_ACK_FLOOR] = "SELECT s.host, s.tag,"
                     " (SELECT CASE WHEN count(*) < ?2 THEN 0 ELSE min(a.end_idx) END"
                     "  FROM acks a JOIN devices d ON d.host = a.device AND d.user_id = a.user_id"
                     "  AND d.retired_ms IS NULL"
                     "  WHERE a.user_id = s.user_id AND a.host = s.host AND a.tag = s.tag)"
                     " FROM shards s WHERE s.user_id = ?1",
    [ST_INVITE_PUT] = "INSERT INTO invites(code_hash, name_key, created_ms) VALUES (?1, ?2, ?3)",
    [ST_INVITE_TAKE] = "DELETE FROM invites WHERE code_hash = ?1"
                       " AND (name_key IS NULL OR name_key = ?2)",
};

typedef struct conn {
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    struct conn *next;
} conn;

/*
 * WAL checkpoints run on a thread of their own. SQLite's automatic
 * checkpoint runs inside the commit that crosses its threshold: a request
 * would then wait for the copy into the database and its fsync (measured:
 * live propagation p99 7-18 ms with it, 2-4 ms without). Instead, every
 * connection's WAL hook wakes the checkpointer once the WAL holds
 * CKPT_PAGES, and it runs PASSIVE checkpoints (never blocking a writer) on
 * its own connection; past CKPT_FORCE_PAGES, when readers kept a passive
 * checkpoint from finishing, it runs a RESTART checkpoint (bounded by the
 * busy timeout) so the WAL cannot grow without bound.
 */
#define CKPT_PAGES 1000           /* SQLite's own automatic checkpoint threshold */
#define CKPT_FORCE_PAGES 16384    /* 64 MiB of 4 KiB pages */
#define CKPT_IDLE_MS 5000         /* also checkpoint what is left after this long */
#define WAL_SIZE_LIMIT "67108864" /* the WAL file is truncated to this after a reset */
#define CKPT_RESTART_WAIT_MS 200  /* how long a RESTART checkpoint waits for readers */

typedef struct sqlite_backend {
    rs_backend base;
    char *path;
    pthread_mutex_t pool_lock;
    pthread_cond_t pool_cond;
    conn *idle;
    int open_count;
    int max_connections;
    pthread_mutex_t write_lock;
    /* the checkpointer */
    pthread_t ckpt_thread;
    sqlite3 *ckpt_db; /* the checkpointer's own connection */
    int ckpt_started;
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;
    int ckpt_wanted; /* under ckpt_lock */
    int ckpt_stop;   /* under ckpt_lock */
    atomic_int ckpt_signalled;
    atomic_uint_fast64_t ckpt_runs, ckpt_pages, ckpt_ms, ckpt_errors, ckpt_wal_pages;
} sqlite_backend;

static uint64_t now_ms(void)
{
    return rs_now_ms();
}

static int db_error(conn *c, int rc, const char *what)
{
    return rs__sqlite_error_in(c->db, rc, what, 0);
}

static void conn_close(conn *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close(c->db);
    rs_free(c);
}

/* Runs `sql` (no rows) on c, naming `what` on failure. */
static int exec(conn *c, const char *sql, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int err = rs__sqlite_error_in(c->db, rc, what, 0);
        sqlite3_free(msg);
        return err;
    }
    return 0;
}

/* Brings the schema to SCHEMA_VERSION; refuses a database from a newer build. */
static int migrate(conn *c, const char *path)
{
    int err = 0;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
        err = db_error(c, rc, "reading the schema version");
        sqlite3_finalize(st);
        return err;
    }
    int version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > SCHEMA_VERSION)
        return rs__error(RS_EVERSION, "database %s has schema version %d; this recsyncd knows %d",
                         path, version, SCHEMA_VERSION);
    for (; version < SCHEMA_VERSION; version++) {
        char sql[64];
        if ((err = exec(c, "BEGIN IMMEDIATE", "starting a migration")) < 0)
            return err;
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1);
        if ((err = exec(c, migrations[version], "migrating the schema")) < 0 ||
            (err = exec(c, sql, "setting the schema version")) < 0 ||
            (err = exec(c, "COMMIT", "committing a migration")) < 0) {
            exec(c, "ROLLBACK", "rolling back a migration");
            return err;
        }
    }
    return 0;
}

/* Opens one connection: pragmas, and every statement prepared. */
/*
 * Called after every commit with the WAL's size in pages (it replaces
 * SQLite's automatic checkpoint): wakes the checkpointer past CKPT_PAGES,
 * once until it has run.
 */
static int on_wal_commit(void *arg, sqlite3 *db, const char *schema, int pages)
{
    sqlite_backend *sb = arg;
    (void)db;
    (void)schema;
    if (pages >= CKPT_PAGES && !atomic_exchange(&sb->ckpt_signalled, 1)) {
        pthread_mutex_lock(&sb->ckpt_lock);
        sb->ckpt_wanted = 1;
        pthread_cond_signal(&sb->ckpt_cond);
        pthread_mutex_unlock(&sb->ckpt_lock);
    }
    return SQLITE_OK;
}

static int conn_open(conn **out, sqlite_backend *sb, int first)
{
    conn *c = rs__calloc(1, sizeof(*c));
    int err = 0, rc;
    char pragmas[256];
    if (c == NULL)
        return rs__error(RS_ENOMEM, "out of memory for a database connection");
    rc = sqlite3_open_v2(sb->path, &c->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        err = rs__error(RS_EIO, "cannot open database %s: %s", sb->path,
                        c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto done;
    }
    sqlite3_busy_timeout(c->db, sb->base.opts.busy_timeout_ms);
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA synchronous = %s; PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;"
             " PRAGMA journal_size_limit = " WAL_SIZE_LIMIT ";",
             sb->base.opts.sync_full ? "FULL" : "NORMAL");
    if (first) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(st);
        if (rc != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
            err = rs__error(RS_EIO, "database %s: cannot switch to WAL mode: %s", sb->path,
                            sqlite3_errmsg(c->db));
            sqlite3_finalize(st);
            goto done;
        }
        sqlite3_finalize(st);
    }
    if ((err = exec(c, pragmas, "setting connection pragmas")) < 0)
        goto done;
    sqlite3_wal_hook(c->db, on_wal_commit, sb);
    if (first && (err = migrate(c, sb->path)) < 0)
        goto done;
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->st[i], NULL);
        if (rc != SQLITE_OK) {
            err = db_error(c, rc, "preparing a statement");
            goto done;
        }
    }
done:
    if (err < 0)
        conn_close(c);
    else
        *out = c;
    return err;
}

/* Takes an idle connection, opening one while under the bound, else waits. */
static int conn_get(conn **out, sqlite_backend *sb)
{
    int err = 0;
    pthread_mutex_lock(&sb->pool_lock);
    while (sb->idle == NULL && sb->open_count >= sb->max_connections)
        pthread_cond_wait(&sb->pool_cond, &sb->pool_lock);
    conn *c = sb->idle;
    if (c) {
        sb->idle = c->next;
        pthread_mutex_unlock(&sb->pool_lock);
        *out = c;
        return 0;
    }
    sb->open_count++;
    pthread_mutex_unlock(&sb->pool_lock);
    if ((err = conn_open(out, sb, 0)) < 0) {
        pthread_mutex_lock(&sb->pool_lock);
        sb->open_count--;
        pthread_cond_signal(&sb->pool_cond);
        pthread_mutex_unlock(&sb->pool_lock);
    }
    return err;
}

/* Returns a connection to the pool, rolling back anything left open. */
static void conn_put(sqlite_backend *sb, conn *c)
{
    if (!sqlite3_get_autocommit(c->db)) {
        sqlite3_reset(c->st[ST_ROLLBACK]);
        sqlite3_step(c->st[ST_ROLLBACK]);
        sqlite3_reset(c->st[ST_ROLLBACK]);
    }
    pthread_mutex_lock(&sb->pool_lock);
    c->next = sb->idle;
    sb->idle = c;
    pthread_cond_signal(&sb->pool_cond);
    pthread_mutex_unlock(&sb->pool_lock);
}

/* Steps a statement that returns no rows, then resets it. */
static int run(conn *c, enum stmt_id id, const char *what)
{
    int rc = sqlite3_step(c->st[id]);
    sqlite3_reset(c->st[id]);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_error(c, rc, what);
    return 0;
}

static int begin_read(conn *c)
{
    return run(c, ST_BEGIN, "starting a read");
}

static int commit(conn *c)
{
    return run(c, ST_COMMIT, "committing");
}

static void bind_uuid(sqlite3_stmt *st, int col, const rs_uuid *id)
{
    sqlite3_bind_blob(st, col, id->bytes, sizeof(id->bytes), SQLITE_STATIC);
}

static void bind_tag(sqlite3_stmt *st, int col, const char *tag)
{
    sqlite3_bind_text(st, col, tag, -1, SQLITE_STATIC);
}

static void column_uuid(rs_uuid *out, sqlite3_stmt *st, int col)
{
    const void *p = sqlite3_column_blob(st, col);
    if (p && sqlite3_column_bytes(st, col) == (int)sizeof(out->bytes))
        memcpy(out->bytes, p, sizeof(out->bytes));
    else
        memset(out->bytes, 0, sizeof(out->bytes));
}

static void column_tag(char *out, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, RS_TAG_MAX + 1, "%s", t ? (const char *)t : "");
}

/* ---- accounts ---- */

static int sqlite_ping(rs_backend *b)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    err = exec(c, "SELECT 1", "pinging the database");
    conn_put(sb, c);
    return err;
}

/*
 * Binds `host` to `user` with `token` inside the caller's write
 * transaction. RS_EFORBIDDEN naming the host if another user holds it.
 */
static int bind_device(conn *c, int64_t user, const rs_uuid *host, const rs_token *token,
                       const char *name)
{
    sqlite3_stmt *st = c->st[ST_DEVICE_USER];
    bind_uuid(st, 1, host);
    int rc = sqlite3_step(st);
    int64_t owner = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_error(c, rc, "looking up a device");
    if (owner >= 0 && owner != user) {
        char h[RS_UUID_STRLEN + 1];
        rs_uuid_format(h, host);
        return rs__error(RS_EFORBIDDEN, "host %s belongs to another user", h);
    }
    st = c->st[ST_DEVICE_PUT];
    bind_uuid(st, 1, host);
    sqlite3_bind_int64(st, 2, user);
    sqlite3_bind_blob(st, 3, token->id, RS_TOKEN_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, token->hash, RS_TOKEN_HASH_BYTES, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)now_ms());
    sqlite3_bind_text(st, 6, name ? name : "", -1, SQLITE_STATIC);
    return run(c, ST_DEVICE_PUT, "storing a device");
}

static int sqlite_user_create(rs_backend *b, int64_t *out, const char *username, const char *pwhash,
                              const rs_uuid *host, const rs_token *token, const uint8_t *invite,
                              const char *name)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    char key[RS_WIRE_USERNAME_MAX + 1];
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    rs_backend_name_key(key, username);
    pthread_mutex_lock(&sb->write_lock);
    if ((err = run(c, ST_BEGIN_WRITE, "starting a write")) < 0)
        goto done;
    sqlite3_stmt *st = c->st[ST_USER_INSERT];
    sqlite3_bind_text(st, 1, username, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, pwhash, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ms());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_CONSTRAINT) {
        err = rs__error(RS_EEXISTS, "user name %s is taken", username);
        goto done;
    }
    if (rc != SQLITE_DONE) {
        err = db_error(c, rc, "creating a user");
        goto done;
    }
    int64_t user = sqlite3_last_insert_rowid(c->db);
    if (invite) {
        st = c->st[ST_INVITE_TAKE];
        sqlite3_bind_blob(st, 1, invite, RS_INVITE_HASH_BYTES, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        if ((err = run(c, ST_INVITE_TAKE, "taking an invite")) < 0)
            goto done;
        if (sqlite3_changes(c->db) != 1) {
            err = rs_backend_invite_error(username);
            goto done;
        }
    }
    if ((err = bind_device(c, user, host, token, name)) < 0 || (err = commit(c)) < 0)
        goto done;
    *out = user;
done:
    conn_put(sb, c); /* rolls back on failure */
    pthread_mutex_unlock(&sb->write_lock);
    return err;
}

static int sqlite_user_lookup(rs_backend *b, rs_account *out, const char *username)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    char key[RS_WIRE_USERNAME_MAX + 1];
    rs_backend_name_key(key, username);
    sqlite3_stmt *st = c->st[ST_USER_BY_NAME];
    sqlite3_bind_text(st, 1, username, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->user = sqlite3_column_int64(st, 0);
        const unsigned char *h = sqlite3_column_text(st, 1);
        snprintf(out->pwhash, sizeof(out->pwhash), "%s", h ? (const char *)h : "");
        const unsigned char *name = sqlite3_column_text(st, 2);
        snprintf(out->name, sizeof(out->name), "%s", name ? (const char *)name : "");
    } else if (rc == SQLITE_DONE) {
        err = rs__error(RS_ENOTFOUND, "no user named %s", username);
    } else {
        err = db_error(c, rc, "looking up a user");
    }
    sqlite3_reset(st);
    conn_put(sb, c);
    return err;
}

static int sqlite_device_bind(rs_backend *b, int64_t user, const rs_uuid *host,
                              const rs_token *token, const char *name)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    pthread_mutex_lock(&sb->write_lock);
    if ((err = run(c, ST_BEGIN_WRITE, "starting a write")) < 0 ||
        (err = bind_device(c, user, host, token, name)) < 0)
        goto done;
    err = commit(c);
done:
    conn_put(sb, c);
    pthread_mutex_unlock(&sb->write_lock);
    return err;
}

static int sqlite_invite_create(rs_backend *b, const uint8_t *hash, const char *username)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    char key[RS_WIRE_USERNAME_MAX + 1];
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    sqlite3_stmt *st = c->st[ST_INVITE_PUT];
    sqlite3_bind_blob(st, 1, hash, RS_INVITE_HASH_BYTES, SQLITE_STATIC);
    if (username) {
        rs_backend_name_key(key, username);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 2);
    }
    sqlite3_bind_int64(st, 3, (sqlite3_int64)now_ms());
    pthread_mutex_lock(&sb->write_lock);
    err = run(c, ST_INVITE_PUT, "storing an invite");
    pthread_mutex_unlock(&sb->write_lock);
    conn_put(sb, c);
    return err;
}

static int sqlite_token_lookup(rs_backend *b, rs_device *out, const uint8_t *token_id)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    sqlite3_stmt *st = c->st[ST_TOKEN_GET];
    sqlite3_bind_blob(st, 1, token_id, RS_TOKEN_ID_BYTES, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->user = sqlite3_column_int64(st, 0);
        column_uuid(&out->host, st, 1);
        const void *h = sqlite3_column_blob(st, 2);
        if (h && sqlite3_column_bytes(st, 2) == RS_TOKEN_HASH_BYTES)
            memcpy(out->token_hash, h, RS_TOKEN_HASH_BYTES);
        else
            memset(out->token_hash, 0, RS_TOKEN_HASH_BYTES);
        const unsigned char *name = sqlite3_column_text(st, 3);
        snprintf(out->username, sizeof(out->username), "%s", name ? (const char *)name : "");
        out->retired_ms =
            sqlite3_column_type(st, 4) == SQLITE_NULL ? 0 : (uint64_t)sqlite3_column_int64(st, 4);
        if (sqlite3_column_type(st, 4) != SQLITE_NULL && out->retired_ms == 0)
            out->retired_ms = 1;
    } else if (rc == SQLITE_DONE) {
        err = rs__error(RS_ENOTFOUND, "unknown token");
    } else {
        err = db_error(c, rc, "looking up a token");
    }
    sqlite3_reset(st);
    conn_put(sb, c);
    return err;
}

/* ---- index and seq ---- */

/* The user's seq, floor and bytes stored (each optional but seq), inside the caller's
 * transaction. */
static int user_seq(conn *c, uint64_t *seq, uint64_t *floor, uint64_t *bytes, int64_t user)
{
    sqlite3_stmt *st = c->st[ST_USER_SEQ];
    sqlite3_bind_int64(st, 1, user);
    int rc = sqlite3_step(st);
    int err = 0;
    if (rc == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
        if (floor)
            *floor = (uint64_t)sqlite3_column_int64(st, 1);
        if (bytes)
            *bytes = (uint64_t)sqlite3_column_int64(st, 2);
    } else if (rc == SQLITE_DONE) {
        err = rs__error(RS_ENOTFOUND, "no user %lld", (long long)user);
    } else {
        err = db_error(c, rc, "reading the user's seq");
    }
    sqlite3_reset(st);
    return err;
}

static int sqlite_index(rs_backend *b, rs_index *out, int64_t user)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    if ((err = begin_read(c)) < 0 || (err = user_seq(c, &out->seq, NULL, NULL, user)) < 0)
        goto done;
    sqlite3_stmt *st = c->st[ST_SHARDS];
    sqlite3_bind_int64(st, 1, user);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_uuid host;
        char tag[RS_TAG_MAX + 1];
        column_uuid(&host, st, 0);
        column_tag(tag, st, 1);
        if ((err = rs_index_add(out, &host, tag, (uint64_t)sqlite3_column_int64(st, 2),
                                (uint64_t)sqlite3_column_int64(st, 3))) < 0)
            break;
    }
    sqlite3_reset(st);
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(c, rc, "reading shards");
    if (err == 0)
        err = commit(c);
done:
    conn_put(sb, c);
    return err;
}

static int sqlite_seq(rs_backend *b, uint64_t *out_seq, uint64_t *out_floor, int64_t user)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    err = user_seq(c, out_seq, out_floor, NULL, user);
    conn_put(sb, c);
    return err;
}

/* ---- insert ---- */

/* A run of records of one shard within a batch, flushed as one event. */
typedef struct run_state {
    const rs_record *shard; /* the run's first record: host and tag */
    uint64_t end;           /* the shard's end as the run advances it */
    uint64_t first_new;     /* idx of the run's first new record */
    uint64_t inserted;
} run_state;

static int shard_end(conn *c, uint64_t *out, int64_t user, const rs_record *rec)
{
    sqlite3_stmt *st = c->st[ST_SHARD_GET];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, &rec->host);
    bind_tag(st, 3, rec->tag);
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 1) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_error(c, rc, "reading a shard");
    return 0;
}

/* Writes the run's new end and its event (taking seq `seq`). */
static int run_flush(conn *c, int64_t user, const run_state *r, uint64_t seq, uint64_t now)
{
    if (r->shard == NULL || r->inserted == 0)
        return 0;
    sqlite3_stmt *st = c->st[ST_SHARD_PUT];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, &r->shard->host);
    bind_tag(st, 3, r->shard->tag);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)r->end);
    int err = run(c, ST_SHARD_PUT, "updating a shard");
    if (err < 0)
        return err;
    st = c->st[ST_EVENT_PUT];
    sqlite3_bind_int64(st, 1, user);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
    bind_uuid(st, 3, &r->shard->host);
    bind_tag(st, 4, r->shard->tag);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)r->first_new);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)r->end);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)now);
    return run(c, ST_EVENT_PUT, "storing an event");
}

/* Compares `rec` with the record stored at its idx: 0 identical, RS_ECONFLICT otherwise. */
static int same_as_stored(conn *c, int64_t user, const rs_record *rec)
{
    sqlite3_stmt *st = c->st[ST_RECORD_GET];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, &rec->host);
    bind_tag(st, 3, rec->tag);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)rec->idx);
    int rc = sqlite3_step(st);
    int same = 0, err = 0;
    if (rc == SQLITE_ROW) {
        const void *id = sqlite3_column_blob(st, 0);
        const void *data = sqlite3_column_blob(st, 3);
        size_t data_len = (size_t)sqlite3_column_bytes(st, 3);
        same = id && sqlite3_column_bytes(st, 0) == 16 && memcmp(id, rec->id.bytes, 16) == 0 &&
               (uint64_t)sqlite3_column_int64(st, 1) == rec->hlc &&
               (uint32_t)sqlite3_column_int64(st, 2) == rec->version && data_len == rec->data_len &&
               (data_len == 0 || memcmp(data, rec->data, data_len) == 0);
    } else if (rc != SQLITE_DONE) {
        err = db_error(c, rc, "reading a stored record");
    }
    sqlite3_reset(st);
    if (err < 0)
        return err;
    if (!same) {
        char h[RS_UUID_STRLEN + 1];
        rs_uuid_format(h, &rec->host);
        return rs__error(RS_ECONFLICT, "shard %s/%s already has a different record at idx %llu", h,
                         rec->tag, (unsigned long long)rec->idx);
    }
    return 0;
}

static int insert_record(conn *c, int64_t user, const rs_record *rec)
{
    sqlite3_stmt *st = c->st[ST_RECORD_PUT];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, &rec->host);
    bind_tag(st, 3, rec->tag);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)rec->idx);
    sqlite3_bind_blob(st, 5, rec->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)rec->hlc);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)rec->version);
    sqlite3_bind_blob(st, 8, rec->data ? (const void *)rec->data : "", (int)rec->data_len,
                      SQLITE_STATIC);
    return run(c, ST_RECORD_PUT, "storing a record");
}

static int same_shard(const rs_record *a, const rs_record *b)
{
    return memcmp(a->host.bytes, b->host.bytes, 16) == 0 && strcmp(a->tag, b->tag) == 0;
}

static int sqlite_insert(rs_backend *b, rs_insert_result *out, int64_t user,
                         const rs_record *records, size_t count, const rs_insert_opts *opts)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    uint64_t seq = 0, bytes = 0, stored = 0, now = now_ms();
    uint64_t quota = opts ? opts->quota_bytes : 0;
    run_state r = {0};
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&sb->write_lock);
    if ((err = run(c, ST_BEGIN_WRITE, "starting a write")) < 0 ||
        (err = user_seq(c, &seq, NULL, &stored, user)) < 0)
        goto done;
    for (size_t i = 0; i < count; i++) {
        const rs_record *rec = &records[i];
        if (r.shard == NULL || !same_shard(r.shard, rec)) {
            if ((err = run_flush(c, user, &r, seq, now)) < 0)
                goto done;
            memset(&r, 0, sizeof(r));
            r.shard = rec;
            if ((err = shard_end(c, &r.end, user, rec)) < 0)
                goto done;
        }
        if (rec->idx < r.end) {
            if ((err = same_as_stored(c, user, rec)) < 0)
                goto done;
        } else if (rec->idx == r.end) {
            if (quota && stored + bytes + rec->data_len > quota) {
                err = rs_backend_quota_error(stored, bytes + rec->data_len, quota);
                goto done;
            }
            if ((err = insert_record(c, user, rec)) < 0)
                goto done;
            if (r.inserted++ == 0)
                r.first_new = rec->idx;
            r.end++;
            seq++;
            bytes += rec->data_len;
            out->inserted++;
        } else {
            char h[RS_UUID_STRLEN + 1];
            rs_uuid_format(h, &rec->host);
            err = rs__error(RS_EHOLE, "shard %s/%s expects idx %llu next, not %llu", h, rec->tag,
                            (unsigned long long)r.end, (unsigned long long)rec->idx);
            goto done;
        }
        out->accepted++;
    }
    if ((err = run_flush(c, user, &r, seq, now)) < 0)
        goto done;
    if (out->inserted > 0) {
        sqlite3_stmt *st = c->st[ST_USER_ADVANCE];
        sqlite3_bind_int64(st, 1, user);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)out->inserted);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)bytes);
        if ((err = run(c, ST_USER_ADVANCE, "advancing the user's seq")) < 0)
            goto done;
    }
    if (opts && opts->stall_ms)
        usleep((useconds_t)opts->stall_ms * 1000u);
    err = commit(c);
done:
    conn_put(sb, c);
    pthread_mutex_unlock(&sb->write_lock);
    if (err < 0) {
        memset(out, 0, sizeof(*out));
        return err;
    }
    out->seq = seq;
    out->bytes = bytes;
    if (out->inserted > 0 && b->opts.notify)
        b->opts.notify(user, seq, b->opts.notify_payload);
    return 0;
}

/* ---- reads ---- */

static int sqlite_read_page(rs_backend *b, rs_page_result *out, int64_t user, const rs_uuid *host,
                            const char *tag, uint64_t start, size_t limit, rs_page_cb cb,
                            void *payload)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb), rc;
    if (err < 0)
        return err;
    memset(out, 0, sizeof(*out));
    if ((err = begin_read(c)) < 0)
        goto done;
    sqlite3_stmt *st = c->st[ST_SHARD_GET];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, host);
    bind_tag(st, 3, tag);
    rc = sqlite3_step(st);
    uint64_t first = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    uint64_t end = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 1) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        err = db_error(c, rc, "reading a shard");
        goto done;
    }
    if (start < first) {
        err = rs_backend_pruned_error(host, tag, first);
        goto done;
    }
    if (start >= end || limit == 0) {
        out->has_next = start < end;
        out->next = start;
        err = commit(c);
        goto done;
    }
    st = c->st[ST_PAGE];
    sqlite3_bind_int64(st, 1, user);
    bind_uuid(st, 2, host);
    bind_tag(st, 3, tag);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)start);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)limit);
    rs_record rec;
    memset(&rec, 0, sizeof(rec));
    rec.host = *host;
    snprintf(rec.tag, sizeof(rec.tag), "%s", tag);
    uint64_t next = start;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rec.idx = (uint64_t)sqlite3_column_int64(st, 0);
        column_uuid(&rec.id, st, 1);
        rec.hlc = (rs_hlc)sqlite3_column_int64(st, 2);
        rec.version = (uint32_t)sqlite3_column_int64(st, 3);
        rec.data = sqlite3_column_blob(st, 4);
        rec.data_len = (size_t)sqlite3_column_bytes(st, 4);
        int stop = cb(&rec, payload);
        if (stop < 0) {
            err = stop;
            break;
        }
        if (stop > 0)
            break;
        out->count++;
        next = rec.idx + 1;
    }
    if (err == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = db_error(c, rc, "reading records");
    sqlite3_reset(st);
    if (err < 0)
        goto done;
    out->next = next;
    out->has_next = next < end;
    err = commit(c);
done:
    conn_put(sb, c);
    return err;
}

static int sqlite_events(rs_backend *b, int64_t user, uint64_t after, size_t limit, rs_event_cb cb,
                         void *payload)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    uint64_t seq = 0, floor = 0;
    int err = conn_get(&c, sb), rc;
    if (err < 0)
        return err;
    if ((err = begin_read(c)) < 0 || (err = user_seq(c, &seq, &floor, NULL, user)) < 0)
        goto done;
    if (after < floor || after > seq) {
        err = rs__error(
            RS_EGONE, "event cursor %llu is outside what the server keeps (%llu to %llu): resync",
            (unsigned long long)after, (unsigned long long)floor, (unsigned long long)seq);
        goto done;
    }
    sqlite3_stmt *st = c->st[ST_EVENTS];
    sqlite3_bind_int64(st, 1, user);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)after);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_wire_event ev;
        ev.seq = (uint64_t)sqlite3_column_int64(st, 0);
        column_uuid(&ev.host, st, 1);
        column_tag(ev.tag, st, 2);
        ev.start = (uint64_t)sqlite3_column_int64(st, 3);
        ev.end = (uint64_t)sqlite3_column_int64(st, 4);
        if ((err = cb(&ev, payload)) < 0)
            break;
    }
    if (err == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = db_error(c, rc, "reading events");
    sqlite3_reset(st);
    if (err == 0)
        err = commit(c);
done:
    conn_put(sb, c);
    return err;
}

/* ---- acks ---- */

static int sqlite_ack_put(rs_backend *b, int64_t user, const rs_uuid *device,
                          const rs_index *frontier)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    uint64_t now = now_ms();
    int err = conn_get(&c, sb);
    if (err < 0)
        return err;
    pthread_mutex_lock(&sb->write_lock);
    if ((err = run(c, ST_BEGIN_WRITE, "starting a write")) < 0)
        goto done;
    for (size_t i = 0; i < frontier->count; i++) {
        const rs_shard *s = &frontier->shards[i];
        sqlite3_stmt *st = c->st[ST_SHARD_GET];
        sqlite3_bind_int64(st, 1, user);
        bind_uuid(st, 2, &s->host);
        bind_tag(st, 3, s->tag);
        int rc = sqlite3_step(st);
        uint64_t end = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 1) : 0;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            err = db_error(c, rc, "reading a shard");
            goto done;
        }
        if (rc == SQLITE_DONE || s->end > end) {
            err = rs_backend_ack_error(i, s, rc == SQLITE_ROW, end);
            goto done;
        }
        st = c->st[ST_ACK_PUT];
        sqlite3_bind_int64(st, 1, user);
        bind_uuid(st, 2, &s->host);
        bind_tag(st, 3, s->tag);
        bind_uuid(st, 4, device);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)s->end);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)now);
        if ((err = run(c, ST_ACK_PUT, "storing an ack")) < 0)
            goto done;
    }
    err = commit(c);
done:
    conn_put(sb, c);
    pthread_mutex_unlock(&sb->write_lock);
    return err;
}

static int sqlite_ack_floor(rs_backend *b, rs_index *out, uint64_t *out_devices, int64_t user)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb), rc;
    if (err < 0)
        return err;
    if ((err = begin_read(c)) < 0)
        goto done;
    sqlite3_stmt *st = c->st[ST_DEVICE_COUNT];
    sqlite3_bind_int64(st, 1, user);
    rc = sqlite3_step(st);
    uint64_t devices = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW) {
        err = db_error(c, rc, "counting devices");
        goto done;
    }
    st = c->st[ST_ACK_FLOOR];
    sqlite3_bind_int64(st, 1, user);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)devices);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_uuid host;
        char tag[RS_TAG_MAX + 1];
        column_uuid(&host, st, 0);
        column_tag(tag, st, 1);
        if ((err = rs_index_add(out, &host, tag, 0, (uint64_t)sqlite3_column_int64(st, 2))) < 0)
            break;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(c, rc, "reading acks");
    sqlite3_reset(st);
    if (err == 0)
        err = commit(c);
    *out_devices = devices;
done:
    conn_put(sb, c);
    return err;
}

/* ---- retention and stats ---- */

/*
 * Runs a one-off statement with up to three integer parameters; *out gets
 * the first column of its first row (0 when there is none, or NULL).
 */
static int query(conn *c, uint64_t *out, const char *sql, int64_t p1, int64_t p2, int64_t p3)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_error(c, rc, "preparing a query");
    int params = sqlite3_bind_parameter_count(st);
    if (params >= 1)
        sqlite3_bind_int64(st, 1, p1);
    if (params >= 2)
        sqlite3_bind_int64(st, 2, p2);
    if (params >= 3)
        sqlite3_bind_int64(st, 3, p3);
    rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    int err = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_error(c, rc, "running a query");
    sqlite3_finalize(st);
    return err;
}

/*
 * Prunes one user's events up to seq `cut`, at most `batch` per write
 * transaction so writers never wait long, raising the floor with each.
 */
static int prune_user(sqlite_backend *sb, conn *c, rs_retention_stats *out, int64_t user,
                      uint64_t cut, uint64_t batch)
{
    for (;;) {
        uint64_t floor = 0, upto = 0, n = 0, ignored;
        int err;
        pthread_mutex_lock(&sb->write_lock);
        err = exec(c, "BEGIN IMMEDIATE", "starting a retention pass");
        if (err == 0)
            err = query(c, &floor, "SELECT floor FROM users WHERE user_id = ?1", user, 0, 0);
        if (err == 0 && floor < cut) {
            /* The batch-th event past the floor, or the cut if that is nearer. */
            err = query(c, &upto,
                        "SELECT seq FROM events WHERE user_id = ?1 AND seq > ?2"
                        " ORDER BY seq LIMIT 1 OFFSET ?3",
                        user, (int64_t)floor, (int64_t)batch - 1);
            if (upto == 0 || upto > cut)
                upto = cut;
            if (err == 0)
                err = query(c, &ignored, "DELETE FROM events WHERE user_id = ?1 AND seq <= ?2",
                            user, (int64_t)upto, 0);
            n = (uint64_t)sqlite3_changes(c->db);
            if (err == 0)
                err = query(c, &ignored, "UPDATE users SET floor = ?2 WHERE user_id = ?1", user,
                            (int64_t)upto, 0);
        }
        if (err == 0)
            err = exec(c, "COMMIT", "committing retention");
        if (err < 0)
            exec(c, "ROLLBACK", "rolling back retention");
        pthread_mutex_unlock(&sb->write_lock);
        if (err < 0)
            return err;
        if (floor >= cut)
            return 0;
        out->events_pruned += n;
        if (upto >= cut) {
            out->users_pruned++;
            return 0;
        }
    }
}

static int sqlite_retain(rs_backend *b, rs_retention_stats *out, const rs_retention *policy)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    memset(out, 0, sizeof(*out));
    if (err < 0)
        return err;
    uint64_t batch = policy->batch ? policy->batch : 10000;
    int64_t cutoff = (int64_t)now_ms() - (int64_t)policy->keep_seconds * 1000;
    sqlite3_stmt *users = NULL;
    int rc = sqlite3_prepare_v2(c->db, "SELECT user_id, floor FROM users ORDER BY user_id", -1,
                                &users, NULL);
    if (rc != SQLITE_OK) {
        err = db_error(c, rc, "listing users");
        goto done;
    }
    /* Collect the users first: pruning writes while this read is open would pin its snapshot. */
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    while ((rc = sqlite3_step(users)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            int64_t *p = rs__realloc(ids, ncap * sizeof(*p));
            if (p == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory listing users");
                break;
            }
            ids = p;
            cap = ncap;
        }
        ids[n++] = sqlite3_column_int64(users, 0);
    }
    sqlite3_finalize(users);
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(c, rc, "listing users");
    for (size_t i = 0; err == 0 && i < n; i++) {
        uint64_t cut = 0, by_age = 0;
        if (policy->keep_events > 0 &&
            (err = query(c, &cut,
                         "SELECT seq FROM events WHERE user_id = ?1 ORDER BY seq DESC"
                         " LIMIT 1 OFFSET ?2",
                         ids[i], (int64_t)policy->keep_events, 0)) < 0)
            break;
        if (policy->keep_seconds > 0 &&
            (err = query(c, &by_age,
                         "SELECT max(seq) FROM events WHERE user_id = ?1 AND created_ms < ?2",
                         ids[i], cutoff, 0)) < 0)
            break;
        if (by_age > cut)
            cut = by_age;
        if (cut > 0)
            err = prune_user(sb, c, out, ids[i], cut, batch);
    }
    rs_free(ids);
done:
    conn_put(sb, c);
    return err;
}

/* ---- the checkpointer ---- */

/*
 * The WAL's identity: its header's checkpoint sequence number and salts
 * (bytes 12-23), which change every time a writer restarts the WAL. The
 * frame counts SQLite reports are of the current WAL; with this, a run can
 * tell frames it copied from frames an earlier run copied in the same WAL.
 * 0 when the WAL cannot be read (then a run counts all it reports).
 */
#define WAL_ID_BYTES 12

static int wal_identity(uint8_t *out, const char *db_path)
{
    char path[4096];
    int ok = 0;
    snprintf(path, sizeof(path), "%s-wal", db_path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ok = pread(fd, out, WAL_ID_BYTES, 12) == WAL_ID_BYTES;
    close(fd);
    return ok;
}

typedef struct ckpt_seen {
    uint8_t wal[WAL_ID_BYTES]; /* wal_identity at the last run */
    int known;                 /* wal holds one */
    int done;                  /* frames of that WAL checkpointed after the last run */
} ckpt_seen;

static void checkpoint(sqlite_backend *sb, sqlite3 *db, ckpt_seen *seen)
{
    int log = -1, done = -1;
    uint64_t t0 = now_ms();
    uint8_t wal[WAL_ID_BYTES];
    int known = wal_identity(wal, sb->path);
    atomic_store(&sb->ckpt_signalled, 0); /* commits from now on may wake it again */
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    if (rc == SQLITE_OK && log >= CKPT_FORCE_PAGES && done < log) {
        /* RESTART holds the write lock while it waits for readers: briefly, so
         * requests waiting on the lock (busy timeout) never give up behind it. */
        sqlite3_busy_timeout(db, CKPT_RESTART_WAIT_MS);
        rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_RESTART, &log, &done);
        sqlite3_busy_timeout(db, sb->base.opts.busy_timeout_ms);
    }
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        atomic_fetch_add(&sb->ckpt_errors, 1);
        fprintf(stderr, "recsyncd: checkpoint of %s: %s\n", sb->path, sqlite3_errmsg(db));
        return;
    }
    if (log < 0 || done < 0)
        return; /* busy before it began: the next wake-up tries again */
    atomic_store(&sb->ckpt_wal_pages, (uint64_t)log);
    int same = known && seen->known && memcmp(wal, seen->wal, WAL_ID_BYTES) == 0;
    int fresh = same ? done - seen->done : done;
    memcpy(seen->wal, wal, WAL_ID_BYTES);
    seen->known = known;
    seen->done = done;
    if (fresh <= 0)
        return; /* nothing was waiting */
    atomic_fetch_add(&sb->ckpt_runs, 1);
    atomic_fetch_add(&sb->ckpt_pages, (uint64_t)fresh);
    atomic_fetch_add(&sb->ckpt_ms, now_ms() - t0);
}

/* Opens the checkpointer's own connection and reads the database once (a
 * connection knows the database is in WAL mode once it has read it). */
static int checkpointer_open(sqlite_backend *sb)
{
    int rc =
        sqlite3_open_v2(sb->path, &sb->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(sb->ckpt_db, sb->base.opts.busy_timeout_ms);
        rc = sqlite3_exec(sb->ckpt_db, "SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK)
        return rs__error(RS_EIO, "cannot open %s for checkpoints: %s", sb->path,
                         sb->ckpt_db ? sqlite3_errmsg(sb->ckpt_db) : sqlite3_errstr(rc));
    return 0;
}

static void *checkpointer_main(void *arg)
{
    sqlite_backend *sb = arg;
    ckpt_seen seen = {{0}, 0, 0};
    pthread_mutex_lock(&sb->ckpt_lock);
    while (!sb->ckpt_stop) {
        if (!sb->ckpt_wanted) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += CKPT_IDLE_MS / 1000;
            pthread_cond_timedwait(&sb->ckpt_cond, &sb->ckpt_lock, &until);
            if (sb->ckpt_stop)
                break;
        }
        sb->ckpt_wanted = 0;
        pthread_mutex_unlock(&sb->ckpt_lock);
        checkpoint(sb, sb->ckpt_db, &seen);
        pthread_mutex_lock(&sb->ckpt_lock);
    }
    pthread_mutex_unlock(&sb->ckpt_lock);
    return NULL;
}

static int sqlite_stats(rs_backend *b, rs_backend_stats *out)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    conn *c;
    int err = conn_get(&c, sb);
    memset(out, 0, sizeof(*out));
    if (err < 0)
        return err;
    if ((err = begin_read(c)) < 0 ||
        (err = query(c, &out->users, "SELECT count(*) FROM users", 0, 0, 0)) < 0 ||
        (err = query(c, &out->records, "SELECT total(records) FROM users", 0, 0, 0)) < 0 ||
        (err = query(c, &out->bytes, "SELECT total(bytes) FROM users", 0, 0, 0)) < 0 ||
        (err = query(c, &out->devices, "SELECT count(*) FROM devices", 0, 0, 0)) < 0 ||
        (err = query(c, &out->shards, "SELECT count(*) FROM shards", 0, 0, 0)) < 0 ||
        (err = query(c, &out->pruned_below, "SELECT total(start_idx) FROM shards", 0, 0, 0)) < 0 ||
        (err = query(c, &out->snapshots, "SELECT count(*) FROM snapshots WHERE complete = 1", 0, 0,
                     0)) < 0 ||
        (err = query(c, &out->snapshot_bytes,
                     "SELECT total(bytes) FROM snapshots WHERE complete = 1", 0, 0, 0)) < 0)
        goto done;
    err = commit(c);
    out->checkpointer = (uint64_t)sb->ckpt_started;
    out->checkpoints = atomic_load(&sb->ckpt_runs);
    out->checkpoint_pages = atomic_load(&sb->ckpt_pages);
    out->checkpoint_ms = atomic_load(&sb->ckpt_ms);
    out->checkpoint_errors = atomic_load(&sb->ckpt_errors);
    out->wal_pages = atomic_load(&sb->ckpt_wal_pages);
done:
    conn_put(sb, c);
    return err;
}

static void sqlite_close(rs_backend *b)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    if (sb == NULL)
        return;
    if (sb->ckpt_started) {
        pthread_mutex_lock(&sb->ckpt_lock);
        sb->ckpt_stop = 1;
        pthread_cond_signal(&sb->ckpt_cond);
        pthread_mutex_unlock(&sb->ckpt_lock);
        pthread_join(sb->ckpt_thread, NULL);
    }
    sqlite3_close(sb->ckpt_db);
    while (sb->idle) {
        conn *c = sb->idle;
        sb->idle = c->next;
        conn_close(c);
    }
    pthread_mutex_destroy(&sb->pool_lock);
    pthread_cond_destroy(&sb->pool_cond);
    pthread_mutex_destroy(&sb->write_lock);
    pthread_mutex_destroy(&sb->ckpt_lock);
    pthread_cond_destroy(&sb->ckpt_cond);
    rs_free(sb->path);
    rs_free(sb);
}

/* ---- for sqlite_snap.c ---- */

int rs__sqlite_conn_get(rs_backend *b, rs_sqlite_conn **out)
{
    conn *c;
    int err = conn_get(&c, (sqlite_backend *)b);
    if (err == 0)
        *out = (rs_sqlite_conn *)c;
    return err;
}

void rs__sqlite_conn_put(rs_backend *b, rs_sqlite_conn *c)
{
    conn_put((sqlite_backend *)b, (conn *)c);
}

sqlite3 *rs__sqlite_db(rs_sqlite_conn *c)
{
    return ((conn *)c)->db;
}

void rs__sqlite_write_lock(rs_backend *b, int lock)
{
    sqlite_backend *sb = (sqlite_backend *)b;
    if (lock)
        pthread_mutex_lock(&sb->write_lock);
    else
        pthread_mutex_unlock(&sb->write_lock);
}

static const rs_backend_ops sqlite_ops = {
    .name = "sqlite",
    .close = sqlite_close,
    .ping = sqlite_ping,
    .user_create = sqlite_user_create,
    .user_lookup = sqlite_user_lookup,
    .device_bind = sqlite_device_bind,
    .invite_create = sqlite_invite_create,
    .token_lookup = sqlite_token_lookup,
    .index = sqlite_index,
    .insert = sqlite_insert,
    .read_page = sqlite_read_page,
    .seq = sqlite_seq,
    .events = sqlite_events,
    .ack_put = sqlite_ack_put,
    .ack_floor = sqlite_ack_floor,
    .retain = sqlite_retain,
    .stats = sqlite_stats,
    .device_touch = rs__sqlite_device_touch,
    .snapshot_put_chunk = rs__sqlite_snapshot_put_chunk,
    .snapshot_list = rs__sqlite_snapshot_list,
    .snapshot_chunk_get = rs__sqlite_snapshot_chunk_get,
    .prune = rs__sqlite_prune,
    .device_list = rs__sqlite_device_list,
    .device_retire = rs__sqlite_device_retire,
    .device_rename = rs__sqlite_device_rename,
    .device_revoke = rs__sqlite_device_revoke,
    .user_password = rs__sqlite_user_password,
    .user_delete = rs__sqlite_user_delete,
};

int rs_backend_sqlite_open(rs_backend **out, const char *path, const rs_backend_opts *opts)
{
    sqlite_backend *sb = rs__calloc(1, sizeof(*sb));
    conn *c = NULL;
    int err;
    /*
     * Memory statistics take a global mutex on every SQLite allocation, which
     * all request threads then contend for. Off, before SQLite initializes
     * (later it is refused, harmlessly).
     */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (sb == NULL)
        return rs__error(RS_ENOMEM, "out of memory opening %s", path);
    sb->base.ops = &sqlite_ops;
    if (opts)
        sb->base.opts = *opts;
    if (sb->base.opts.busy_timeout_ms <= 0)
        sb->base.opts.busy_timeout_ms = 5000;
    sb->max_connections = sb->base.opts.max_connections > 0 ? sb->base.opts.max_connections : 64;
    pthread_mutex_init(&sb->pool_lock, NULL);
    pthread_cond_init(&sb->pool_cond, NULL);
    pthread_mutex_init(&sb->write_lock, NULL);
    pthread_mutex_init(&sb->ckpt_lock, NULL);
    pthread_condattr_t cattr;
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&sb->ckpt_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    if ((sb->path = rs__strdup(path)) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory opening %s", path);
        goto done;
    }
    if ((err = conn_open(&c, sb, 1)) < 0)
        goto done;
    sb->open_count = 1;
    sb->idle = c;
    if ((err = checkpointer_open(sb)) < 0)
        goto done;
    if (pthread_create(&sb->ckpt_thread, NULL, checkpointer_main, sb) != 0) {
        err = rs__error(RS_ERROR, "cannot start the checkpoint thread for %s", path);
        goto done;
    }
    sb->ckpt_started = 1;
done:
    if (err < 0)
        sqlite_close(&sb->base);
    else
        *out = &sb->base;
    return err;
}
