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
    (void)db;
    return rs__history_load_row(payload, item, len);
}
