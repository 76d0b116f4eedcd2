/*
 * recsync — accounts, sync with a recsyncd server, and live sync.
 */
#ifndef RECSYNC_SYNC_H
#define RECSYNC_SYNC_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Creates an account (or logs in to one) on the server at `url` for this
 * device's host id, and keeps the server URL, user name and the device's
 * token in the store. RS_EEXISTS when the name is taken, RS_EAUTH for a
 * wrong password, RS_ENET when the server cannot be reached.
 */
int rs_register(rs_store *store, const char *url, const char *username, const char *password);
int rs_login(rs_store *store, const char *url, const char *username, const char *password);

typedef enum rs_sync_outcome {
    RS_SYNC_NOOP, /* nothing moved */
    RS_SYNC_PULL, /* local fast-forward: only downloads */
    RS_SYNC_PUSH, /* remote fast-forward: only uploads */
    RS_SYNC_MERGE /* both */
} rs_sync_outcome;

const char *rs_sync_outcome_name(rs_sync_outcome outcome);

typedef struct rs_sync_shard {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t uploaded;
    uint64_t downloaded;
} rs_sync_shard;

typedef struct rs_sync_report {
    rs_sync_outcome outcome;
    uint64_t uploaded;
    uint64_t downloaded;
    rs_sync_shard *shards; /* the shards that moved */
    size_t count;
    uint64_t seq; /* the server's seq after the sync */
    uint64_t elapsed_ms;
} rs_sync_report;

/* Progress of a long sync: records done of records to move. */
typedef void (*rs_progress_cb)(uint64_t done, uint64_t total, void *payload);

typedef struct rs_sync_opts {
    size_t page_records;     /* records per page; 0: the default */
    rs_progress_cb progress; /* may be NULL */
    void *progress_payload;
} rs_sync_opts;

/*
 * Syncs the store with its server: fetches the remote index, checks the
 * server's records open under this store's key before writing anything,
 * uploads this device's new records and downloads the others' in pages,
 * each page applied in one transaction. `opts` may be NULL. Free the report
 * with rs_sync_report_free.
 */
int rs_sync(rs_sync_report **out, rs_store *store, const rs_sync_opts *opts);
void rs_sync_report_free(rs_sync_report *report);

/* The server's index, as of now. */
int rs_remote_index(rs_index **out, rs_store *store);

#ifdef __cplusplus
}
#endif
#endif
