/*
 * The PostgreSQL backend's snapshots and pruning (backend.h; the wire is
 * docs/protocol.md "Snapshots" and "Pruning"). The same tables and rules
 * as sqlite_snap.c. Every write of a user (a chunk, a prune batch, a
 * snapshot deletion) first locks the user's row, as postgres.c's writers
 * do, so a chunk that completes a snapshot, a prune pass of any recsyncd
 * process and record uploads of that user take turns, and each prune
 * transaction reads the floor it deletes below under that lock.
 */
#include "postgres_int.h"

#include <stdlib.h>

#define PRUNE_BATCH 10000
#define INCOMPLETE_MS (24u * 3600u * 1000u)
#define FRONTIER_ENTRY 24 /* host (16 bytes) and end (8, big-endian) */

/*
 * The devices that hold a prune floor: registered to the shard's user,
 * not retired (`recsync devices retire`) and seen within --device-expiry
 * ($2 is the cutoff in ms, 0 when devices never expire).
 */
#define ACTIVE_DEVICE                                                                              \
    "d.user_id = s.user_id AND d.retired_ms IS NULL"                                               \
    " AND ($2::int8 = 0 OR d.last_seen_ms >= $2::int8)"

/* As sqlite_snap.c's floor_sql: per shard of user $1 (one when $3, $4 name it). */
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
    "  LIMIT 1)), 0)::int8"
    " FROM shards s WHERE s.user_id = $1::int8"
    " AND ($3::bytea IS NULL OR (s.host = $3::bytea AND s.tag = $4::text))";

/* As sqlite_snap.c's doomed_sql: user $1's snapshots to delete (just $4 when given). */
static const char doomed_sql[] =
    "SELECT s.id, s.bytes FROM snapshots s WHERE s.user_id = $1::int8"
    " AND ($4::bytea IS NULL OR s.id = $4::bytea)"
    " AND ((s.complete = 1 AND (SELECT count(*) FROM snapshots n WHERE n.user_id = s.user_id"
    "  AND n.tag = s.tag AND n.complete = 1 AND (n.seq > s.seq OR (n.seq = s.seq"
    "  AND (n.created_ms > s.created_ms OR (n.created_ms = s.created_ms AND n.id > s.id)))))"
    "  >= $2::int8) OR (s.complete = 0 AND s.created_ms < $3::int8))";

/* The frontier packed into one bytea ($2), unpacked by SQL as rows (host, end_idx). */
#define FRONTIER_ROWS                                                                              \
    "WITH f AS (SELECT substring($2::bytea FROM i * 24 + 1 FOR 16) AS host,"                       \
    " ('x' || encode(substring($2::bytea FROM i * 24 + 17 FOR 8), 'hex'))::bit(64)::int8"          \
    " AS end_idx FROM generate_series(0, length($2::bytea) / 24 - 1) AS i) "

/* Locks the user's row for the rest of the transaction. */
static int lock_user(rs_pg_conn *c, int64_t user)
{
    params p = {0};
    p_i64(&p, user);
    return rs__pg_query(c, NULL, "SELECT 1 FROM users WHERE user_id = $1::int8 FOR UPDATE", &p,
                        "locking a user");
}

int rs__pg_device_touch(rs_backend *b, const rs_uuid *host)
{
    rs_pg_conn *c;
    params p = {0};
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    p_i64(&p, (int64_t)rs_now_ms());
    p_uuid(&p, host);
    err = rs__pg_query(c, NULL, "UPDATE devices SET last_seen_ms = $1::int8 WHERE host = $2::bytea",
                       &p, "marking a device seen");
    rs__pg_conn_put(b, c);
    return err;
}

/* ---- uploading a chunk ---- */

/* The frontier as FRONTIER_ROWS reads it; rs_free the result. */
static uint8_t *pack_frontier(const rs_index *frontier)
{
    uint8_t *buf = rs__malloc(frontier->count * FRONTIER_ENTRY + 1);
    if (buf == NULL)
        return NULL;
    for (size_t i = 0; i < frontier->count; i++) {
        uint8_t *e = buf + i * FRONTIER_ENTRY;
        memcpy(e, frontier->shards[i].host.bytes, 16);
        for (int k = 0; k < 8; k++)
            e[16 + k] = (uint8_t)(frontier->shards[i].end >> (56 - 8 * k));
    }
    return buf;
}

/*
 * Creates snapshot in->id with its frontier, after checking every entry
 * against its shard's end (the first that passes it, in host order, is
 * named).
 */
static int create_snapshot(rs_pg_conn *c, int64_t user, const rs_snapshot_put *in)
{
    PGresult *r = NULL;
    params p = {0};
    size_t packed_len = in->frontier->count * FRONTIER_ENTRY;
    uint8_t *packed = pack_frontier(in->frontier);
    if (packed == NULL)
        return rs__error(RS_ENOMEM, "out of memory storing a snapshot's frontier");
    p_i64(&p, user);
    p_bytes(&p, packed, packed_len);
    p_text(&p, in->tag);
    int err =
        rs__pg_query(c, &r,
                     FRONTIER_ROWS "SELECT f.host, f.end_idx, coalesce(s.end_idx, 0)::int8 FROM f"
                                   " LEFT JOIN shards s ON s.user_id = $1::int8 AND s.host = f.host"
                                   " AND s.tag = $3::text WHERE f.end_idx > coalesce(s.end_idx, 0)"
                                   " ORDER BY f.host LIMIT 1",
                     &p, "checking a snapshot's frontier");
    if (err == 0 && PQntuples(r) > 0) {
        rs_uuid host;
        get_uuid(&host, r, 0, 0);
        err = rs_backend_frontier_error(&host, in->tag, (uint64_t)get_i64(r, 0, 1),
                                        (uint64_t)get_i64(r, 0, 2));
    }
    PQclear(r);
    if (err == 0) {
        memset(&p, 0, sizeof(p));
        p_i64(&p, user);
        p_uuid(&p, &in->id);
        p_text(&p, in->tag);
        p_i64(&p, (int64_t)in->chunks);
        p_bytes(&p, in->frontier_hash, sizeof(in->frontier_hash));
        p_i64(&p, (int64_t)rs_now_ms());
        err = rs__pg_query(c, NULL,
                           "INSERT INTO snapshots(user_id, id, tag, chunks, frontier_hash,"
                           " created_ms) VALUES ($1::int8, $2::bytea, $3::text, $4::int8,"
                           " $5::bytea, $6::int8)",
                           &p, "creating a snapshot");
    }
    if (err == 0 && packed_len > 0) {
        memset(&p, 0, sizeof(p));
        p_i64(&p, user);
        p_bytes(&p, packed, packed_len);
        p_uuid(&p, &in->id);
        err = rs__pg_query(c, NULL,
                           FRONTIER_ROWS "INSERT INTO snapshot_frontier(user_id, id, host, end_idx)"
                                         " SELECT $1::int8, $3::bytea, host, end_idx FROM f",
                           &p, "storing a snapshot's frontier");
    }
    rs_free(packed);
    return err;
}

/* As sqlite_snap.c: RS_ECONFLICT naming the first of tag, chunks, frontier that differs. */
static int same_snapshot(const PGresult *r, const rs_snapshot_put *in)
{
    char tag[RS_TAG_MAX + 1], detail[256];
    get_tag(tag, r, 0, 0);
    uint64_t chunks = (uint64_t)get_i64(r, 0, 1);
    if (strcmp(tag, in->tag) != 0) {
        snprintf(detail, sizeof(detail), "its tag is %s; this chunk says %s", tag, in->tag);
        return rs_backend_snapshot_conflict(&in->id, detail);
    }
    if (chunks != in->chunks) {
        snprintf(detail, sizeof(detail), "it has %llu chunks; this chunk says %llu",
                 (unsigned long long)chunks, (unsigned long long)in->chunks);
        return rs_backend_snapshot_conflict(&in->id, detail);
    }
    if (PQgetlength(r, 0, 2) != (int)sizeof(in->frontier_hash) ||
        memcmp(PQgetvalue(r, 0, 2), in->frontier_hash, sizeof(in->frontier_hash)) != 0)
        return rs_backend_snapshot_conflict(&in->id,
                                            "its frontier differs from this chunk's frontier");
    return 0;
}

/* Stores the chunk, or checks a stored one is identical; *inserted says which. */
static int put_chunk(rs_pg_conn *c, int *inserted, int64_t user, const rs_snapshot_put *in)
{
    PGresult *r = NULL;
    params p = {0};
    p_i64(&p, user);
    p_uuid(&p, &in->id);
    p_i64(&p, (int64_t)in->chunk);
    int err = rs__pg_query(c, &r,
                           "SELECT data FROM snapshot_chunks WHERE user_id = $1::int8"
                           " AND id = $2::bytea AND chunk = $3::int8",
                           &p, "reading a snapshot chunk");
    *inserted = 0;
    if (err < 0)
        return err;
    if (PQntuples(r) > 0) {
        size_t len = (size_t)PQgetlength(r, 0, 0);
        if (len != in->data_len || (len && memcmp(PQgetvalue(r, 0, 0), in->data, len) != 0)) {
            char detail[128];
            snprintf(detail, sizeof(detail), "chunk %llu is stored with different data",
                     (unsigned long long)in->chunk);
            err = rs_backend_snapshot_conflict(&in->id, detail);
        }
        PQclear(r);
        return err;
    }
    PQclear(r);
    p_bytes(&p, in->data, in->data_len);
    if ((err = rs__pg_query(c, NULL,
                            "INSERT INTO snapshot_chunks(user_id, id, chunk, data)"
                            " VALUES ($1::int8, $2::bytea, $3::int8, $4::bytea)",
                            &p, "storing a snapshot chunk")) < 0)
        return err;
    memset(&p, 0, sizeof(p));
    p_i64(&p, user);
    p_uuid(&p, &in->id);
    p_i64(&p, (int64_t)in->data_len);
    if ((err = rs__pg_query(c, NULL,
                            "UPDATE snapshots SET stored = stored + 1, bytes = bytes + $3::int8"
                            " WHERE user_id = $1::int8 AND id = $2::bytea",
                            &p, "counting a snapshot chunk")) < 0)
        return err;
    memset(&p, 0, sizeof(p));
    p_i64(&p, user);
    p_i64(&p, (int64_t)in->data_len);
    if ((err = rs__pg_query(c, NULL,
                            "UPDATE users SET bytes = bytes + $2::int8 WHERE user_id = $1::int8",
                            &p, "counting the user's bytes")) < 0)
        return err;
    *inserted = 1;
    return 0;
}

int rs__pg_snapshot_put_chunk(rs_backend *b, rs_snapshot_put_result *out, int64_t user,
                              const rs_snapshot_put *in)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    params p = {0};
    memset(out, 0, sizeof(*out));
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    if ((err = rs__pg_exec(c, "BEGIN", "starting a write")) < 0 || (err = lock_user(c, user)) < 0)
        goto done;
    p_i64(&p, user);
    p_uuid(&p, &in->id);
    if ((err = rs__pg_query(c, &r,
                            "SELECT tag, chunks, frontier_hash, stored, complete, seq"
                            " FROM snapshots WHERE user_id = $1::int8 AND id = $2::bytea",
                            &p, "reading a snapshot")) < 0)
        goto done;
    if (PQntuples(r) > 0) {
        err = same_snapshot(r, in);
        out->stored = (uint64_t)get_i64(r, 0, 3);
        out->complete = get_i64(r, 0, 4) != 0;
        out->seq = (uint64_t)get_i64(r, 0, 5);
    } else {
        err = create_snapshot(c, user, in);
    }
    PQclear(r);
    r = NULL;
    if (err < 0 || (err = put_chunk(c, &out->inserted, user, in)) < 0)
        goto done;
    out->stored += (uint64_t)out->inserted;
    if (!out->complete && out->stored == in->chunks) {
        memset(&p, 0, sizeof(p));
        p_i64(&p, user);
        p_uuid(&p, &in->id);
        p_i64(&p, (int64_t)rs_now_ms());
        if ((err = rs__pg_query(c, &r,
                                "UPDATE snapshots SET complete = 1, created_ms = $3::int8,"
                                " seq = (SELECT seq FROM users WHERE user_id = $1::int8)"
                                " WHERE user_id = $1::int8 AND id = $2::bytea RETURNING seq",
                                &p, "completing a snapshot")) < 0)
            goto done;
        out->seq = PQntuples(r) > 0 ? (uint64_t)get_i64(r, 0, 0) : 0;
        PQclear(r);
        r = NULL;
        out->complete = out->newly_complete = 1;
    }
    err = rs__pg_exec(c, "COMMIT", "committing a snapshot chunk");
done:
    rs__pg_conn_put(b, c); /* rolls back on failure */
    if (err < 0)
        memset(out, 0, sizeof(*out));
    return err;
}

/* ---- reading ---- */

int rs__pg_snapshot_list(rs_backend *b, int64_t user, const char *tag, rs_snapshot_cb cb,
                         void *payload)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    params p = {0};
    rs_shard *frontier = NULL;
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    p_i64(&p, user);
    if (tag)
        p_text(&p, tag);
    else
        p_null(&p);
    /* One statement: one snapshot of the database; rows grouped by snapshot, hosts in order. */
    if ((err = rs__pg_query(c, &r,
                            "SELECT s.id, s.tag, s.chunks, s.bytes, s.seq, s.created_ms, f.host,"
                            " f.end_idx FROM snapshots s LEFT JOIN snapshot_frontier f"
                            " ON f.user_id = s.user_id AND f.id = s.id"
                            " WHERE s.user_id = $1::int8 AND s.complete = 1"
                            " AND ($2::text IS NULL OR s.tag = $2::text)"
                            " ORDER BY s.seq DESC, s.created_ms DESC, s.id DESC, f.host",
                            &p, "listing snapshots")) < 0)
        goto done;
    int rows = PQntuples(r);
    if (rows > 0 && (frontier = rs__calloc((size_t)rows, sizeof(*frontier))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory listing snapshots");
        goto done;
    }
    for (int i = 0; err == 0 && i < rows;) {
        rs_snapshot_meta info;
        memset(&info, 0, sizeof(info));
        get_uuid(&info.id, r, i, 0);
        get_tag(info.tag, r, i, 1);
        info.chunks = (uint64_t)get_i64(r, i, 2);
        info.bytes = (uint64_t)get_i64(r, i, 3);
        info.seq = (uint64_t)get_i64(r, i, 4);
        info.created_ms = (uint64_t)get_i64(r, i, 5);
        size_t n = 0;
        int j = i;
        for (; j < rows; j++) {
            rs_uuid id;
            get_uuid(&id, r, j, 0);
            if (memcmp(id.bytes, info.id.bytes, 16) != 0)
                break;
            if (is_null(r, j, 6))
                continue;
            rs_shard *f = &frontier[n++];
            get_uuid(&f->host, r, j, 6);
            snprintf(f->tag, sizeof(f->tag), "%s", info.tag);
            f->start = 0;
            f->end = (uint64_t)get_i64(r, j, 7);
        }
        info.frontier = frontier;
        info.frontier_count = n;
        err = cb(&info, payload);
        i = j;
    }
done:
    PQclear(r);
    rs_free(frontier);
    rs__pg_conn_put(b, c);
    return err;
}

int rs__pg_snapshot_chunk_get(rs_backend *b, int64_t user, const rs_uuid *id, uint64_t chunk,
                              rs_chunk_cb cb, void *payload)
{
    rs_pg_conn *c;
    PGresult *r = NULL;
    params p = {0};
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    p_i64(&p, user);
    p_uuid(&p, id);
    p_i64(&p, (int64_t)chunk);
    if ((err = rs__pg_query(c, &r,
                            "SELECT s.tag, s.chunks, s.bytes, s.seq, s.created_ms, k.data"
                            " FROM snapshots s JOIN snapshot_chunks k ON k.user_id = s.user_id"
                            " AND k.id = s.id AND k.chunk = $3::int8"
                            " WHERE s.user_id = $1::int8 AND s.id = $2::bytea AND s.complete = 1",
                            &p, "reading a snapshot chunk")) < 0)
        goto done;
    if (PQntuples(r) > 0) {
        rs_snapshot_meta info;
        memset(&info, 0, sizeof(info));
        info.id = *id;
        get_tag(info.tag, r, 0, 0);
        info.chunks = (uint64_t)get_i64(r, 0, 1);
        info.bytes = (uint64_t)get_i64(r, 0, 2);
        info.seq = (uint64_t)get_i64(r, 0, 3);
        info.created_ms = (uint64_t)get_i64(r, 0, 4);
        err =
            cb(&info, (const uint8_t *)PQgetvalue(r, 0, 5), (size_t)PQgetlength(r, 0, 5), payload);
    } else {
        char s[RS_UUID_STRLEN + 1];
        rs_uuid_format(s, id);
        err = rs__error(RS_ENOTFOUND, "no complete snapshot %s with a chunk %llu for this user", s,
                        (unsigned long long)chunk);
    }
done:
    PQclear(r);
    rs__pg_conn_put(b, c);
    return err;
}

/* ---- pruning ---- */

typedef struct shard_floor {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t start, end, floor;
} shard_floor;

/* Runs floor_sql for `user` (one shard when `one` is given); rs_free *out. */
static int read_floors(rs_pg_conn *c, shard_floor **out, size_t *n, int64_t user, int64_t cutoff,
                       const shard_floor *one)
{
    PGresult *r = NULL;
    params p = {0};
    p_i64(&p, user);
    p_i64(&p, cutoff);
    if (one) {
        p_uuid(&p, &one->host);
        p_text(&p, one->tag);
    } else {
        p_null(&p);
        p_null(&p);
    }
    *out = NULL;
    *n = 0;
    int err = rs__pg_query(c, &r, floor_sql, &p, "reading prune floors");
    if (err < 0)
        return err;
    int rows = PQntuples(r);
    if (rows > 0 && (*out = rs__calloc((size_t)rows, sizeof(**out))) == NULL)
        err = rs__error(RS_ENOMEM, "out of memory reading prune floors");
    for (int i = 0; err == 0 && i < rows; i++) {
        shard_floor *f = &(*out)[(*n)++];
        get_uuid(&f->host, r, i, 0);
        get_tag(f->tag, r, i, 1);
        f->start = (uint64_t)get_i64(r, i, 2);
        f->end = (uint64_t)get_i64(r, i, 3);
        f->floor =
            rs_backend_prune_floor(f->end, (uint64_t)get_i64(r, i, 4), (uint64_t)get_i64(r, i, 5),
                                   (uint64_t)get_i64(r, i, 6), (uint64_t)get_i64(r, i, 7));
    }
    PQclear(r);
    return err;
}

/*
 * As sqlite_snap.c: deletes shard `s`'s records below its floor, at most
 * `batch` per transaction, each under the user's row lock with the floor
 * read afresh, raising start to what it deleted.
 */
static int prune_shard(rs_pg_conn *c, rs_prune_stats *out, int64_t user, int64_t cutoff,
                       const shard_floor *s, uint64_t batch)
{
    int moved = 0;
    for (;;) {
        shard_floor *now = NULL;
        size_t n = 0;
        uint64_t upto = 0, count = 0, bytes = 0, floor = 0;
        PGresult *r = NULL;
        int err = rs__pg_exec(c, "BEGIN", "starting a prune");
        if (err == 0)
            err = lock_user(c, user);
        if (err == 0)
            err = read_floors(c, &now, &n, user, cutoff, s);
        if (err == 0 && n == 1 && now[0].floor > now[0].start) {
            params p = {0};
            floor = now[0].floor;
            upto = floor - now[0].start > batch ? now[0].start + batch : floor;
            p_i64(&p, user);
            p_uuid(&p, &s->host);
            p_text(&p, s->tag);
            p_i64(&p, (int64_t)now[0].start);
            p_i64(&p, (int64_t)upto);
            err = rs__pg_query(c, &r,
                               "WITH d AS (DELETE FROM records WHERE user_id = $1::int8"
                               " AND host = $2::bytea AND tag = $3::text AND idx >= $4::int8"
                               " AND idx < $5::int8 RETURNING length(data) AS n)"
                               " SELECT count(*), coalesce(sum(n), 0)::int8 FROM d",
                               &p, "pruning records");
            if (err == 0) {
                count = (uint64_t)get_i64(r, 0, 0);
                bytes = (uint64_t)get_i64(r, 0, 1);
                PQclear(r);
                err = rs__pg_query(c, NULL,
                                   "UPDATE shards SET start_idx = $5::int8 WHERE user_id = $1::int8"
                                   " AND host = $2::bytea AND tag = $3::text"
                                   " AND start_idx = $4::int8",
                                   &p, "raising a shard's start");
            }
            if (err == 0) {
                memset(&p, 0, sizeof(p));
                p_i64(&p, user);
                p_i64(&p, (int64_t)count);
                p_i64(&p, (int64_t)bytes);
                err = rs__pg_query(c, NULL,
                                   "UPDATE users SET records = records - $2::int8,"
                                   " bytes = bytes - $3::int8 WHERE user_id = $1::int8",
                                   &p, "counting the user's records");
            }
        }
        rs_free(now);
        if (err == 0)
            err = rs__pg_exec(c, "COMMIT", "committing a prune");
        if (err < 0) {
            rs__pg_exec(c, "ROLLBACK", "rolling back a prune");
            return err;
        }
        if (upto == 0)
            return 0;
        out->records_pruned += count;
        out->bytes_pruned += bytes;
        if (!moved++)
            out->shards_pruned++;
        if (upto >= floor)
            return 0;
    }
}

/* Deletes snapshot `id` of `user` with its chunks if doomed_sql still selects it. */
static int delete_snapshot(rs_pg_conn *c, rs_prune_stats *out, int64_t user, const rs_uuid *id,
                           uint64_t kept, int64_t stale_before)
{
    static const char *const dels[] = {
        "DELETE FROM snapshot_chunks WHERE user_id = $1::int8 AND id = $2::bytea",
        "DELETE FROM snapshot_frontier WHERE user_id = $1::int8 AND id = $2::bytea",
        "DELETE FROM snapshots WHERE user_id = $1::int8 AND id = $2::bytea",
    };
    PGresult *r = NULL;
    params p = {0};
    int found = 0;
    int err = rs__pg_exec(c, "BEGIN", "starting a snapshot deletion");
    if (err == 0)
        err = lock_user(c, user);
    p_i64(&p, user);
    p_i64(&p, (int64_t)kept);
    p_i64(&p, stale_before);
    p_uuid(&p, id);
    if (err == 0)
        err = rs__pg_query(c, &r, doomed_sql, &p, "rereading a snapshot to delete");
    if (err == 0) {
        found = PQntuples(r) > 0;
        uint64_t bytes = found ? (uint64_t)get_i64(r, 0, 1) : 0;
        PQclear(r);
        memset(&p, 0, sizeof(p));
        p_i64(&p, user);
        p_uuid(&p, id);
        for (size_t i = 0; err == 0 && found && i < sizeof(dels) / sizeof(dels[0]); i++)
            err = rs__pg_query(c, NULL, dels[i], &p, "deleting a snapshot");
        if (err == 0 && found) {
            memset(&p, 0, sizeof(p));
            p_i64(&p, user);
            p_i64(&p, (int64_t)bytes);
            err = rs__pg_query(c, NULL,
                               "UPDATE users SET bytes = bytes - $2::int8 WHERE user_id = $1::int8",
                               &p, "counting the user's bytes");
        }
    }
    if (err == 0)
        err = rs__pg_exec(c, "COMMIT", "committing a snapshot deletion");
    if (err < 0) {
        rs__pg_exec(c, "ROLLBACK", "rolling back a snapshot deletion");
        return err;
    }
    if (found)
        out->snapshots_deleted++;
    return 0;
}

/* Prunes one user: every shard whose floor is above its start, then old snapshots. */
static int prune_user(rs_pg_conn *c, rs_prune_stats *out, int64_t user, int64_t cutoff,
                      const rs_prune_policy *policy, int64_t stale_before)
{
    shard_floor *todo = NULL;
    size_t n = 0;
    PGresult *r = NULL;
    params p = {0};
    uint64_t batch = policy->batch ? policy->batch : PRUNE_BATCH;
    int err = read_floors(c, &todo, &n, user, cutoff, NULL);
    for (size_t i = 0; err == 0 && i < n; i++)
        if (todo[i].floor > todo[i].start)
            err = prune_shard(c, out, user, cutoff, &todo[i], batch);
    rs_free(todo);
    if (err < 0)
        return err;
    p_i64(&p, user);
    p_i64(&p, (int64_t)policy->snapshots_kept);
    p_i64(&p, stale_before);
    p_null(&p);
    if ((err = rs__pg_query(c, &r, doomed_sql, &p, "listing snapshots to delete")) < 0)
        return err;
    for (int i = 0; err == 0 && i < PQntuples(r); i++) {
        rs_uuid id;
        get_uuid(&id, r, i, 0);
        err = delete_snapshot(c, out, user, &id, policy->snapshots_kept, stale_before);
    }
    PQclear(r);
    return err;
}

int rs__pg_prune(rs_backend *b, rs_prune_stats *out, const rs_prune_policy *policy)
{
    rs_pg_conn *c;
    PGresult *users = NULL;
    params none = {0};
    memset(out, 0, sizeof(*out));
    int err = rs__pg_conn_get(b, &c);
    if (err < 0)
        return err;
    uint64_t now = rs_now_ms();
    int64_t cutoff = 0;
    if (policy->device_expiry_ms)
        cutoff = now > policy->device_expiry_ms ? (int64_t)(now - policy->device_expiry_ms) : 1;
    uint64_t stale_ms = policy->incomplete_ms ? policy->incomplete_ms : INCOMPLETE_MS;
    int64_t stale_before = now > stale_ms ? (int64_t)(now - stale_ms) : 0;
    if ((err = rs__pg_query(c, &users, "SELECT user_id FROM users ORDER BY user_id", &none,
                            "listing users")) < 0)
        goto done;
    for (int i = 0; err == 0 && i < PQntuples(users); i++)
        err = prune_user(c, out, get_i64(users, i, 0), cutoff, policy, stale_before);
    PQclear(users);
done:
    rs__pg_conn_put(b, c);
    return err;
}
