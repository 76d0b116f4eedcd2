/*
 * recsyncd's storage interface. A backend is a table of functions over one
 * database; recsyncd's HTTP layer knows nothing else about storage. SQLite
 * (backends/sqlite.c) is the embedded default; PostgreSQL
 * (backends/postgres.c) is a second implementation of the same table, with
 * several recsyncd processes on one database.
 *
 * Rules every implementation keeps:
 *
 * - Every call is thread-safe: recsyncd calls from its HTTP threads and its
 *   retention thread at once. A backend keeps its own pool of connections.
 * - Everything is keyed by user (the user id comes first in every key), so
 *   records, shards, events and acks can be distributed by user. Users and
 *   devices are small global tables (a name and a host id are unique across
 *   users).
 * - seq is per user: a counter kept in the user's row, read and advanced
 *   inside the write transaction that stores records, so seq order is
 *   commit order for that user and a subscriber that has seen seq N has
 *   seen every seq below N (the row lock, or SQLite's single writer, holds
 *   later writers until the earlier commits). One seq per stored record;
 *   one event per shard touched by a batch, carrying the last seq it took.
 * - After a batch commits, the backend calls opts.notify(user, seq) (from
 *   whichever thread learns of it: the writer for SQLite, a LISTEN thread
 *   for PostgreSQL, so writes made by other processes are heard too).
 *   Extra or late notifications are harmless (streams re-read events by
 *   cursor from the database); a missing one delays delivery until the
 *   next heartbeat, so after reconnecting a listener, notify every user
 *   with subscribers (or all: the callback is cheap).
 * - retain may run in several recsyncd processes at once against one
 *   database; each pass must be safe against the others and against
 *   writers (short transactions, floor only ever raised).
 * - backends/sqlite.c is the reference layout (tables, keys, statements).
 * - Failures return a negative RS_E* code with rs__error's message naming
 *   what failed. RS_EUNAVAIL (database unreachable) and RS_EBUSY (locked
 *   past the timeout) become 503; RS_EIO is storage failing (503 too).
 *   Validation is recsyncd's job: a backend may assume well-formed input
 *   (valid tags, hosts, sizes) but not contiguity or ownership of idx,
 *   which only the write transaction can decide.
 */
#ifndef RS_SERVER_BACKEND_H
#define RS_SERVER_BACKEND_H

#include "wire.h"

#include <sodium.h>
#include <stdint.h>

/* Server-local error codes, beyond the library's range. */
#define RS_EFORBIDDEN (-1001) /* authenticated but not allowed: another device's shard or host */
#define RS_EQUOTA (-1010)     /* a batch would take the user past --quota-bytes (507) */
#define RS_ESNAPSHOT (-1011)  /* a read below a shard's pruned start: load a snapshot (410) */

#define RS_TOKEN_ID_BYTES 16
#define RS_TOKEN_HASH_BYTES 32
#define RS_INVITE_HASH_BYTES 32

/*
 * User names are case-insensitive: every name has a key, its ASCII
 * lower-case fold, and a new name whose key is taken is refused. Accounts
 * made before names were folded that collide after folding keep their exact
 * names: the oldest of each such group owns the key, the others carry a
 * non-zero `name_dup` (their user id) and are found only by their exact
 * name (docs/deploy.md, "User names").
 */
void rs_backend_name_key(char *out, const char *name); /* out: RS_WIRE_USERNAME_MAX + 1 */

typedef struct rs_backend rs_backend;

/* Told after a batch of `user` committed; `seq` is the user's seq after it. */
typedef void (*rs_backend_notify_fn)(int64_t user, uint64_t seq, void *payload);

typedef struct rs_backend_opts {
    int busy_timeout_ms; /* 0: 5000 */
    int max_connections; /* pool bound; 0: 64 */
    int sync_full;       /* SQLite: synchronous=FULL instead of NORMAL */
    rs_backend_notify_fn notify;
    void *notify_payload;
} rs_backend_opts;

/* A user found by name, for login. */
typedef struct rs_account {
    int64_t user;
    char pwhash[crypto_pwhash_STRBYTES]; /* crypto_pwhash_str text */
    char name[RS_WIRE_USERNAME_MAX + 1]; /* the name as registered */
} rs_account;

/* The device a token id belongs to. recsyncd compares token_hash itself. */
typedef struct rs_device {
    int64_t user;
    rs_uuid host;
    uint8_t token_hash[RS_TOKEN_HASH_BYTES];
    char username[RS_WIRE_USERNAME_MAX + 1];
    uint64_t retired_ms;                 /* when the device was retired; 0: it is not */
    uint8_t token_id[RS_TOKEN_ID_BYTES]; /* set by recsyncd's auth, not by the backend */
} rs_device;

/* A device of a user as listed (GET /api/v1/devices). */
typedef struct rs_device_row {
    rs_uuid host;
    char name[RS_WIRE_DEVICE_NAME_MAX + 1];
    uint64_t created_ms;
    uint64_t last_seen_ms;
    uint64_t retired_ms; /* 0: not retired */
    /* records of the user's other devices' shards above this device's acked ends
       (a shard it never acked counts from 0) */
    uint64_t behind;
} rs_device_row;

/* A device listing callback: 0 to continue, < 0 to abort with that code. */
typedef int (*rs_device_cb)(const rs_device_row *row, void *payload);

/* What deleting a user removed. */
typedef struct rs_user_delete_stats {
    uint64_t devices;
    uint64_t records;
    uint64_t snapshots;
} rs_user_delete_stats;

/* A new device token: a public id (the lookup key) and the hash of its secret. */
typedef struct rs_token {
    uint8_t id[RS_TOKEN_ID_BYTES];
    uint8_t hash[RS_TOKEN_HASH_BYTES];
} rs_token;

typedef struct rs_insert_opts {
    /* Test hook (recsyncd --test-hooks): hold the write transaction open this
     * long after the records are written, before commit. */
    unsigned stall_ms;
    /* The user's bound on envelope bytes stored (0: none): a batch whose new
     * records would take the user past it is refused whole with RS_EQUOTA. */
    uint64_t quota_bytes;
} rs_insert_opts;

typedef struct rs_insert_result {
    uint64_t accepted; /* records of the batch now stored (new or already identical) */
    uint64_t inserted; /* of which new */
    uint64_t bytes;    /* envelope bytes of the new records */
    uint64_t seq;      /* the user's seq after the batch: the last seq taken, if any */
} rs_insert_result;

typedef struct rs_page_result {
    uint64_t count;
    int has_next;  /* records at or after `next` exist */
    uint64_t next; /* the idx after the last one handed out */
} rs_page_result;

/*
 * A page callback: returns 0 to take the record and continue, > 0 when the
 * page is full (this record is not taken: the page ends before it), < 0 to
 * abort with that code.
 */
typedef int (*rs_page_cb)(const rs_record *record, void *payload);

/* An events callback: 0 to continue, < 0 to abort with that code. */
typedef int (*rs_event_cb)(const rs_wire_event *event, void *payload);

typedef struct rs_retention {
    uint64_t keep_events;  /* per user, the newest N events; 0: no count bound */
    uint64_t keep_seconds; /* events younger than this; 0: no age bound */
    uint64_t batch;        /* at most this many deletions per transaction; 0: 10000 */
} rs_retention;

typedef struct rs_retention_stats {
    uint64_t events_pruned;
    uint64_t users_pruned; /* users whose floor moved */
} rs_retention_stats;

/*
 * One chunk of a snapshot upload (snapshots.md). `frontier` holds the
 * snapshot's frontier as shards of tag `tag` (only host and end count),
 * sorted by host, hosts unique; `frontier_hash` is a hash of it, kept with
 * the snapshot so later chunks compare one value.
 */
typedef struct rs_snapshot_put {
    rs_uuid id;
    char tag[RS_TAG_MAX + 1];
    uint64_t chunks;
    uint64_t chunk;
    const rs_index *frontier;
    uint8_t frontier_hash[32];
    const uint8_t *data;
    size_t data_len;
} rs_snapshot_put;

typedef struct rs_snapshot_put_result {
    int complete;       /* the snapshot is complete after this chunk */
    int newly_complete; /* this chunk completed it */
    int inserted;       /* this chunk was new (not an identical re-send) */
    uint64_t stored;    /* chunks of the snapshot stored */
    uint64_t seq;       /* complete: the seq it took */
} rs_snapshot_put_result;

/* A complete snapshot as listed; `frontier` valid only during the callback. */
typedef struct rs_snapshot_meta {
    rs_uuid id;
    char tag[RS_TAG_MAX + 1];
    uint64_t chunks;
    uint64_t bytes; /* sum of the chunks' sizes */
    uint64_t seq;
    uint64_t created_ms;      /* when it became complete */
    const rs_shard *frontier; /* host and end; sorted by host */
    size_t frontier_count;
} rs_snapshot_meta;

/* A snapshot listing callback: 0 to continue, < 0 to abort with that code. */
typedef int (*rs_snapshot_cb)(const rs_snapshot_meta *info, void *payload);

/* A chunk callback: `data` valid only during the call. */
typedef int (*rs_chunk_cb)(const rs_snapshot_meta *info, const uint8_t *data, size_t len,
                           void *payload);

/* What one prune pass does (snapshots.md, "Pruning"). */
typedef struct rs_prune_policy {
    uint64_t device_expiry_ms; /* a device silent longer holds nothing; 0: never expires */
    uint64_t snapshots_kept;   /* newest complete snapshots kept per (user, tag); at least 1 */
    uint64_t incomplete_ms;    /* incomplete snapshots older than this are deleted; 0: 24 h */
    uint64_t batch;            /* at most this many record deletions per transaction; 0: 10000 */
} rs_prune_policy;

typedef struct rs_prune_stats {
    uint64_t records_pruned;
    uint64_t bytes_pruned;
    uint64_t shards_pruned; /* shards whose start moved */
    uint64_t snapshots_deleted;
} rs_prune_stats;

typedef struct rs_backend_stats {
    uint64_t users;
    uint64_t devices;
    uint64_t shards;
    uint64_t records;
    uint64_t bytes;  /* envelope bytes stored */
    uint64_t events; /* events retained */

    uint64_t pruned_below;   /* sum over shards of start: records pruned below the floors */
    uint64_t snapshots;      /* complete snapshots stored */
    uint64_t snapshot_bytes; /* their bytes */
    /* SQLite: its checkpointer thread (checkpointer = 1 when it runs one). */
    uint64_t checkpointer;
    uint64_t checkpoints;       /* checkpoints run */
    uint64_t checkpoint_pages;  /* WAL pages copied into the database */
    uint64_t checkpoint_ms;     /* time spent in them */
    uint64_t checkpoint_errors; /* checkpoints that failed (retried later) */
    uint64_t wal_pages;         /* the WAL's size in pages at the last checkpoint */
} rs_backend_stats;

typedef struct rs_backend_ops {
    const char *name; /* "sqlite", "postgres" */

    /* Closes every connection and frees the backend. Accepts NULL. */
    void (*close)(rs_backend *b);

    /* 0 when the database answers (healthz). */
    int (*ping)(rs_backend *b);

    /*
     * Creates user `username` with password hash `pwhash` and binds device
     * `host` to it with `token`, in one transaction. RS_EEXISTS if the name,
     * or its key (rs_backend_name_key), is taken; RS_EFORBIDDEN if the host
     * is bound to another user. With `invite` (an invite code's hash), the
     * same transaction consumes that invite; RS_EFORBIDDEN if there is none
     * (unknown, used, or made for another name). Nothing is created on any
     * failure. *out receives the new user id.
     */
    int (*user_create)(rs_backend *b, int64_t *out, const char *username, const char *pwhash,
                       const rs_uuid *host, const rs_token *token, const uint8_t *invite,
                       const char *name);

    /*
     * The user named exactly `username`, else the one owning its key (so
     * any spelling in any case finds the account). RS_ENOTFOUND if none.
     */
    int (*user_lookup)(rs_backend *b, rs_account *out, const char *username);

    /*
     * Stores an invite: the hash of its code and, optionally, the only user
     * name (any case) it may register (NULL: any name).
     */
    int (*invite_create)(rs_backend *b, const uint8_t *hash, const char *username);

    /*
     * Binds device `host` to `user` with a new `token`, replacing the
     * device's previous token (one token per device), named `name` (""
     * keeps the name it has), no longer retired, seen now. RS_EFORBIDDEN
     * if the host is bound to another user.
     */
    int (*device_bind)(rs_backend *b, int64_t user, const rs_uuid *host, const rs_token *token,
                       const char *name);

    /* The device whose token has id `token_id`. RS_ENOTFOUND if none. */
    int (*token_lookup)(rs_backend *b, rs_device *out, const uint8_t *token_id);

    /*
     * The user's shards (any order) appended to `out` with rs_index_add, and
     * out->seq set to the user's seq, read in one snapshot: no batch is in
     * the seq but missing from the shards, or the reverse.
     */
    int (*index)(rs_backend *b, rs_index *out, int64_t user);

    /*
     * Stores a batch for `user`, all or nothing, in one write transaction:
     * records in order; each one's idx must be its shard's current end
     * (then it is stored and takes the next seq) or below it with an
     * identical record already there (id, hlc, version, data; then it is
     * skipped). RS_EHOLE names the shard and the expected idx; RS_ECONFLICT
     * names host, tag and idx ("shard <host>/<tag> already has a different
     * record at idx N"). One event per run of new records of one shard.
     * Notifies after commit when anything was inserted. Records' hosts are
     * already checked to be the uploading device's.
     */
    int (*insert)(rs_backend *b, rs_insert_result *out, int64_t user, const rs_record *records,
                  size_t count, const rs_insert_opts *opts);

    /*
     * Hands `cb` the records of shard (host, tag) of `user` from idx `start`
     * in idx order, at most `limit`, ending before the record for which cb
     * returns > 0; read in one snapshot with the shard's end, which sets
     * out->has_next and out->next (the idx after the last record taken).
     * An unknown shard, or start at or past the end, gives no records and
     * has_next 0. record->data is valid only during the callback.
     */
    int (*read_page)(rs_backend *b, rs_page_result *out, int64_t user, const rs_uuid *host,
                     const char *tag, uint64_t start, size_t limit, rs_page_cb cb, void *payload);

    /* The user's seq and floor (events with seq <= floor have been pruned). */
    int (*seq)(rs_backend *b, uint64_t *out_seq, uint64_t *out_floor, int64_t user);

    /*
     * Hands `cb` the user's events with seq > after, in seq order, at most
     * `limit`. RS_EGONE when after < floor (some are pruned) or after > the
     * user's seq (a cursor this database never gave): resync.
     */
    int (*events)(rs_backend *b, int64_t user, uint64_t after, size_t limit, rs_event_cb cb,
                  void *payload);

    /*
     * Records device `device`'s applied frontier (shard -> end, in the
     * shards' `end`), replacing what it acked before for those shards, all
     * or nothing. Every entry must name a shard the user has, with an end
     * not past that shard's end (an ack is what the device applied of the
     * user's records); otherwise RS_EINVAL naming the entry
     * (rs_backend_ack_error) and nothing is stored.
     */
    int (*ack_put)(rs_backend *b, int64_t user, const rs_uuid *device, const rs_index *frontier);

    /*
     * For each shard of the user, the end every device of the user has
     * passed (a device that never acked a shard holds it at 0), appended to
     * `out`; *out_devices is the number of devices counted.
     */
    int (*ack_floor)(rs_backend *b, rs_index *out, uint64_t *out_devices, int64_t user);

    /*
     * One retention pass: drops events beyond `policy` as a prefix of each
     * user's events (oldest first) and raises the user's floor to the last
     * dropped seq. Never called from a request.
     */
    int (*retain)(rs_backend *b, rs_retention_stats *out, const rs_retention *policy);

    /*
     * Marks device `host` seen now (its last_seen), which keeps it active
     * for pruning (--device-expiry). Called on POST /api/v1/acks;
     * register and login set it through user_create and device_bind.
     */
    int (*device_touch)(rs_backend *b, const rs_uuid *host);

    /*
     * Stores chunk in->chunk of snapshot in->id of `user` in one write
     * transaction. The first chunk creates the snapshot, after checking
     * every frontier entry's end against the current end of shard (host,
     * tag) of the user (RS_ECONFLICT via rs_backend_frontier_error). Later
     * chunks must carry the same tag, chunks and frontier (RS_ECONFLICT via
     * rs_backend_snapshot_conflict); a chunk already stored must be
     * identical (then it is a no-op). The chunk that completes the snapshot
     * sets its seq to the user's seq and its created time to now. Chunk
     * bytes count in the user's bytes.
     */
    int (*snapshot_put_chunk)(rs_backend *b, rs_snapshot_put_result *out, int64_t user,
                              const rs_snapshot_put *in);

    /*
     * Hands `cb` the user's complete snapshots of tag `tag` (NULL: every
     * tag), newest first (seq, then created, descending), read in one
     * snapshot of the database.
     */
    int (*snapshot_list)(rs_backend *b, int64_t user, const char *tag, rs_snapshot_cb cb,
                         void *payload);

    /*
     * Hands `cb` chunk `chunk` of the user's complete snapshot `id`.
     * RS_ENOTFOUND when the user has no complete snapshot `id` or it has
     * no such chunk.
     */
    int (*snapshot_chunk_get)(rs_backend *b, int64_t user, const rs_uuid *id, uint64_t chunk,
                              rs_chunk_cb cb, void *payload);

    /*
     * One prune pass over every user: per shard, deletes records below
     * min(ack floor over the user's active devices, the frontier end of
     * the newest complete snapshot of the tag) and raises the shard's
     * start to what was deleted, in transactions of at most policy->batch
     * deletions; then deletes complete snapshots beyond the newest
     * policy->snapshots_kept per (user, tag), and incomplete ones older
     * than policy->incomplete_ms. Never called from a request; safe
     * against writers and against other processes' passes.
     */
    int (*prune)(rs_backend *b, rs_prune_stats *out, const rs_prune_policy *policy);

    /* Totals for /metrics, without scanning records. */
    int (*stats)(rs_backend *b, rs_backend_stats *out);

    /* ---- devices and accounts (devices.c; backends/sqlite_dev.c, postgres_dev.c) ---- */

    /* Hands `cb` every device of `user` (retired ones too), oldest first, read in one snapshot. */
    int (*device_list)(rs_backend *b, int64_t user, rs_device_cb cb, void *payload);

    /*
     * Marks device `host` of `user` retired at `now_ms` (a device already
     * retired keeps its time; *out_retired_ms gets the time it holds). It
     * then holds no prune floor and counts in no ack floor; its token is
     * refused with device_retired until it logs in again. RS_ENOTFOUND
     * when `user` has no device `host`.
     */
    int (*device_retire)(rs_backend *b, uint64_t *out_retired_ms, int64_t user, const rs_uuid *host,
                         uint64_t now_ms);

    /* Renames device `host` of `user`. RS_ENOTFOUND when `user` has no device `host`. */
    int (*device_rename)(rs_backend *b, int64_t user, const rs_uuid *host, const char *name);

    /*
     * Replaces device `host`'s token with `token` (logout: a token whose
     * secret nobody holds). RS_ENOTFOUND when `user` has no device `host`.
     */
    int (*device_revoke)(rs_backend *b, int64_t user, const rs_uuid *host, const rs_token *token);

    /* Replaces `user`'s password hash. RS_ENOTFOUND when there is no such user. */
    int (*user_password)(rs_backend *b, int64_t user, const char *pwhash);

    /*
     * Deletes `user` and everything of it, in one transaction: records,
     * shards, events, acks, devices (and so tokens), snapshots with their
     * frontiers and chunks, and the user's row with its counters.
     * RS_ENOTFOUND when there is no such user.
     */
    int (*user_delete)(rs_backend *b, rs_user_delete_stats *out, int64_t user);
} rs_backend_ops;

/* Every backend's handle starts with this; implementations embed it first. */
struct rs_backend {
    const rs_backend_ops *ops;
    rs_backend_opts opts;
};

/*
 * Opens the backend `db` names: "postgres://..." or "postgresql://..." for
 * PostgreSQL (when built with it), anything else a SQLite file path
 * (created if missing, schema migrated to the current version). `opts` may
 * be NULL.
 */
int rs_backend_open(rs_backend **out, const char *db, const rs_backend_opts *opts);

/* The messages both backends give (one wording for both). */
int rs_backend_ack_error(size_t i, const rs_shard *entry, int exists, uint64_t end);
int rs_backend_quota_error(uint64_t stored, uint64_t adding, uint64_t quota);
int rs_backend_invite_error(const char *username);

int rs_backend_sqlite_open(rs_backend **out, const char *path, const rs_backend_opts *opts);
/*
 * Refusals both backends give in the same words (backend.c).
 * rs_backend_frontier_error: a snapshot frontier claiming more of shard
 * (host, tag) than the server holds (RS_ECONFLICT).
 * rs_backend_snapshot_conflict: a chunk of snapshot `id` that differs
 * from what the snapshot already has, `detail` saying what (RS_ECONFLICT).
 */
int rs_backend_frontier_error(const rs_uuid *host, const char *tag, uint64_t claimed,
                              uint64_t held);
int rs_backend_snapshot_conflict(const rs_uuid *id, const char *detail);
/* The 410 for a read below a pruned shard's start (RS_ESNAPSHOT). */
int rs_backend_pruned_error(const rs_uuid *host, const char *tag, uint64_t start);

/*
 * A shard's prune floor from what both backends read (snapshots.md):
 * `devices` active devices of the user, `acked` of which acked the shard,
 * the lowest of those acks `ack_min`; `snap` the shard's host's end in the
 * newest complete snapshot of the tag (0 if none). min(ack floor, snap),
 * never above `end`. No active device at all holds nothing back.
 */
uint64_t rs_backend_prune_floor(uint64_t end, uint64_t devices, uint64_t acked, uint64_t ack_min,
                                uint64_t snap);

#ifdef RS_HAVE_POSTGRES
int rs_backend_postgres_open(rs_backend **out, const char *conninfo, const rs_backend_opts *opts);
#endif

#endif
