/*
 * The keyring and key rotation (keyring.c; docs/protocol.md "Key rotation").
 * Internal: not API.
 */
#ifndef RS_KEYRING_H
#define RS_KEYRING_H

#include "client.h"

#define RS_KEYS_TAG "rs.keys"
#define RS_DEVICE_PK_BYTES 32

/* Registers the reserved tag rs.keys on a store being opened, loads the keyring (builtin.c). */
int rs__keyring_register(rs_store *store);

/*
 * Before a sync moves anything (sync.c): publishes this device's public key
 * once, reads the rs.keys records of the other devices' shards that the
 * store does not hold yet, learns every key they carry for it (its sealed
 * copy of a rotated key, the older keys a keyring record names), and makes
 * the rotation rule's key current. Records stay where they are: the sync
 * then stores them like any other.
 */
int rs__keyring_sync(rs_store *store, rs_client *client, const rs_index *remote);

/*
 * Moves the diff's operations on rs.keys shards first, in their order
 * (sync.c): a rotation reaches the server before the records sealed under
 * its key, so no device ever pulls a record whose key it could not learn.
 */
void rs__keyring_order_diff(rs_diff *diff);

/*
 * The local half of a rotation, without a server: a new key sealed to each
 * of the `count` public keys `pks` of devices `hosts` (crypto_box_seal), a
 * rotation record of rs.keys under the current key, then the new key made
 * current and a keyring record (the older keys) under it, in one
 * transaction; then the key file. `retired` names the devices retired in
 * the same step (for the record). *new_id (may be NULL) gets the new id.
 */
int rs__key_rotate_local(rs_store *store, const uint8_t (*pks)[RS_DEVICE_PK_BYTES],
                         const rs_uuid *hosts, size_t count, const rs_uuid *retired,
                         size_t nretired, uint8_t *new_id);

/*
 * A snapshot of every registered tag that has records and can be
 * snapshotted, under the (new) current key: what a rotation writes so the
 * server can prune what older keys sealed. *written counts them.
 */
int rs__key_rotate_snapshots(uint64_t *written, rs_store *store);

/*
 * Checkpoints carry the writer's public key (checkpoint.c): appends
 * ,"device_key":HEX to a checkpoint's body; keeps the key a checkpoint of
 * another device names (`hex` may be NULL: none).
 */
int rs__keyring_checkpoint_key(rs_buf *body, rs_store *store);
int rs__keyring_device_seen(rs_store *store, const rs_record *rec, const char *hex);

/*
 * `key import` into a store logged in to a server whose records open under
 * `key` (account.c checked): the current key is kept in the keyring and
 * `key` becomes current (a device that missed a rotation's box).
 */
int rs__keyring_import(rs_store *store, const rs_key *key);

/* This device's X25519 public key. */
int rs__device_pk(uint8_t *out, rs_store *store);

#endif
