/*
 * recsync — the local store: records in append-only shards, the master key,
 * the shard index, and the hooks by which stores (kv, history, an
 * application's own tag) keep state materialized from records.
 */
#ifndef RECSYNC_STORE_H
#define RECSYNC_STORE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sqlite3 sqlite3;
typedef struct rs_store rs_store;

#define RS_DEFAULT_MAX_PAYLOAD (1024u * 1024u)
#define RS_KEY_ID_STRLEN 16 /* hex of the 8-byte key id */

/*
 * One record. `data` is the sealed envelope (ciphertext), borrowed: valid
 * for the duration of the callback or call that hands the record out.
 */
typedef struct rs_record {
    rs_uuid id;
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t idx;
    rs_hlc hlc;
    uint32_t version;
    const uint8_t *data;
    size_t data_len;
} rs_record;

typedef struct rs_store_opts {
    size_t max_payload;    /* 0: RS_DEFAULT_MAX_PAYLOAD */
    uint64_t max_drift_ms; /* 0: RS_HLC_DEFAULT_MAX_DRIFT_MS */
    int busy_timeout_ms;   /* 0: 10 s */
} rs_store_opts;

/*
 * Creates a store in `dir` (made if missing, mode 0700): the database, a
 * fresh random host id and a fresh master key in `dir/key` (mode 0600).
 * RS_EEXISTS if `dir` already holds a store; nothing is changed then.
 * `opts` may be NULL.
 */
int rs_store_init(rs_store **out, const char *dir, const rs_store_opts *opts);

/* As rs_store_init, but with the master key given as exported text. */
int rs_store_init_with_key(rs_store **out, const char *dir, const char *key_text,
                           const rs_store_opts *opts);

/* Opens an existing store. RS_ENOTFOUND if `dir` holds none. */
int rs_store_open(rs_store **out, const char *dir, const rs_store_opts *opts);

/* Closes the store and wipes its key. Accepts NULL. */
void rs_store_free(rs_store *store);

void rs_store_host(rs_uuid *out, const rs_store *store);
const char *rs_store_dir(const rs_store *store);

/* The id of the master key as hex text: out[RS_KEY_ID_STRLEN + 1]. */
void rs_store_key_id(char *out, const rs_store *store);

/* The master key as text for `key import` on another device. Free with rs_free. */
int rs_store_key_export(char **out, rs_store *store);

/*
 * Replaces the master key with the one in `text`. Refused (RS_EKEY) when the
 * store already holds records sealed under the current key that the new
 * key could not open; a no-op when the key is the same.
 */
int rs_store_key_import(rs_store *store, const char *text);

/* Settings kept in the store (server URL, token, ...). Free *out with rs_free. */
int rs_store_meta_get(char **out, rs_store *store, const char *name);
int rs_store_meta_set(rs_store *store, const char *name, const char *value);
int rs_store_meta_del(rs_store *store, const char *name);

/*
 * Explicit transactions: appends and inserts between begin and commit are
 * one SQLite transaction (bulk appends). Not nested. rollback accepts a store
 * with no open transaction.
 */
int rs_store_begin(rs_store *store);
int rs_store_commit(rs_store *store);
void rs_store_rollback(rs_store *store);

/*
 * Appends one record of this device to shard (this host, tag): seals the
 * payload, takes the shard's next idx and a fresh HLC, applies it to the
 * tag's store if one is registered, all in one transaction. RS_ETOOBIG past
 * the payload bound. `out` (may be NULL) receives the record's metadata;
 * its `data` is NULL on return.
 */
int rs_append(rs_record *out, rs_store *store, const char *tag, uint32_t version,
              const void *payload, size_t len);

/*
 * Inserts records received from elsewhere, in order, in one transaction
 * (or inside the caller's): each must be the next idx of its shard (else
 * RS_EHOLE), open under the key (RS_EKEY names both key ids, RS_ECRYPTO the
 * record), and carry an HLC within the drift bound (RS_ECLOCK). A record
 * identical to one already stored is skipped; a different one at a taken idx
 * is RS_ECONFLICT. Registered stores apply what they can. On failure nothing
 * of the batch is kept. `inserted` (may be NULL) counts new records.
 */
int rs_store_insert(size_t *inserted, rs_store *store, const rs_record *records, size_t count);

/* Called once per record; a nonzero return stops the walk and is returned. */
typedef int (*rs_record_cb)(const rs_record *record, void *payload);

/* Records of shard (host, tag) with start <= idx < end, in idx order. */
int rs_store_range(rs_store *store, const rs_uuid *host, const char *tag, uint64_t start,
                   uint64_t end, rs_record_cb cb, void *payload);

/* Every record (of `tag`, or all tags when NULL), by host, tag, idx. */
int rs_store_foreach(rs_store *store, const char *tag, rs_record_cb cb, void *payload);

/* The payload's length in bytes (the envelope's length less its overhead). */
size_t rs_record_payload_size(const rs_record *record);

/* The record with this id. RS_ENOTFOUND if none. Free with rs_record_free. */
int rs_store_get(rs_record **out, rs_store *store, const rs_uuid *id);
void rs_record_free(rs_record *record);

/*
 * Opens a record's envelope: the plaintext payload in *out (free with
 * rs_free), its length in *out_len. RS_EKEY or RS_ECRYPTO naming the record.
 */
int rs_record_open(uint8_t **out, size_t *out_len, rs_store *store, const rs_record *record);

/* Shards and their [start, end). */
typedef struct rs_shard {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t start;
    uint64_t end;
} rs_shard;

typedef struct rs_index {
    rs_shard *shards;
    size_t count;
    uint64_t seq; /* the server's seq for a remote index; 0 for a local one */
} rs_index;

/* The local index, read without scanning records. Free with rs_index_free. */
int rs_store_index(rs_index **out, rs_store *store);
void rs_index_free(rs_index *index);
/* Adds a shard to an index built by hand (the client's parser, tests). */
int rs_index_add(rs_index *index, const rs_uuid *host, const char *tag, uint64_t start,
                 uint64_t end);
/* The shard (host, tag) of `index` (may be NULL), or NULL when it has none. */
const rs_shard *rs_index_find(const rs_index *index, const rs_uuid *host, const char *tag);

typedef enum rs_diff_kind { RS_DIFF_UPLOAD, RS_DIFF_DOWNLOAD } rs_diff_kind;

typedef struct rs_diff_op {
    rs_diff_kind kind;
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t from; /* first idx to move */
    uint64_t to;   /* one past the last */
} rs_diff_op;

typedef struct rs_diff {
    rs_diff_op *ops;
    size_t count;
} rs_diff;

/*
 * What sync must move: for each shard, upload [remote end, local end) of
 * this device's own shards, download [local end, remote end) of the others.
 * A remote end beyond the local end of an own shard is RS_EAHEAD (the store
 * was restored from an old copy); a local end beyond the remote end of
 * another device's shard is left alone (that device uploads it). Free with
 * rs_diff_free.
 */
int rs_index_diff(rs_diff **out, const rs_index *local, const rs_index *remote,
                  const rs_uuid *self);
void rs_diff_free(rs_diff *diff);

/*
 * Verification: opens every record and checks every shard is contiguous and
 * its index matches. `on_problem` (may be NULL) hears each problem; the
 * return is 0 when all is well, else the first problem's code with its
 * message in rs_error_last().
 */
typedef struct rs_verify_report {
    uint64_t records;
    uint64_t shards;
    uint64_t problems;
} rs_verify_report;

typedef void (*rs_problem_cb)(int code, const char *message, void *payload);
int rs_store_verify(rs_verify_report *out, rs_store *store, rs_problem_cb on_problem,
                    void *payload) RS_WARN_UNUSED;

/*
 * Stores on records. A tag definition's `apply` runs inside the transaction
 * that stores the record, for local appends and received records alike, so
 * materialized state never lags the log. Records arrive in shard order, not
 * clock order: apply must converge whatever the order (compare HLCs, keep
 * tombstones). `setup` creates the store's tables (runs at registration,
 * idempotent); `reset` empties them before rebuild. Records whose version is
 * newer than `version` are kept but not applied (a warning names them) until
 * a build that understands them runs rs_store_rebuild.
 */
typedef struct rs_tag_def {
    const char *tag;
    uint32_t version;
    int (*setup)(sqlite3 *db, void *payload);
    int (*apply)(sqlite3 *db, const rs_record *record, const uint8_t *plain, size_t len,
                 void *payload);
    int (*reset)(sqlite3 *db, void *payload);
    void *payload;
    /*
     * May be NULL. Called once as the store is freed, before its database
     * closes, for a definition rs_store_register accepted (returned 0), so
     * `payload` can finalize statements and free itself. When registration
     * fails, the caller still owns `payload`.
     */
    void (*release)(void *payload);
    /*
     * Snapshots (both may be NULL: the tag is then never snapshotted, so
     * the server never prunes it). `snapshot_write` hands the whole
     * materialized state to `emit` as items (opaque bytes, each at most
     * RS_SNAPSHOT_ITEM_MAX), tombstones included; it runs inside a read
     * transaction. `snapshot_load` puts one such item back into a state
     * that `reset` emptied; records above the snapshot's frontier are then
     * applied over it with `apply`, so the result must equal applying every
     * record. Both return 0 or a negative code.
     */
    int (*snapshot_write)(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                          void *emit_ctx, void *payload);
    int (*snapshot_load)(sqlite3 *db, const uint8_t *item, size_t len, void *payload);
} rs_tag_def;

#define RS_SNAPSHOT_ITEM_MAX (4u << 20)

int rs_store_register(rs_store *store, const rs_tag_def *def);

/* Empties the tag's state and applies every record of the tag again, in HLC order. */
int rs_store_rebuild(rs_store *store, const char *tag);

/* Warnings that are not failures (a record too new to apply). */
typedef void (*rs_warning_cb)(const char *message, void *payload);
void rs_store_on_warning(rs_store *store, rs_warning_cb cb, void *payload);

/* The store's SQLite handle, for a tag's own queries. Owned by the store. */
sqlite3 *rs_store_db(rs_store *store);

#ifdef __cplusplus
}
#endif
#endif
