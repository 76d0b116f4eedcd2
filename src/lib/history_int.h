/*
 * What the history store (history.c) shares with its importers
 * (history_import.c). Internal: not API.
 */
#ifndef RS_HISTORY_INT_H
#define RS_HISTORY_INT_H

#include "builtin.h"

typedef struct history_state history_state;

/* The history state registered on `store`, or NULL. */
history_state *rs__history_of(rs_store *store);

/*
 * The state of entry `id`: 1 live, 0 tombstone, RS_ENOTFOUND unknown
 * (without setting a message), or an RS_E* code on a database failure.
 */
int rs__history_entry_state(history_state *hs, const rs_uuid *id);

/* Appends the create record of `e` (its text already UTF-8, id set). */
int rs__history_write_create(rs_store *store, const rs_history_entry *e);

/* This machine's name into out[size] ("" when unknown). */
void rs__history_hostname(char *out, size_t size);

/*
 * An import's bracket: between begin and end, rows the apply function
 * inserts are indexed in one pass at end (ok true) instead of one by one;
 * end(false) drops the pending list (the caller rolls back).
 */
void rs__history_defer_begin(history_state *hs);
int rs__history_defer_end(history_state *hs, bool ok);

#endif
