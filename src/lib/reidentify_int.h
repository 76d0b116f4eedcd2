/*
 * The local half of rs_reidentify (reidentify.c), apart from the server so
 * the unit tests can drive it. Not API.
 */
#ifndef RS_REIDENTIFY_INT_H
#define RS_REIDENTIFY_INT_H

#include "internal.h"

/*
 * In one store transaction: cuts each shard of the store's current host id
 * back to the end `held` gives it (the server holds the records below it;
 * a shard `held` lacks keeps none of its records, from its start), seals
 * the records above again as idx 0.. of shard (new_host, tag), keeping
 * ids, clocks, versions and payloads, chained afresh; makes new_host the
 * store's host id and `token` (NULL: unchanged) its token, forgets the
 * note of a pending reidentify and the last ack; drops the snapshots the
 * store keeps that cover a cut record; rebuilds the state of every tag
 * touched. On failure nothing changes. `rep` gets the hosts and, per old
 * shard, what was kept and resealed (its `shards` allocated here).
 */
int rs__reidentify_local(rs_reidentify_report *rep, rs_store *store, const rs_uuid *new_host,
                         const char *token, const rs_index *held);

#endif
