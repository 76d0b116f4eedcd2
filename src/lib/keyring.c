/*
 * The keyring and key rotation with epochs (issue 14, item 3).
 *
 * Keys. store->key is the current key; store->key->next the others the
 * store holds (older epochs, and the losers of concurrent rotations), each
 * named by its id as every envelope and snapshot chunk names the key that
 * sealed it (crypto.c and snapshot.c open through the ring). The key file
 * holds the current key; table `keyring` every other key (and the current
 * one once a rotation happened). A record's chain head is keyed with the
 * chain key of the key that sealed it, a shard's chain start with that of
 * its first record's key (chain.c, store.c).
 *
 * Devices. Each store has its own X25519 key pair (table key_device, made
 * at init or when a store made before is first opened) and publishes the
 * public key in every checkpoint it writes (checkpoint.c: a record of
 * rs.checkpoint sealed under the master key, in the device's own shard), so
 * a server cannot substitute one, and an account that never rotates writes
 * no record more than before. Others keep it in table key_devices.
 *
 * Records of the reserved tag rs.keys (JSON, version 1), written only by a
 * rotation:
 *   {"kind":"rotation","key":ID,"prev":ID,"to":[{"host":UUID,"fp":FP,
 *    "box":BASE64}],"retired":[UUID]}      sealed under the previous key: the
 *                                           new key, crypto_box_seal'ed to each
 *                                           recipient's public key
 *   {"kind":"keyring","keys":[HEX]}        sealed under the new key: every
 *                                           older key, for devices that join
 *                                           with only the current key
 * The rule: the current key is the new key of the rotation with the highest
 * (hlc, host) whose key the store holds; none: the key it was given. A key's
 * epoch is its rotation's (hlc, host) (0 for the first key); nothing sealed
 * under a key ever carries a key of a later epoch.
 */
#include "keyring.h"

#include "builtin.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define BOX_BYTES (RS_KEY_BYTES + crypto_box_SEALBYTES)
#define MAX_PASSES 8
#define PAGE_LIMIT 256
#define MAX_PAGES 16

typedef struct keys_state {
    rs_store *store;
} keys_state;

static const char keys_schema[] =
    "CREATE TABLE IF NOT EXISTS key_device (one INTEGER PRIMARY KEY CHECK (one = 1),"
    " pk BLOB NOT NULL, sk BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS keyring (id BLOB PRIMARY KEY, key BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS key_devices (host BLOB PRIMARY KEY, pk BLOB NOT NULL,"
    " hlc INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS key_rotations (hlc INTEGER NOT NULL, host BLOB NOT NULL,"
    " new_id BLOB NOT NULL, prev_id BLOB NOT NULL, PRIMARY KEY (hlc, host)) WITHOUT ROWID;";

/* ---- the ring ---- */

const rs_key *rs__key_find(const rs_key *ring, const uint8_t *id)
{
    for (; ring; ring = ring->next)
        if (memcmp(ring->id, id, RS_KEY_ID_BYTES) == 0)
            return ring;
    return NULL;
}

const rs_key *rs__key_for(const rs_key *ring, const uint8_t *data, size_t len)
{
    const rs_key *k;
    if (len < 4 + RS_KEY_ID_BYTES || (k = rs__key_find(ring, data + 4)) == NULL)
        return ring;
    return k;
}

static int db_done(sqlite3 *db, int rc, const char *what)
{
    return rc == SQLITE_DONE || rc == SQLITE_OK || rc == SQLITE_ROW
               ? 0
               : rs__sqlite_error(db, rc, what);
}

static int prep(sqlite3 *db, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(db, rc, "preparing a keyring statement");
}

/* Keeps `key` in table keyring. */
static int keep_key(sqlite3 *db, const rs_key *key)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st, "INSERT OR IGNORE INTO keyring(id, key) VALUES (?1, ?2)");
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, key->id, RS_KEY_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, key->bytes, RS_KEY_BYTES, SQLITE_STATIC);
    err = db_done(db, sqlite3_step(st), "keeping a key in the keyring");
    sqlite3_finalize(st);
    return err;
}

/*
 * Learns a key: kept in the table and added to the ring behind the current
 * key (the rule makes it current, see adopt). `expect` (may be NULL) is the
 * id it must have; a key with another id is ignored.
 */
static int learn(rs_store *store, const uint8_t *bytes, const uint8_t *expect)
{
    rs_key *key = NULL;
    int err;
    if ((err = rs__key_from_bytes(&key, bytes)) < 0)
        return err;
    if ((expect && memcmp(key->id, expect, RS_KEY_ID_BYTES) != 0) ||
        rs__key_find(store->key, key->id)) {
        rs__key_free(key);
        return 0;
    }
    if ((err = keep_key(store->db, key)) < 0) {
        rs__key_free(key);
        return err;
    }
    key->next = store->key->next;
    store->key->next = key;
    return 0;
}

/* Loads table keyring into the ring (the key file's key stays current). */
static int load_ring(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    int rc, err = prep(store->db, &st, "SELECT id, key FROM keyring");
    if (err < 0)
        return err;
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW)
        if (sqlite3_column_bytes(st, 0) == RS_KEY_ID_BYTES &&
            sqlite3_column_bytes(st, 1) == RS_KEY_BYTES &&
            rs__key_find(store->key, sqlite3_column_blob(st, 0)) == NULL)
            err = learn(store, sqlite3_column_blob(st, 1), sqlite3_column_blob(st, 0));
    if (err == 0 && rc != SQLITE_DONE)
        err = rs__sqlite_error(store->db, rc, "reading the keyring");
    sqlite3_finalize(st);
    return err;
}

/* A key's epoch: the (hlc, host) of the rotation that made it; 0 and zeros for a first key. */
static int epoch_of(rs_hlc *hlc, uint8_t *host, sqlite3 *db, const uint8_t *id)
{
    sqlite3_stmt *st = NULL;
    int rc, err = prep(db, &st,
                       "SELECT hlc, host FROM key_rotations WHERE new_id = ?1 "
                       "ORDER BY hlc DESC, host DESC LIMIT 1");
    *hlc = 0;
    memset(host, 0, 16);
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, id, RS_KEY_ID_BYTES, SQLITE_STATIC);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        *hlc = (rs_hlc)sqlite3_column_int64(st, 0);
        if (sqlite3_column_bytes(st, 1) == 16)
            memcpy(host, sqlite3_column_blob(st, 1), 16);
    }
    err = db_done(db, rc, "reading a key's rotation");
    sqlite3_finalize(st);
    return err;
}

/*
 * The rule, in memory and in table keyring: the key of the rotation with
 * the highest (hlc, host) that the ring holds becomes current. *changed
 * says whether it did (the caller writes the key file after its commit).
 */
static int adopt(int *changed, rs_store *store)
{
    sqlite3_stmt *st = NULL;
    rs_key *winner = NULL, *prev = NULL;
    int rc, err;
    *changed = 0;
    if ((err = prep(store->db, &st,
                    "SELECT new_id FROM key_rotations ORDER BY hlc DESC, host DESC")) < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 0) != RS_KEY_ID_BYTES)
            continue;
        if ((winner = (rs_key *)rs__key_find(store->key, sqlite3_column_blob(st, 0))) != NULL)
            break;
    }
    err = db_done(store->db, rc, "reading the rotations");
    sqlite3_finalize(st);
    if (err < 0 || winner == NULL || winner == store->key)
        return err;
    if ((err = keep_key(store->db, store->key)) < 0 || (err = keep_key(store->db, winner)) < 0)
        return err;
    for (prev = store->key; prev->next != winner; prev = prev->next)
        ;
    prev->next = winner->next;
    winner->next = store->key;
    store->key = winner;
    *changed = 1;
    return 0;
}

/* adopt in its own transaction, then the key file. */
static int adopt_and_save(rs_store *store)
{
    int changed = 0, err;
    if ((err = rs_store_begin(store)) < 0)
        return err;
    if ((err = adopt(&changed, store)) < 0) {
        rs_store_rollback(store);
        return err;
    }
    if ((err = rs_store_commit(store)) < 0)
        return err;
    if (changed) {
        char id[RS_KEY_ID_STRLEN + 1];
        rs__key_id_hex(id, store->key->id);
        if ((err = rs__store_write_key(store, store->key)) < 0)
            return err;
        rs__warn(store, "key %s is now current (key rotation); new records are sealed under it",
                 id);
    }
    return 0;
}

/* ---- the device's key pair ---- */

static int keypair(uint8_t *pk, uint8_t *sk, sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int rc, err = prep(db, &st, "SELECT pk, sk FROM key_device WHERE one = 1");
    if (err < 0)
        return err;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == crypto_box_PUBLICKEYBYTES &&
        sqlite3_column_bytes(st, 1) == crypto_box_SECRETKEYBYTES) {
        memcpy(pk, sqlite3_column_blob(st, 0), crypto_box_PUBLICKEYBYTES);
        if (sk)
            memcpy(sk, sqlite3_column_blob(st, 1), crypto_box_SECRETKEYBYTES);
        err = 0;
    } else {
        err = rc == SQLITE_ROW || rc == SQLITE_DONE
                  ? rs__error(RS_ENOTFOUND, "the store has no device key pair")
                  : rs__sqlite_error(db, rc, "reading the device key pair");
    }
    sqlite3_finalize(st);
    return err;
}

int rs__device_pk(uint8_t *out, rs_store *store)
{
    return keypair(out, NULL, store->db);
}

static void fingerprint(char *out, const uint8_t *pk)
{
    uint8_t h[8];
    char hex[17];
    crypto_generichash(h, sizeof(h), pk, RS_DEVICE_PK_BYTES, NULL, 0);
    rs__hex(hex, h, sizeof(h));
    snprintf(out, RS_KEY_FP_STRLEN + 1, "%.4s-%.4s-%.4s-%.4s", hex, hex + 4, hex + 8, hex + 12);
}

int rs_device_key_fingerprint(char *out, rs_store *store)
{
    uint8_t pk[RS_DEVICE_PK_BYTES];
    int err = rs__device_pk(pk, store);
    if (err == 0)
        fingerprint(out, pk);
    return err;
}

/* ---- the tag ---- */

/*
 * Tables, and the device's key pair when the store has none (made now, for
 * a new store and for one made before key rotation alike).
 */
static int keys_setup(sqlite3 *db, void *payload)
{
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    sqlite3_stmt *st = NULL;
    int err;
    (void)payload;
    if ((err = db_done(db, sqlite3_exec(db, keys_schema, NULL, NULL, NULL),
                       "creating the keyring tables")) < 0)
        return err;
    if ((err = keypair(pk, NULL, db)) != RS_ENOTFOUND)
        return err;
    crypto_box_keypair(pk, sk);
    if ((err = prep(db, &st, "INSERT OR IGNORE INTO key_device(one, pk, sk) VALUES (1, ?1, ?2)")) ==
        0) {
        sqlite3_bind_blob(st, 1, pk, sizeof(pk), SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, sk, sizeof(sk), SQLITE_STATIC);
        err = db_done(db, sqlite3_step(st), "keeping the device key pair");
        sqlite3_finalize(st);
    }
    sodium_memzero(sk, sizeof(sk));
    return err;
}

/* The tables only grow (a union of what every device wrote): nothing to empty. */
static int keys_reset(sqlite3 *db, void *payload)
{
    (void)db;
    (void)payload;
    return 0;
}

static int put_device(sqlite3 *db, const uint8_t *host, const uint8_t *pk, rs_hlc hlc)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st,
                   "INSERT INTO key_devices(host, pk, hlc) VALUES (?1, ?2, ?3) "
                   "ON CONFLICT(host) DO UPDATE SET pk = excluded.pk, hlc = excluded.hlc "
                   "WHERE excluded.hlc > key_devices.hlc");
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, host, 16, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, pk, RS_DEVICE_PK_BYTES, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)hlc);
    err = db_done(db, sqlite3_step(st), "keeping a device's public key");
    sqlite3_finalize(st);
    return err;
}

/* ---- publishing: the device key rides in this device's checkpoints (checkpoint.c) ---- */

int rs__keyring_checkpoint_key(rs_buf *body, rs_store *store)
{
    uint8_t pk[RS_DEVICE_PK_BYTES];
    char hex[2 * RS_DEVICE_PK_BYTES + 1];
    int err = rs__device_pk(pk, store);
    if (err < 0)
        return err;
    rs__hex(hex, pk, sizeof(pk));
    return rs_buf_printf(body, ",\"device_key\":\"%s\"", hex);
}

int rs__keyring_device_seen(rs_store *store, const rs_record *rec, const char *hex)
{
    uint8_t pk[RS_DEVICE_PK_BYTES];
    if (hex == NULL || rs__unhex(pk, sizeof(pk), hex) < 0)
        return 0; /* a checkpoint of a build before key rotation, or a newer form */
    /* Only under the current key: after a rotation, the holder of an old key cannot add one. */
    if (rec->data_len < 4 + RS_KEY_ID_BYTES ||
        memcmp(rec->data + 4, store->key->id, RS_KEY_ID_BYTES) != 0)
        return 0;
    return put_device(store->db, rec->host.bytes, pk, rec->hlc);
}

static int put_rotation(sqlite3 *db, rs_hlc hlc, const uint8_t *host, const uint8_t *new_id,
                        const uint8_t *prev_id)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st,
                   "INSERT OR IGNORE INTO key_rotations(hlc, host, new_id, prev_id) "
                   "VALUES (?1, ?2, ?3, ?4)");
    if (err < 0)
        return err;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)hlc);
    sqlite3_bind_blob(st, 2, host, 16, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, new_id, RS_KEY_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, prev_id, RS_KEY_ID_BYTES, SQLITE_STATIC);
    err = db_done(db, sqlite3_step(st), "keeping a rotation");
    sqlite3_finalize(st);
    return err;
}

/* Opens this device's sealed copy of a rotation's key, when the rotation has one. */
static int open_box(rs_store *store, const json_t *to, const uint8_t *new_id)
{
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES], box[BOX_BYTES],
        key[RS_KEY_BYTES];
    char self[RS_UUID_STRLEN + 1];
    int err = 0;
    rs_uuid_format(self, &store->host);
    for (size_t i = 0; i < json_array_size(to); i++) {
        const json_t *e = json_array_get(to, i);
        const char *host = json_string_value(json_object_get(e, "host"));
        const char *b64 = json_string_value(json_object_get(e, "box"));
        size_t len = 0;
        if (host == NULL || b64 == NULL || strcmp(host, self) != 0)
            continue;
        if (sodium_base642bin(box, sizeof(box), b64, strlen(b64), NULL, &len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0 ||
            len != sizeof(box))
            continue;
        if ((err = keypair(pk, sk, store->db)) < 0)
            break;
        if (crypto_box_seal_open(key, box, sizeof(box), pk, sk) == 0)
            err = learn(store, key, new_id);
        else
            rs__warn(store, "a key rotation's copy for this device does not open with its key "
                            "pair (was the store copied from another device?)");
        break;
    }
    sodium_memzero(sk, sizeof(sk));
    sodium_memzero(key, sizeof(key));
    return err;
}

/*
 * The effect of one rs.keys record whose payload is `plain`: shared by
 * apply (records stored) and the sync's look-ahead (records not yet
 * stored). *malformed is set for a payload this build does not read.
 */
static int apply_body(rs_store *store, const rs_record *rec, const uint8_t *plain, size_t len,
                      int *malformed)
{
    json_t *root = json_loadb((const char *)plain, len, 0, NULL);
    const char *kind = json_string_value(json_object_get(root, "kind"));
    uint8_t a[RS_KEY_BYTES], b[RS_KEY_ID_BYTES];
    int err = 0;
    *malformed = 0;
    if (kind == NULL) {
        *malformed = 1;
    } else if (strcmp(kind, "rotation") == 0) {
        const char *id = json_string_value(json_object_get(root, "key"));
        const char *prev = json_string_value(json_object_get(root, "prev"));
        uint8_t new_id[RS_KEY_ID_BYTES];
        if (id == NULL || prev == NULL || rs__unhex(new_id, RS_KEY_ID_BYTES, id) < 0 ||
            rs__unhex(b, RS_KEY_ID_BYTES, prev) < 0)
            *malformed = 1;
        else if ((err = put_rotation(store->db, rec->hlc, rec->host.bytes, new_id, b)) == 0)
            err = open_box(store, json_object_get(root, "to"), new_id);
    } else if (strcmp(kind, "keyring") == 0) {
        const json_t *keys = json_object_get(root, "keys");
        if (!json_is_array(keys))
            *malformed = 1;
        for (size_t i = 0; i < json_array_size(keys) && err == 0; i++) {
            const char *hex = json_string_value(json_array_get(keys, i));
            if (hex && rs__unhex(a, RS_KEY_BYTES, hex) == 0)
                err = learn(store, a, NULL);
        }
    }
    /* Another kind: a newer build's record, nothing this one must do. */
    sodium_memzero(a, sizeof(a));
    json_decref(root);
    return err;
}

static int keys_apply(sqlite3 *db, const rs_record *rec, const uint8_t *plain, size_t len,
                      void *payload)
{
    keys_state *ks = payload;
    int malformed = 0, err;
    (void)db;
    if ((err = apply_body(ks->store, rec, plain, len, &malformed)) < 0)
        return err;
    return malformed ? rs__keep_unapplied(ks->store, rec, "rs.keys payload does not parse") : 0;
}

/*
 * A snapshot of the keyring: device public keys, rotations and every key
 * of an epoch up to the current key's (the snapshot is sealed under it).
 */
static int keys_snapshot_write(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                               void *emit_ctx, void *payload)
{
    keys_state *ks = payload;
    uint8_t host[16];
    char hex[33], sql[900];
    rs_hlc hlc;
    int err = epoch_of(&hlc, host, db, ks->store->key->id);
    if (err < 0)
        return err;
    rs__hex(hex, host, 16);
    snprintf(sql, sizeof(sql),
             "SELECT 'd', host, pk, hlc, NULL FROM key_devices "
             "UNION ALL SELECT 'r', host, new_id, hlc, prev_id FROM key_rotations "
             "UNION ALL SELECT 'k', id, key, NULL, NULL FROM keyring k WHERE NOT EXISTS "
             "(SELECT 1 FROM key_rotations r WHERE r.new_id = k.id AND (r.hlc > %lld OR "
             "(r.hlc = %lld AND r.host > x'%s')))",
             (long long)hlc, (long long)hlc, hex);
    return rs__snap_emit_rows(db, sql, emit, emit_ctx);
}

static int keys_snapshot_load(sqlite3 *db, const uint8_t *item, size_t len, void *payload)
{
    keys_state *ks = payload;
    sqlite3_stmt *st = NULL;
    int err = prep(db, &st, "SELECT ?1, ?2, ?3, ?4, ?5");
    if (err < 0)
        return err;
    if ((err = rs__snap_bind_row(st, item, len)) == 0 && sqlite3_step(st) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 0);
        int n1 = sqlite3_column_bytes(st, 1), n2 = sqlite3_column_bytes(st, 2);
        const uint8_t *c1 = sqlite3_column_blob(st, 1), *c2 = sqlite3_column_blob(st, 2);
        rs_hlc hlc = (rs_hlc)sqlite3_column_int64(st, 3);
        if (kind && kind[0] == 'd' && n1 == 16 && n2 == RS_DEVICE_PK_BYTES)
            err = put_device(db, c1, c2, hlc);
        else if (kind && kind[0] == 'r' && n1 == 16 && n2 == RS_KEY_ID_BYTES &&
                 sqlite3_column_bytes(st, 4) == RS_KEY_ID_BYTES)
            err = put_rotation(db, hlc, c1, c2, sqlite3_column_blob(st, 4));
        else if (kind && kind[0] == 'k' && n1 == RS_KEY_ID_BYTES && n2 == RS_KEY_BYTES)
            err = learn(ks->store, c2, c1);
    }
    sqlite3_finalize(st);
    return err;
}

static void keys_release(void *payload)
{
    rs_free(payload);
}

int rs__keyring_register(rs_store *store)
{
    keys_state *ks = rs__calloc(1, sizeof(*ks));
    rs_tag_def def;
    int err;
    if (ks == NULL)
        return rs__error(RS_ENOMEM, "out of memory registering the keyring");
    ks->store = store;
    memset(&def, 0, sizeof(def));
    def.tag = RS_KEYS_TAG;
    def.version = 1;
    def.setup = keys_setup;
    def.apply = keys_apply;
    def.reset = keys_reset;
    def.payload = ks;
    def.release = keys_release;
    def.snapshot_write = keys_snapshot_write;
    def.snapshot_load = keys_snapshot_load;
    if ((err = rs_store_register(store, &def)) < 0) {
        rs_free(ks);
        return err;
    }
    if ((err = load_ring(store)) < 0)
        return err;
    return store->key->next ? adopt_and_save(store) : 0;
}

/* ---- the sync's look-ahead ---- */

typedef struct pending {
    rs_record rec;
    uint8_t *data;
    int done;
} pending;

typedef struct pending_list {
    pending *items;
    size_t count, cap;
} pending_list;

static void pending_free(pending_list *pl)
{
    for (size_t i = 0; i < pl->count; i++)
        rs_free(pl->items[i].data);
    rs_free(pl->items);
}

static int pending_add(pending_list *pl, const rs_record *rec)
{
    if (pl->count == pl->cap) {
        size_t cap = pl->cap ? 2 * pl->cap : 16;
        pending *p = rs__realloc(pl->items, cap * sizeof(*p));
        if (p == NULL)
            return rs__error(RS_ENOMEM, "out of memory reading key records");
        pl->items = p;
        pl->cap = cap;
    }
    pending *p = &pl->items[pl->count];
    memset(p, 0, sizeof(*p));
    p->rec = *rec;
    if ((p->data = rs__malloc(rec->data_len ? rec->data_len : 1)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory reading key records");
    memcpy(p->data, rec->data, rec->data_len);
    p->rec.data = p->data;
    pl->count++;
    return 0;
}

static int local_end(uint64_t *out, rs_store *store, const rs_uuid *host)
{
    sqlite3_stmt *st = NULL;
    int rc, err = prep(store->db, &st, "SELECT end FROM shards WHERE host = ?1 AND tag = ?2");
    *out = 0;
    if (err < 0)
        return err;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, RS_KEYS_TAG, -1, SQLITE_STATIC);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW)
        *out = (uint64_t)sqlite3_column_int64(st, 0);
    err = db_done(store->db, rc, "reading the shard index");
    sqlite3_finalize(st);
    return err;
}

/* The records of shard (host, rs.keys) the server holds from `from` to `end` (bounded). */
static int fetch_shard(pending_list *pl, rs_client *client, const rs_uuid *host, uint64_t from,
                       uint64_t end)
{
    char path[256], h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    for (int page = 0; page < MAX_PAGES && from < end; page++) {
        const rs_buf *resp;
        rs_wire_batch batch;
        uint64_t limit = end - from < PAGE_LIMIT ? end - from : PAGE_LIMIT;
        int err;
        snprintf(path, sizeof(path), "/api/v1/records?host=%s&tag=%s&start=%llu&limit=%llu", h,
                 RS_KEYS_TAG, (unsigned long long)from, (unsigned long long)limit);
        if ((err = rs__client_request(&resp, NULL, client, path, NULL, 0, 1)) < 0)
            return err;
        memset(&batch, 0, sizeof(batch));
        if (rs_wire_decode_records(&batch, resp->ptr, resp->len, RS_WIRE_PAGE, 0) < 0) {
            rs_wire_batch_free(&batch);
            return 0; /* the sync itself names what is wrong with the page */
        }
        for (size_t i = 0; i < batch.count && err == 0; i++) {
            const rs_record *r = &batch.records[i];
            if (r->idx == from + i && rs_uuid_cmp(&r->host, host) == 0 &&
                strcmp(r->tag, RS_KEYS_TAG) == 0)
                err = pending_add(pl, r);
        }
        from += batch.count;
        if (batch.count == 0 || err < 0) {
            rs_wire_batch_free(&batch);
            return err;
        }
        rs_wire_batch_free(&batch);
    }
    return 0;
}

int rs__keyring_sync(rs_store *store, rs_client *client, const rs_index *remote)
{
    pending_list pl = {0};
    uint8_t *plain = NULL;
    int err;

    for (size_t i = 0; remote && i < remote->count; i++) {
        const rs_shard *sh = &remote->shards[i];
        uint64_t end = 0;
        if (strcmp(sh->tag, RS_KEYS_TAG) != 0 || rs_uuid_cmp(&sh->host, &store->host) == 0)
            continue;
        if ((err = local_end(&end, store, &sh->host)) < 0)
            goto done;
        if (end < sh->start)
            end = sh->start;
        if (sh->end > end && (err = fetch_shard(&pl, client, &sh->host, end, sh->end)) < 0)
            goto done;
    }
    if (pl.count == 0) {
        err = 0;
        goto done;
    }
    /* Passes until nothing more opens: a key learned may open records under it. */
    if ((err = rs_store_begin(store)) < 0)
        goto done;
    for (int pass = 0, progress = 1; pass < MAX_PASSES && progress && err == 0; pass++) {
        progress = 0;
        for (size_t i = 0; i < pl.count && err == 0; i++) {
            pending *p = &pl.items[i];
            size_t len = 0;
            int malformed = 0;
            if (p->done || p->rec.data_len < RS_ENVELOPE_OVERHEAD ||
                rs__key_find(store->key, p->rec.data + 4) == NULL)
                continue;
            p->done = 1;
            progress = 1;
            rs_free(plain);
            if ((plain = rs__malloc(p->rec.data_len)) == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory opening key records");
                break;
            }
            if (rs__open(plain, &len, store->key, &p->rec) < 0)
                continue; /* the sync refuses it with its name when it gets there */
            err = apply_body(store, &p->rec, plain, len, &malformed);
            sodium_memzero(plain, len);
        }
    }
    if (err < 0) {
        rs_store_rollback(store);
        goto done;
    }
    if ((err = rs_store_commit(store)) < 0)
        goto done;
    err = 0;
done:
    rs_free(plain);
    pending_free(&pl);
    if (err == 0 && store->key->next)
        err = adopt_and_save(store);
    return err;
}

void rs__keyring_order_diff(rs_diff *diff)
{
    size_t front = 0;
    for (size_t i = 0; i < diff->count; i++) {
        if (strcmp(diff->ops[i].tag, RS_KEYS_TAG) != 0)
            continue;
        rs_diff_op op = diff->ops[i];
        memmove(&diff->ops[front + 1], &diff->ops[front], (i - front) * sizeof(op));
        diff->ops[front++] = op;
    }
}

/* ---- rotation ---- */

/* "[\"hex\",...]" of every key of the ring but `except` (the older keys, for a keyring record). */
static int keyring_body(rs_buf *out, const rs_key *ring, const rs_key *except)
{
    char hex[2 * RS_KEY_BYTES + 1];
    int err = rs_buf_put(out, "{\"kind\":\"keyring\",\"keys\":[", 26), first = 1;
    for (const rs_key *k = ring; k && err == 0; k = k->next) {
        if (k == except)
            continue;
        rs__hex(hex, k->bytes, RS_KEY_BYTES);
        if ((err = rs_buf_put(out, first ? "\"" : ",\"", first ? 1 : 2)) == 0 &&
            (err = rs_buf_put(out, hex, 2 * RS_KEY_BYTES)) == 0)
            err = rs_buf_put(out, "\"", 1);
        first = 0;
    }
    sodium_memzero(hex, sizeof(hex));
    return err ? err : rs_buf_put(out, "]}", 2);
}

int rs__key_rotate_local(rs_store *store, const uint8_t (*pks)[RS_DEVICE_PK_BYTES],
                         const rs_uuid *hosts, size_t count, const rs_uuid *retired,
                         size_t nretired, uint8_t *new_id)
{
    rs_key *fresh = NULL;
    json_t *root = NULL, *to = NULL, *ret = NULL;
    rs_buf ring_body = {0};
    char *body = NULL, id[RS_KEY_ID_STRLEN + 1], prev[RS_KEY_ID_STRLEN + 1];
    uint8_t old_id[RS_KEY_ID_BYTES];
    int err, changed = 0, begun = 0, self = 0;

    for (size_t i = 0; i < count; i++)
        self |= rs_uuid_cmp(&hosts[i], &store->host) == 0;
    if (!self)
        return rs__error(RS_EINVAL, "a rotation's recipients must include this device");
    if ((err = rs__key_new(&fresh)) < 0)
        return err;
    memcpy(old_id, store->key->id, RS_KEY_ID_BYTES);
    rs__key_id_hex(id, fresh->id);
    rs__key_id_hex(prev, store->key->id);
    root = json_object();
    to = json_array();
    ret = json_array();
    if (root == NULL || to == NULL || ret == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory writing a rotation");
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        uint8_t box[BOX_BYTES];
        char b64[sodium_base64_ENCODED_LEN(BOX_BYTES, sodium_base64_VARIANT_ORIGINAL)];
        char host[RS_UUID_STRLEN + 1], fp[RS_KEY_FP_STRLEN + 1];
        if (crypto_box_seal(box, fresh->bytes, RS_KEY_BYTES, pks[i]) != 0) {
            err = rs__error(RS_ECRYPTO, "sealing the new key to a device's public key failed");
            goto done;
        }
        sodium_bin2base64(b64, sizeof(b64), box, sizeof(box), sodium_base64_VARIANT_ORIGINAL);
        rs_uuid_format(host, &hosts[i]);
        fingerprint(fp, pks[i]);
        json_array_append_new(to, json_pack("{s:s, s:s, s:s}", "host", host, "fp", fp, "box", b64));
    }
    for (size_t i = 0; i < nretired; i++) {
        char host[RS_UUID_STRLEN + 1];
        rs_uuid_format(host, &retired[i]);
        json_array_append_new(ret, json_string(host));
    }
    json_object_set_new(root, "kind", json_string("rotation"));
    json_object_set_new(root, "key", json_string(id));
    json_object_set_new(root, "prev", json_string(prev));
    json_object_set(root, "to", to);
    json_object_set(root, "retired", ret);
    if ((body = json_dumps(root, JSON_COMPACT)) == NULL ||
        (err = keyring_body(&ring_body, store->key, NULL)) < 0) {
        err = err < 0 ? err : rs__error(RS_ENOMEM, "out of memory writing a rotation");
        goto done;
    }
    if ((err = rs_store_begin(store)) < 0)
        goto done;
    begun = 1;
    /* Under the current key; applying it opens this device's own copy (the key is learned). */
    if ((err = rs_append(NULL, store, RS_KEYS_TAG, 1, body, strlen(body))) < 0 ||
        (err = adopt(&changed, store)) < 0)
        goto done;
    if (memcmp(store->key->id, fresh->id, RS_KEY_ID_BYTES) != 0) {
        err = rs__error(RS_ECRYPTO, "the rotation's own copy of key %s did not open here", id);
        goto done;
    }
    if ((err = rs_append(NULL, store, RS_KEYS_TAG, 1, ring_body.ptr, ring_body.len)) < 0 ||
        (err = rs_store_commit(store)) < 0)
        goto done;
    begun = 0;
    if ((err = rs__store_write_key(store, store->key)) < 0)
        goto done;
    if (new_id)
        memcpy(new_id, fresh->id, RS_KEY_ID_BYTES);
done:
    if (begun) {
        rs_store_rollback(store);
        /* The old key current again in memory; the new one may stay in the ring, unused. */
        rs_key *k = (rs_key *)rs__key_find(store->key, old_id), *p = store->key;
        if (k && k != store->key) {
            while (p->next != k)
                p = p->next;
            p->next = k->next;
            k->next = store->key;
            store->key = k;
        }
    }
    if (ring_body.ptr) {
        sodium_memzero(ring_body.ptr, ring_body.len);
        rs_buf_free(&ring_body);
    }
    rs_free(body);
    json_decref(to);
    json_decref(ret);
    json_decref(root);
    rs__key_free(fresh);
    return err;
}

int rs__keyring_import(rs_store *store, const rs_key *key)
{
    rs_key *k;
    int err;
    if ((err = rs_store_begin(store)) < 0)
        return err;
    if ((err = keep_key(store->db, store->key)) < 0 ||
        (err = learn(store, key->bytes, key->id)) < 0) {
        rs_store_rollback(store);
        return err;
    }
    if ((err = rs_store_commit(store)) < 0)
        return err;
    if ((k = (rs_key *)rs__key_find(store->key, key->id)) != store->key) {
        rs_key *p = store->key;
        while (p->next != k)
            p = p->next;
        p->next = k->next;
        k->next = store->key;
        store->key = k;
    }
    return rs__store_write_key(store, store->key);
}

/* ---- the public API ---- */

int rs_keyring_list(rs_keyring_entry **out, size_t *count, rs_store *store)
{
    rs_keyring_entry *list;
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    int err = 0;
    for (const rs_key *k = store->key; k; k = k->next)
        n++;
    if ((list = rs__calloc(n, sizeof(*list))) == NULL)
        return rs__error(RS_ENOMEM, "out of memory listing the keyring");
    if ((err = prep(store->db, &st, "SELECT count(*) FROM records WHERE substr(data, 5, 8) = ?1")) <
        0) {
        rs_free(list);
        return err;
    }
    n = 0;
    for (const rs_key *k = store->key; k && err == 0; k = k->next, n++) {
        uint8_t host[16];
        rs__key_id_hex(list[n].id, k->id);
        list[n].current = k == store->key;
        if ((err = epoch_of(&list[n].rotated_hlc, host, store->db, k->id)) < 0)
            break;
        memcpy(list[n].rotated_by.bytes, host, 16);
        sqlite3_bind_blob(st, 1, k->id, RS_KEY_ID_BYTES, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            list[n].records = (uint64_t)sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (err < 0) {
        rs_free(list);
        return err;
    }
    /* The current key first, then newest rotation first. */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 1 && list[j].rotated_hlc > list[j - 1].rotated_hlc; j--) {
            rs_keyring_entry t = list[j];
            list[j] = list[j - 1];
            list[j - 1] = t;
        }
    *out = list;
    *count = n;
    return 0;
}

/* The published public key of device `host`: RS_ENOTFOUND when it has published none. */
static int device_pk(uint8_t *out, rs_store *store, const rs_uuid *host)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    if (rs_uuid_cmp(host, &store->host) == 0)
        return rs__device_pk(out, store);
    if ((err = prep(store->db, &st, "SELECT pk FROM key_devices WHERE host = ?1")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == RS_DEVICE_PK_BYTES) {
        memcpy(out, sqlite3_column_blob(st, 0), RS_DEVICE_PK_BYTES);
        err = 0;
    } else {
        err = rc == SQLITE_ROW || rc == SQLITE_DONE ? RS_ENOTFOUND
                                                    : rs__sqlite_error(store->db, rc,
                                                                       "reading "
                                                                       "a key");
    }
    sqlite3_finalize(st);
    return err;
}

int rs_key_rotate_plan(rs_key_device **out, size_t *count, rs_store *store, const rs_uuid *retire,
                       size_t nretire)
{
    rs_sync_report *report = NULL;
    rs_device_info *devs = NULL;
    rs_key_device *plan = NULL;
    rs_sync_opts sopts = {0};
    size_t n = 0, m = 0;
    int err;

    /* A device that never wrote a checkpoint publishes its public key now (later rotations). */
    char *ck = NULL;
    if (rs_store_meta_get(&ck, store, "chain.checkpoint_ms") == RS_ENOTFOUND)
        sopts.checkpoint_ms = 1;
    rs_free(ck);

    for (size_t j = 0; j < nretire; j++)
        if (rs_uuid_cmp(&retire[j], &store->host) == 0)
            return rs__error(RS_EINVAL, "a rotation cannot retire the device that rotates");
    if ((err = rs_sync(&report, store, &sopts)) < 0)
        return err;
    rs_sync_report_free(report);
    if ((err = rs_devices_list(&devs, &n, store)) < 0)
        return err;
    if ((plan = rs__calloc(n ? n : 1, sizeof(*plan))) == NULL) {
        rs_free(devs);
        return rs__error(RS_ENOMEM, "out of memory planning a rotation");
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t pk[RS_DEVICE_PK_BYTES];
        if (devs[i].retired_ms != 0)
            continue;
        plan[m].host = devs[i].host;
        snprintf(plan[m].name, sizeof(plan[m].name), "%s", devs[i].name);
        plan[m].current = devs[i].current;
        if ((err = device_pk(pk, store, &devs[i].host)) == 0)
            fingerprint(plan[m].fingerprint, pk);
        else if (err != RS_ENOTFOUND)
            goto fail;
        for (size_t j = 0; j < nretire; j++)
            plan[m].retire |= rs_uuid_cmp(&retire[j], &devs[i].host) == 0;
        m++;
    }
    for (size_t j = 0; j < nretire; j++) {
        size_t i = 0;
        while (i < m && rs_uuid_cmp(&plan[i].host, &retire[j]) != 0)
            i++;
        if (i == m) {
            char h[RS_UUID_STRLEN + 1];
            rs_uuid_format(h, &retire[j]);
            err = rs__error(RS_ENOTFOUND, "the account has no active device %s to retire", h);
            goto fail;
        }
    }
    rs_free(devs);
    *out = plan;
    *count = m;
    return 0;
fail:
    rs_free(devs);
    rs_free(plan);
    return err;
}

int rs__key_rotate_snapshots(uint64_t *written, rs_store *store)
{
    rs_index *index = NULL;
    int err = rs_store_index(&index, store);
    *written = 0;
    if (err < 0)
        return err;
    for (size_t t = 0; t < store->tag_count && err == 0; t++) {
        const char *tag = store->tags[t].tag;
        rs_snapshot_info info;
        int has = 0;
        for (size_t i = 0; i < index->count && !has; i++)
            has = strcmp(index->shards[i].tag, tag) == 0 && index->shards[i].end > 0;
        if (!has || store->tags[t].def.snapshot_write == NULL)
            continue;
        err = rs_snapshot_write(&info, store, tag);
        if (err == RS_EVERSION || err == RS_ENOTFOUND) {
            rs__warn(store, "no snapshot of %s under the new key: %s", tag, rs_error_last());
            err = 0;
        } else if (err == 0) {
            (*written)++;
        }
    }
    rs_index_free(index);
    return err;
}

int rs_key_rotate(rs_key_rotation *out, rs_store *store, const rs_key_device *plan, size_t count)
{
    uint8_t(*pks)[RS_DEVICE_PK_BYTES] = NULL, new_id[RS_KEY_ID_BYTES];
    rs_uuid *hosts = NULL, *retired = NULL;
    rs_sync_report *report = NULL;
    size_t n = 0, r = 0;
    uint64_t started = rs_now_ms();
    int err = 0;

    memset(out, 0, sizeof(*out));
    rs__key_id_hex(out->old_id, store->key->id);
    pks = rs__calloc(count ? count : 1, sizeof(*pks));
    hosts = rs__calloc(count ? count : 1, sizeof(*hosts));
    retired = rs__calloc(count ? count : 1, sizeof(*retired));
    if (pks == NULL || hosts == NULL || retired == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory rotating the key");
        goto done;
    }
    /* Every recipient's key as the plan showed it, before anything is done. */
    for (size_t i = 0; i < count; i++) {
        char h[RS_UUID_STRLEN + 1], fp[RS_KEY_FP_STRLEN + 1];
        rs_uuid_format(h, &plan[i].host);
        if (plan[i].retire) {
            retired[r++] = plan[i].host;
            continue;
        }
        if ((err = device_pk(pks[n], store, &plan[i].host)) == RS_ENOTFOUND) {
            err = rs__error(RS_EKEY,
                            "device %s (%s) has published no key yet: sync it once, or retire "
                            "it in the rotation (--retire %s). Nothing was done",
                            plan[i].name, h, h);
            goto done;
        }
        if (err < 0)
            goto done;
        fingerprint(fp, pks[n]);
        if (strcmp(fp, plan[i].fingerprint) != 0) {
            err = rs__error(RS_EKEY,
                            "device %s (%s) now has key %s, not %s as shown: nothing was done; "
                            "rotate again",
                            plan[i].name, h, fp, plan[i].fingerprint);
            goto done;
        }
        hosts[n++] = plan[i].host;
    }
    for (size_t i = 0; i < r; i++)
        if ((err = rs_device_retire(NULL, store, &retired[i])) < 0 && err != RS_ENOTFOUND)
            goto done;
    if ((err = rs__key_rotate_local(store, (const uint8_t(*)[RS_DEVICE_PK_BYTES])pks, hosts, n,
                                    retired, r, new_id)) < 0)
        goto done;
    rs__key_id_hex(out->new_id, new_id);
    out->recipients = n;
    out->retired = r;
    if ((err = rs_sync(&report, store, NULL)) < 0 ||
        (err = rs__key_rotate_snapshots(&out->snapshots, store)) < 0)
        goto done;
    if ((err = rs_snapshot_push(NULL, store)) < 0)
        goto done;
    out->elapsed_ms = rs_now_ms() - started;
done:
    rs_sync_report_free(report);
    if (pks) {
        sodium_memzero(pks, (count ? count : 1) * sizeof(*pks));
        rs_free(pks);
    }
    rs_free(hosts);
    rs_free(retired);
    return err;
}
