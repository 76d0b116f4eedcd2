/*
 * recsync — the account's devices, logging out, the password and deleting
 * the account (docs/protocol.md "Devices and accounts").
 */
#ifndef RECSYNC_DEVICES_H
#define RECSYNC_DEVICES_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RS_DEVICE_NAME_MAX 64 /* bytes of UTF-8, no control characters */

typedef struct rs_login_opts {
    const char *device_name; /* this device's name on the server; NULL: the hostname */
} rs_login_opts;

/*
 * As rs_register and rs_login (sync.h), naming the device. A login also
 * checks, before anything is written, that the server's records open
 * under this store's key: RS_EKEY naming both key ids, and the token the
 * server just gave is revoked again. A device that was retired may log in
 * again: it is then active again (a sync loads a snapshot when the server
 * pruned past what it holds; what it wrote offline is uploaded).
 */
int rs_register_ex(rs_store *store, const char *url, const char *username, const char *password,
                   const rs_login_opts *opts);
int rs_login_ex(rs_store *store, const char *url, const char *username, const char *password,
                const rs_login_opts *opts);

/* A device of the account. */
typedef struct rs_device_info {
    rs_uuid host;
    char name[RS_DEVICE_NAME_MAX + 1];
    uint64_t created_ms;   /* registered, Unix milliseconds */
    uint64_t last_seen_ms; /* last login or ack */
    uint64_t retired_ms;   /* 0: not retired */
    /* records of the account's other devices' shards above what this device acked
       (a shard it never acked counts from 0) */
    uint64_t behind;
    int current; /* 1: this store's device */
} rs_device_info;

/* The account's devices, oldest first (*out: free with rs_free). */
int rs_devices_list(rs_device_info **out, size_t *count, rs_store *store);

/*
 * Retires device `host` of the account: every token of it is refused
 * (RS_ERETIRED on that device) and it no longer holds back pruning.
 * *out_retired_ms (may be NULL) gets when. RS_ENOTFOUND when the account
 * has no such device.
 */
int rs_device_retire(uint64_t *out_retired_ms, rs_store *store, const rs_uuid *host);

/* Renames device `host` (NULL: this one). RS_EINVAL for a bad name. */
int rs_device_rename(rs_store *store, const rs_uuid *host, const char *name);

/*
 * Revokes this device's token on the server and forgets it in the store
 * (the server URL and user name stay, for a later login). A token the
 * server already refuses (retired, replaced) is forgotten too;
 * *out_revoked (may be NULL) says whether the server revoked it now.
 * RS_ENET and the like leave the store as it was.
 */
int rs_logout(int *out_revoked, rs_store *store);

/* Changes the account's password (the old one is checked); every device stays logged in. */
int rs_account_password(rs_store *store, const char *old_password, const char *new_password);

/*
 * Deletes the account on the server with every record, device and
 * snapshot of it, after checking `password`; then forgets the token and
 * the last sync in this store (its records stay in the store).
 */
int rs_account_delete(rs_store *store, const char *password);

/*
 * As rs_store_key_import, but a store logged in to a server first checks
 * the new key against one of the server's records: RS_EKEY naming both
 * key ids, and nothing is written. A store that is not logged in skips
 * the check.
 */
int rs_key_import_checked(rs_store *store, const char *text);

#ifdef __cplusplus
}
#endif
#endif
