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
#include "history_int.h"

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

struct history_state {
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
};

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
             "SELECT rid, deleted, command, hlc, host, exit, duration FROM history WHERE id = ?1",
             what)) < 0 ||
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
    bool finished; /* exit status or duration known */
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
        out->finished = sqlite3_column_int64(st, 5) >= 0 || sqlite3_column_int64(st, 6) >= 0;
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
 * A create: a new entry, or a live entry replaced when (finished, hlc,
 * host) is higher; never over a tombstone. A shell hook writes an entry
 * unfinished when its command starts and finished when it ends; ranking
 * finished first keeps the end's record whatever order the two arrive in,
 * on every device.
 */
static int apply_create(history_state *hs, const row *r)
{
    stored old;
    int64_t rid;
    bool finished;
    int err;

    if ((err = lookup(&old, hs, &r->id)) < 0)
        return err;
    finished = r->exit_code >= 0 || r->duration_ms >= 0;
    if (old.found && (old.deleted || (old.finished && !finished) ||
                      (old.finished == finished &&
                       rs_hlc_cmp(r->rec->hlc, &r->rec->host, old.hlc, &old.host) <= 0)))
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

history_state *rs__history_of(rs_store *store)
{
    for (size_t i = 0; i < store->tag_count; i++)
        if (store->tags[i].def.apply == history_apply)
            return store->tags[i].def.payload;
    return NULL;
}

int rs__history_entry_state(history_state *hs, const rs_uuid *id)
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

int rs__history_write_create(rs_store *store, const rs_history_entry *e)
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

void rs__history_hostname(char *out, size_t size)
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
        rs__history_hostname(host, sizeof(host));
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
    if ((err = rs__history_write_create(store, &e)) < 0)
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
    history_state *hs = rs__history_of(store);
    char text[RS_UUID_STRLEN + 1], payload[80];
    int state, err;

    if (hs == NULL)
        return rs__error(RS_ENOTFOUND, "store %s has no history store registered", store->dir);
    rs_uuid_format(text, id);
    state = rs__history_entry_state(hs, id);
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

void rs__history_defer_begin(history_state *hs)
{
    hs->defer = true;
    hs->pending_count = 0;
}

int rs__history_defer_end(history_state *hs, bool ok)
{
    int err = ok ? index_pending(hs) : 0;
    hs->defer = false;
    hs->pending_count = 0;
    return err;
}

/* The commands handed out so far by a unique find: an open-addressing set. */
typedef struct command_set {
    char **slots; /* copies, freed with the set */
    size_t cap;   /* a power of two */
    size_t used;
} command_set;

static uint64_t command_hash(const char *s)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * UINT64_C(1099511628211);
    return h;
}

/* Adds `command`: 1 when new, 0 when there already, RS_ENOMEM. */
static int command_set_add(command_set *set, const char *command)
{
    size_t i;
    if (set->used * 10 >= set->cap * 7) {
        size_t cap = set->cap ? set->cap * 2 : 256;
        char **slots = rs__calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return rs__error(RS_ENOMEM, "out of memory searching history");
        for (size_t k = 0; k < set->cap; k++) {
            if (set->slots[k] == NULL)
                continue;
            for (i = command_hash(set->slots[k]) & (cap - 1); slots[i]; i = (i + 1) & (cap - 1))
                ;
            slots[i] = set->slots[k];
        }
        rs_free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    for (i = command_hash(command) & (set->cap - 1); set->slots[i]; i = (i + 1) & (set->cap - 1))
        if (strcmp(set->slots[i], command) == 0)
            return 0;
    if ((set->slots[i] = rs__strdup(command)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory searching history");
    set->used++;
    return 1;
}

static void command_set_free(command_set *set)
{
    for (size_t i = 0; i < set->cap; i++)
        rs_free(set->slots[i]);
    rs_free(set->slots);
}

/* What rs_history_find's callback wrapper carries. */
typedef struct find_walk {
    const rs_history_filter *filter;
    command_set seen;
    size_t handed;
    rs_history_cb cb;
    void *payload;
    int err; /* the set's failure, or the caller's callback's nonzero return */
} find_walk;

#define FIND_STOP 1

static int find_entry(const rs_history_entry *e, void *payload)
{
    find_walk *w = payload;
    int added, ret;
    if (w->filter->unique) {
        if ((added = command_set_add(&w->seen, e->command)) < 0) {
            w->err = added;
            return FIND_STOP;
        }
        if (added == 0)
            return 0;
    }
    if ((ret = w->cb(e, w->payload)) != 0) {
        w->err = ret;
        return FIND_STOP;
    }
    if (w->filter->limit && ++w->handed >= w->filter->limit)
        return FIND_STOP;
    return 0;
}

/*
 * Builds one SELECT for the filter: the trigram index for texts of three
 * or more characters, a LIKE scan for shorter ones, the other fields as
 * conditions on the row; newest first by rowid, which a time bound also
 * narrows (a row's rowid is its time's, or up to RID_PROBES above).
 * Unique finds drop the SQL limit and count in find_entry.
 */
int rs_history_find(rs_store *store, const rs_history_filter *filter, rs_history_cb cb,
                    void *payload)
{
    char sql[1024];
    size_t n = 0;
    sqlite3_stmt *st = NULL;
    char *pattern = NULL;
    bool fts = false;
    find_walk w;
    int err;

    if (filter == NULL || cb == NULL)
        return rs__error(RS_EINVAL, "history find: no filter or callback");
    if (filter->text && *filter->text) {
        fts = utf8_chars(filter->text) >= 3;
        if ((pattern = search_pattern(filter->text, fts)) == NULL)
            return rs__error(RS_ENOMEM, "out of memory searching history");
    }
#define SQL_ADD(...) n += (size_t)snprintf(sql + n, sizeof(sql) - n, __VA_ARGS__)
    if (fts)
        SQL_ADD("SELECT " ENTRY_COLUMNS " FROM history_fts f JOIN history h ON h.rid = f.rowid "
                "WHERE history_fts MATCH ?1");
    else
        SQL_ADD("SELECT " ENTRY_COLUMNS " FROM history h WHERE h.deleted = 0%s",
                pattern ? " AND h.command LIKE ?1 ESCAPE '\\'" : "");
    if (filter->cwd)
        SQL_ADD(" AND h.cwd = ?2");
    if (filter->session)
        SQL_ADD(" AND h.session = ?3");
    if (filter->hostname)
        SQL_ADD(" AND h.hostname = ?4");
    if (filter->has_exit)
        SQL_ADD(" AND h.exit = ?5");
    if (filter->since_ms > 0)
        SQL_ADD(" AND h.time >= ?6 AND h.rid >= ?6 << %d", RID_ID_BITS);
    if (filter->until_ms > 0)
        SQL_ADD(" AND h.time <= ?7 AND h.rid <= (?7 << %d) + %d", RID_ID_BITS,
                (1 << RID_ID_BITS) + RID_PROBES);
    SQL_ADD(" ORDER BY h.rid DESC LIMIT ?8");
#undef SQL_ADD
    if ((err = prepare_query(store, &st, sql)) < 0) {
        rs_free(pattern);
        return err;
    }
    if (pattern)
        sqlite3_bind_text(st, 1, pattern, -1, SQLITE_STATIC);
    if (filter->cwd)
        sqlite3_bind_text(st, 2, filter->cwd, -1, SQLITE_STATIC);
    if (filter->session)
        sqlite3_bind_text(st, 3, filter->session, -1, SQLITE_STATIC);
    if (filter->hostname)
        sqlite3_bind_text(st, 4, filter->hostname, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, filter->exit_code);
    sqlite3_bind_int64(st, 6, filter->since_ms < RID_MAX_MS ? filter->since_ms : RID_MAX_MS);
    sqlite3_bind_int64(st, 7, filter->until_ms < RID_MAX_MS ? filter->until_ms : RID_MAX_MS);
    sqlite3_bind_int64(st, 8, filter->unique ? -1 : sql_limit(filter->limit));
    memset(&w, 0, sizeof(w));
    w.filter = filter;
    w.cb = cb;
    w.payload = payload;
    err = walk_entries(store, st, find_entry, &w);
    if (err == FIND_STOP)
        err = w.err;
    command_set_free(&w.seen);
    rs_free(pattern);
    return err;
}

void rs_history_hook_id(rs_uuid *out, const char *session, uint64_t seq)
{
    static const char domain[] = "recsync history hook v1";
    crypto_generichash_state h;
    uint8_t num[8];

    for (int i = 7; i >= 0; i--, seq >>= 8)
        num[i] = (uint8_t)seq;
    crypto_generichash_init(&h, NULL, 0, sizeof(out->bytes));
    crypto_generichash_update(&h, (const uint8_t *)domain, sizeof(domain));
    crypto_generichash_update(&h, (const uint8_t *)(session ? session : ""),
                              session ? strlen(session) : 0);
    crypto_generichash_update(&h, num, sizeof(num));
    crypto_generichash_final(&h, out->bytes, sizeof(out->bytes));
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x80);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
}
