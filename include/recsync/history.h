/*
 * recsync — shell history on records of tag "history".
 */
#ifndef RECSYNC_HISTORY_H
#define RECSYNC_HISTORY_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RS_HISTORY_TAG "history"

typedef struct rs_history_entry {
    rs_uuid id;
    const char *command;
    const char *cwd;
    const char *session;
    const char *hostname;
    int64_t exit_code;
    int64_t duration_ms;
    int64_t time_ms; /* Unix milliseconds when the command started */
} rs_history_entry;

/* Records a command. `entry->id` is made when nil; written back in *out_id. */
int rs_history_add(rs_uuid *out_id, rs_store *store, const rs_history_entry *entry);
int rs_history_delete(rs_store *store, const rs_uuid *id);

typedef int (*rs_history_cb)(const rs_history_entry *entry, void *payload);
/* Newest first; `limit` 0 for all. */
int rs_history_list(rs_store *store, size_t limit, rs_history_cb cb, void *payload);
int rs_history_search(rs_store *store, const char *text, size_t limit, rs_history_cb cb,
                      void *payload);

typedef enum rs_history_format { RS_HISTORY_BASH, RS_HISTORY_ZSH } rs_history_format;
/* Imports a history file; entries already imported are skipped. */
int rs_history_import(size_t *imported, rs_store *store, rs_history_format format,
                      const char *path);

#ifdef __cplusplus
}
#endif
#endif
