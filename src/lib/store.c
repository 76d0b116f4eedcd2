/*
 * The local store: one SQLite database per device holding every record it
 * knows, clustered by (host, tag, idx), the shard index, settings, and the
 * materialized state of registered tags.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DB_FILE "store.db"
#define KEY_FILE "key"
#define DEFAULT_BUSY_TIMEOUT_MS 10000

/*
 * Schema migrations, applied in order; PRAGMA user_version counts those
 * applied. Never edit a released step: add a new one.
 */
static const char *const migrations[] = {
    "CREATE TABLE meta(name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE records("
    "  host BLOB NOT NULL, tag TEXT NOT NULL, idx INTEGER NOT NULL,"
    "  id BLOB NOT NULL, hlc INTEGER NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL,"
    "  PRIMARY KEY(host, tag, idx)) WITHOUT ROWID;"
    "CREATE UNIQUE INDEX records_id ON records(id);"
    "CREATE TABLE shards("
    "  host BLOB NOT NULL, tag TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,"
    "  PRIMARY KEY(host, tag)) WITHOUT ROWID;"
    "CREATE TABLE unapplied("
    "  host BLOB NOT NULL, tag TEXT NOT NULL, idx INTEGER NOT NULL,"
    "  PRIMARY KEY(host, tag, idx)) WITHOUT ROWID;",
    /* 2: snapshots this store wrote or loaded, sealed as on the wire (snapshot.c). */
    "CREATE TABLE snapshots("
    "  id BLOB PRIMARY KEY, tag TEXT NOT NULL, frontier TEXT NOT NULL, chunks INTEGER NOT NULL,"
    "  hlc INTEGER NOT NULL, uploaded INTEGER NOT NULL, loaded INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE snapshot_chunks("
    "  id BLOB NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,"
    "  PRIMARY KEY(id, n)) WITHOUT ROWID;",
    /*
     * 3: hash chains (chain.c): each record's head, each shard's head at its
     * end and the head its first record chains from; heads other devices
     * claimed in their checkpoints. Existing rows get their heads computed
     * when the store opens (rs__chain_backfill).
     */
    "ALTER TABLE records ADD COLUMN head BLOB;"
    "ALTER TABLE shards ADD COLUMN head BLOB;"
    "ALTER TABLE shards ADD COLUMN start_head BLOB;"
    "CREATE TABLE chain_claims("
    "  writer BLOB NOT NULL, host BLOB NOT NULL, tag TEXT NOT NULL, end INTEGER NOT NULL,"
    "  head BLOB NOT NULL, PRIMARY KEY(writer, host, tag)) WITHOUT ROWID;",
    /*
     * 4: the check tag of each record the store writes (chain.c), what an
     * upload checks its bytes against. Other rows are checked by their head.
     */
    "ALTER TABLE records ADD COLUMN chk BLOB;",
};

#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int sodium_ready = -1;

static void library_init(void)
{
    sodium_ready = sodium_init() < 0 ? -1 : 0;
}

static int ensure_init(void)
{
    pthread_once(&init_once, library_init);
    if (sodium_ready < 0)
        return rs__error(RS_ERROR, "libsodium failed to initialize");
    return 0;
}

int rs__exec(rs_store *store, const char *sql, const char *what)
{
    int rc = sqlite3_exec(store->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(store->db, rc, what);
}

void rs__warn(rs_store *store, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (store->warn)
        store->warn(msg, store->warn_payload);
    else
        fprintf(stderr, "recsync: warning: %s\n", msg);
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = rs__malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* mkdir -p with mode 0700 for the parts it creates. */
static int make_dirs(const char *dir)
{
    char *copy = rs__strdup(dir);
    int err = 0;
    if (copy == NULL)
        return rs__error(RS_ENOMEM, "out of memory");
    for (char *p = copy + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
                err = rs__error(RS_EIO, "cannot create directory %s: %s", copy, strerror(errno));
                break;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    rs_free(copy);
    return err;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/*
 * Writes `text` to `path` with mode 0600 through a temporary file, fsync
 * and rename, so a crash leaves either the old file or the new one.
 */
static int write_secret_file(const char *path, const char *text, bool exclusive)
{
    size_t n = strlen(path) + 8;
    char *tmp = rs__malloc(n);
    int fd = -1, err = 0;
    size_t len = strlen(text);

    if (tmp == NULL)
        return rs__error(RS_ENOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0) { /* a leftover tmp file keeps its own mode */
        err = rs__error(RS_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    if (write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        err = rs__error(RS_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (exclusive) {
        /* link() fails if the target exists: init never overwrites a key. */
        if (link(tmp, path) != 0) {
            err = errno == EEXIST
                      ? rs__error(RS_EEXISTS, "%s already exists", path)
                      : rs__error(RS_EIO, "cannot create %s: %s", path, strerror(errno));
        }
        unlink(tmp);
    } else if (rename(tmp, path) != 0) {
        err = rs__error(RS_EIO, "cannot replace %s: %s", path, strerror(errno));
        unlink(tmp);
    }
done:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    rs_free(tmp);
    return err;
}

/*
 * Makes the database and its -wal and -shm files readable by their owner
 * only, whatever the umask: they hold the token and the plaintext history,
 * and SQLite gives the -wal and -shm it creates the database's mode. With
 * `create`, makes the database file first, mode 0600 (RS_EIO naming it
 * when that fails). The files of an existing store lose their group and
 * other bits; where that fails (not their owner) a warning says so.
 */
static int secure_db_files(rs_store *store, const char *db_path, bool create)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    char path[4096];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        bool fresh = create && i == 0;
        struct stat st;
        int fd;
        if ((size_t)snprintf(path, sizeof(path), "%s%s", db_path, suffixes[i]) >= sizeof(path))
            return rs__error(RS_EINVAL, "path %.200s... is too long", db_path);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | (fresh ? O_CREAT | O_EXCL : 0), 0600);
        if (fd < 0 && errno == ENOENT && !fresh)
            continue;
        bool failed = fd < 0 || fstat(fd, &st) != 0;
        if (!failed && (fresh || (st.st_mode & 077)))
            failed = fchmod(fd, fresh ? 0600 : st.st_mode & 0700) != 0;
        if (failed) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            if (fresh)
                return rs__error(RS_EIO, "cannot create %s: %s", path, strerror(e));
            rs__warn(store, "%s is readable by others and cannot be made private: %s", path,
                     strerror(e));
            continue;
        }
        close(fd);
    }
    return 0;
}

static int load_key(rs_key **out, const char *dir)
{
    char *path = path_join(dir, KEY_FILE), buf[256];
    FILE *f = NULL;
    size_t n;
    int err = 0;
    struct stat st;

    if (path == NULL)
        return rs__error(RS_ENOMEM, "out of memory");
    f = fopen(path, "re");
    if (f == NULL) {
        err = rs__error(errno == ENOENT ? RS_ENOTFOUND : RS_EIO, "cannot read key file %s: %s",
                        path, strerror(errno));
        goto done;
    }
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0)
        fprintf(stderr, "recsync: warning: key file %s is readable by others (mode %03o)\n", path,
                (unsigned)(st.st_mode & 0777));
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    err = rs__key_from_text(out, buf);
    sodium_memzero(buf, sizeof(buf));
    if (err < 0)
        rs__error(err, "key file %s: %s", path, rs_error_last());
done:
    if (f)
        fclose(f);
    rs_free(path);
    return err;
}

static int prepare(rs_store *store, sqlite3_stmt **out, const char *sql)
{
    int rc = sqlite3_prepare_v3(store->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(store->db, rc, "preparing a store statement");
}

static int migrate(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    int version = 0, err = 0;

    if ((err = prepare(store, &st, "PRAGMA user_version")) < 0)
        return err;
    if (sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > SCHEMA_VERSION)
        return rs__error(RS_EVERSION,
                         "store %s has schema version %d, newer than this build's %d: upgrade "
                         "recsync",
                         store->dir, version, SCHEMA_VERSION);
    if (version == SCHEMA_VERSION)
        return 0;
    if ((err = rs__exec(store, "BEGIN IMMEDIATE", "starting the schema migration")) < 0)
        return err;
    store->chain_backfill = version > 0 && version < 3;
    for (int v = version; v < SCHEMA_VERSION; v++) {
        char pragma[64];
        if ((err = rs__exec(store, migrations[v], "migrating the store schema")) < 0)
            goto fail;
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", v + 1);
        if ((err = rs__exec(store, pragma, "recording the schema version")) < 0)
            goto fail;
    }
    return rs__exec(store, "COMMIT", "committing the schema migration");
fail:
    sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    return err;
}

static int prepare_statements(rs_store *store)
{
    int err;
    if ((err = prepare(store, &store->st_insert,
                       "INSERT INTO records(host, tag, idx, id, hlc, version, data, head, chk) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")) < 0 ||
        (err = prepare(store, &store->st_shard_get,
                       "SELECT start, end, head, start_head FROM shards "
                       "WHERE host = ?1 AND tag = ?2")) < 0 ||
        (err =
             prepare(store, &store->st_shard_put,
                     "INSERT INTO shards(host, tag, start, end, head) VALUES (?1, ?2, ?3, ?4, ?5) "
                     "ON CONFLICT(host, tag) DO UPDATE SET start = ?3, end = ?4, head = ?5")) < 0 ||
        (err = prepare(store, &store->st_shard_end,
                       "UPDATE shards SET end = ?3, head = ?4 WHERE host = ?1 AND tag = ?2")) < 0 ||
        (err = prepare(store, &store->st_at_idx,
                       "SELECT id, data FROM records WHERE host = ?1 AND tag = ?2 AND idx = ?3")) <
            0 ||
        (err = prepare(store, &store->st_meta_get, "SELECT value FROM meta WHERE name = ?1")) < 0 ||
        (err = prepare(store, &store->st_meta_put,
                       "INSERT INTO meta(name, value) VALUES (?1, ?2) "
                       "ON CONFLICT(name) DO UPDATE SET value = ?2")) < 0)
        return err;
    return 0;
}

static int meta_get_raw(char **out, rs_store *store, const char *name)
{
    sqlite3_stmt *st = store->st_meta_get;
    int rc, err = 0;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = rs__strdup((const char *)sqlite3_column_text(st, 0));
        if (*out == NULL)
            err = rs__error(RS_ENOMEM, "out of memory");
    } else if (rc == SQLITE_DONE) {
        err = rs__error(RS_ENOTFOUND, "setting '%s' is not set in store %s", name, store->dir);
    } else {
        err = rs__sqlite_error(store->db, rc, "reading a setting");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

static int meta_put_raw(rs_store *store, const char *name, const char *value)
{
    sqlite3_stmt *st = store->st_meta_put;
    int rc;
    rs__store_read_end(store);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "writing a setting");
}

/* Brings the in-memory clock up to what any process last saved. */
static int load_clock(rs_store *store)
{
    char *text = NULL;
    rs_hlc saved = 0;
    int err = meta_get_raw(&text, store, "hlc");
    if (err == RS_ENOTFOUND)
        return 0;
    if (err < 0)
        return err;
    err = rs_hlc_parse(&saved, text);
    rs_free(text);
    if (err < 0)
        return rs__error(RS_EIO, "store %s: the saved clock is corrupt", store->dir);
    if (saved > store->clock.last)
        store->clock.last = saved;
    store->clock_saved = saved;
    return 0;
}

/*
 * Re-reads the host id inside a write transaction: rs_reidentify (in this
 * process or another) may have given the store a new one since this handle
 * read it, and an append must never land in the shards of the id the store
 * gave up.
 */
static int follow_host(rs_store *store)
{
    sqlite3_stmt *st = store->st_meta_get;
    rs_uuid now;
    int rc, err = 0;
    sqlite3_bind_text(st, 1, "host", -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && rs_uuid_parse(&now, (const char *)sqlite3_column_text(st, 0)) == 0)
        store->host = now;
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = rs__sqlite_error(store->db, rc, "reading the host id");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

static int save_clock(rs_store *store)
{
    char text[RS_HLC_STRLEN + 1];
    if (store->clock.last == store->clock_saved)
        return 0;
    rs_hlc_format(text, store->clock.last);
    int err = meta_put_raw(store, "hlc", text);
    if (err == 0)
        store->clock_saved = store->clock.last;
    return err;
}

/*
 * Transactions. Outside rs_store_begin each operation is its own
 * BEGIN IMMEDIATE ... COMMIT (IMMEDIATE takes the write lock up front so
 * two processes never deadlock upgrading a read lock). Inside the caller's
 * transaction each operation is a savepoint, so a failed append leaves the
 * rest of the batch intact. The clock is reloaded once the write lock is
 * held, so writes from several processes stay monotonic.
 */
typedef struct op_txn {
    rs_hlc clock_before;
} op_txn;

/*
 * SQLite may roll a whole transaction back by itself after some errors
 * (out of memory, disk full, I/O). Inside the caller's transaction that
 * would silently drop the batch so far and let later operations commit one
 * by one, so once it has happened every operation and the commit fail
 * until the caller rolls back.
 */
static int explicit_txn_lost(rs_store *store)
{
    if (!sqlite3_get_autocommit(store->db))
        return 0;
    return rs__error(RS_EIO,
                     "the transaction on store %s was rolled back by the database after an "
                     "earlier failure: nothing of it was kept; roll back and start again",
                     store->dir);
}

/*
 * The four statements every append begins and ends with, prepared once:
 * sqlite3_exec compiles its text each call, which cost an append about a
 * fifth of its instructions.
 */
enum { TXN_BEGIN, TXN_COMMIT, TXN_SAVEPOINT, TXN_RELEASE, TXN_READ };

static int txn_exec(rs_store *store, int which, const char *what)
{
    static const char *const sql[] = {"BEGIN IMMEDIATE", "COMMIT", "SAVEPOINT rs_op",
                                      "RELEASE rs_op", "BEGIN"};
    sqlite3_stmt **st = &store->st_txn[which];
    int rc;
    if (which == TXN_BEGIN)
        rs__store_read_end(store); /* a write ends a read bracket first */
    if (!*st && (rc = sqlite3_prepare_v3(store->db, sql[which], -1, SQLITE_PREPARE_PERSISTENT, st,
                                         NULL)) != SQLITE_OK)
        return rs__sqlite_error(store->db, rc, what);
    rc = sqlite3_step(*st);
    sqlite3_reset(*st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, what);
}

/*
 * A read bracket: the reads a sync makes in a row share one read
 * transaction instead of taking and dropping SQLite's locks once each (ten
 * lock calls a no-op sync). Nothing in it may depend on it: a write ends
 * it first (txn_exec, meta_put_raw), so it never turns into a write
 * transaction, and a bracket that cannot begin leaves the reads to their
 * own transactions.
 */
void rs__store_read_begin(rs_store *store)
{
    if (store->explicit_txn || store->read_txn || !sqlite3_get_autocommit(store->db))
        return;
    if (txn_exec(store, TXN_READ, "starting a read") == 0)
        store->read_txn = 1;
}

void rs__store_read_end(rs_store *store)
{
    if (!store->read_txn)
        return;
    store->read_txn = 0;
    if (!sqlite3_get_autocommit(store->db) && txn_exec(store, TXN_COMMIT, "ending a read") < 0)
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
}

static int op_begin(op_txn *t, rs_store *store)
{
    int err;
    if (store->explicit_txn && (err = explicit_txn_lost(store)) < 0)
        return err;
    if (store->explicit_txn)
        err = txn_exec(store, TXN_SAVEPOINT, "starting a savepoint");
    else
        err = txn_exec(store, TXN_BEGIN, "starting a transaction");
    if (err < 0)
        return err;
    if (!store->explicit_txn && ((err = load_clock(store)) < 0 || (err = follow_host(store)) < 0)) {
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
        return err;
    }
    t->clock_before = store->clock.last;
    return 0;
}

static int op_commit(op_txn *t, rs_store *store)
{
    int err;
    (void)t;
    if (store->explicit_txn)
        return txn_exec(store, TXN_RELEASE, "releasing a savepoint");
    if ((err = save_clock(store)) < 0)
        return err;
    return txn_exec(store, TXN_COMMIT, "committing a transaction");
}

static void op_abort(op_txn *t, rs_store *store)
{
    if (store->explicit_txn)
        sqlite3_exec(store->db, "ROLLBACK TO rs_op; RELEASE rs_op", NULL, NULL, NULL);
    else
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    store->clock.last = t->clock_before;
}

/*
 * Each operation in the caller's transaction is a savepoint, and SQLite
 * keeps the pages a savepoint may have to restore in a statement journal.
 * That journal lives in memory until it first outgrows 64 KiB, then in a
 * temporary file for the rest of the transaction: every later append wrote
 * its pages to disk twice (a 100k-line append spent most of its time
 * there). Memory temp storage keeps the journal in memory, where each
 * release empties it. SQLite takes the setting when the transaction
 * begins; it is put back afterwards, because in memory SQLite's sorter
 * never spills either, and a large ORDER BY (rs_store_rebuild) must.
 */
static void journal_in_memory(rs_store *store, bool on)
{
    sqlite3_exec(store->db, on ? "PRAGMA temp_store = MEMORY" : "PRAGMA temp_store = DEFAULT", NULL,
                 NULL, NULL);
}

int rs_store_begin(rs_store *store)
{
    int err;
    if (store->explicit_txn)
        return rs__error(RS_EINVAL, "a transaction is already open on store %s", store->dir);
    journal_in_memory(store, true);
    if ((err = txn_exec(store, TXN_BEGIN, "starting a transaction")) < 0) {
        journal_in_memory(store, false);
        return err;
    }
    if ((err = load_clock(store)) < 0 || (err = follow_host(store)) < 0) {
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
        journal_in_memory(store, false);
        return err;
    }
    store->explicit_txn = 1;
    return 0;
}

int rs_store_commit(rs_store *store)
{
    int err;
    if (!store->explicit_txn)
        return rs__error(RS_EINVAL, "no transaction is open on store %s", store->dir);
    if ((err = explicit_txn_lost(store)) < 0 || (err = save_clock(store)) < 0 ||
        (err = txn_exec(store, TXN_COMMIT, "committing a transaction")) < 0) {
        rs_store_rollback(store);
        return err;
    }
    store->explicit_txn = 0;
    journal_in_memory(store, false);
    return 0;
}

void rs_store_rollback(rs_store *store)
{
    if (!store->explicit_txn)
        return;
    sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    journal_in_memory(store, false);
    store->explicit_txn = 0;
    store->clock.last = store->clock_saved;
    load_clock(store);
}

static void store_close(rs_store *store)
{
    if (store->db)
        rs__store_read_end(store);
    sqlite3_finalize(store->st_insert);
    sqlite3_finalize(store->st_shard_get);
    sqlite3_finalize(store->st_shard_put);
    sqlite3_finalize(store->st_shard_end);
    sqlite3_finalize(store->st_at_idx);
    sqlite3_finalize(store->st_meta_get);
    sqlite3_finalize(store->st_meta_put);
    for (size_t i = 0; i < sizeof(store->st_txn) / sizeof(store->st_txn[0]); i++)
        sqlite3_finalize(store->st_txn[i]);
    rs__stmt_cache_free(store);
    if (store->db)
        sqlite3_close_v2(store->db);
}

void rs_store_free(rs_store *store)
{
    if (store == NULL)
        return;
    if (store->explicit_txn)
        rs_store_rollback(store);
    /* Tags' own statements are finalized before the database closes. */
    for (size_t i = 0; i < store->tag_count; i++)
        if (store->tags[i].def.release)
            store->tags[i].def.release(store->tags[i].def.payload);
    store_close(store);
    rs__key_free(store->key);
    rs_free(store->tags);
    rs_free(store->dir);
    rs_free(store);
}

/*
 * Test hook for the wall clock a store's HLC reads, set from the
 * environment of tests only (docs/conventions.md, "Test hooks"):
 * RECSYNC_CLOCK_OFFSET_MS (signed) shifts the system clock, so a test can
 * run one device's clock behind the others; RECSYNC_CLOCK_PIN_MS fixes it at
 * that Unix millisecond, so two devices can write in the same millisecond.
 * With neither set the store reads the system clock, as it always does
 * outside tests.
 */
static uint64_t test_hook_clock(void *ctx)
{
    const char *pin = getenv("RECSYNC_CLOCK_PIN_MS"), *offset = getenv("RECSYNC_CLOCK_OFFSET_MS");
    int64_t now;
    (void)ctx;
    if (pin && *pin)
        return strtoull(pin, NULL, 10);
    now = (int64_t)rs_now_ms() + (offset && *offset ? strtoll(offset, NULL, 10) : 0);
    return now > 0 ? (uint64_t)now : 0;
}

uint64_t rs__store_now_ms(rs_store *store)
{
    return store->clock.now_ms ? store->clock.now_ms(store->clock.now_ctx) : rs_now_ms();
}

/* Registers the tags every store has (kv, history); defined in their modules. */
int rs__register_builtin_tags(rs_store *store);

/*
 * Opens the database in `dir` (creating it when `create`), applies
 * migrations and prepares statements. The key is loaded by the caller.
 */
static int store_open_db(rs_store **out, const char *dir, const rs_store_opts *opts, bool create)
{
    rs_store *store = NULL;
    char *path = NULL;
    int rc, err = 0;

    if ((err = ensure_init()) < 0)
        return err;
    store = rs__calloc(1, sizeof(*store));
    if (store == NULL || (store->dir = rs__strdup(dir)) == NULL ||
        (path = path_join(dir, DB_FILE)) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory opening store %s", dir);
        goto done;
    }
    if (opts)
        store->opts = *opts;
    if (store->opts.max_payload == 0)
        store->opts.max_payload = RS_DEFAULT_MAX_PAYLOAD;
    if (store->opts.max_drift_ms == 0)
        store->opts.max_drift_ms = RS_HLC_DEFAULT_MAX_DRIFT_MS;
    if (store->opts.busy_timeout_ms == 0)
        store->opts.busy_timeout_ms = DEFAULT_BUSY_TIMEOUT_MS;
    rs_hlc_clock_init(&store->clock, 0);
    store->clock.max_drift_ms = store->opts.max_drift_ms;
    if (getenv("RECSYNC_CLOCK_OFFSET_MS") || getenv("RECSYNC_CLOCK_PIN_MS"))
        store->clock.now_ms = test_hook_clock;

    if (!create && !file_exists(path)) {
        err = rs__error(RS_ENOTFOUND, "no recsync store in %s (run 'recsync init')", dir);
        goto done;
    }
    if ((err = secure_db_files(store, path, create)) < 0)
        goto done;
    rc = sqlite3_open_v2(
        path, &store->db,
        SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        err = rs__error(RS_EIO, "cannot open %s: %s", path,
                        store->db ? sqlite3_errmsg(store->db) : sqlite3_errstr(rc));
        goto done;
    }
    sqlite3_busy_timeout(store->db, store->opts.busy_timeout_ms);
    sqlite3_extended_result_codes(store->db, 1);
    if ((err = rs__exec(store,
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                        "PRAGMA foreign_keys = OFF; PRAGMA cache_size = -16384;",
                        "configuring the database")) < 0)
        goto done;
    if ((err = migrate(store)) < 0 || (err = prepare_statements(store)) < 0)
        goto done;
    if ((err = load_clock(store)) < 0)
        goto done;
done:
    rs_free(path);
    if (err < 0) {
        rs_store_free(store);
        return err;
    }
    *out = store;
    return 0;
}

static int load_host(rs_store *store)
{
    char *text = NULL;
    int err = meta_get_raw(&text, store, "host");
    if (err == RS_ENOTFOUND)
        return rs__error(RS_EIO, "store %s has no host id: %s", store->dir, rs_error_last());
    if (err < 0)
        return err;
    err = rs_uuid_parse(&store->host, text);
    rs_free(text);
    return err < 0 ? rs__error(RS_EIO, "store %s: host id is corrupt", store->dir) : 0;
}

static int store_finish_open(rs_store *store)
{
    int err;
    if ((err = load_host(store)) < 0)
        return err;
    if (store->chain_backfill && (err = rs__chain_backfill(store)) < 0)
        return err;
    store->audit_due = 1;
    return rs__register_builtin_tags(store);
}

/*
 * Removes the files of a store whose init failed after it created them (the
 * database with its WAL and shared-memory files, then the key), so the
 * directory can be initialized again. Allocates nothing: it runs on the
 * failure path, out of memory included.
 */
static void remove_new_store(const char *db_path, const char *key_path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    char path[4096];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        if ((size_t)snprintf(path, sizeof(path), "%s%s", db_path, suffixes[i]) < sizeof(path))
            unlink(path);
    }
    unlink(key_path);
}

static int store_create(rs_store **out, const char *dir, rs_key *key, const rs_store_opts *opts)
{
    rs_store *store = NULL;
    char *db_path = NULL, *key_path = NULL, *key_text = NULL;
    char host_text[RS_UUID_STRLEN + 1];
    bool key_written = false;
    int err;

    if ((err = ensure_init()) < 0)
        goto done;
    if ((err = make_dirs(dir)) < 0)
        goto done;
    db_path = path_join(dir, DB_FILE);
    key_path = path_join(dir, KEY_FILE);
    if (db_path == NULL || key_path == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory");
        goto done;
    }
    if (file_exists(db_path) || file_exists(key_path)) {
        err = rs__error(RS_EEXISTS, "%s already holds a recsync store; nothing was changed", dir);
        goto done;
    }
    /*
     * The key first: a crash after it leaves a dir that init refuses, key
     * intact. A failure reported here instead removes what this call made.
     */
    if ((err = rs__key_to_text(&key_text, key)) < 0 ||
        (err = write_secret_file(key_path, key_text, true)) < 0)
        goto done;
    key_written = true;
    if ((err = store_open_db(&store, dir, opts, true)) < 0)
        goto done;
    rs_uuid_random(&store->host);
    rs_uuid_format(host_text, &store->host);
    if ((err = rs__exec(store, "BEGIN IMMEDIATE", "initializing the store")) < 0)
        goto done;
    if ((err = meta_put_raw(store, "host", host_text)) < 0) {
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
        goto done;
    }
    if ((err = rs__exec(store, "COMMIT", "initializing the store")) < 0)
        goto done;
    store->key = key;
    key = NULL;
    if ((err = rs__register_builtin_tags(store)) < 0)
        goto done;
done:
    if (key_text) {
        sodium_memzero(key_text, strlen(key_text));
        rs_free(key_text);
    }
    rs__key_free(key);
    if (err < 0) {
        rs_store_free(store);
        if (key_written)
            remove_new_store(db_path, key_path);
    }
    rs_free(db_path);
    rs_free(key_path);
    if (err < 0)
        return err;
    *out = store;
    return 0;
}

int rs_store_init(rs_store **out, const char *dir, const rs_store_opts *opts)
{
    rs_key *key = NULL;
    int err;
    if ((err = ensure_init()) < 0 || (err = rs__key_new(&key)) < 0)
        return err;
    return store_create(out, dir, key, opts);
}

int rs_store_init_with_key(rs_store **out, const char *dir, const char *key_text,
                           const rs_store_opts *opts)
{
    rs_key *key = NULL;
    int err;
    if ((err = ensure_init()) < 0 || (err = rs__key_from_text(&key, key_text)) < 0)
        return err;
    return store_create(out, dir, key, opts);
}

int rs_store_open(rs_store **out, const char *dir, const rs_store_opts *opts)
{
    rs_store *store = NULL;
    int err;
    if ((err = store_open_db(&store, dir, opts, false)) < 0)
        return err;
    if ((err = load_key(&store->key, dir)) < 0 || (err = store_finish_open(store)) < 0) {
        rs_store_free(store);
        return err;
    }
    *out = store;
    return 0;
}

void rs_store_host(rs_uuid *out, const rs_store *store)
{
    *out = store->host;
}

const char *rs_store_dir(const rs_store *store)
{
    return store->dir;
}

sqlite3 *rs_store_db(rs_store *store)
{
    return store->db;
}

void rs_store_on_warning(rs_store *store, rs_warning_cb cb, void *payload)
{
    store->warn = cb;
    store->warn_payload = payload;
}

int rs_store_key_export(char **out, rs_store *store)
{
    return rs__key_to_text(out, store->key);
}

/*
 * Replacing the key is refused while any record in the store is sealed
 * under a key other than the new one: it would become unreadable here.
 */
int rs_store_key_import(rs_store *store, const char *text)
{
    rs_key *key = NULL;
    sqlite3_stmt *st = NULL;
    char *path = NULL, *canonical = NULL;
    uint64_t other = 0;
    uint8_t id[RS_KEY_ID_BYTES];
    op_txn t;
    bool in_txn = false;
    int rc, err;

    if ((err = rs__key_from_text(&key, text)) < 0)
        return err;
    if (sodium_memcmp(key->bytes, store->key->bytes, RS_KEY_BYTES) == 0)
        goto done;
    /* The write lock is held from the check to the new key file: no append slips in. */
    if ((err = op_begin(&t, store)) < 0)
        goto done;
    in_txn = true;
    if ((err = prepare(store, &st, "SELECT data FROM records")) < 0)
        goto done;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const uint8_t *data = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        if (rs__envelope_key_id(id, data, len) < 0 || memcmp(id, key->id, sizeof(id)) != 0)
            other++;
    }
    if (rc != SQLITE_DONE) {
        err = rs__sqlite_error(store->db, rc, "checking records before a key import");
        goto done;
    }
    if (other > 0) {
        char old_id[RS_KEY_ID_STRLEN + 1], new_id[RS_KEY_ID_STRLEN + 1];
        rs__key_id_hex(old_id, store->key->id);
        rs__key_id_hex(new_id, key->id);
        err = rs__error(RS_EKEY,
                        "store %s holds %llu records that key %s cannot open (this store's key "
                        "is %s); import the key into a fresh directory instead",
                        store->dir, (unsigned long long)other, new_id, old_id);
        goto done;
    }
    /* The file gets the canonical text, not whatever surrounded the pasted key. */
    if ((err = rs__key_to_text(&canonical, key)) < 0)
        goto done;
    path = path_join(store->dir, KEY_FILE);
    if (path == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory");
        goto done;
    }
    if ((err = write_secret_file(path, canonical, false)) < 0)
        goto done;
    rs__key_free(store->key);
    store->key = key;
    key = NULL;
done:
    sqlite3_finalize(st);
    if (in_txn) {
        if (err < 0)
            op_abort(&t, store);
        else if ((err = op_commit(&t, store)) < 0)
            op_abort(&t, store);
    }
    if (canonical) {
        sodium_memzero(canonical, strlen(canonical));
        rs_free(canonical);
    }
    rs_free(path);
    rs__key_free(key);
    return err;
}

static bool meta_name_valid(const char *name)
{
    /* Names the store itself owns cannot be overwritten from outside. */
    return name && *name && strcmp(name, "host") != 0 && strcmp(name, "hlc") != 0;
}

int rs_store_meta_get(char **out, rs_store *store, const char *name)
{
    return meta_get_raw(out, store, name);
}

int rs_store_meta_set(rs_store *store, const char *name, const char *value)
{
    if (!meta_name_valid(name))
        return rs__error(RS_EINVAL, "setting '%s' cannot be changed", name ? name : "(null)");
    if (value == NULL)
        return rs__error(RS_EINVAL,
                         "setting '%s' needs a value (use rs_store_meta_del to remove it)", name);
    return meta_put_raw(store, name, value);
}

int rs_store_meta_del(rs_store *store, const char *name)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    if (!meta_name_valid(name))
        return rs__error(RS_EINVAL, "setting '%s' cannot be removed", name ? name : "(null)");
    rs__store_read_end(store);
    if ((err = prepare(store, &st, "DELETE FROM meta WHERE name = ?1")) < 0)
        return err;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "removing a setting");
}

/*
 * Reads shard (host, tag); a shard with no records is [0, 0). `head` (may be
 * NULL) receives the chain head its next record must chain from: the head
 * of its last record, the head it starts from when it has none (a shard cut
 * to a snapshot), or the chain's start value for an empty shard. *known is
 * 0 only when a shard of an old store has no head (never after backfill).
 */
static int shard_get_head(uint64_t *start, uint64_t *end, uint8_t *head, int *known,
                          rs_store *store, const rs_uuid *host, const char *tag)
{
    sqlite3_stmt *st = store->st_shard_get;
    int rc;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (known)
        *known = 1;
    if (rc == SQLITE_ROW) {
        *start = (uint64_t)sqlite3_column_int64(st, 0);
        *end = (uint64_t)sqlite3_column_int64(st, 1);
        if (head) {
            int col = *end > *start || sqlite3_column_bytes(st, 3) != RS_CHAIN_BYTES ? 2 : 3;
            if (sqlite3_column_bytes(st, col) == RS_CHAIN_BYTES)
                memcpy(head, sqlite3_column_blob(st, col), RS_CHAIN_BYTES);
            else if (*end == 0)
                rs__chain_start(head, store->key, host, tag);
            else if (known)
                *known = 0;
        }
    } else {
        *start = *end = 0;
        if (head)
            rs__chain_start(head, store->key, host, tag);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rs__sqlite_error(store->db, rc, "reading the shard index");
    return 0;
}

/* Writes shard (host, tag) with the head of its last record (NULL: unknown). */
static int shard_put(rs_store *store, const rs_uuid *host, const char *tag, uint64_t start,
                     uint64_t end, const uint8_t *head)
{
    sqlite3_stmt *st = store->st_shard_put;
    int rc;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)start);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)end);
    if (head)
        sqlite3_bind_blob(st, 5, head, RS_CHAIN_BYTES, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "updating the shard index");
}

/* Moves the end of a shard that has a row already (one append's update: cheaper than shard_put). */
static int shard_end_put(rs_store *store, const rs_uuid *host, const char *tag, uint64_t end,
                         const uint8_t *head)
{
    sqlite3_stmt *st = store->st_shard_end;
    int rc;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)end);
    sqlite3_bind_blob(st, 4, head, RS_CHAIN_BYTES, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE && sqlite3_changes(store->db) != 1)
        return rs__error(RS_EIO, "store %s: the shard index lost a shard being written",
                         store->dir);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(store->db, rc, "updating the shard index");
}

static int insert_row(rs_store *store, const rs_record *rec, const uint8_t *head,
                      const uint8_t *check)
{
    sqlite3_stmt *st = store->st_insert;
    int rc;
    sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
    sqlite3_bind_blob(st, 4, rec->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)rec->hlc);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)rec->version);
    sqlite3_bind_blob(st, 7, rec->data, (int)rec->data_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, head, RS_CHAIN_BYTES, SQLITE_STATIC);
    if (check) /* a record received has none (chain.c) */
        sqlite3_bind_blob(st, 9, check, RS_CHECK_BYTES, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_DONE)
        return 0;
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        char name[200];
        rs__record_name(name, sizeof(name), rec);
        return rs__error(RS_ECONFLICT, "%s: its id is already stored at another position", name);
    }
    return rs__sqlite_error(store->db, rc, "storing a record");
}

static const rs_tag_entry *find_tag(const rs_store *store, const char *tag)
{
    for (size_t i = 0; i < store->tag_count; i++)
        if (strcmp(store->tags[i].tag, tag) == 0)
            return &store->tags[i];
    return NULL;
}

/*
 * Hands a stored record to its tag's apply function, or notes it as
 * unapplied when its version is newer than the registered store knows.
 */
static int apply_record(rs_store *store, const rs_record *rec, const uint8_t *plain, size_t len)
{
    const rs_tag_entry *t = find_tag(store, rec->tag);
    char name[200];
    int err;

    if (t == NULL)
        return 0;
    if (rec->version > t->def.version) {
        sqlite3_stmt *st = NULL;
        int rc;
        if ((err = prepare(store, &st,
                           "INSERT OR IGNORE INTO unapplied(host, tag, idx) VALUES (?1, ?2, ?3)")) <
            0)
            return err;
        sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE)
            return rs__sqlite_error(store->db, rc, "noting an unapplied record");
        rs__record_name(name, sizeof(name), rec);
        rs__warn(store,
                 "%s has version %u, newer than this build understands (%u): kept, not "
                 "applied; it is applied by 'rebuild' after an upgrade",
                 name, rec->version, t->def.version);
        return 0;
    }
    if ((err = t->def.apply(store->db, rec, plain, len, t->def.payload)) < 0) {
        rs__record_name(name, sizeof(name), rec);
        return rs__error(err, "applying %s: %s", name, rs_error_last());
    }
    return 0;
}

/*
 * The writes of one append inside the caller's transaction (rs_store_begin):
 * the record, its tag's apply, the shard's new end. They take no savepoint
 * of their own: a savepoint copies every page an append first touches into
 * SQLite's statement journal, a quarter of an append's instructions.
 * Instead each statement is atomic by itself (an INSERT that fails writes
 * nothing), and when a later one fails the record is deleted again. A
 * tag's apply, code that is not ours, still runs in a savepoint (with the
 * shard's update): only its pages and the shard's are journaled. Should an
 * undo fail itself, the whole transaction is rolled back, which the next
 * call in it reports (explicit_txn_lost).
 */
static int append_in_txn(rs_store *store, const rs_record *rec, const uint8_t *head,
                         const uint8_t *check, uint64_t start, uint64_t end, const void *payload,
                         size_t len)
{
    int applies = find_tag(store, rec->tag) != NULL, in_savepoint = 0, err;
    sqlite3_stmt *st = NULL;

    if ((err = insert_row(store, rec, head, check)) < 0)
        return err;
    if (applies && (err = txn_exec(store, TXN_SAVEPOINT, "starting a savepoint")) == 0)
        in_savepoint = 1;
    if ((!applies || in_savepoint) && (err = apply_record(store, rec, payload, len)) == 0 &&
        (err = end > 0 ? shard_end_put(store, &rec->host, rec->tag, end + 1, head)
                       : shard_put(store, &rec->host, rec->tag, start, end + 1, head)) == 0 &&
        (!in_savepoint || (err = txn_exec(store, TXN_RELEASE, "releasing a savepoint")) == 0))
        return 0;
    /* Undone: the apply and the shard's end to the savepoint (when one was taken), the record
       by hand. */
    int undone = !in_savepoint || sqlite3_exec(store->db, "ROLLBACK TO rs_op; RELEASE rs_op", NULL,
                                               NULL, NULL) == SQLITE_OK;
    if (undone && sqlite3_prepare_v2(
                      store->db, "DELETE FROM records WHERE host = ?1 AND tag = ?2 AND idx = ?3",
                      -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
        undone = sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(store->db) == 1;
    } else {
        undone = 0;
    }
    sqlite3_finalize(st);
    if (!undone && !sqlite3_get_autocommit(store->db))
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    return err;
}

int rs_append(rs_record *out, rs_store *store, const char *tag, uint32_t version,
              const void *payload, size_t len)
{
    rs_record rec;
    op_txn t;
    uint8_t *env = NULL, prev[RS_CHAIN_BYTES], head[RS_CHAIN_BYTES], check[RS_CHECK_BYTES];
    uint64_t start, end;
    int err, known = 1, in_txn = store->explicit_txn;

    if (!rs_tag_valid(tag))
        return rs__error(RS_EINVAL, "tag '%.70s' is not valid: 1-64 of [a-z0-9._-]",
                         tag ? tag : "(null)");
    if (len > store->opts.max_payload)
        return rs__error(RS_ETOOBIG, "payload of %zu bytes for tag %s exceeds the bound of %zu",
                         len, tag, store->opts.max_payload);
    env = rs__malloc(rs__envelope_len(len) + RS_CHAIN_BYTES);
    if (env == NULL)
        return rs__error(RS_ENOMEM, "out of memory sealing a record of %zu bytes", len);
    /* In the caller's transaction the append undoes its own writes (append_in_txn). */
    t.clock_before = store->clock.last;
    if ((err = in_txn ? explicit_txn_lost(store) : op_begin(&t, store)) < 0)
        goto done;
    memset(&rec, 0, sizeof(rec));
    rec.host = store->host;
    strcpy(rec.tag, tag);
    rec.version = version;
    if ((err = shard_get_head(&start, &end, prev, &known, store, &store->host, tag)) < 0 ||
        (err = rs_hlc_tick(&rec.hlc, &store->clock)) < 0)
        goto fail;
    if (!known)
        rs__chain_start(prev, store->key, &store->host, tag);
    rec.idx = end;
    rs_uuid_v7(&rec.id, RS_HLC_MS(rec.hlc));
    if ((err = rs__seal_chained(env, store->key, &rec, prev, payload, len)) < 0)
        goto fail;
    rec.data = env;
    rec.data_len = rs__envelope_len(len) + RS_CHAIN_BYTES;
    rs__chain_head(head, store->key, &rec);
    rs__chain_check(check, store->key, &rec);
    if (in_txn)
        err = append_in_txn(store, &rec, head, check, start, end, payload, len);
    else if ((err = insert_row(store, &rec, head, check)) == 0 &&
             (err = end > 0 ? shard_end_put(store, &store->host, tag, end + 1, head)
                            : shard_put(store, &store->host, tag, start, end + 1, head)) == 0 &&
             (err = apply_record(store, &rec, payload, len)) == 0)
        err = op_commit(&t, store);
    if (err < 0)
        goto fail;
    if (out) {
        *out = rec;
        out->data = NULL;
    }
    goto done;
fail:
    if (in_txn)
        store->clock.last = t.clock_before;
    else
        op_abort(&t, store);
done:
    rs_free(env);
    return err;
}

/* Whether the record already stored at rec's idx is the same record. */
static int check_existing(rs_store *store, const rs_record *rec)
{
    sqlite3_stmt *st = store->st_at_idx;
    char name[200];
    int rc, err = 0;

    sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const void *id = sqlite3_column_blob(st, 0);
        const void *data = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        if (sqlite3_column_bytes(st, 0) != 16 || memcmp(id, rec->id.bytes, 16) != 0 ||
            len != rec->data_len || memcmp(data, rec->data, len) != 0) {
            char shard[RS_UUID_STRLEN + RS_TAG_MAX + 2];
            rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
            err = rs__error(RS_ECONFLICT, "shard %s already has a different record at idx %llu",
                            shard, (unsigned long long)rec->idx);
        }
    } else if (rc != SQLITE_DONE) {
        err = rs__sqlite_error(store->db, rc, "reading a stored record");
    }
    /* Pruned below the local start: nothing to compare with; accepted as known. */
    (void)name;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

/*
 * The batch is processed as runs of one shard: the shard row is read at
 * the start of a run and written once at its end, so a page of 1,000
 * records costs two index statements, not 2,000.
 */
int rs_store_insert(size_t *inserted, rs_store *store, const rs_record *records, size_t count)
{
    return rs__store_insert_opened(inserted, store, records, count, NULL);
}

int rs__store_insert_opened(size_t *inserted, rs_store *store, const rs_record *records,
                            size_t count, const rs_opened *opened)
{
    op_txn t;
    uint8_t *plain = NULL, head[RS_CHAIN_BYTES];
    size_t plain_cap = 0, added = 0;
    const rs_record *run = NULL; /* first record of the current shard run */
    uint64_t start = 0, end = 0, end_before = 0;
    int err, known = 1;

    if ((err = op_begin(&t, store)) < 0)
        return err;
    for (size_t i = 0; i < count; i++) {
        const rs_record *rec = &records[i];
        char shard[RS_UUID_STRLEN + RS_TAG_MAX + 2];

        if (run == NULL || rs_uuid_cmp(&run->host, &rec->host) != 0 ||
            strcmp(run->tag, rec->tag) != 0) {
            if (run && end != end_before &&
                (err = shard_put(store, &run->host, run->tag, start, end, head)) < 0)
                goto fail;
            if (!rs_tag_valid(rec->tag)) {
                err = rs__error(RS_EINVAL, "record %zu of the batch has an invalid tag '%.70s'", i,
                                rec->tag);
                goto fail;
            }
            run = rec;
            if ((err = shard_get_head(&start, &end, head, &known, store, &rec->host, rec->tag)) < 0)
                goto fail;
            end_before = end;
        }
        if (rec->idx < end) {
            if ((err = check_existing(store, rec)) < 0)
                goto fail;
            continue;
        }
        if (rec->idx > end) {
            rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
            err = rs__error(RS_EHOLE, "shard %s: expected idx %llu next, got %llu (a hole)", shard,
                            (unsigned long long)end, (unsigned long long)rec->idx);
            goto fail;
        }
        if (rec->data_len > rs__envelope_len(store->opts.max_payload)) {
            char name[200];
            rs__record_name(name, sizeof(name), rec);
            err = rs__error(RS_ETOOBIG, "%s is %zu bytes, beyond the bound of %zu", name,
                            rec->data_len, rs__envelope_len(store->opts.max_payload));
            goto fail;
        }
        /* Opened ahead, or here. */
        rs_opened here;
        const rs_opened *o = opened && opened[i].ok ? &opened[i] : &here;
        if (o == &here) {
            if (rec->data_len >= RS_ENVELOPE_OVERHEAD &&
                rec->data_len - RS_ENVELOPE_OVERHEAD > plain_cap) {
                size_t need = rec->data_len - RS_ENVELOPE_OVERHEAD;
                uint8_t *grown = rs__realloc(plain, need);
                if (grown == NULL) {
                    /* plain_cap still sizes the old block, which is wiped below. */
                    err = rs__error(RS_ENOMEM, "out of memory opening records");
                    goto fail;
                }
                plain = grown;
                plain_cap = need;
            }
            if (plain == NULL && (plain = rs__malloc(1)) == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory opening records");
                goto fail;
            }
            here.plain = plain;
            if ((err = rs__open_chained(here.plain, &here.plain_len, here.prev, &here.chained,
                                        store->key, rec)) < 0)
                goto fail;
            rs__chain_head(here.head, store->key, rec);
        }
        if (rec->idx == 0 && store->key->next) /* a shard starts under its first record's key */
            rs__chain_start(head, rs__key_for(store->key, rec->data, rec->data_len), &rec->host,
                            rec->tag);
        if (o->chained && known && sodium_memcmp(o->prev, head, RS_CHAIN_BYTES) != 0) {
            err = rs__chain_break(rec, o->prev, head);
            goto fail;
        }
        memcpy(head, o->head, RS_CHAIN_BYTES);
        known = 1;
        if ((err = rs_hlc_recv(&store->clock, rec->hlc, &rec->host)) < 0 ||
            (err = insert_row(store, rec, head, NULL)) < 0 ||
            (err = apply_record(store, rec, o->plain, o->plain_len)) < 0)
            goto fail;
        end++;
        added++;
    }
    if (run && end != end_before &&
        (err = shard_put(store, &run->host, run->tag, start, end, head)) < 0)
        goto fail;
    if ((err = op_commit(&t, store)) < 0)
        goto fail;
    if (added)
        store->audit_due = 1;
    if (inserted)
        *inserted = added;
    goto done;
fail:
    op_abort(&t, store);
done:
    if (plain) {
        sodium_memzero(plain, plain_cap);
        rs_free(plain);
    }
    return err;
}

static void row_to_record(rs_record *rec, sqlite3_stmt *st)
{
    /* Columns: host, tag, idx, id, hlc, version, data. */
    const void *host = sqlite3_column_blob(st, 0);
    const char *tag = (const char *)sqlite3_column_text(st, 1);
    const void *id = sqlite3_column_blob(st, 3);
    memset(rec, 0, sizeof(*rec));
    if (host && sqlite3_column_bytes(st, 0) == 16)
        memcpy(rec->host.bytes, host, 16);
    if (tag)
        snprintf(rec->tag, sizeof(rec->tag), "%s", tag);
    rec->idx = (uint64_t)sqlite3_column_int64(st, 2);
    if (id && sqlite3_column_bytes(st, 3) == 16)
        memcpy(rec->id.bytes, id, 16);
    rec->hlc = (rs_hlc)sqlite3_column_int64(st, 4);
    rec->version = (uint32_t)sqlite3_column_int64(st, 5);
    rec->data = sqlite3_column_blob(st, 6);
    rec->data_len = (size_t)sqlite3_column_bytes(st, 6);
}

#define RECORD_COLUMNS "host, tag, idx, id, hlc, version, data"

/* Steps `st` handing each row to cb; finalizes st. */
static int walk(rs_store *store, sqlite3_stmt *st, rs_record_cb cb, void *payload)
{
    rs_record rec;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        row_to_record(&rec, st);
        if ((ret = cb(&rec, payload)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = rs__sqlite_error(store->db, rc, "reading records");
    sqlite3_finalize(st);
    return ret;
}

int rs_store_range(rs_store *store, const rs_uuid *host, const char *tag, uint64_t start,
                   uint64_t end, rs_record_cb cb, void *payload)
{
    sqlite3_stmt *st = NULL;
    int err;
    if ((err = prepare(store, &st,
                       "SELECT " RECORD_COLUMNS " FROM records WHERE host = ?1 AND tag = ?2 "
                       "AND idx >= ?3 AND idx < ?4 ORDER BY idx")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)start);
    sqlite3_bind_int64(st, 4, end > INT64_MAX ? INT64_MAX : (sqlite3_int64)end);
    return walk(store, st, cb, payload);
}

int rs__store_range_heads(rs_store *store, const rs_uuid *host, const char *tag, uint64_t start,
                          uint64_t end, rs__head_cb cb, void *payload)
{
    sqlite3_stmt *st = NULL;
    rs_record rec;
    int rc, ret = 0;
    if ((ret = rs__stmt(&st, store,
                        "SELECT " RECORD_COLUMNS ", chk, head FROM records WHERE host = ?1 "
                        "AND tag = ?2 AND idx >= ?3 AND idx < ?4 ORDER BY idx")) < 0)
        return ret;
    sqlite3_bind_blob(st, 1, host->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)start);
    sqlite3_bind_int64(st, 4, end > INT64_MAX ? INT64_MAX : (sqlite3_int64)end);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        row_to_record(&rec, st);
        const uint8_t *check =
            sqlite3_column_bytes(st, 7) == RS_CHECK_BYTES ? sqlite3_column_blob(st, 7) : NULL;
        const uint8_t *head =
            sqlite3_column_bytes(st, 8) == RS_CHAIN_BYTES ? sqlite3_column_blob(st, 8) : NULL;
        if ((ret = cb(&rec, check, head, payload)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = rs__sqlite_error(store->db, rc, "reading records");
    rs__stmt_done(store, st);
    return ret;
}

int rs_store_foreach(rs_store *store, const char *tag, rs_record_cb cb, void *payload)
{
    sqlite3_stmt *st = NULL;
    int err;
    if (tag)
        err = prepare(store, &st,
                      "SELECT " RECORD_COLUMNS " FROM records WHERE tag = ?1 "
                      "ORDER BY host, tag, idx");
    else
        err = prepare(store, &st, "SELECT " RECORD_COLUMNS " FROM records ORDER BY host, tag, idx");
    if (err < 0)
        return err;
    if (tag)
        sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    return walk(store, st, cb, payload);
}

static int copy_record(const rs_record *rec, void *payload)
{
    rs_record **out = payload;
    rs_record *copy = rs__malloc(sizeof(*copy) + rec->data_len);
    if (copy == NULL)
        return rs__error(RS_ENOMEM, "out of memory reading a record");
    *copy = *rec;
    memcpy(copy + 1, rec->data, rec->data_len);
    copy->data = (const uint8_t *)(copy + 1);
    *out = copy;
    return 1;
}

int rs_store_get(rs_record **out, rs_store *store, const rs_uuid *id)
{
    sqlite3_stmt *st = NULL;
    rs_record *found = NULL;
    int err;
    if ((err = prepare(store, &st, "SELECT " RECORD_COLUMNS " FROM records WHERE id = ?1")) < 0)
        return err;
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    err = walk(store, st, copy_record, &found);
    if (err < 0)
        return err;
    if (found == NULL) {
        char text[RS_UUID_STRLEN + 1];
        rs_uuid_format(text, id);
        return rs__error(RS_ENOTFOUND, "no record %s in store %s", text, store->dir);
    }
    *out = found;
    return 0;
}

size_t rs_record_payload_size(const rs_record *record)
{
    size_t over = RS_ENVELOPE_OVERHEAD;
    if (record->data_len >= 4 && memcmp(record->data, RS_ENVELOPE_MAGIC_CHAINED, 4) == 0)
        over += RS_CHAIN_BYTES;
    return record->data_len > over ? record->data_len - over : 0;
}

void rs_record_free(rs_record *record)
{
    rs_free(record);
}

int rs_record_open(uint8_t **out, size_t *out_len, rs_store *store, const rs_record *record)
{
    size_t len;
    uint8_t *plain;
    int err;
    if (record->data_len < RS_ENVELOPE_OVERHEAD)
        return rs__open(NULL, NULL, store->key, record);
    len = record->data_len - RS_ENVELOPE_OVERHEAD;
    plain = rs__malloc(len + 1);
    if (plain == NULL)
        return rs__error(RS_ENOMEM, "out of memory opening a record of %zu bytes", len);
    if ((err = rs__open(plain, &len, store->key, record)) < 0) {
        rs_free(plain);
        return err;
    }
    plain[len] = '\0';
    *out = plain;
    *out_len = len;
    return 0;
}

int rs_store_index(rs_index **out, rs_store *store)
{
    sqlite3_stmt *st = NULL;
    rs_index *index = rs__calloc(1, sizeof(*index));
    int rc, err;

    if (index == NULL)
        return rs__error(RS_ENOMEM, "out of memory reading the index");
    if ((err = rs__stmt(&st, store,
                        "SELECT host, tag, start, end FROM shards ORDER BY host, tag")) < 0)
        goto done;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rs_uuid host;
        memset(&host, 0, sizeof(host));
        if (sqlite3_column_bytes(st, 0) == 16)
            memcpy(host.bytes, sqlite3_column_blob(st, 0), 16);
        if ((err = rs_index_add(index, &host, (const char *)sqlite3_column_text(st, 1),
                                (uint64_t)sqlite3_column_int64(st, 2),
                                (uint64_t)sqlite3_column_int64(st, 3))) < 0)
            goto done;
    }
    if (rc != SQLITE_DONE)
        err = rs__sqlite_error(store->db, rc, "reading the shard index");
done:
    rs__stmt_done(store, st);
    if (err < 0) {
        rs_index_free(index);
        return err;
    }
    *out = index;
    return 0;
}

/*
 * Verification walks each shard in idx order, opening every record, so
 * memory stays constant whatever the store's size.
 */
typedef struct verify_state {
    rs_store *store;
    rs_verify_report *report;
    rs_problem_cb on_problem;
    void *payload;
    int first_err;
    char first_msg[1024];
    uint64_t expect;
    uint8_t *plain;
    size_t plain_cap;
    /* the chain: the head the next record must chain from (known: the store holds it) */
    uint8_t head[RS_CHAIN_BYTES];
    int head_known;
    sqlite3_stmt *st_head; /* a record's stored head */
} verify_state;

static void problem(verify_state *vs, int code)
{
    vs->report->problems++;
    if (vs->first_err == 0) {
        vs->first_err = code;
        snprintf(vs->first_msg, sizeof(vs->first_msg), "%s", rs_error_last());
    }
    if (vs->on_problem)
        vs->on_problem(code, rs_error_last(), vs->payload);
}

static int verify_record(const rs_record *rec, void *payload)
{
    verify_state *vs = payload;
    char shard[RS_UUID_STRLEN + RS_TAG_MAX + 2];
    size_t need = rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len - RS_ENVELOPE_OVERHEAD : 1;
    int err;

    vs->report->records++;
    if (rec->idx != vs->expect) {
        rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
        problem(vs, rs__error(RS_EHOLE, "shard %s: expected idx %llu, found %llu (a hole)", shard,
                              (unsigned long long)vs->expect, (unsigned long long)rec->idx));
        vs->head_known = 0;
    }
    vs->expect = rec->idx + 1;
    if (need > vs->plain_cap) {
        uint8_t *grown = rs__realloc(vs->plain, need);
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory verifying records");
        vs->plain = grown;
        vs->plain_cap = need;
    }
    uint8_t prev[RS_CHAIN_BYTES], head[RS_CHAIN_BYTES];
    int chained = 0;
    if ((err = rs__open_chained(vs->plain, NULL, prev, &chained, vs->store->key, rec)) < 0) {
        /* Named once; the chain is checked again from the next record that opens. */
        problem(vs, err);
        vs->head_known = 0;
        return 0;
    }
    if (rec->idx == 0 && vs->store->key->next) { /* keyring.c: the first record's key */
        rs__chain_start(vs->head, rs__key_for(vs->store->key, rec->data, rec->data_len), &rec->host,
                        rec->tag);
        vs->head_known = 1;
    }
    if (chained && vs->head_known && sodium_memcmp(prev, vs->head, RS_CHAIN_BYTES) != 0)
        problem(vs, rs__chain_break(rec, prev, vs->head));
    rs__chain_head(head, vs->store->key, rec);
    sqlite3_bind_blob(vs->st_head, 1, rec->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(vs->st_head, 2, rec->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(vs->st_head, 3, (sqlite3_int64)rec->idx);
    if (sqlite3_step(vs->st_head) == SQLITE_ROW &&
        (sqlite3_column_bytes(vs->st_head, 0) != RS_CHAIN_BYTES ||
         sodium_memcmp(sqlite3_column_blob(vs->st_head, 0), head, RS_CHAIN_BYTES) != 0)) {
        char name[200];
        rs__record_name(name, sizeof(name), rec);
        problem(vs, rs__error(RS_ECHAIN, "%s: the chain head stored with it is not its own", name));
    }
    sqlite3_reset(vs->st_head);
    memcpy(vs->head, head, RS_CHAIN_BYTES);
    vs->head_known = 1;
    return 0;
}

int rs_store_verify(rs_verify_report *out, rs_store *store, rs_problem_cb on_problem, void *payload)
{
    verify_state vs;
    rs_verify_report report;
    rs_index *index = NULL;
    sqlite3_stmt *st = NULL;
    int rc, err;

    memset(&report, 0, sizeof(report));
    memset(&vs, 0, sizeof(vs));
    vs.store = store;
    vs.report = &report;
    vs.on_problem = on_problem;
    vs.payload = payload;
    if ((err = rs_store_index(&index, store)) < 0 ||
        (err = prepare(store, &vs.st_head,
                       "SELECT head FROM records WHERE host = ?1 AND tag = ?2 AND idx = ?3")) < 0)
        goto done;
    for (size_t i = 0; i < index->count; i++) {
        const rs_shard *sh = &index->shards[i];
        char shard[RS_UUID_STRLEN + RS_TAG_MAX + 2];
        uint64_t before = report.records;
        report.shards++;
        vs.expect = sh->start;
        if ((err = rs__chain_head_before(vs.head, &vs.head_known, store, &sh->host, sh->tag,
                                         sh->start)) < 0)
            goto done;
        if (sh->start > 0 && (err = rs__snapshot_covers(store, sh)) < 0)
            problem(&vs, err);
        if ((err = rs_store_range(store, &sh->host, sh->tag, 0, UINT64_MAX, verify_record, &vs)) <
            0)
            goto done;
        rs__shard_name(shard, sizeof(shard), &sh->host, sh->tag);
        if (vs.expect != sh->end)
            problem(&vs,
                    rs__error(RS_EHOLE,
                              "shard %s: index says it ends at %llu, records "
                              "end at %llu",
                              shard, (unsigned long long)sh->end, (unsigned long long)vs.expect));
        else if (report.records - before != sh->end - sh->start)
            problem(&vs, rs__error(RS_EHOLE, "shard %s: index says %llu records, found %llu", shard,
                                   (unsigned long long)(sh->end - sh->start),
                                   (unsigned long long)(report.records - before)));
    }
    /* Records outside any shard of the index. */
    if ((err = prepare(store, &st,
                       "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM shards s "
                       "WHERE s.host = r.host AND s.tag = r.tag)")) < 0)
        goto done;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0) {
        uint64_t stray = (uint64_t)sqlite3_column_int64(st, 0);
        report.records += stray;
        problem(&vs, rs__error(RS_EHOLE, "%llu records belong to no shard of the index",
                               (unsigned long long)stray));
    } else if (rc != SQLITE_ROW) {
        err = rs__sqlite_error(store->db, rc, "verifying the index");
        goto done;
    }
    if (vs.first_err)
        err = rs__error(vs.first_err, "%s", vs.first_msg);
done:
    sqlite3_finalize(st);
    sqlite3_finalize(vs.st_head);
    rs_index_free(index);
    if (vs.plain) {
        sodium_memzero(vs.plain, vs.plain_cap);
        rs_free(vs.plain);
    }
    if (out)
        *out = report;
    return err;
}

int rs_store_register(rs_store *store, const rs_tag_def *def)
{
    rs_tag_entry *grown;
    char meta_name[RS_TAG_MAX + 16], *built = NULL, want[16];
    int err;

    if (def == NULL || !rs_tag_valid(def->tag) || def->apply == NULL)
        return rs__error(RS_EINVAL, "a tag definition needs a valid tag and an apply function");
    if (find_tag(store, def->tag))
        return rs__error(RS_EEXISTS, "tag %s is already registered", def->tag);
    grown = rs__realloc(store->tags, (store->tag_count + 1) * sizeof(*grown));
    if (grown == NULL)
        return rs__error(RS_ENOMEM, "out of memory registering tag %s", def->tag);
    store->tags = grown;
    /* The array moved: each entry's def.tag points at its own tag buffer. */
    for (size_t i = 0; i < store->tag_count; i++)
        grown[i].def.tag = grown[i].tag;
    memset(&grown[store->tag_count], 0, sizeof(*grown));
    snprintf(grown[store->tag_count].tag, sizeof(grown->tag), "%s", def->tag);
    grown[store->tag_count].def = *def;
    grown[store->tag_count].def.tag = grown[store->tag_count].tag;
    store->tag_count++;

    if (def->setup && (err = def->setup(store->db, def->payload)) < 0) {
        store->tag_count--;
        return rs__error(err, "setting up the store of tag %s: %s", def->tag, rs_error_last());
    }
    /*
     * State built by an older build (or none, for records that arrived
     * before the tag was registered) is rebuilt once, here, never on read.
     */
    snprintf(meta_name, sizeof(meta_name), "tag.%s.version", def->tag);
    snprintf(want, sizeof(want), "%u", def->version);
    err = meta_get_raw(&built, store, meta_name);
    if (err == 0 && strcmp(built, want) == 0) {
        rs_free(built);
        return 0;
    }
    rs_free(built);
    /* On failure the tag is not registered and the caller keeps its payload. */
    if ((err < 0 && err != RS_ENOTFOUND) || (err = rs_store_rebuild(store, def->tag)) < 0) {
        store->tag_count--;
        return err;
    }
    return 0;
}

typedef struct rebuild_state {
    rs_store *store;
    uint8_t *plain;
    size_t plain_cap;
} rebuild_state;

static int rebuild_one(const rs_record *rec, void *payload)
{
    rebuild_state *rb = payload;
    size_t need = rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len - RS_ENVELOPE_OVERHEAD : 1;
    size_t len = 0;
    int err;
    if (need > rb->plain_cap) {
        uint8_t *grown = rs__realloc(rb->plain, need);
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory rebuilding");
        rb->plain = grown;
        rb->plain_cap = need;
    }
    if ((err = rs__open(rb->plain, &len, rb->store->key, rec)) < 0)
        return err;
    return apply_record(rb->store, rec, rb->plain, len);
}

int rs_store_rebuild(rs_store *store, const char *tag)
{
    const rs_tag_entry *t = find_tag(store, tag);
    rebuild_state rb = {store, NULL, 0};
    sqlite3_stmt *st = NULL;
    char meta_name[RS_TAG_MAX + 16], want[16];
    op_txn txn;
    int err;

    if (t == NULL)
        return rs__error(RS_ENOTFOUND, "tag %s has no registered store to rebuild",
                         tag ? tag : "(null)");
    if ((err = op_begin(&txn, store)) < 0)
        return err;
    if (t->def.reset && (err = t->def.reset(store->db, t->def.payload)) < 0) {
        rs__error(err, "resetting the store of tag %s: %s", tag, rs_error_last());
        goto fail;
    }
    /* State below a compacted shard's start comes from the snapshot it was loaded from. */
    if ((err = rs__snapshot_load_base(store, tag, &t->def)) < 0)
        goto fail;
    if ((err = prepare(store, &st, "DELETE FROM unapplied WHERE tag = ?1")) < 0)
        goto fail;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        err = rs__sqlite_error(store->db, sqlite3_errcode(store->db), "clearing unapplied");
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((err = prepare(store, &st,
                       "SELECT " RECORD_COLUMNS " FROM records WHERE tag = ?1 "
                       "ORDER BY hlc, host")) < 0)
        goto fail;
    sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
    err = walk(store, st, rebuild_one, &rb);
    st = NULL;
    if (err < 0)
        goto fail;
    snprintf(meta_name, sizeof(meta_name), "tag.%s.version", tag);
    snprintf(want, sizeof(want), "%u", t->def.version);
    if ((err = meta_put_raw(store, meta_name, want)) < 0 || (err = op_commit(&txn, store)) < 0)
        goto fail;
    goto done;
fail:
    sqlite3_finalize(st);
    op_abort(&txn, store);
done:
    if (rb.plain) {
        sodium_memzero(rb.plain, rb.plain_cap);
        rs_free(rb.plain);
    }
    return err;
}

/* keyring.h: the key file follows the keyring's current key (a rotation, the rotation rule). */
int rs__store_write_key(rs_store *store, const rs_key *key)
{
    char *text = NULL, *path = path_join(store->dir, KEY_FILE);
    int err;
    if (path == NULL)
        return rs__error(RS_ENOMEM, "out of memory");
    if ((err = rs__key_to_text(&text, key)) == 0)
        err = write_secret_file(path, text, false);
    if (text) {
        sodium_memzero(text, strlen(text));
        rs_free(text);
    }
    rs_free(path);
    return err;
}
