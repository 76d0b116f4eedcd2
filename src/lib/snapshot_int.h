/*
 * Snapshots inside the library (snapshot.c), for sync.c. Not API.
 */
#ifndef RS_SNAPSHOT_INT_H
#define RS_SNAPSHOT_INT_H

#include "client.h"

/*
 * Uploads every snapshot the store wrote and has not uploaded yet, through
 * `client`; *out counts those uploaded. Chunks are idempotent on the
 * server, so an upload cut short is simply sent again.
 */
int rs__snapshot_push(uint64_t *out, rs_store *store, rs_client *client);

/*
 * Starts tag `tag` of the store from the newest snapshot the server lists
 * that can be loaded here (see usable() in snapshot.c): its chunks are
 * fetched, opened and kept, the tag's shards cut to its frontier and the
 * state rebuilt from it plus the records above, in one transaction.
 * *loaded says whether one was. With `must` (the server pruned records the
 * store lacks), finding none is an error naming why (RS_EGONE, or the
 * reason the newest offered one was refused); without it, 0.
 */
int rs__snapshot_bootstrap(rs_snapshot_info *info, int *loaded, rs_store *store, rs_client *client,
                           const char *tag, const rs_index *local, const rs_index *remote,
                           int must);

/* Records of `tag` the store holds beyond the snapshot it keeps (all, without one). */
int rs__snapshot_due(uint64_t *out, rs_store *store, const char *tag);

/*
 * Local compaction: drops the records of each shard below both the
 * server's start (every device acked past it and a snapshot covers it)
 * and the frontier of the snapshot the store keeps. *out counts them.
 */
int rs__snapshot_compact(uint64_t *out, rs_store *store, const rs_index *remote);

/* ---- the snapshot steps of a sync (sync_snap.c) ---- */

/* What those steps did, for the sync report. */
typedef struct rs_sync_snaps {
    rs_snapshot_info *list; /* loaded, then written */
    size_t count, cap;
    /* tags whose pruned records the store lacks and no snapshot could replace */
    struct {
        char tag[RS_TAG_MAX + 1];
        int code;
        char reason[600];
    } * gone;
    size_t gone_count;
    uint64_t compacted;
} rs_sync_snaps;

void rs__sync_snaps_free(rs_sync_snaps *s);

/*
 * Before the diff: starts from a snapshot each tag the store holds nothing
 * of, and each tag whose records the server pruned past the store's end
 * (see rs__snapshot_bootstrap). *reloaded is set when the local index
 * changed. A tag that needed one and got none is listed in s->gone; only
 * failures of the network, the account or the store are returned.
 */
int rs__sync_bootstrap(rs_sync_snaps *s, int *reloaded, rs_store *store, rs_client *client,
                       const rs_index *local, const rs_index *remote);

/* The reason tag `tag` is in s->gone, or NULL. */
const char *rs__sync_gone(const rs_sync_snaps *s, const char *tag, int *code);

/*
 * After the transfers: acks the store's frontier when it moved since the
 * last ack, uploads pending snapshots, writes (and uploads) one for each
 * tag `every` records past its last, and compacts below the server's
 * starts. Failures here never undo the sync: they are warnings.
 */
void rs__sync_after(rs_sync_snaps *s, rs_store *store, rs_client *client, const rs_index *remote,
                    uint64_t every, int moved);

/* ---- heads remembered and exchanged (checkpoint.c) ---- */

/*
 * Before anything is written: refuses (RS_ECHAIN) a store whose alarm is
 * set, a server index that ends a shard below what the last sync saw
 * (`last`, may be NULL) or below what the store checked itself, or below
 * what another device's checkpoint claims. Those set the alarm.
 */
int rs__chain_preflight(rs_store *store, const char *url, const rs_index *local,
                        const rs_index *remote, const rs_index *last);

/* After the transfers: a record held at a claimed position with another head sets the alarm. */
int rs__chain_audit(rs_store *store, const char *url);

/* Sets the alarm to the message (the first one stays) and returns RS_ECHAIN. */
int rs__chain_raise(rs_store *store, const char *fmt, ...) RS_PRINTF(2, 3);
int rs__chain_forget_alarm(rs_store *store);

/*
 * Writes a checkpoint record when `every_ms` passed since the last (1:
 * now; UINT64_MAX: never; the first sync only starts the clock). *wrote
 * says whether it did. `last` is the server's index as the last sync left
 * it: of its own shards a device claims only what the server holds.
 */
int rs__checkpoint_maybe(int *wrote, rs_store *store, const rs_index *last, uint64_t every_ms);
/* Starts the checkpoint clock at the first completed sync (in save_last's transaction). */
int rs__checkpoint_clock_start(rs_store *store);

#endif
