/*
 * recsync — snapshots of a store's state, so the server can prune the log
 * and a new device starts from state instead of replaying history.
 */
#ifndef RECSYNC_SNAPSHOT_H
#define RECSYNC_SNAPSHOT_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a snapshot written or loaded holds. */
typedef struct rs_snapshot_info {
    int loaded; /* 1: loaded from the server; 0: written here */
    rs_uuid id;
    char tag[RS_TAG_MAX + 1];
    uint64_t covered;    /* records of the tag below its frontier */
    uint64_t items;      /* items of state (written snapshots) */
    uint64_t chunks;     /* sealed chunks */
    uint64_t bytes;      /* sealed bytes */
    uint64_t elapsed_ms; /* writing it, or fetching and loading it */
} rs_snapshot_info;

/*
 * Records a sync lets accumulate beyond a tag's last snapshot before it
 * writes one. Measured (docs/performance.md): writing costs ~5.8 us a state
 * row, replaying ~14.4 us a record, so a new device replays at most this
 * tail (20,000: ~0.29 s, within the 0.5 s target with the load) while a
 * snapshot of a 10k-key state costs a fifth of what the tail would.
 */
#define RS_SNAPSHOT_DEFAULT_EVERY 20000

/*
 * Writes a snapshot of `tag`'s materialized state at the store's frontier
 * for that tag (the end of each of its shards), sealed under the master
 * key, and keeps it in the store until rs_snapshot_push (or the next
 * sync) uploads it. RS_ENOTFOUND when no registered store of the tag
 * can be snapshotted; RS_EVERSION when the store holds records of the tag
 * this build cannot apply (the snapshot would leave them out).
 */
int rs_snapshot_write(rs_snapshot_info *out, rs_store *store, const char *tag);

/* Uploads the snapshots written and not yet uploaded; *out counts them (may be NULL). */
int rs_snapshot_push(uint64_t *out, rs_store *store);

/* Whether `tag` has a registered store that can write and load snapshots. */
int rs_snapshot_supported(rs_store *store, const char *tag);

#ifdef __cplusplus
}
#endif
#endif
