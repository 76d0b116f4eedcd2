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
 * create brings back. Of two creates of one id, a finished one (exit status
 * or duration known: a shell hook's record written when the command ended)
 * wins over an unfinished one (written when it started); among equals (the
 * same file imported on two devices) the higher (HLC, host) is kept.
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

/*
 * Entries matching every field set here, newest first: `text` (a
 * case-insensitive substring of the command), `cwd`, `session` and
 * `hostname` (exact), `exit` when `has_exit`, a time in [since_ms, until_ms]
 * (0: unbounded). `unique` hands out only the newest entry of each command.
 * `limit` 0 for all (counted after `unique`).
 */
typedef struct rs_history_filter {
    const char *text;
    const char *cwd;
    const char *session;
    const char *hostname;
    int has_exit;
    int64_t exit_code;
    int64_t since_ms;
    int64_t until_ms;
    int unique;
    size_t limit;
} rs_history_filter;

int rs_history_find(rs_store *store, const rs_history_filter *filter, rs_history_cb cb,
                    void *payload);

typedef enum rs_history_format {
    RS_HISTORY_BASH,
    RS_HISTORY_ZSH,
    RS_HISTORY_FISH,  /* fish_history: "- cmd: ..." with "  when: ..." */
    RS_HISTORY_ATUIN, /* Atuin's history.db (SQLite) */
} rs_history_format;

typedef struct rs_history_import_stats {
    size_t entries;  /* entries read from the file */
    size_t imported; /* new entries written */
    size_t skipped;  /* entries already in the store (imported before, or deleted) */
} rs_history_import_stats;

/* bash: lines after a "#<time>" line make one entry up to the next (bash's lithist). */
#define RS_HISTORY_IMPORT_MULTILINE 0x1u

/*
 * Imports a history file in one transaction (all or nothing). `path` "-"
 * reads standard input; pipes and FIFOs are read to their end (a FIFO
 * nobody opens for writing within 10 s fails the import, naming it).
 *
 * zsh: plain lines or the extended format ": <start>:<elapsed>;<command>",
 * a trailing backslash continues a command on the next line, metafied bytes
 * are restored. bash: one command per line; a "#<unix time>" line dates the
 * entry after it only; with RS_HISTORY_IMPORT_MULTILINE the lines up to the
 * next timestamp make one entry. fish: fish_history entries and their
 * "when". atuin: every live row of Atuin's history table, with its cwd,
 * exit status, duration, session and host.
 *
 * Times out of range (before 1970, after 9999, or not numbers) are
 * ignored: the entry is undated. A zsh start too large for seconds but in
 * range as milliseconds is read as milliseconds. Undated entries take
 * times that keep the file's order: 1 ms after the entry before them, or
 * before the first dated entry (the file's modification time, or now, when
 * none is). Entry ids derive from the file's time for the entry (none for
 * undated ones), the command and its occurrence count (Atuin: its entry
 * id), so importing a file again, or a longer version of it, adds only
 * entries not seen before, on this or any synced device. `out` may be NULL.
 */
int rs_history_import_flags(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                            const char *path, unsigned flags);

/* rs_history_import_flags with no flags. */
int rs_history_import(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                      const char *path);

/*
 * The id a shell hook's entry gets: derived from its shell session and the
 * command's number in it, so the record written when the command starts
 * and the one written when it ends are one entry.
 */
void rs_history_hook_id(rs_uuid *out, const char *session, uint64_t seq);

#ifdef __cplusplus
}
#endif
#endif
