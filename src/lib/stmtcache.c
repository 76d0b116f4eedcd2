/*
 * The store's statement cache: the queries a sync runs every time (the
 * shard index, the snapshots waiting to go up, the checkpoints' claims)
 * are prepared once per open store instead of once per sync. Parsing and
 * planning one of them costs as much as running it (tens of thousands of
 * instructions), which is most of what a sync that moves nothing does.
 *
 * Entries are keyed by their SQL text. A statement is lent out with
 * rs__stmt and given back with rs__stmt_done, which resets it and clears
 * its bindings; a caller that asks again for a statement still lent out
 * (a callback re-entering the same query) gets a fresh one, finalized
 * when given back. A store is used by one thread at a time, so is this.
 */
#include "internal.h"

#include <string.h>

int rs__stmt(sqlite3_stmt **out, rs_store *store, const char *sql)
{
    rs_stmt_entry *free_slot = NULL;
    int rc;

    for (size_t i = 0; i < RS_STMT_CACHE; i++) {
        rs_stmt_entry *e = &store->stmts[i];
        if (e->sql == NULL) {
            if (free_slot == NULL)
                free_slot = e;
            continue;
        }
        if (e->lent || strcmp(e->sql, sql) != 0)
            continue;
        e->lent = 1;
        *out = e->st;
        return 0;
    }
    rc = sqlite3_prepare_v3(store->db, sql, -1, free_slot ? SQLITE_PREPARE_PERSISTENT : 0, out,
                            NULL);
    if (rc != SQLITE_OK) {
        *out = NULL;
        return rs__sqlite_error(store->db, rc, "preparing a store statement");
    }
    if (free_slot) {
        if ((free_slot->sql = rs__strdup(sql)) == NULL) {
            sqlite3_finalize(*out);
            *out = NULL;
            return rs__error(RS_ENOMEM, "out of memory preparing a store statement");
        }
        free_slot->st = *out;
        free_slot->lent = 1;
    }
    return 0;
}

void rs__stmt_done(rs_store *store, sqlite3_stmt *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < RS_STMT_CACHE; i++) {
        rs_stmt_entry *e = &store->stmts[i];
        if (e->st == st && e->sql != NULL) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            e->lent = 0;
            return;
        }
    }
    sqlite3_finalize(st);
}

void rs__stmt_cache_free(rs_store *store)
{
    for (size_t i = 0; i < RS_STMT_CACHE; i++) {
        rs_stmt_entry *e = &store->stmts[i];
        sqlite3_finalize(e->st);
        rs_free((char *)e->sql);
        memset(e, 0, sizeof(*e));
    }
}
