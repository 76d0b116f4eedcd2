/*
 * recsync — the keyring and key rotation (docs/protocol.md "Key rotation").
 *
 * Every key a store ever used is kept in its keyring, named by its id as
 * every envelope names it; the current one seals what the store writes.
 * Each device has its own X25519 key pair, made at init (or when a store
 * made before is opened), and publishes its public key in a record sealed
 * under the master key. A rotation makes a new master key and seals it to
 * each remaining device's public key: it never travels under an older key.
 */
#ifndef RECSYNC_KEYS_H
#define RECSYNC_KEYS_H

#include "devices.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RS_KEY_FP_STRLEN                                                                           \
    19 /* "1a2b-3c4d-5e6f-7a8b": the first 8 bytes of BLAKE2b of a public key */

/* A key of the keyring. */
typedef struct rs_keyring_entry {
    char id[RS_KEY_ID_STRLEN + 1];
    int current;        /* 1: new records are sealed under it */
    rs_hlc rotated_hlc; /* the rotation that made it (0: the account's first key) */
    rs_uuid rotated_by; /* the device that made it (zero when rotated_hlc is 0) */
    uint64_t records;   /* records of this store sealed under it */
} rs_keyring_entry;

/* The keyring, current key first, then newest rotation first (*out: free with rs_free). */
int rs_keyring_list(rs_keyring_entry **out, size_t *count, rs_store *store);

/* This device's public key's fingerprint: out[RS_KEY_FP_STRLEN + 1]. */
int rs_device_key_fingerprint(char *out, rs_store *store);

/* A device as a rotation sees it. */
typedef struct rs_key_device {
    rs_uuid host;
    char name[RS_DEVICE_NAME_MAX + 1];
    char fingerprint[RS_KEY_FP_STRLEN + 1]; /* "" when it has published no key yet */
    int current;                            /* 1: this store's device */
    int retire;                             /* 1: retired in the rotation; never gets the key */
} rs_key_device;

/*
 * What a rotation would do: syncs first (this device's public key is
 * published, the others' are read), then lists the account's active
 * devices, those in `retire` marked. RS_ENOTFOUND when a host of `retire`
 * is no active device of the account, RS_EINVAL for this device. Free
 * *out with rs_free.
 */
int rs_key_rotate_plan(rs_key_device **out, size_t *count, rs_store *store, const rs_uuid *retire,
                       size_t nretire);

typedef struct rs_key_rotation {
    char old_id[RS_KEY_ID_STRLEN + 1];
    char new_id[RS_KEY_ID_STRLEN + 1];
    size_t recipients;   /* devices the new key was sealed to, this one included */
    size_t retired;      /* devices retired in the same step */
    uint64_t snapshots;  /* snapshots written under the new key */
    uint64_t elapsed_ms; /* the whole rotation, syncs included */
} rs_key_rotation;

/*
 * Rotates the master key to the devices of `plan` (rs_key_rotate_plan):
 * retires those marked `retire` on the server, seals a new key to the
 * public key of each other device (refused, RS_EKEY, when one has none or
 * it changed since the plan: nothing is done then), writes the rotation,
 * makes the new key current, syncs, and writes and uploads a snapshot of
 * every tag under it (so the server can prune what older keys sealed).
 */
int rs_key_rotate(rs_key_rotation *out, rs_store *store, const rs_key_device *plan, size_t count);

#ifdef __cplusplus
}
#endif
#endif
