/*
 * recsync — the kv store: (namespace, key) -> value on records of tag "kv",
 * materialized as records arrive; the write with the highest HLC wins.
 */
#ifndef RECSYNC_KV_H
#define RECSYNC_KV_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RS_KV_TAG "kv"

int rs_kv_set(rs_store *store, const char *ns, const char *key, const char *value);
/* RS_ENOTFOUND when the key is missing or deleted. Free *out with rs_free. */
int rs_kv_get(char **out, rs_store *store, const char *ns, const char *key);
int rs_kv_del(rs_store *store, const char *ns, const char *key);

typedef int (*rs_kv_cb)(const char *ns, const char *key, const char *value, void *payload);
/* Live keys of `ns` (every namespace when NULL), ordered by namespace then key. */
int rs_kv_list(rs_store *store, const char *ns, rs_kv_cb cb, void *payload);

#ifdef __cplusplus
}
#endif
#endif
