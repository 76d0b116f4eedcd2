/*
 * Internal interfaces of librecsync: allocation, error reporting, the
 * envelope, hex helpers and the store's own structure. Not API: the CLI must
 * not include this; the server, tests and fuzzers may.
 */
#ifndef RS_INTERNAL_H
#define RS_INTERNAL_H

#include "recsync.h"

#include <stdarg.h>
#include <stdbool.h>
#include <sqlite3.h>

#if defined(__GNUC__)
#define RS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define RS_PRINTF(a, b)
#endif

/*
 * Allocation goes through here so a test can make the Nth allocation fail
 * (rs__alloc_fail_at). Memory from these is freed with rs_free.
 */
void *rs__malloc(size_t size);
void *rs__calloc(size_t count, size_t size);
void *rs__realloc(void *ptr, size_t size);
char *rs__strdup(const char *s);
char *rs__strndup(const char *s, size_t n);
/* Fail the allocation `n` calls from now (1 = the next); 0 disables. */
void rs__alloc_fail_at(unsigned long n);

/*
 * Sets this thread's message and returns `code`, so a failure reads
 * `return rs__error(RS_EINVAL, "tag %s is not valid", tag);`.
 */
int rs__error(int code, const char *fmt, ...) RS_PRINTF(2, 3);
int rs__verror(int code, const char *fmt, va_list ap);

/*
 * Maps a SQLite failure on `db` to an RS code with a message naming `what`
 * (disk full and I/O errors become RS_EIO, locked/busy RS_EBUSY). An I/O
 * error (disk full, unreadable, read-only, corrupt) also names the database
 * file.
 */
int rs__sqlite_error(sqlite3 *db, int rc, const char *what);

/* As rs__sqlite_error; name_file 0 keeps the file's path out of the message
 * (recsyncd, whose messages go to clients). */
int rs__sqlite_error_in(sqlite3 *db, int rc, const char *what, int name_file);

/* Lowercase hex of `len` bytes into out[2 * len + 1]. */
/*
 * Cryptographically secure random bytes from a per-thread ChaCha20 pool
 * seeded by the kernel (random.c): ids, nonces, content keys. Fork-safe.
 */
void rs__random(void *buf, size_t len);

void rs__hex(char *out, const uint8_t *bytes, size_t len);
int rs__unhex(uint8_t *out, size_t len, const char *text);

/*
 * The envelope. Layout (all integers big-endian):
 *
 *   magic "RSE1" | key id (8) | wrap nonce (24) | wrapped CEK (32 + 16)
 *   | payload nonce (24) | ciphertext (payload length + 16)
 *
 * The CEK is a fresh random key per record; it is sealed under the master
 * key and the payload under the CEK, both with XChaCha20-Poly1305 and the
 * record header (id, host, tag, idx, hlc, version) as associated data. Key
 * rotation reseals nothing: the store's keyring keeps every older key and
 * opens each envelope with the key its id names (keyring.c).
 */
#define RS_KEY_BYTES 32
#define RS_KEY_ID_BYTES 8
#define RS_ENVELOPE_MAGIC "RSE1"
#define RS_ENVELOPE_OVERHEAD (4 + 8 + 24 + 32 + 16 + 24 + 16)

#define RS_ENVELOPE_MAGIC_CHAINED "RSE2"
#define RS_CHAIN_BYTES 32
#define RS_CHECK_BYTES 8 /* crypto_shorthash_BYTES: a stored record's check tag (chain.c) */

typedef struct rs_key {
    uint8_t *bytes; /* RS_KEY_BYTES in sodium_malloc memory */
    uint8_t id[RS_KEY_ID_BYTES];
    uint8_t *chain;      /* RS_CHAIN_BYTES: the key of the shards' hash chains (chain.c) */
    uint8_t *check;      /* crypto_shorthash_KEYBYTES: the key of stored records' check tags */
    struct rs_key *next; /* the store's keyring: older (or losing) keys, opened by id (keyring.c) */
} rs_key;

int rs__key_new(rs_key **out);
int rs__key_from_bytes(rs_key **out, const uint8_t *bytes);
/* Text form "rsk1:" + base64url(key || 4-byte checksum). */
int rs__key_from_text(rs_key **out, const char *text);
int rs__key_to_text(char **out, const rs_key *key);
void rs__key_free(rs_key *key); /* and every key of its ring */
void rs__key_id_hex(char *out, const uint8_t *id);
/*
 * The keyring (keyring.c): `ring` is the current key, ring->next the older
 * ones. rs__key_find is the key of the ring with this id, or NULL;
 * rs__key_for the key that sealed envelope `data` (the current key when the
 * ring has none, so opening it fails naming both ids).
 */
const rs_key *rs__key_find(const rs_key *ring, const uint8_t *id);
const rs_key *rs__key_for(const rs_key *ring, const uint8_t *data, size_t len);
/* Writes `key` as the store's key file, atomically (store.c). */
int rs__store_write_key(struct rs_store *store, const rs_key *key);

/* Length of the envelope for a payload of `len` bytes. */
static inline size_t rs__envelope_len(size_t len)
{
    return len + RS_ENVELOPE_OVERHEAD;
}

/*
 * Seals `plain` for the record header in `rec` (its data fields are
 * ignored) into out[rs__envelope_len(len)].
 */
int rs__seal(uint8_t *out, const rs_key *key, const rs_record *rec, const uint8_t *plain,
             size_t len);

/*
 * Opens rec->data into out[rec->data_len - RS_ENVELOPE_OVERHEAD] (may be
 * NULL to only authenticate). RS_EKEY naming both key ids when sealed
 * under another key, RS_ECRYPTO naming the record when it does not open.
 */
int rs__open(uint8_t *out, size_t *out_len, const rs_key *key, const rs_record *rec);

/*
 * Format 2 ("RSE2", chained): the same layout, the sealed plaintext being
 * the hash chain's previous head (RS_CHAIN_BYTES) followed by the payload,
 * so the predecessor is authenticated with the record and bound to its
 * header. out holds rs__envelope_len(len) + RS_CHAIN_BYTES bytes. Every
 * record written since this format is chained; format 1 ("RSE1") records
 * of older stores still open, without a predecessor.
 */
int rs__seal_chained(uint8_t *out, const rs_key *key, const rs_record *rec, const uint8_t *prev,
                     const uint8_t *plain, size_t len);

/*
 * As rs__open; for a format 2 record also the predecessor it names into
 * prev (RS_CHAIN_BYTES) with *chained = 1 (0 for format 1, prev zeroed).
 * `out` still needs rec->data_len - RS_ENVELOPE_OVERHEAD bytes.
 */
int rs__open_chained(uint8_t *out, size_t *out_len, uint8_t *prev, int *chained, const rs_key *key,
                     const rs_record *rec);

/* The key id an envelope names, without opening it. RS_ECRYPTO if malformed. */
int rs__envelope_key_id(uint8_t *out, const uint8_t *data, size_t len);

/* "0190...-.../kv" naming a shard, and "record <id> (<host>/<tag> idx N)". */
void rs__shard_name(char *out, size_t size, const rs_uuid *host, const char *tag);
void rs__record_name(char *out, size_t size, const rs_record *rec);

/* A registered tag (a copy of the caller's definition). */
typedef struct rs_tag_entry {
    char tag[RS_TAG_MAX + 1];
    rs_tag_def def;
} rs_tag_entry;

/* One statement of the store's cache (stmtcache.c). */
#define RS_STMT_CACHE 16
typedef struct rs_stmt_entry {
    const char *sql; /* its text (owned), NULL: a free entry */
    sqlite3_stmt *st;
    int lent; /* out with a caller until rs__stmt_done */
} rs_stmt_entry;

struct rs_store {
    sqlite3 *db;
    char *dir;
    rs_uuid host;
    rs_key *key;
    rs_hlc_clock clock;
    rs_hlc clock_saved; /* the value last written to meta */
    rs_store_opts opts;
    int explicit_txn;   /* inside rs_store_begin ... commit */
    int read_txn;       /* inside rs__store_read_begin ... end */
    int chain_backfill; /* the schema was migrated from before chains: heads to compute */
    int audit_due;      /* records were written since this process last ran rs__chain_audit */
    rs_tag_entry *tags;
    size_t tag_count;
    rs_warning_cb warn;
    void *warn_payload;
    /* prepared statements, made once at open */
    sqlite3_stmt *st_insert;
    sqlite3_stmt *st_shard_get;
    sqlite3_stmt *st_shard_put;
    sqlite3_stmt *st_shard_end;
    sqlite3_stmt *st_at_idx;
    sqlite3_stmt *st_meta_get;
    sqlite3_stmt *st_meta_put;
    sqlite3_stmt *st_txn[5]; /* BEGIN IMMEDIATE, COMMIT, SAVEPOINT, RELEASE, BEGIN: at first use */
    rs_stmt_entry stmts[RS_STMT_CACHE]; /* statements a sync runs every time (stmtcache.c) */
};

/*
 * Snapshots (snapshot.c). rs__snapshot_load_base loads the newest snapshot
 * of `tag` the store keeps into the tag's (just reset) state, when one is
 * kept: the state below its shards' starts. rs__snapshot_covers checks a
 * shard that starts above 0 against that snapshot (RS_EHOLE when none
 * covers it, RS_ECRYPTO when it does not open).
 */
int rs__snapshot_load_base(rs_store *store, const char *tag, const rs_tag_def *def);
int rs__snapshot_covers(rs_store *store, const rs_shard *shard);

/*
 * Hash chains (chain.c). Each shard's records form a chain: record i seals
 * head(i-1) with its payload (format 2), and head(i) is a BLAKE2b-256 keyed
 * with the chain key (derived from the master key) over the record's header
 * and envelope. rs__chain_start is the value a shard's first record chains
 * from; rs__chain_break is the RS_ECHAIN error naming the record, what it
 * chains to and what the store holds before it.
 */
void rs__chain_start(uint8_t *out, const rs_key *key, const rs_uuid *host, const char *tag);
void rs__chain_head(uint8_t *out, const rs_key *key, const rs_record *rec);
/*
 * A record's check tag (RS_CHECK_BYTES), kept beside each record the store
 * writes: a keyed SipHash-2-4 over the same bytes as its head, at a fraction
 * of the cost. It only tells whether the stored bytes changed since they
 * were written (sync.c checks each record before an upload); it is never
 * sent.
 */
void rs__chain_check(uint8_t *out, const rs_key *key, const rs_record *rec);
int rs__chain_break(const rs_record *rec, const uint8_t *prev, const uint8_t *expected);
/*
 * A record opened ahead of its insert, on another thread (the download
 * pipeline): its plaintext (in memory the caller owns), the head it chains
 * from, whether it names one, and its own head. ok = 0 when it did not
 * open: the insert opens it again and reports why.
 */
typedef struct rs_opened {
    uint8_t *plain;
    size_t plain_len;
    uint8_t prev[RS_CHAIN_BYTES];
    uint8_t head[RS_CHAIN_BYTES];
    int chained;
    int ok;
} rs_opened;

/* Opens `rec` into out->plain (room for rec->data_len - RS_ENVELOPE_OVERHEAD bytes) and computes
 * its head. */
void rs__chain_open(rs_opened *out, const rs_key *key, const rs_record *rec);

/* rs_store_insert with every record opened ahead (opened[i] for records[i]), or NULL. */
int rs__store_insert_opened(size_t *inserted, rs_store *store, const rs_record *records,
                            size_t count, const rs_opened *opened);
/* Computes the heads of records and shards that have none (a store made before chains). */
int rs__chain_backfill(rs_store *store);
/*
 * The head a record at `idx` of shard (host, tag) chains from: the chain's
 * start at 0, else the stored head of record idx - 1, else the shard's
 * start head when it starts at idx. *known = 0 when the store has none.
 */
int rs__chain_head_before(uint8_t *out, int *known, rs_store *store, const rs_uuid *host,
                          const char *tag, uint64_t idx);
/*
 * As rs_store_range, also handing each record's stored check tag and chain
 * head (each NULL when it has none): what a caller can check the record's
 * bytes against without opening it (sync.c, before an upload).
 */
typedef int (*rs__head_cb)(const rs_record *rec, const uint8_t *check, const uint8_t *head,
                           void *payload);
int rs__store_range_heads(rs_store *store, const rs_uuid *host, const char *tag, uint64_t start,
                          uint64_t end, rs__head_cb cb, void *payload);

/* Recomputes the heads of every record of shard (host, tag) and the shard's own. */
int rs__chain_reshard(rs_store *store, const rs_uuid *host, const char *tag);

/*
 * The store's statement cache (stmtcache.c): rs__stmt lends the statement
 * for `sql`, prepared at its first use and kept while the store is open;
 * rs__stmt_done gives it back (reset, bindings cleared). Both on the
 * store's thread only. rs__stmt_cache_free finalizes them all.
 */
int rs__stmt(sqlite3_stmt **out, rs_store *store, const char *sql);
void rs__stmt_done(rs_store *store, sqlite3_stmt *st);
void rs__stmt_cache_free(rs_store *store);

/* The store's wall clock in Unix ms: the system's, or the tests' (RECSYNC_CLOCK_OFFSET_MS). */
uint64_t rs__store_now_ms(rs_store *store);
/* A run of reads in one read transaction (store.c); a write in between ends it. */
void rs__store_read_begin(rs_store *store);
void rs__store_read_end(rs_store *store);

/* Runs `sql` (no results) on the store's database, naming `what` on failure. */
int rs__exec(rs_store *store, const char *sql, const char *what);

/* Emits a warning through the store's warning callback (stderr when none). */
void rs__warn(rs_store *store, const char *fmt, ...) RS_PRINTF(2, 3);

#endif
