/*
 * The SQLite backend's snapshots and pruning (backend.h; the contract is
 * snapshots.md, the wire docs/protocol.md "Snapshots" and "Pruning").
 * Statements here run a few times per chunk or per pass, not per record,
 * so they are prepared per call on a pooled connection of sqlite.c; every
 * write holds sqlite.c's writer mutex around BEGIN IMMEDIATE ... COMMIT,
 * like every other writer of the database.
 */
#include "sqlite_int.h"

#include <stdio.h>
#include <string.h>

#define PRUNE_BATCH 10000
#define INCOMPLETE_MS (24u * 3600u * 1000u)

/*
 * The devices that hold a prune floor: registered to the shard's user,
 * not retired (`recsync devices retire`) and seen within --device-expiry
 * (?2 is the cutoff in ms, 0 when devices never expire).
 */
#define ACTIVE_DEVICE                                                                              \
    "d.user_id = s.user_id AND d.retired_ms IS NULL AND (?2 = 0 OR d.last_seen_ms >= ?2)"

/*
 * Per shard of user ?1 (one shard when ?3, ?4 name it): start, end, the
 * active devices, how many of them acked the shard and their lowest ack,
 * and the shard's host's end in the newest complete snapshot of the tag.
 * rs_backend_prune_floor makes the floor of these.
 */
static const char floor_sql[] =
    "SELECT s.host, s.tag, s.start_idx, s.end_idx,"
    " (SELECT count(*) FROM devices d WHERE " ACTIVE_DEVICE "),"
    " (SELECT count(*) FROM acks a JOIN devices d ON d.host = a.device"
    "  WHERE a.user_id = s.user_id AND a.host = s.host AND a.tag = s.tag AND " ACTIVE_DEVICE "),"
    " (SELECT min(a.end_idx) FROM acks a JOIN devices d ON d.host = a.device"
    "  WHERE a.user_id = s.user_id AND a.host = s.host AND a.tag = s.tag AND " ACTIVE_DEVICE "),"
    " coalesce((SELECT f.end_idx FROM snapshot_frontier f WHERE f.user_id = s.user_id"
    "  AND f.host = s.host AND f.id = (SELECT n.id FROM snapshots n WHERE n.user_id = s.user_id"
    "  AND n.tag = s.tag AND n.complete = 1 ORDER BY n.seq DESC, n.created_ms DESC, n.id DESC"
    "  LIMIT 1)), 0)"
    " FROM shards s WHERE s.user_id = ?1 AND (?3 IS NULL OR (s.host = ?3 AND s.tag = ?4))";

/*
 * User ?1's snapshots to delete (just snapshot ?4 when given): complete
 * ones with at least ?2 newer complete ones of their tag, and incomplete
 * ones created before ?3.
 */
static const char doomed_sql[] =
    "SELECT s.id, s.bytes FROM snapshots s WHERE s.user_id = ?1 AND (?4 IS NULL OR s.id = ?4)"
    " AND ((s.complete = 1 AND (SELECT count(*) FROM snapshots n WHERE n.user_id = s.user_id"
    "  AND n.tag = s.tag AND n.complete = 1 AND (n.seq > s.seq OR (n.seq = s.seq"
    "  AND (n.created_ms > s.created_ms OR (n.created_ms = s.created_ms AND n.id > s.id)))))"
    "  >= ?2) OR (s.complete = 0 AND s.created_ms < ?3))";

static int db_error(sqlite3 *db, int rc, const char *what)
{
    return rs__sqlite_error_in(db, rc, what, 0);
}

static int exec(sqlite3 *db, const char *sql, const char *what)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, what);
}

static int prep(sqlite3 *db, sqlite3_stmt **out, const char *sql)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, out, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, "preparing a statement");
}

/* Steps `st` (no rows wanted), then resets it and clears its bindings. */
static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : db_error(db, rc, what);
}

/* Prepares, binds up to three integers, steps once and finalizes `sql`. */
static int run_sql(sqlite3 *db, const char *sql, int64_t p1, int64_t p2, int64_t p3,
                   const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st, sql);
    if (err < 0)
        return err;
    int params = sqlite3_bind_parameter_count(st);
    sqlite3_bind_int64(st, 1, p1);
    if (params >= 2)
        sqlite3_bind_int64(st, 2, p2);
    if (params >= 3)
        sqlite3_bind_int64(st, 3, p3);
    err = step_done(db, st, what);
    sqlite3_finalize(st);
    return err;
}

static void bind_blob(sqlite3_stmt *st, int col, const void *p, size_t len)
{
    sqlite3_bind_blob(st, col, len ? p : "", (int)len, SQLITE_STATIC);
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

int rs__sqlite_device_touch(rs_backend *b, const rs_uuid *host)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int err = rs__sqlite_conn_get(b, &c);
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    rs__sqlite_write_lock(b, 1);
    if ((err = prep(db, &st, "UPDATE devices SET last_seen_ms = ?1 WHERE host = ?2")) == 0) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)rs_now_ms());
        bind_blob(st, 2, host->bytes, sizeof(host->bytes));
        err = step_done(db, st, "marking a device seen");
    }
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c);
    rs__sqlite_write_lock(b, 0);
    return err;
}

/* ---- uploading a chunk ---- */

/* Checks every frontier entry against its shard's end, inside the write transaction. */
static int check_frontier(sqlite3 *db, int64_t user, const rs_snapshot_put *in)
{
    sqlite3_stmt *st = NULL;
    int err =
        prep(db, &st, "SELECT end_idx FROM shards WHERE user_id = ?1 AND host = ?2 AND tag = ?3");
    for (size_t i = 0; err == 0 && i < in->frontier->count; i++) {
        const rs_shard *f = &in->frontier->shards[i];
        sqlite3_bind_int64(st, 1, user);
        bind_blob(st, 2, f->host.bytes, sizeof(f->host.bytes));
        sqlite3_bind_text(st, 3, in->tag, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        uint64_t held = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = db_error(db, rc, "reading a shard's end");
        else if (f->end > held)
            err = rs_backend_frontier_error(&f->host, in->tag, f->end, held);
    }
    sqlite3_finalize(st);
    return err;
}

/* Creates snapshot in->id with its frontier (no chunk yet). */
static int create_snapshot(sqlite3 *db, int64_t user, const rs_snapshot_put *in)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st,
                   "INSERT INTO snapshots(user_id, id, tag, chunks, frontier_hash, created_ms)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (err == 0) {
        sqlite3_bind_int64(st, 1, user);
        bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
        sqlite3_bind_text(st, 3, in->tag, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)in->chunks);
        bind_blob(st, 5, in->frontier_hash, sizeof(in->frontier_hash));
        sqlite3_bind_int64(st, 6, (sqlite3_int64)rs_now_ms());
        err = step_done(db, st, "creating a snapshot");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (err == 0)
        err = prep(
            db, &st,
            "INSERT INTO snapshot_frontier(user_id, id, host, end_idx) VALUES (?1, ?2, ?3, ?4)");
    for (size_t i = 0; err == 0 && i < in->frontier->count; i++) {
        const rs_shard *f = &in->frontier->shards[i];
        sqlite3_bind_int64(st, 1, user);
        bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
        bind_blob(st, 3, f->host.bytes, sizeof(f->host.bytes));
        sqlite3_bind_int64(st, 4, (sqlite3_int64)f->end);
        err = step_done(db, st, "storing a snapshot's frontier");
    }
    sqlite3_finalize(st);
    return err;
}

/*
 * Compares the stored snapshot's tag, chunks and frontier with this
 * chunk's; RS_ECONFLICT naming the first that differs.
 */
static int same_snapshot(sqlite3_stmt *st, const rs_snapshot_put *in)
{
    char tag[RS_TAG_MAX + 1], detail[256];
    column_tag(tag, st, 0);
    uint64_t chunks = (uint64_t)sqlite3_column_int64(st, 1);
    const void *hash = sqlite3_column_blob(st, 2);
    if (strcmp(tag, in->tag) != 0) {
        snprintf(detail, sizeof(detail), "its tag is %s; this chunk says %s", tag, in->tag);
        return rs_backend_snapshot_conflict(&in->id, detail);
    }
    if (chunks != in->chunks) {
        snprintf(detail, sizeof(detail), "it has %llu chunks; this chunk says %llu",
                 (unsigned long long)chunks, (unsigned long long)in->chunks);
        return rs_backend_snapshot_conflict(&in->id, detail);
    }
    if (hash == NULL || sqlite3_column_bytes(st, 2) != (int)sizeof(in->frontier_hash) ||
        memcmp(hash, in->frontier_hash, sizeof(in->frontier_hash)) != 0)
        return rs_backend_snapshot_conflict(&in->id,
                                            "its frontier differs from this chunk's frontier");
    return 0;
}

/* Stores the chunk, or checks a stored one is identical; *inserted says which. */
static int put_chunk(sqlite3 *db, int *inserted, int64_t user, const rs_snapshot_put *in)
{
    sqlite3_stmt *st = NULL;
    int err = prep(
        db, &st, "SELECT data FROM snapshot_chunks WHERE user_id = ?1 AND id = ?2 AND chunk = ?3");
    if (err < 0)
        return err;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)in->chunk);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const void *data = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        if (len != in->data_len || (len && memcmp(data, in->data, len) != 0)) {
            char detail[128];
            snprintf(detail, sizeof(detail), "chunk %llu is stored with different data",
                     (unsigned long long)in->chunk);
            err = rs_backend_snapshot_conflict(&in->id, detail);
        }
        sqlite3_finalize(st);
        *inserted = 0;
        return err;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return db_error(db, rc, "reading a snapshot chunk");
    if ((err = prep(
             db, &st,
             "INSERT INTO snapshot_chunks(user_id, id, chunk, data) VALUES (?1, ?2, ?3, ?4)")) < 0)
        return err;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)in->chunk);
    bind_blob(st, 4, in->data, in->data_len);
    err = step_done(db, st, "storing a snapshot chunk");
    sqlite3_finalize(st);
    st = NULL;
    if (err == 0)
        err = prep(db, &st,
                   "UPDATE snapshots SET stored = stored + 1, bytes = bytes + ?3"
                   " WHERE user_id = ?1 AND id = ?2");
    if (err == 0) {
        sqlite3_bind_int64(st, 1, user);
        bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
        sqlite3_bind_int64(st, 3, (sqlite3_int64)in->data_len);
        err = step_done(db, st, "counting a snapshot chunk");
    }
    sqlite3_finalize(st);
    if (err == 0)
        err = run_sql(db, "UPDATE users SET bytes = bytes + ?2 WHERE user_id = ?1", user,
                      (int64_t)in->data_len, 0, "counting the user's bytes");
    *inserted = err == 0;
    return err;
}

/* Marks the snapshot complete at the user's current seq, now. */
static int complete_snapshot(sqlite3 *db, uint64_t *seq, int64_t user, const rs_uuid *id)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st,
                   "UPDATE snapshots SET complete = 1, created_ms = ?3,"
                   " seq = (SELECT seq FROM users WHERE user_id = ?1)"
                   " WHERE user_id = ?1 AND id = ?2 RETURNING seq");
    if (err < 0)
        return err;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, id->bytes, sizeof(id->bytes));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)rs_now_ms());
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : db_error(db, rc, "completing a snapshot");
}

int rs__sqlite_snapshot_put_chunk(rs_backend *b, rs_snapshot_put_result *out, int64_t user,
                                  const rs_snapshot_put *in)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    memset(out, 0, sizeof(*out));
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    rs__sqlite_write_lock(b, 1);
    if ((err = exec(db, "BEGIN IMMEDIATE", "starting a write")) < 0 ||
        (err = prep(db, &st,
                    "SELECT tag, chunks, frontier_hash, stored, complete, seq FROM snapshots"
                    " WHERE user_id = ?1 AND id = ?2")) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, in->id.bytes, sizeof(in->id.bytes));
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if ((err = same_snapshot(st, in)) < 0)
            goto done;
        out->stored = (uint64_t)sqlite3_column_int64(st, 3);
        out->complete = sqlite3_column_int(st, 4) != 0;
        out->seq = (uint64_t)sqlite3_column_int64(st, 5);
    } else if (rc == SQLITE_DONE) {
        if ((err = check_frontier(db, user, in)) < 0 || (err = create_snapshot(db, user, in)) < 0)
            goto done;
    } else {
        err = db_error(db, rc, "reading a snapshot");
        goto done;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((err = put_chunk(db, &out->inserted, user, in)) < 0)
        goto done;
    out->stored += (uint64_t)out->inserted;
    if (!out->complete && out->stored == in->chunks) {
        if ((err = complete_snapshot(db, &out->seq, user, &in->id)) < 0)
            goto done;
        out->complete = out->newly_complete = 1;
    }
    err = exec(db, "COMMIT", "committing a snapshot chunk");
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c); /* rolls back on failure */
    rs__sqlite_write_lock(b, 0);
    if (err < 0)
        memset(out, 0, sizeof(*out));
    return err;
}

/* ---- reading ---- */

typedef struct frontier_buf {
    rs_shard *shards;
    size_t count, cap;
} frontier_buf;

/* Reads snapshot `id`'s frontier (sorted by host) into `fb`. */
static int read_frontier(sqlite3 *db, sqlite3_stmt *st, frontier_buf *fb, int64_t user,
                         const rs_uuid *id, const char *tag)
{
    int rc, err = 0;
    fb->count = 0;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, id->bytes, sizeof(id->bytes));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (fb->count == fb->cap) {
            size_t ncap = fb->cap ? fb->cap * 2 : 16;
            rs_shard *p = rs__realloc(fb->shards, ncap * sizeof(*p));
            if (p == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory reading a snapshot's frontier");
                break;
            }
            fb->shards = p;
            fb->cap = ncap;
        }
        rs_shard *f = &fb->shards[fb->count++];
        memset(f, 0, sizeof(*f));
        column_uuid(&f->host, st, 0);
        snprintf(f->tag, sizeof(f->tag), "%s", tag);
        f->end = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(db, rc, "reading a snapshot's frontier");
    sqlite3_reset(st);
    return err;
}

int rs__sqlite_snapshot_list(rs_backend *b, int64_t user, const char *tag, rs_snapshot_cb cb,
                             void *payload)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL, *fst = NULL;
    frontier_buf fb = {0};
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    if ((err = exec(db, "BEGIN", "starting a read")) < 0 ||
        (err = prep(db, &st,
                    "SELECT id, tag, chunks, bytes, seq, created_ms FROM snapshots"
                    " WHERE user_id = ?1 AND complete = 1 AND (?2 IS NULL OR tag = ?2)"
                    " ORDER BY seq DESC, created_ms DESC, id DESC")) < 0 ||
        (err = prep(db, &fst,
                    "SELECT host, end_idx FROM snapshot_frontier WHERE user_id = ?1 AND id = ?2"
                    " ORDER BY host")) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    if (tag)
        sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_snapshot_meta info;
        memset(&info, 0, sizeof(info));
        column_uuid(&info.id, st, 0);
        column_tag(info.tag, st, 1);
        info.chunks = (uint64_t)sqlite3_column_int64(st, 2);
        info.bytes = (uint64_t)sqlite3_column_int64(st, 3);
        info.seq = (uint64_t)sqlite3_column_int64(st, 4);
        info.created_ms = (uint64_t)sqlite3_column_int64(st, 5);
        if ((err = read_frontier(db, fst, &fb, user, &info.id, info.tag)) < 0)
            break;
        info.frontier = fb.shards;
        info.frontier_count = fb.count;
        if ((err = cb(&info, payload)) < 0)
            break;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(db, rc, "listing snapshots");
    if (err == 0)
        err = exec(db, "COMMIT", "ending a read");
done:
    sqlite3_finalize(st);
    sqlite3_finalize(fst);
    rs_free(fb.shards);
    rs__sqlite_conn_put(b, c);
    return err;
}

int rs__sqlite_snapshot_chunk_get(rs_backend *b, int64_t user, const rs_uuid *id, uint64_t chunk,
                                  rs_chunk_cb cb, void *payload)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int err = rs__sqlite_conn_get(b, &c);
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    if ((err = prep(db, &st,
                    "SELECT s.tag, s.chunks, s.bytes, s.seq, s.created_ms, k.data"
                    " FROM snapshots s JOIN snapshot_chunks k ON k.user_id = s.user_id"
                    " AND k.id = s.id AND k.chunk = ?3"
                    " WHERE s.user_id = ?1 AND s.id = ?2 AND s.complete = 1")) < 0)
        goto done;
    sqlite3_bind_int64(st, 1, user);
    bind_blob(st, 2, id->bytes, sizeof(id->bytes));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)chunk);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        rs_snapshot_meta info;
        memset(&info, 0, sizeof(info));
        info.id = *id;
        column_tag(info.tag, st, 0);
        info.chunks = (uint64_t)sqlite3_column_int64(st, 1);
        info.bytes = (uint64_t)sqlite3_column_int64(st, 2);
        info.seq = (uint64_t)sqlite3_column_int64(st, 3);
        info.created_ms = (uint64_t)sqlite3_column_int64(st, 4);
        err = cb(&info, sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5), payload);
    } else if (rc == SQLITE_DONE) {
        char s[RS_UUID_STRLEN + 1];
        rs_uuid_format(s, id);
        err = rs__error(RS_ENOTFOUND, "no complete snapshot %s with a chunk %llu for this user", s,
                        (unsigned long long)chunk);
    } else {
        err = db_error(db, rc, "reading a snapshot chunk");
    }
done:
    sqlite3_finalize(st);
    rs__sqlite_conn_put(b, c);
    return err;
}

/* ---- pruning ---- */

typedef struct shard_floor {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t start, end, floor;
} shard_floor;

/* Binds floor_sql's parameters: user, device cutoff, and one shard or none. */
static void bind_floor(sqlite3_stmt *st, int64_t user, int64_t cutoff, const shard_floor *one)
{
    sqlite3_bind_int64(st, 1, user);
    sqlite3_bind_int64(st, 2, cutoff);
    if (one) {
        bind_blob(st, 3, one->host.bytes, sizeof(one->host.bytes));
        sqlite3_bind_text(st, 4, one->tag, -1, SQLITE_STATIC);
    }
}

static void column_floor(shard_floor *out, sqlite3_stmt *st)
{
    column_uuid(&out->host, st, 0);
    column_tag(out->tag, st, 1);
    out->start = (uint64_t)sqlite3_column_int64(st, 2);
    out->end = (uint64_t)sqlite3_column_int64(st, 3);
    out->floor = rs_backend_prune_floor(
        out->end, (uint64_t)sqlite3_column_int64(st, 4), (uint64_t)sqlite3_column_int64(st, 5),
        (uint64_t)sqlite3_column_int64(st, 6), (uint64_t)sqlite3_column_int64(st, 7));
}

/*
 * Deletes shard `s`'s records below its floor, at most `batch` per write
 * transaction; each transaction reads the floor afresh (acks and
 * snapshots may have changed) and raises start to what it deleted.
 */
static int prune_shard(rs_backend *b, sqlite3 *db, rs_prune_stats *out, int64_t user,
                       int64_t cutoff, const shard_floor *s, uint64_t batch)
{
    sqlite3_stmt *fl = NULL, *count = NULL, *del = NULL, *raise = NULL;
    int err = prep(db, &fl, floor_sql), moved = 0;
    if (err == 0)
        err = prep(db, &count,
                   "SELECT count(*), total(length(data)) FROM records WHERE user_id = ?1"
                   " AND host = ?2 AND tag = ?3 AND idx >= ?4 AND idx < ?5");
    if (err == 0)
        err = prep(db, &del,
                   "DELETE FROM records WHERE user_id = ?1 AND host = ?2 AND tag = ?3"
                   " AND idx >= ?4 AND idx < ?5");
    if (err == 0)
        err = prep(db, &raise,
                   "UPDATE shards SET start_idx = ?5 WHERE user_id = ?1 AND host = ?2"
                   " AND tag = ?3 AND start_idx = ?4");
    while (err == 0) {
        shard_floor now;
        uint64_t n = 0, bytes = 0, upto = 0;
        int rc;
        rs__sqlite_write_lock(b, 1);
        if ((err = exec(db, "BEGIN IMMEDIATE", "starting a prune")) < 0) {
            rs__sqlite_write_lock(b, 0);
            break;
        }
        bind_floor(fl, user, cutoff, s);
        rc = sqlite3_step(fl);
        if (rc == SQLITE_ROW)
            column_floor(&now, fl);
        sqlite3_reset(fl);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = db_error(db, rc, "reading a shard's floor");
        if (err == 0 && rc == SQLITE_ROW && now.floor > now.start) {
            upto = now.floor - now.start > batch ? now.start + batch : now.floor;
            sqlite3_stmt *sts[3] = {count, del, raise};
            for (int i = 0; i < 3; i++) {
                sqlite3_bind_int64(sts[i], 1, user);
                bind_blob(sts[i], 2, s->host.bytes, sizeof(s->host.bytes));
                sqlite3_bind_text(sts[i], 3, s->tag, -1, SQLITE_STATIC);
                sqlite3_bind_int64(sts[i], 4, (sqlite3_int64)now.start);
                sqlite3_bind_int64(sts[i], 5, (sqlite3_int64)upto);
            }
            rc = sqlite3_step(count);
            if (rc == SQLITE_ROW) {
                n = (uint64_t)sqlite3_column_int64(count, 0);
                bytes = (uint64_t)sqlite3_column_int64(count, 1);
            }
            sqlite3_reset(count);
            if (rc != SQLITE_ROW)
                err = db_error(db, rc, "counting records to prune");
            if (err == 0)
                err = step_done(db, del, "pruning records");
            if (err == 0)
                err = step_done(db, raise, "raising a shard's start");
            if (err == 0)
                err = run_sql(db,
                              "UPDATE users SET records = records - ?2, bytes = bytes - ?3"
                              " WHERE user_id = ?1",
                              user, (int64_t)n, (int64_t)bytes, "counting the user's records");
        }
        if (err == 0)
            err = exec(db, "COMMIT", "committing a prune");
        if (err < 0)
            exec(db, "ROLLBACK", "rolling back a prune");
        rs__sqlite_write_lock(b, 0);
        if (err < 0 || upto == 0)
            break;
        out->records_pruned += n;
        out->bytes_pruned += bytes;
        if (!moved++)
            out->shards_pruned++;
        if (upto >= now.floor)
            break;
    }
    sqlite3_finalize(fl);
    sqlite3_finalize(count);
    sqlite3_finalize(del);
    sqlite3_finalize(raise);
    return err;
}

/* Deletes snapshot `id` of `user` with its chunks if doomed_sql still selects it. */
static int delete_snapshot(rs_backend *b, sqlite3 *db, rs_prune_stats *out, int64_t user,
                           const rs_uuid *id, uint64_t kept, int64_t cutoff)
{
    sqlite3_stmt *st = NULL;
    static const char *const dels[] = {
        "DELETE FROM snapshot_chunks WHERE user_id = ?1 AND id = ?2",
        "DELETE FROM snapshot_frontier WHERE user_id = ?1 AND id = ?2",
        "DELETE FROM snapshots WHERE user_id = ?1 AND id = ?2",
    };
    int found = 0;
    rs__sqlite_write_lock(b, 1);
    int err = exec(db, "BEGIN IMMEDIATE", "starting a snapshot deletion");
    if (err == 0)
        err = prep(db, &st, doomed_sql);
    if (err == 0) {
        sqlite3_bind_int64(st, 1, user);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)kept);
        sqlite3_bind_int64(st, 3, cutoff);
        bind_blob(st, 4, id->bytes, sizeof(id->bytes));
        int rc = sqlite3_step(st);
        uint64_t bytes = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 1) : 0;
        found = rc == SQLITE_ROW;
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = db_error(db, rc, "rereading a snapshot to delete");
        sqlite3_finalize(st);
        st = NULL;
        for (size_t i = 0; err == 0 && found && i < sizeof(dels) / sizeof(dels[0]); i++) {
            if ((err = prep(db, &st, dels[i])) < 0)
                break;
            sqlite3_bind_int64(st, 1, user);
            bind_blob(st, 2, id->bytes, sizeof(id->bytes));
            err = step_done(db, st, "deleting a snapshot");
            sqlite3_finalize(st);
            st = NULL;
        }
        if (err == 0 && found)
            err = run_sql(db, "UPDATE users SET bytes = bytes - ?2 WHERE user_id = ?1", user,
                          (int64_t)bytes, 0, "counting the user's bytes");
    }
    if (err == 0)
        err = exec(db, "COMMIT", "committing a snapshot deletion");
    if (err < 0)
        exec(db, "ROLLBACK", "rolling back a snapshot deletion");
    rs__sqlite_write_lock(b, 0);
    if (err == 0 && found)
        out->snapshots_deleted++;
    return err;
}

/* Runs `sql` (user ?1, then up to two integers) and collects the first column's blobs as ids. */
static int collect_ids(sqlite3 *db, rs_uuid **ids, size_t *n, const char *sql, int64_t user,
                       int64_t p2, int64_t p3)
{
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    int rc, err = prep(db, &st, sql);
    *ids = NULL;
    *n = 0;
    if (err < 0)
        return err;
    sqlite3_bind_int64(st, 1, user);
    if (sqlite3_bind_parameter_count(st) >= 3) {
        sqlite3_bind_int64(st, 2, p2);
        sqlite3_bind_int64(st, 3, p3);
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            rs_uuid *p = rs__realloc(*ids, ncap * sizeof(*p));
            if (p == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory listing snapshots to delete");
                break;
            }
            *ids = p;
            cap = ncap;
        }
        column_uuid(&(*ids)[(*n)++], st, 0);
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(db, rc, "listing snapshots to delete");
    sqlite3_finalize(st);
    return err;
}

/* Prunes one user: every shard whose floor is above its start, then old snapshots. */
static int prune_user(rs_backend *b, sqlite3 *db, rs_prune_stats *out, int64_t user, int64_t cutoff,
                      const rs_prune_policy *policy, int64_t stale_before)
{
    sqlite3_stmt *st = NULL;
    shard_floor *todo = NULL;
    size_t n = 0, cap = 0;
    int rc, err = prep(db, &st, floor_sql);
    if (err < 0)
        return err;
    /* Candidates first, read in one statement; each shard is then pruned in its own writes. */
    bind_floor(st, user, cutoff, NULL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        shard_floor f;
        column_floor(&f, st);
        if (f.floor <= f.start)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            shard_floor *p = rs__realloc(todo, ncap * sizeof(*p));
            if (p == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory listing shards to prune");
                break;
            }
            todo = p;
            cap = ncap;
        }
        todo[n++] = f;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(db, rc, "reading prune floors");
    sqlite3_finalize(st);
    uint64_t batch = policy->batch ? policy->batch : PRUNE_BATCH;
    for (size_t i = 0; err == 0 && i < n; i++)
        err = prune_shard(b, db, out, user, cutoff, &todo[i], batch);
    rs_free(todo);
    if (err < 0)
        return err;

    /* doomed_sql with ?4 NULL lists them all; each is checked again as it is deleted. */
    rs_uuid *ids = NULL;
    size_t count = 0;
    err = collect_ids(db, &ids, &count, doomed_sql, user, (int64_t)policy->snapshots_kept,
                      stale_before);
    for (size_t i = 0; err == 0 && i < count; i++)
        err = delete_snapshot(b, db, out, user, &ids[i], policy->snapshots_kept, stale_before);
    rs_free(ids);
    return err;
}

int rs__sqlite_prune(rs_backend *b, rs_prune_stats *out, const rs_prune_policy *policy)
{
    rs_sqlite_conn *c;
    sqlite3_stmt *st = NULL;
    int64_t *users = NULL;
    size_t n = 0, cap = 0;
    memset(out, 0, sizeof(*out));
    int err = rs__sqlite_conn_get(b, &c), rc;
    if (err < 0)
        return err;
    sqlite3 *db = rs__sqlite_db(c);
    uint64_t now = rs_now_ms();
    int64_t cutoff = 0;
    if (policy->device_expiry_ms)
        cutoff = now > policy->device_expiry_ms ? (int64_t)(now - policy->device_expiry_ms) : 1;
    uint64_t stale_ms = policy->incomplete_ms ? policy->incomplete_ms : INCOMPLETE_MS;
    int64_t stale_before = now > stale_ms ? (int64_t)(now - stale_ms) : 0;
    /* Users first: pruning writes while this read is open would pin its snapshot. */
    if ((err = prep(db, &st, "SELECT user_id FROM users ORDER BY user_id")) < 0)
        goto done;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            int64_t *p = rs__realloc(users, ncap * sizeof(*p));
            if (p == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory listing users");
                break;
            }
            users = p;
            cap = ncap;
        }
        users[n++] = sqlite3_column_int64(st, 0);
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(db, rc, "listing users");
    sqlite3_finalize(st);
    for (size_t i = 0; err == 0 && i < n; i++)
        err = prune_user(b, db, out, users[i], cutoff, policy, stale_before);
done:
    rs_free(users);
    rs__sqlite_conn_put(b, c);
    return err;
}
