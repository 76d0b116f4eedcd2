/*
 * recsync — giving a copied store its own identity (docs/protocol.md
 * "A copied store: reidentify").
 */
#ifndef RECSYNC_REIDENTIFY_H
#define RECSYNC_REIDENTIFY_H

#include "devices.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One shard of the old host id, as rs_reidentify left it. */
typedef struct rs_reidentify_shard {
    char tag[RS_TAG_MAX + 1];
    uint64_t kept;     /* the old shard now ends here: its records below are the server's */
    uint64_t resealed; /* records from `kept` on, sealed again as idx 0.. of (new host, tag) */
} rs_reidentify_shard;

typedef struct rs_reidentify_report {
    rs_uuid old_host;
    rs_uuid new_host;
    uint64_t kept;     /* records of the old shards the server holds (left under the old id) */
    uint64_t resealed; /* records sealed again under the new id */
    rs_reidentify_shard *shards; /* every shard of the old host id the store held, by tag */
    size_t count;
} rs_reidentify_report;

/*
 * Gives this store a new host id, for a store directory copied to a second
 * machine (or restored from a backup) and written to on both, which sync
 * refuses (RS_ECONFLICT, RS_EAHEAD: two histories of one shard).
 *
 * Logs in to the store's server and account as a new device (a fresh host
 * id, `password` of the account; opts->device_name, else the hostname),
 * finds for each shard of the old host id how far the server's records are
 * the store's own (the first idx where they differ, by binary search), and
 * then, in one store transaction: cuts each old shard back to there (its
 * records below stay, as another device's: the next sync downloads the
 * server's records above them), seals the records from there on again as
 * the new host's shards from idx 0, in order, keeping their ids, clocks,
 * versions and payloads (chained afresh), rebuilds the state of the tags
 * touched, drops snapshots the store wrote that cover the cut records, and
 * keeps the new host id and token. A crash leaves the store as it was
 * (with the new host id noted, so running it again reuses that device) or
 * reidentified. Nothing is uploaded: sync afterwards.
 *
 * A store not logged in (no token) is RS_EAUTH and nothing changes. A
 * record of the old shards that does not open is RS_ECRYPTO (repair it
 * first); a shard whose divergence the server pruned past is RS_EGONE.
 * On failure after the login the store is unchanged but for the note.
 * `out` (may be NULL) gets the report: free with rs_reidentify_report_free.
 */
int rs_reidentify(rs_reidentify_report **out, rs_store *store, const char *password,
                  const rs_login_opts *opts);
void rs_reidentify_report_free(rs_reidentify_report *report);

#ifdef __cplusplus
}
#endif
#endif
