/*
 * recsync — shell history on records of tag "history".
 *
 * Each create or delete of an entry is one record. Its payload (version 1)
 * is a JSON object:
 *   {"op": "create", "id": "<uuid>", "time": MS, "command": "...", "cwd": "...",
 *    "exit": N, "duration": MS, "session": "...", "hostname": "..."}
 *   {"op": "delete", "id": "<uuid>"}
 * Entries are materialized as records arrive, with a full-text index on the
 * command. A delete wins over the create of its entry whatever the order
 * they arrive in: the entry becomes a tombstone (its fields wiped) that no
 * create brings back. Of two creates of one id (the same file imported on
 * two devices), the one with the higher (HLC, host) is kept.
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
    const char *cwd;      /* "" when unknown (imports) */
    const char *session;  /* the shell session; "" when none */
    const char *hostname; /* the machine's name; NULL on add: this machine's */
    int64_t exit_code;    /* -1 when unknown (imports) */
    int64_t duration_ms;  /* -1 when unknown */
    int64_t time_ms;      /* Unix milliseconds when the command started; 0 on add: now */
    /* Filled in by the read functions, ignored by add: */
    int deleted;  /* a tombstone (rs_history_foreach only); its text fields are "" */
    rs_hlc hlc;   /* the record that won: its clock */
    rs_uuid host; /* and its device */
} rs_history_entry;

/*
 * Records a command. A nil `entry->id` gets a fresh UUIDv7; the id is
 * written to *out (may be NULL). The command must be non-empty; text
 * fields that are not UTF-8 are repaired (U+FFFD), as shells write bytes.
 */
int rs_history_add(rs_uuid *out, rs_store *store, const rs_history_entry *entry);

/* Deletes a live entry on every device. RS_ENOTFOUND when unknown or deleted already. */
int rs_history_delete(rs_store *store, const rs_uuid *id);

/* Hands out one entry, borrowed; a nonzero return stops the walk and is returned. */
typedef int (*rs_history_cb)(const rs_history_entry *entry, void *payload);

/*
 * Live entries, newest first (by time; entries of one millisecond in an
 * order their ids fix, the same on every device); `limit` 0 for all.
 */
int rs_history_list(rs_store *store, size_t limit, rs_history_cb cb, void *payload);

/*
 * Live entries whose command contains `text` (case-insensitive substring),
 * newest first; `limit` 0 for all. Texts of three or more characters use
 * the trigram index; shorter ones scan the table.
 */
int rs_history_search(rs_store *store, const char *text, size_t limit, rs_history_cb cb,
                      void *payload);

/* Every entry, tombstones included, ordered by id: the materialized state, for checks. */
int rs_history_foreach(rs_store *store, rs_history_cb cb, void *payload);

typedef enum rs_history_format { RS_HISTORY_BASH, RS_HISTORY_ZSH } rs_history_format;

typedef struct rs_history_import_stats {
    size_t entries;  /* entries read from the file */
    size_t imported; /* new entries written */
    size_t skipped;  /* entries already in the store (imported before, or deleted) */
} rs_history_import_stats;

/*
 * Imports a history file in one transaction (all or nothing).
 * zsh: plain lines or the extended format ": <start>:<elapsed>;<command>",
 * a trailing backslash continues a command on the next line, metafied bytes
 * are restored. bash: one command per line, or with "#<unix time>" lines,
 * which date the next entry; after one, the lines up to the next make one
 * (multi-line) entry, as bash itself reads them. Entries without a time are
 * dated just before the next dated entry (or the file's modification time),
 * keeping file order. Entry ids derive from the time, the command and its
 * occurrence count, so importing a file again, or a longer version of it,
 * adds only entries not seen before, on this or any synced device.
 * `out` may be NULL.
 */
int rs_history_import(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                      const char *path);

#ifdef __cplusplus
}
#endif
#endif
