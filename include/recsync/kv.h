/*
 * recsync — the kv store: (namespace, key) -> value on records of tag "kv",
 * materialized as records arrive; the write with the highest HLC wins.
 *
 * Each set or delete is one record. Its payload (version 1) is a JSON object:
 *   {"op": "set", "ns": "...", "key": "...", "value": "..."}
 *   {"op": "del", "ns": "...", "key": "..."}
 * The state is a table keyed by (ns, key) holding the value, a tombstone
 * flag and the HLC and host of the write that won, updated in the
 * transaction that stores the record: a write replaces the kept one only
 * when its (HLC, host) is higher, so any order of arrival gives the same
 * state, a late older write never overwrites a newer one, and a delete stays
 * a delete until a newer set. Reads never replay the log.
 */
#ifndef RECSYNC_KV_H
#define RECSYNC_KV_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RS_KV_TAG "kv"

/*
 * Sets `key` in namespace `ns` (both non-empty) to `value` (may be empty).
 * All three must be UTF-8 (RS_EINVAL names the one that is not).
 */
int rs_kv_set(rs_store *store, const char *ns, const char *key, const char *value);

/* The value of a live key. RS_ENOTFOUND when missing or deleted. Free *out with rs_free. */
int rs_kv_get(char **out, rs_store *store, const char *ns, const char *key);

/* Deletes a live key (writes a tombstone). RS_ENOTFOUND when missing or deleted already. */
int rs_kv_del(rs_store *store, const char *ns, const char *key);

typedef int (*rs_kv_cb)(const char *ns, const char *key, const char *value, void *payload);

/*
 * Live keys of `ns` (every namespace when NULL), ordered by namespace then
 * key (bytewise). A nonzero return from cb stops the walk and is returned.
 */
int rs_kv_list(rs_store *store, const char *ns, rs_kv_cb cb, void *payload);

/* One key of the materialized state, tombstone or live. Borrowed in callbacks. */
typedef struct rs_kv_entry {
    const char *ns;
    const char *key;
    const char *value; /* NULL for a tombstone */
    rs_hlc hlc;        /* the write that won: its clock */
    rs_uuid host;      /* and its device */
} rs_kv_entry;

typedef int (*rs_kv_entry_cb)(const rs_kv_entry *entry, void *payload);

/*
 * The whole materialized state of `ns` (every namespace when NULL),
 * tombstones included, ordered as rs_kv_list: for checks and tools.
 */
int rs_kv_foreach(rs_store *store, const char *ns, rs_kv_entry_cb cb, void *payload);

#ifdef __cplusplus
}
#endif
#endif
