/*
 * The stores every recsync store registers at open (kv and history): their
 * registration, the record versions they understand, and the helpers they
 * share. Internal: not API.
 */
#ifndef RS_BUILTIN_H
#define RS_BUILTIN_H

#include "internal.h"

/* The record versions this build writes. */
#define RS_KV_VERSION 1
#define RS_HISTORY_VERSION 1

/*
 * The record versions the stores registered at open understand (by default
 * the versions above). A unit test raises one before opening a store to
 * simulate the upgrade to a build that understands newer records.
 */
extern uint32_t rs__kv_version;
extern uint32_t rs__history_version;

/* Registers kv and history on a store being opened; see builtin.c. */
int rs__register_builtin_tags(rs_store *store);
int rs__kv_register(rs_store *store);
int rs__history_register(rs_store *store);
int rs__checkpoint_register(rs_store *store);

/* The history store's snapshot (history_snap.c): rows of history, the search index rebuilt. */
int rs__history_snapshot_write(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                               void *emit_ctx, void *payload);
int rs__history_snapshot_load(sqlite3 *db, const uint8_t *item, size_t len, void *payload);
/* history.c: one loaded row, with the history store's kept statements (payload: its state). */
int rs__history_load_row(void *payload, const uint8_t *item, size_t len);

/*
 * For an apply function given a record whose payload does not parse: keeps
 * the record as unapplied (like one whose version is too new, so a rebuild
 * retries it) and names it in a warning that says `why`. Returns 0 or an
 * RS_E* code when the note cannot be written. Skipping a bad record instead
 * of failing keeps one device's bad write from stopping every other
 * device's sync; every device skips it alike, so state still converges.
 */
int rs__keep_unapplied(rs_store *store, const rs_record *rec, const char *why);

/* Whether `s[0..len)` is well-formed UTF-8 (no overlongs, no surrogates). */
bool rs__utf8_valid(const char *s, size_t len);

/*
 * Copies `s[0..len)` into out (room for 3 * len + 1 bytes) as well-formed
 * UTF-8: each byte of a malformed sequence becomes U+FFFD and NUL bytes are
 * dropped. Returns the length written, without the NUL it appends.
 */
size_t rs__utf8_repair(char *out, const char *s, size_t len);

/* Prepares a statement kept for the store's life (finalized by `release`). */
int rs__prepare_kept(sqlite3 *db, sqlite3_stmt **out, const char *sql, const char *what);

/* Binds an HLC and a host id as the stores keep them: an integer and 16 bytes. */
void rs__bind_writer(sqlite3_stmt *st, int col_hlc, int col_host, const rs_record *rec);

/*
 * Snapshots of stores kept in SQLite tables: each row of `sql` (a SELECT)
 * becomes one item, its columns packed with their types (NULL, integer,
 * real, text, blob), handed to `emit`. rs__snap_bind_row binds such an item's
 * columns to ?1, ?2, ... of `st` (valid while `item` is), RS_EINVAL when it
 * is malformed or has another number of columns than `st` takes.
 */
int rs__snap_emit_rows(sqlite3 *db, const char *sql,
                       int (*emit)(void *ctx, const void *item, size_t len), void *ctx);
int rs__snap_bind_row(sqlite3_stmt *st, const uint8_t *item, size_t len);

#endif
