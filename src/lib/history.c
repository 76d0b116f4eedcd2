/*
 * The history store (include/recsync/history.h): records of tag "history"
 * applied into the table history, one row per entry id, with an
 * external-content FTS5 index on the command.
 *
 * The index uses the trigram tokenizer: it answers "contains this text"
 * (case-insensitive) for any text of three or more characters, which is
 * what people type when they look for a command: a fragment of a path, a
 * flag, the middle of a word ("ompose up", "/etc/ng", "--force-w").
 * unicode61 would index whole words only, so those searches would miss
 * unless the fragment happened to start a token. The price is an index of
 * about three times the text, which shell history can afford.
 *
 * A row's rowid (rid) is its time in milliseconds times 4096 plus 12 bits
 * of its id, so rowid order is newest-first order on every device: list
 * walks the table backwards and search asks FTS5 for matches in descending
 * rowid, both stopping at the limit instead of sorting every match.
 *
 * The index is kept by the apply function with explicit statements, not
 * triggers: a trigger writing to FTS5 and the savepoint of each append make
 * FTS5 flush its pending terms on every row, which made a 100k-line import
 * ten times slower. An import defers indexing its new rows to one pass at
 * its end.
 */
#include "builtin.h"

#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RID_ID_BITS 12
#define RID_MAX_MS ((INT64_C(1) << 50) - 1)
#define RID_PROBES 4096

typedef struct history_state {
    rs_store *store;
    sqlite3_stmt *st_lookup;
    sqlite3_stmt *st_insert;
    sqlite3_stmt *st_update;
    sqlite3_stmt *st_fts_insert;
    sqlite3_stmt *st_fts_delete;
    sqlite3_stmt *st_command; /* of a live rid */
    /* While an import runs: rows inserted but not indexed yet. */
    bool defer;
    int64_t *pending;
    size_t pending_count;
    size_t pending_cap;
} history_state;

static const char history_schema[] =
    "CREATE TABLE IF NOT EXISTS history("
    "  rid INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE,"
    "  time INTEGER, command TEXT, cwd TEXT, exit INTEGER, duration INTEGER,"
    "  session TEXT, hostname TEXT,"
    "  deleted INTEGER NOT NULL, hlc INTEGER NOT NULL, host BLOB NOT NULL);"
    "CREATE VIRTUAL TABLE IF NOT EXISTS history_fts USING fts5("
    "  command, content='history', content_rowid='rid', tokenize='trigram');"
    /* Stores made by the first, unreleased builds indexed through triggers. */
    "DROP TRIGGER IF EXISTS history_fts_insert;"
    "DROP TRIGGER IF EXISTS history_fts_update;";

#define ROW_FIELDS "time, command, cwd, exit, duration, session, hostname, deleted, hlc, host"

static int history_setup(sqlite3 *db, void *payload)
{
    history_state *hs = payload;
    static const char what[] = "preparing the history store";
    int rc = sqlite3_exec(db, history_schema, NULL, NULL, NULL);
    int err = 0;

    if (rc != SQLITE_OK)
        return rs__sqlite_error(db, rc, "creating the history tables");
    if (hs->st_lookup)
        return 0;
    if ((err = rs__prepare_kept(
             db, &hs->st_lookup,
             "SELECT rid, deleted, command, hlc, host FROM history WHERE id = ?1", what)) < 0 ||
        (err = rs__prepare_kept(db, &hs->st_insert,
                                "INSERT INTO history(rid, id, " ROW_FIELDS ") VALUES "
                                "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                                what)) < 0 ||
        (err = rs__prepare_kept(db, &hs->st_update,
                                "UPDATE history SET rid = ?1, time = ?3, command = ?4, cwd = ?5, "
                                "exit = ?6, duration = ?7, session = ?8, hostname = ?9, "
                                "deleted = ?10, hlc = ?11, host = ?12 WHERE rid = ?2",
                                what)) < 0 ||
        (err = rs__prepare_kept(db, &hs->st_fts_insert,
                                "INSERT INTO history_fts(rowid, command) VALUES (?1, ?2)", what)) <
            0 ||
        (err = rs__prepare_kept(db, &hs->st_fts_delete,
                                "INSERT INTO history_fts(history_fts, rowid, command) "
                                "VALUES ('delete', ?1, ?2)",
                                what)) < 0 ||
        (err = rs__prepare_kept(db, &hs->st_command,
                                "SELECT command FROM history WHERE rid = ?1 AND deleted = 0",
                                what)) < 0)
        return err;
    return 0;
}

static int history_reset(sqlite3 *db, void *payload)
{
    history_state *hs = payload;
    int rc = sqlite3_exec(db,
                          "INSERT INTO history_fts(history_fts) VALUES ('delete-all');"
                          "DELETE FROM history;",
                          NULL, NULL, NULL);
    hs->pending_count = 0;
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(db, rc, "emptying the history tables");
}

static void history_release(void *payload)
{
    history_state *hs = payload;
    if (hs == NULL)
        return;
    sqlite3_finalize(hs->st_lookup);
    sqlite3_finalize(hs->st_insert);
    sqlite3_finalize(hs->st_update);
    sqlite3_finalize(hs->st_fts_insert);
    sqlite3_finalize(hs->st_fts_delete);
    sqlite3_finalize(hs->st_command);
    rs_free(hs->pending);
    rs_free(hs);
}

/* The rowid an entry of this time and id would like (see the top of the file). */
static int64_t wanted_rid(int64_t time_ms, const rs_uuid *id)
{
    int64_t ms = time_ms < 0 ? 0 : time_ms > RID_MAX_MS ? RID_MAX_MS : time_ms;
    return ms << RID_ID_BITS | (int64_t)((id->bytes[14] & 0x0f) << 8 | id->bytes[15]);
}

/* An entry as the apply function writes it (text NULL for a tombstone). */
typedef struct row {
    rs_uuid id;
    int64_t time_ms;
    const char *command;
    const char *cwd;
    int64_t exit_code;
    int64_t duration_ms;
    const char *session;
    const char *hostname;
    const rs_record *rec; /* the record that wrote it: hlc and host */
} row;

/* What the table holds for an id. */
typedef struct stored {
    bool found;
    bool deleted;
    int64_t rid;
    char *command; /* live rows: for the index's delete */
    rs_hlc hlc;
    rs_uuid host;
} stored;

static int lookup(stored *out, history_state *hs, const rs_uuid *id)
{
    sqlite3_stmt *st = hs->st_lookup;
    int rc, err = 0;

    memset(out, 0, sizeof(*out));
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *command = (const char *)sqlite3_column_text(st, 2);
        out->found = true;
        out->rid = sqlite3_column_int64(st, 0);
        out->deleted = sqlite3_column_int(st, 1) != 0;
        out->hlc = (rs_hlc)sqlite3_column_int64(st, 3);
        if (sqlite3_column_bytes(st, 4) == 16)
            memcpy(out->host.bytes, sqlite3_column_blob(st, 4), 16);
        if (command && (out->command = rs__strdup(command)) == NULL)
            err = rs__error(RS_ENOMEM, "out of memory reading a history entry");
    } else if (rc != SQLITE_DONE) {
        err = rs__sqlite_error(hs->store->db, rc, "reading the history table");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err;
}

static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : rs__sqlite_error(db, rc, what);
}

static int fts_write(history_state *hs, sqlite3_stmt *st, int64_t rid, const char *command)
{
    sqlite3_bind_int64(st, 1, rid);
    sqlite3_bind_text(st, 2, command, -1, SQLITE_STATIC);
    return step_done(hs->store->db, st, "updating the history search index");
}

/*
 * Writes `r` with INSERT (old_rid < 0) or UPDATE of row old_rid, at the
 * rowid its time wants or, when another entry holds that one, the next
 * free one. The rowid used goes to *out.
 */
static int write_row(int64_t *out, history_state *hs, const row *r, int64_t old_rid)
{
    sqlite3_stmt *st = old_rid < 0 ? hs->st_insert : hs->st_update;
    /* A tombstone has no time: over a row it keeps the row's place (time 0 for
       every tombstone put them all near rowid 0, and the 4097th found none). */
    int64_t rid = r->command == NULL && old_rid >= 0 ? old_rid : wanted_rid(r->time_ms, &r->id);
    int rc;

    for (int probe = 0; probe < RID_PROBES; probe++, rid++) {
        sqlite3_bind_int64(st, 1, rid);
        if (old_rid < 0)
            sqlite3_bind_blob(st, 2, r->id.bytes, 16, SQLITE_STATIC);
        else
            sqlite3_bind_int64(st, 2, old_rid);
        if (r->command) {
            sqlite3_bind_int64(st, 3, r->time_ms);
            sqlite3_bind_text(st, 4, r->command, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 5, r->cwd, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 6, r->exit_code);
            sqlite3_bind_int64(st, 7, r->duration_ms);
            sqlite3_bind_text(st, 8, r->session, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 9, r->hostname, -1, SQLITE_STATIC);
        } else {
            for (int col = 3; col <= 9; col++)
                sqlite3_bind_null(st, col);
        }
        sqlite3_bind_int(st, 10, r->command == NULL);
        rs__bind_writer(st, 11, 12, r->rec);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc == SQLITE_DONE) {
            *out = rid;
            return 0;
        }
        if (rc != SQLITE_CONSTRAINT_PRIMARYKEY)
            return rs__sqlite_error(hs->store->db, rc, "writing a history entry");
    }
    return rs__error(RS_ERROR, "no free place for a history entry near rowid %lld",
                     (long long)wanted_rid(r->time_ms, &r->id));
}

static int defer_index(history_state *hs, int64_t rid)
{
    if (hs->pending_count == hs->pending_cap) {
        size_t cap = hs->pending_cap ? 2 * hs->pending_cap : 1024;
        int64_t *grown = rs__realloc(hs->pending, cap * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory importing history");
        hs->pending = grown;
        hs->pending_cap = cap;
    }
    hs->pending[hs->pending_count++] = rid;
    return 0;
}

/*
 * A create: a new entry, or a live entry replaced when (hlc, host) is
 * higher; never over a tombstone.
 */
static int apply_create(history_state *hs, const row *r)
{
    stored old;
    int64_t rid;
    int err;

    if ((err = lookup(&old, hs, &r->id)) < 0)
        return err;
    if (old.found &&
        (old.deleted || rs_hlc_cmp(r->rec->hlc, &r->rec->host, old.hlc, &old.host) <= 0))
        goto done;
    if (old.found && old.command &&
        (err = fts_write(hs, hs->st_fts_delete, old.rid, old.command)) < 0)
        goto done;
    if ((err = write_row(&rid, hs, r, old.found ? old.rid : -1)) < 0)
        goto done;
    if (hs->defer && !old.found)
        err = defer_index(hs, rid);
    else
        err = fts_write(hs, hs->st_fts_insert, rid, r->command);
done:
    rs_free(old.command);
    return err;
}

/*
 * A delete: a live entry becomes a tombstone whatever the clocks (its text
 * wiped, its index entry removed); a tombstone keeps the highest delete; an
 * unknown id gets a tombstone, so its create, arriving later, is ignored.
 */
static int apply_delete(history_state *hs, const row *r)
{
    stored old;
    int64_t rid;
    int err = 0;

    if ((err = lookup(&old, hs, &r->id)) < 0)
        return err;
    if (old.found && old.deleted && rs_hlc_cmp(r->rec->hlc, &r->rec->host, old.hlc, &old.host) <= 0)
        goto done;
    if (old.found && old.command &&
        (err = fts_write(hs, hs->st_fts_delete, old.rid, old.command)) < 0)
        goto done;
    err = write_row(&rid, hs, r, old.found ? old.rid : -1);
done:
    rs_free(old.command);
    return err;
}

/*
 * Applies one history record. A payload that is not a version-1 create or
 * delete is kept unapplied with a warning (builtin.h says why).
 */
static int history_apply(sqlite3 *db, const rs_record *rec, const uint8_t *plain, size_t len,
                         void *payload)
{
    history_state *hs = payload;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)plain, len, 0, &jerr);
    const char *op = NULL, *id_text = NULL;
    json_int_t time_ms = 0, exit_code = -1, duration = -1;
    char why[300];
    row r;
    int err = 0;

    (void)db;
    memset(&r, 0, sizeof(r));
    r.rec = rec;
    if (root == NULL) {
        snprintf(why, sizeof(why), "history payload is not JSON (%s)", jerr.text);
        return rs__keep_unapplied(hs->store, rec, why);
    }
    if (json_unpack(root, "{s:s, s:s}", "op", &op, "id", &id_text) != 0 ||
        rs_uuid_parse(&r.id, id_text) < 0) {
        err = rs__keep_unapplied(hs->store, rec, "history payload lacks a string op or a uuid id");
        goto done;
    }
    if (strcmp(op, "delete") == 0) {
        err = apply_delete(hs, &r);
        goto done;
    }
    if (strcmp(op, "create") != 0) {
        snprintf(why, sizeof(why), "history payload has unknown op '%.40s'", op);
        err = rs__keep_unapplied(hs->store, rec, why);
        goto done;
    }
    r.cwd = r.session = r.hostname = "";
    if (json_unpack(root, "{s:s, s:I, s?s, s?I, s?I, s?s, s?s}", "command", &r.command, "time",
                    &time_ms, "cwd", &r.cwd, "exit", &exit_code, "duration", &duration, "session",
                    &r.session, "hostname", &r.hostname) != 0) {
        err = rs__keep_unapplied(hs->store, rec,
                                 "history create lacks a string command or an integer time, or "
                                 "has a field of the wrong type");
        goto done;
    }
    r.time_ms = (int64_t)time_ms;
    r.exit_code = (int64_t)exit_code;
    r.duration_ms = (int64_t)duration;
    err = apply_create(hs, &r);
done:
    json_decref(root);
    return err;
}

int rs__history_register(rs_store *store)
{
    history_state *hs = rs__calloc(1, sizeof(*hs));
    rs_tag_def def;
    int err;

    if (hs == NULL)
        return rs__error(RS_ENOMEM, "out of memory registering the history store");
    hs->store = store;
    memset(&def, 0, sizeof(def));
    def.tag = RS_HISTORY_TAG;
    def.version = rs__history_version;
    def.setup = history_setup;
    def.apply = history_apply;
    def.reset = history_reset;
    def.payload = hs;
    def.release = history_release;
    def.snapshot_write = rs__history_snapshot_write;
    def.snapshot_load = rs__history_snapshot_load;
    if ((err = rs_store_register(store, &def)) < 0)
        history_release(hs);
    return err;
}

static history_state *history_of(rs_store *store)
{
    for (size_t i = 0; i < store->tag_count; i++)
        if (store->tags[i].def.apply == history_apply)
            return store->tags[i].def.payload;
    return NULL;
}

/*
 * The state of entry `id`: 1 live, 0 tombstone, RS_ENOTFOUND unknown
 * (without setting a message), or an RS_E* code on a database failure.
 */
static int entry_state(history_state *hs, const rs_uuid *id)
{
    stored old;
    int err = lookup(&old, hs, id);
    rs_free(old.command);
    if (err < 0)
        return err;
    if (!old.found)
        return RS_ENOTFOUND;
    return old.deleted ? 0 : 1;
}

/* A UTF-8 copy of s ("" for NULL), repaired as rs__utf8_repair does. */
static char *utf8_copy(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    char *out = rs__malloc(3 * len + 1);
    if (out)
        rs__utf8_repair(out, s ? s : "", len);
    return out;
}

/* Appends the create record of `e` (its text already UTF-8, id set). */
static int write_create(rs_store *store, const rs_history_entry *e)
{
    char id[RS_UUID_STRLEN + 1], *text = NULL;
    json_t *root;
    int err;

    rs_uuid_format(id, &e->id);
    root = json_pack("{s:s, s:s, s:I, s:s, s:s, s:I, s:I, s:s, s:s}", "op", "create", "id", id,
                     "time", (json_int_t)e->time_ms, "command", e->command, "cwd", e->cwd, "exit",
                     (json_int_t)e->exit_code, "duration", (json_int_t)e->duration_ms, "session",
                     e->session, "hostname", e->hostname);
    if (root == NULL || (text = json_dumps(root, JSON_COMPACT)) == NULL) {
        json_decref(root);
        return rs__error(RS_ENOMEM, "out of memory writing history entry %s", id);
    }
    json_decref(root);
    if ((err = rs_append(NULL, store, RS_HISTORY_TAG, RS_HISTORY_VERSION, text, strlen(text))) < 0)
        rs__error(err, "history entry %s: %s", id, rs_error_last());
    free(text);
    return err;
}

static void this_hostname(char *out, size_t size)
{
    if (gethostname(out, size) != 0)
        out[0] = '\0';
    out[size - 1] = '\0';
}

int rs_history_add(rs_uuid *out, rs_store *store, const rs_history_entry *entry)
{
    rs_history_entry e;
    char host[256], *command = NULL, *cwd = NULL, *session = NULL, *hostname = NULL;
    int err;

    if (entry == NULL || entry->command == NULL || entry->command[0] == '\0')
        return rs__error(RS_EINVAL, "history add: the command is empty");
    if (entry->hostname == NULL)
        this_hostname(host, sizeof(host));
    e = *entry;
    command = utf8_copy(entry->command);
    cwd = utf8_copy(entry->cwd);
    session = utf8_copy(entry->session);
    hostname = utf8_copy(entry->hostname ? entry->hostname : host);
    if (!command || !cwd || !session || !hostname) {
        err = rs__error(RS_ENOMEM, "out of memory adding a history entry");
        goto done;
    }
    e.command = command;
    e.cwd = cwd;
    e.session = session;
    e.hostname = hostname;
    if (e.time_ms == 0)
        e.time_ms = (int64_t)rs_now_ms();
    if (rs_uuid_is_nil(&e.id))
        rs_uuid_v7(&e.id, (uint64_t)e.time_ms);
    if ((err = write_create(store, &e)) < 0)
        goto done;
    if (out)
        *out = e.id;
done:
    rs_free(command);
    rs_free(cwd);
    rs_free(session);
    rs_free(hostname);
    return err;
}

int rs_history_delete(rs_store *store, const rs_uuid *id)
{
    history_state *hs = history_of(store);
    char text[RS_UUID_STRLEN + 1], payload[80];
    int state, err;

    if (hs == NULL)
        return rs__error(RS_ENOTFOUND, "store %s has no history store registered", store->dir);
    rs_uuid_format(text, id);
    state = entry_state(hs, id);
    if (state == RS_ENOTFOUND)
        return rs__error(RS_ENOTFOUND, "no history entry %s", text);
    if (state == 0)
        return rs__error(RS_ENOTFOUND, "history entry %s is deleted already", text);
    if (state < 0)
        return state;
    snprintf(payload, sizeof(payload), "{\"op\":\"delete\",\"id\":\"%s\"}", text);
    if ((err = rs_append(NULL, store, RS_HISTORY_TAG, RS_HISTORY_VERSION, payload,
                         strlen(payload))) < 0)
        return rs__error(err, "deleting history entry %s: %s", text, rs_error_last());
    return 0;
}

#define ENTRY_COLUMNS                                                                              \
    "h.id, h.time, h.command, h.cwd, h.exit, h.duration, h.session, h.hostname, h.deleted, "       \
    "h.hlc, h.host"

static const char *column_text(sqlite3_stmt *st, int col)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    return s ? s : "";
}

/* Steps `st` (selecting ENTRY_COLUMNS) handing each row to cb; finalizes st. */
static int walk_entries(rs_store *store, sqlite3_stmt *st, rs_history_cb cb, void *payload)
{
    rs_history_entry e;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(&e, 0, sizeof(e));
        if (sqlite3_column_bytes(st, 0) == 16)
            memcpy(e.id.bytes, sqlite3_column_blob(st, 0), 16);
        e.time_ms = sqlite3_column_int64(st, 1);
        e.command = column_text(st, 2);
        e.cwd = column_text(st, 3);
        e.exit_code = sqlite3_column_int64(st, 4);
        e.duration_ms = sqlite3_column_int64(st, 5);
        e.session = column_text(st, 6);
        e.hostname = column_text(st, 7);
        e.deleted = sqlite3_column_int(st, 8);
        e.hlc = (rs_hlc)sqlite3_column_int64(st, 9);
        if (sqlite3_column_bytes(st, 10) == 16)
            memcpy(e.host.bytes, sqlite3_column_blob(st, 10), 16);
        if ((ret = cb(&e, payload)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = rs__sqlite_error(store->db, rc, "reading the history table");
    sqlite3_finalize(st);
    return ret;
}

static int prepare_query(rs_store *store, sqlite3_stmt **out, const char *sql)
{
    int rc = sqlite3_prepare_v2(store->db, sql, -1, out, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(store->db, rc, "querying the history table");
}

static sqlite3_int64 sql_limit(size_t limit)
{
    return limit == 0 || limit > INT64_MAX ? -1 : (sqlite3_int64)limit;
}

int rs_history_list(rs_store *store, size_t limit, rs_history_cb cb, void *payload)
{
    sqlite3_stmt *st = NULL;
    int err;
    if ((err = prepare_query(store, &st,
                             "SELECT " ENTRY_COLUMNS " FROM history h WHERE h.deleted = 0 "
                             "ORDER BY h.rid DESC LIMIT ?1")) < 0)
        return err;
    sqlite3_bind_int64(st, 1, sql_limit(limit));
    return walk_entries(store, st, cb, payload);
}

int rs_history_foreach(rs_store *store, rs_history_cb cb, void *payload)
{
    sqlite3_stmt *st = NULL;
    int err;
    if ((err = prepare_query(store, &st, "SELECT " ENTRY_COLUMNS " FROM history h ORDER BY h.id")) <
        0)
        return err;
    return walk_entries(store, st, cb, payload);
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

/*
 * `text` as an FTS5 phrase ("..." with quotes doubled) or, for the LIKE
 * fallback, as %text% with the wildcards escaped by a backslash.
 */
static char *search_pattern(const char *text, bool phrase)
{
    size_t len = strlen(text);
    char *out = rs__malloc(2 * len + 3), *o = out;
    if (out == NULL)
        return NULL;
    *o++ = phrase ? '"' : '%';
    for (const char *p = text; *p; p++) {
        if (phrase && *p == '"')
            *o++ = '"';
        else if (!phrase && (*p == '%' || *p == '_' || *p == '\\'))
            *o++ = '\\';
        *o++ = *p;
    }
    *o++ = phrase ? '"' : '%';
    *o = '\0';
    return out;
}

int rs_history_search(rs_store *store, const char *text, size_t limit, rs_history_cb cb,
                      void *payload)
{
    sqlite3_stmt *st = NULL;
    bool fts;
    char *pattern;
    int err;

    if (text == NULL || *text == '\0')
        return rs__error(RS_EINVAL, "history search: the text is empty");
    fts = utf8_chars(text) >= 3;
    if ((pattern = search_pattern(text, fts)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory searching history");
    if (fts)
        err = prepare_query(store, &st,
                            "SELECT " ENTRY_COLUMNS " FROM history_fts f "
                            "JOIN history h ON h.rid = f.rowid "
                            "WHERE history_fts MATCH ?1 ORDER BY f.rowid DESC LIMIT ?2");
    else
        err = prepare_query(store, &st,
                            "SELECT " ENTRY_COLUMNS " FROM history h "
                            "WHERE h.deleted = 0 AND h.command LIKE ?1 ESCAPE '\\' "
                            "ORDER BY h.rid DESC LIMIT ?2");
    if (err < 0) {
        rs_free(pattern);
        return err;
    }
    sqlite3_bind_text(st, 1, pattern, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sql_limit(limit));
    err = walk_entries(store, st, cb, payload);
    rs_free(pattern);
    return err;
}

/*
 * Import. The file is read whole, parsed into entries whose commands are
 * collected (joined, unmetafied, repaired to UTF-8) in one arena, dated,
 * given deterministic ids, and written in one transaction.
 */
typedef struct parsed {
    size_t off; /* the command: arena[off .. off + len) */
    size_t len;
    int64_t time_ms; /* -1: the file gives none */
    int64_t duration_ms;
    bool timed;
} parsed;

typedef struct parser {
    const char *path;
    parsed *entries;
    size_t count;
    size_t cap;
    char *arena;
    size_t arena_len;
    size_t arena_cap;
    char *scratch; /* the command being assembled, raw */
    size_t scratch_len;
    size_t scratch_cap;
} parser;

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    size_t n = *cap ? *cap : 64;
    void *grown;
    if (need <= *cap)
        return 0;
    while (n < need)
        n *= 2;
    if ((grown = rs__realloc(*buf, n * elem)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory importing history");
    *buf = grown;
    *cap = n;
    return 0;
}

static int scratch_add(parser *p, const char *s, size_t len)
{
    int err = grow((void **)&p->scratch, &p->scratch_cap, p->scratch_len + len + 1, 1);
    if (err < 0)
        return err;
    memcpy(p->scratch + p->scratch_len, s, len);
    p->scratch_len += len;
    return 0;
}

/*
 * zsh keeps some bytes "metafied": 0x83 (Meta) followed by the byte XOR 32.
 * Undone in place.
 */
static void unmetafy(char *s, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < *len; i++) {
        if ((unsigned char)s[i] == 0x83 && i + 1 < *len)
            s[o++] = (char)(s[++i] ^ 32);
        else
            s[o++] = s[i];
    }
    *len = o;
}

/* Emits the scratch command (unless empty) with its time; clears scratch. */
static int emit(parser *p, int64_t time_ms, int64_t duration_ms, bool zsh)
{
    size_t len = p->scratch_len;
    parsed *e;
    int err;

    if (zsh)
        unmetafy(p->scratch, &len);
    while (len > 0 && p->scratch[len - 1] == '\n')
        len--;
    p->scratch_len = 0;
    if (len == 0)
        return 0;
    if ((err = grow((void **)&p->entries, &p->cap, p->count + 1, sizeof(*p->entries))) < 0 ||
        (err = grow((void **)&p->arena, &p->arena_cap, p->arena_len + 3 * len + 1, 1)) < 0)
        return err;
    e = &p->entries[p->count++];
    e->off = p->arena_len;
    e->len = rs__utf8_repair(p->arena + p->arena_len, p->scratch, len);
    p->arena_len += e->len + 1;
    e->timed = time_ms >= 0;
    e->time_ms = time_ms;
    e->duration_ms = duration_ms;
    return 0;
}

/* The next line of buf[*pos..len) without its "\n" or "\r\n"; false at the end. */
static bool next_line(const char **line, size_t *line_len, const char *buf, size_t len, size_t *pos)
{
    const char *nl;
    size_t n;
    if (*pos >= len)
        return false;
    nl = memchr(buf + *pos, '\n', len - *pos);
    n = nl ? (size_t)(nl - (buf + *pos)) : len - *pos;
    *line = buf + *pos;
    *pos += n + (nl != NULL);
    if (n > 0 && (*line)[n - 1] == '\r')
        n--;
    *line_len = n;
    return true;
}

/* Parses decimal digits s[*i..n) into *out; false when there are none or too many. */
static bool parse_digits(int64_t *out, const char *s, size_t n, size_t *i)
{
    int64_t v = 0;
    size_t start = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        if (*i - start >= 15)
            return false;
        v = v * 10 + (s[*i] - '0');
        (*i)++;
    }
    *out = v;
    return *i > start;
}

/* ": <start>:<elapsed>;" at the head of a zsh line; *skip is its length. */
static bool zsh_extended(int64_t *start, int64_t *elapsed, size_t *skip, const char *s, size_t n)
{
    size_t i = 2;
    if (n < 2 || s[0] != ':' || s[1] != ' ')
        return false;
    if (!parse_digits(start, s, n, &i) || i >= n || s[i++] != ':' ||
        !parse_digits(elapsed, s, n, &i) || i >= n || s[i++] != ';')
        return false;
    *skip = i;
    return true;
}

static int parse_zsh(parser *p, const char *buf, size_t len)
{
    const char *line;
    size_t n, pos = 0, skip;
    int64_t start, elapsed;
    int err;

    while (next_line(&line, &n, buf, len, &pos)) {
        int64_t time_ms = -1, duration_ms = -1;
        if (zsh_extended(&start, &elapsed, &skip, line, n)) {
            time_ms = start * 1000;
            duration_ms = elapsed * 1000;
            line += skip;
            n -= skip;
        }
        /* A trailing backslash continues the command on the next line. */
        while (n > 0 && line[n - 1] == '\\') {
            if ((err = scratch_add(p, line, n - 1)) < 0 || (err = scratch_add(p, "\n", 1)) < 0)
                return err;
            if (!next_line(&line, &n, buf, len, &pos)) {
                n = 0;
                break;
            }
        }
        if ((err = scratch_add(p, line, n)) < 0 || (err = emit(p, time_ms, duration_ms, true)) < 0)
            return err;
    }
    return 0;
}

/* "#" and digits only: bash's timestamp line. */
static bool bash_timestamp(int64_t *out, const char *s, size_t n)
{
    size_t i = 1;
    return n > 1 && s[0] == '#' && parse_digits(out, s, n, &i) && i == n;
}

static int parse_bash(parser *p, const char *buf, size_t len)
{
    const char *line;
    size_t n, pos = 0;
    int64_t ts, time_ms = -1;
    bool dated = false; /* after a timestamp: lines join until the next */
    int err;

    while (next_line(&line, &n, buf, len, &pos)) {
        if (bash_timestamp(&ts, line, n)) {
            if (dated && (err = emit(p, time_ms, -1, false)) < 0)
                return err;
            dated = true;
            time_ms = ts * 1000;
            continue;
        }
        if (dated && p->scratch_len > 0 && (err = scratch_add(p, "\n", 1)) < 0)
            return err;
        if ((err = scratch_add(p, line, n)) < 0)
            return err;
        if (!dated && (err = emit(p, -1, -1, false)) < 0)
            return err;
    }
    return dated ? emit(p, time_ms, -1, false) : 0;
}

/*
 * Dates the entries the file left undated: each goes 1 ms before the entry
 * after it, the last before `end_ms`, so they sort in file order.
 */
static void date_entries(parser *p, int64_t end_ms)
{
    int64_t anchor = end_ms;
    for (size_t i = p->count; i-- > 0;) {
        if (p->entries[i].timed)
            anchor = p->entries[i].time_ms;
        else
            p->entries[i].time_ms = --anchor;
    }
}

/* Counts of the entries seen so far per (time, command) hash, for their ordinals. */
typedef struct seen_slot {
    uint8_t key[16];
    uint32_t count;
    bool used;
} seen_slot;

typedef struct seen_table {
    seen_slot *slots;
    size_t cap; /* a power of two */
    size_t used;
} seen_table;

static uint64_t slot_hash(const uint8_t *key)
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return h;
}

/* The number of times `key` was seen before this call (0 the first time). */
static int seen_count(uint32_t *out, seen_table *t, const uint8_t *key)
{
    size_t i;
    if (t->used * 10 >= t->cap * 7) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        seen_slot *slots = rs__calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return rs__error(RS_ENOMEM, "out of memory importing history");
        for (size_t k = 0; k < t->cap; k++) {
            if (!t->slots[k].used)
                continue;
            for (i = slot_hash(t->slots[k].key) & (cap - 1); slots[i].used; i = (i + 1) & (cap - 1))
                ;
            slots[i] = t->slots[k];
        }
        rs_free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    for (i = slot_hash(key) & (t->cap - 1); t->slots[i].used; i = (i + 1) & (t->cap - 1)) {
        if (memcmp(t->slots[i].key, key, 16) == 0) {
            *out = t->slots[i].count++;
            return 0;
        }
    }
    memcpy(t->slots[i].key, key, 16);
    t->slots[i].used = true;
    t->slots[i].count = 1;
    t->used++;
    *out = 0;
    return 0;
}

static void put_be64(uint8_t *out, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

/*
 * An imported entry's id, a UUIDv8: the file's time for it in the first 48
 * bits (zero for an undated entry, whose date depends on the file's mtime),
 * then a hash of that time, the command, and how many identical (time,
 * command) entries came before it in the file.
 */
static int entry_id(rs_uuid *out, seen_table *seen, const parsed *e, const char *command)
{
    static const char domain[] = "recsync history import v1";
    crypto_generichash_state h;
    uint8_t base[16], num[8];
    uint32_t ordinal = 0;
    int err;

    crypto_generichash_init(&h, NULL, 0, sizeof(base));
    crypto_generichash_update(&h, (const uint8_t *)domain, sizeof(domain));
    put_be64(num, e->timed ? (uint64_t)e->time_ms : UINT64_MAX);
    crypto_generichash_update(&h, num, sizeof(num));
    crypto_generichash_update(&h, (const uint8_t *)command, e->len);
    crypto_generichash_final(&h, base, sizeof(base));
    if ((err = seen_count(&ordinal, seen, base)) < 0)
        return err;
    put_be64(num, ordinal);
    crypto_generichash_init(&h, NULL, 0, sizeof(out->bytes));
    crypto_generichash_update(&h, base, sizeof(base));
    crypto_generichash_update(&h, num, sizeof(num));
    crypto_generichash_final(&h, out->bytes, sizeof(out->bytes));
    /* The time leads, as in a UUIDv7, so one import's ids go into the id index in order. */
    put_be64(num, e->timed ? (uint64_t)e->time_ms : 0);
    memcpy(out->bytes, num + 2, 6);
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x80);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
    return 0;
}

static int read_file(char **out, size_t *out_len, int64_t *mtime_ms, const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int err = 0;

    if (f == NULL)
        return rs__error(errno == ENOENT ? RS_ENOTFOUND : RS_EIO, "cannot open %s: %s", path,
                         strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        err = rs__error(RS_EIO, "%s is not a regular file", path);
        goto done;
    }
    if ((buf = rs__malloc((size_t)st.st_size + 1)) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory reading %s (%lld bytes)", path,
                        (long long)st.st_size);
        goto done;
    }
    len = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        err = rs__error(RS_EIO, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    buf[len] = '\0';
    *mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
done:
    fclose(f);
    if (err < 0) {
        rs_free(buf);
        return err;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* Writes the parsed entries that are new, inside the caller's transaction. */
static int import_entries(rs_history_import_stats *stats, rs_store *store, history_state *hs,
                          parser *p)
{
    seen_table seen = {NULL, 0, 0};
    rs_history_entry e;
    char hostname[256];
    int state, err = 0;

    this_hostname(hostname, sizeof(hostname));
    memset(&e, 0, sizeof(e));
    e.cwd = "";
    e.session = "";
    e.hostname = hostname;
    e.exit_code = -1;
    for (size_t i = 0; i < p->count; i++) {
        const parsed *pe = &p->entries[i];
        const char *command = p->arena + pe->off;
        if ((err = entry_id(&e.id, &seen, pe, command)) < 0)
            goto done;
        state = entry_state(hs, &e.id);
        if (state >= 0) {
            stats->skipped++;
            continue;
        }
        if (state != RS_ENOTFOUND) {
            err = state;
            goto done;
        }
        e.command = command;
        e.time_ms = pe->time_ms;
        e.duration_ms = pe->duration_ms;
        if ((err = write_create(store, &e)) < 0) {
            rs__error(err, "%s: entry %zu: %s", p->path, i + 1, rs_error_last());
            goto done;
        }
        stats->imported++;
    }
done:
    rs_free(seen.slots);
    return err;
}

/*
 * Indexes the rows an import inserted, in one pass with no savepoint
 * between rows, inside the import's transaction. Plain INSERT ... VALUES:
 * an INSERT ... SELECT into FTS5 takes a statement journal, whose savepoint
 * makes FTS5 flush on every row.
 */
static int index_pending(history_state *hs)
{
    sqlite3_stmt *st = hs->st_command;
    int rc, err = 0;
    for (size_t i = 0; i < hs->pending_count && err == 0; i++) {
        sqlite3_bind_int64(st, 1, hs->pending[i]);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            err = fts_write(hs, hs->st_fts_insert, hs->pending[i],
                            (const char *)sqlite3_column_text(st, 0));
        else if (rc != SQLITE_DONE)
            err = rs__sqlite_error(hs->store->db, rc, "indexing imported history");
        sqlite3_reset(st);
    }
    hs->pending_count = 0;
    return err;
}

/*
 * Puts one history snapshot item (a row, rid first: history_snap.c) back
 * with the kept statements, and indexes it when live. Preparing two
 * statements per row and an INSERT ... RETURNING (whose statement journal
 * makes FTS5 flush its pending terms on every row) made loading 30k rows
 * take 2 s of CPU.
 */
int rs__history_load_row(void *payload, const uint8_t *item, size_t len)
{
    history_state *hs = payload;
    sqlite3 *db = hs->store->db;
    sqlite3_stmt *st = hs->st_command;
    int64_t rid;
    int rc, err;

    if ((err = rs__snap_bind_row(hs->st_insert, item, len)) < 0) {
        sqlite3_clear_bindings(hs->st_insert);
        return err;
    }
    if ((err = step_done(db, hs->st_insert, "loading a history snapshot")) < 0)
        return err;
    rid = sqlite3_last_insert_rowid(db);
    sqlite3_bind_int64(st, 1, rid);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        err = fts_write(hs, hs->st_fts_insert, rid, (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE)
        err = rs__sqlite_error(db, rc, "indexing a loaded history entry");
    sqlite3_reset(st);
    return err;
}

int rs_history_import(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                      const char *path)
{
    history_state *hs = history_of(store);
    rs_history_import_stats stats = {0, 0, 0};
    parser p;
    char *buf = NULL;
    size_t len = 0;
    int64_t mtime_ms = 0;
    bool savepoint = store->explicit_txn != 0, in_txn = false;
    int err;

    memset(&p, 0, sizeof(p));
    p.path = path;
    if (hs == NULL)
        return rs__error(RS_ENOTFOUND, "store %s has no history store registered", store->dir);
    if ((err = read_file(&buf, &len, &mtime_ms, path)) < 0)
        return err;
    err = format == RS_HISTORY_ZSH ? parse_zsh(&p, buf, len) : parse_bash(&p, buf, len);
    if (err < 0)
        goto done;
    date_entries(&p, mtime_ms);
    stats.entries = p.count;
    /* All or nothing: a transaction of its own, or a savepoint in the caller's. */
    if (store->explicit_txn)
        err = rs__exec(store, "SAVEPOINT rs_import", "starting a history import");
    else
        err = rs_store_begin(store);
    if (err < 0)
        goto done;
    in_txn = true;
    hs->defer = true;
    hs->pending_count = 0;
    if ((err = import_entries(&stats, store, hs, &p)) < 0 || (err = index_pending(hs)) < 0)
        goto done;
    in_txn = false;
    if (savepoint)
        err = rs__exec(store, "RELEASE rs_import", "finishing a history import");
    else
        err = rs_store_commit(store);
    if (err < 0)
        goto done;
    if (out)
        *out = stats;
done:
    hs->defer = false;
    hs->pending_count = 0;
    if (in_txn && savepoint)
        sqlite3_exec(store->db, "ROLLBACK TO rs_import; RELEASE rs_import", NULL, NULL, NULL);
    else if (in_txn)
        rs_store_rollback(store);
    rs_free(buf);
    rs_free(p.entries);
    rs_free(p.arena);
    rs_free(p.scratch);
    return err;
}
