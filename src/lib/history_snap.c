/*
 * The history store's snapshots (builtin.h): one item per row of the
 * history table, deleted entries (tombstones) included, with the row's
 * rid so a loaded store orders entries as the writer's did. Loading a row
 * also indexes its command for search, as applying a record does.
 */
#include "builtin.h"

#include <string.h>

#define SNAP_COLUMNS                                                                               \
    "rid, id, time, command, cwd, exit, duration, session, hostname, deleted, hlc, host"

int rs__history_snapshot_write(sqlite3 *db, int (*emit)(void *ctx, const void *item, size_t len),
                               void *emit_ctx, void *payload)
{
    (void)payload;
    return rs__snap_emit_rows(db, "SELECT " SNAP_COLUMNS " FROM history ORDER BY rid", emit,
                              emit_ctx);
}

int rs__history_snapshot_load(sqlite3 *db, const uint8_t *item, size_t len, void *payload)
{
    sqlite3_stmt *st = NULL;
    int rc, err;
    (void)payload;
    rc = sqlite3_prepare_v3(db,
                            "INSERT INTO history(" SNAP_COLUMNS ") VALUES "
                            "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) "
                            "RETURNING rid, command, deleted",
                            -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(db, rc, "loading a history snapshot");
    if ((err = rs__snap_bind_row(st, item, len)) < 0)
        goto done;
    if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
        err = rs__sqlite_error(db, rc, "loading a history snapshot");
        goto done;
    }
    if (sqlite3_column_int(st, 2) == 0 && sqlite3_column_type(st, 1) == SQLITE_TEXT) {
        sqlite3_stmt *fts = NULL;
        rc = sqlite3_prepare_v3(db, "INSERT INTO history_fts(rowid, command) VALUES (?1, ?2)", -1,
                                SQLITE_PREPARE_PERSISTENT, &fts, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int64(fts, 1, sqlite3_column_int64(st, 0));
            sqlite3_bind_text(fts, 2, (const char *)sqlite3_column_text(st, 1), -1,
                              SQLITE_TRANSIENT);
            rc = sqlite3_step(fts);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        }
        sqlite3_finalize(fts);
        if (rc != SQLITE_OK)
            err = rs__sqlite_error(db, rc, "indexing a loaded history entry");
    }
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
done:
    sqlite3_finalize(st);
    return err;
}
