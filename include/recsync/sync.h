/*
 * recsync — accounts, sync with a recsyncd server, and live sync.
 */
#ifndef RECSYNC_SYNC_H
#define RECSYNC_SYNC_H

#include "snapshot.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Settings sync keeps in the store (read them with rs_store_meta_get): the
 * server's base URL, the user name, this device's token, and the record of
 * the last successful sync (RS_META_LAST_SYNC, read it with rs_sync_last_get).
 */
#define RS_META_SERVER "sync.server"
#define RS_META_USER "sync.user"
#define RS_META_TOKEN "sync.token"
#define RS_META_LAST_SYNC "sync.last"
#define RS_META_LAST_INDEX "sync.last_index"

/*
 * Creates an account (or logs in to one) on the server at `url` for this
 * device's host id, and keeps the server URL, user name and the device's
 * token in the store. RS_EEXISTS when the name is taken, RS_EAUTH for a
 * wrong password, RS_ENET when the server cannot be reached. Nothing is
 * written to the store unless the server accepted.
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
/* The outcome named `name` ("noop", "pull", ...); RS_EINVAL for another name. */
int rs_sync_outcome_parse(rs_sync_outcome *out, const char *name);

typedef struct rs_sync_shard {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t uploaded;
    uint64_t downloaded;
} rs_sync_shard;

/*
 * A shard a sync held back: something about that shard alone (a record that
 * does not open, a clock too far ahead, a page the server got wrong, an
 * upload the server refused) stopped it at `idx`, while every other shard
 * synced. It is tried again by the next sync.
 */
typedef struct rs_sync_held {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    int upload;       /* 1: this device's records were not uploaded from idx; 0: a download */
    uint64_t idx;     /* the first idx not synced */
    int code;         /* the RS_E* code of the reason */
    char reason[600]; /* what is wrong, and how to repair it where it can be */
} rs_sync_held;

typedef struct rs_sync_report {
    rs_sync_outcome outcome;
    uint64_t uploaded;
    uint64_t downloaded;
    rs_sync_shard *shards; /* the shards that moved, by host and tag */
    size_t count;
    uint64_t seq; /* the server's seq after the sync */
    uint64_t elapsed_ms;
    rs_sync_held *held; /* the shards held back: a partial sync when held_count > 0 */
    size_t held_count;
    rs_snapshot_info *snapshots; /* snapshots loaded (a device started from one) or written */
    size_t snapshot_count;
    uint64_t compacted; /* local records dropped below the server's pruned start */
} rs_sync_report;

/* Progress of a long sync: records done of records to move. */
typedef void (*rs_progress_cb)(uint64_t done, uint64_t total, void *payload);

#define RS_SYNC_DEFAULT_PAGE_RECORDS 2000
#define RS_SYNC_DEFAULT_PAGE_BYTES (4u << 20)

typedef struct rs_sync_opts {
    size_t page_records;     /* records per page each way; 0: RS_SYNC_DEFAULT_PAGE_RECORDS */
    size_t page_bytes;       /* bound on an upload body; 0: RS_SYNC_DEFAULT_PAGE_BYTES */
    long connect_timeout_ms; /* 0: 5 s */
    long timeout_ms;         /* each request, start to end; 0: 120 s */
    rs_progress_cb progress; /* may be NULL; called from the calling thread */
    void *progress_payload;
    /* records beyond a tag's last snapshot that make the sync write one;
       0: RS_SNAPSHOT_DEFAULT_EVERY, UINT64_MAX: never */
    uint64_t snapshot_every;
    /* 1: never start a tag from a snapshot; replay its records (pruned ones are then held back) */
    int replay;
    /* how often a sync writes a checkpoint of the heads it has seen; 0: every
       RS_CHECKPOINT_DEFAULT_MS, 1: this sync, UINT64_MAX: never */
    uint64_t checkpoint_ms;
} rs_sync_opts;

/* The reserved tag of checkpoints: records carrying the chain heads a device has seen. */
#define RS_CHECKPOINT_TAG "rs.checkpoint"
#define RS_CHECKPOINT_DEFAULT_MS (10 * 60 * 1000)

/*
 * Why this store refuses to sync with its server, if it does: a shard the
 * server rolled back, hid or showed to devices as different histories
 * (RS_ENOTFOUND when all is well). Free with rs_free. Logging in again
 * (rs_login, rs_register) clears it.
 */
int rs_chain_alarm(char **out, rs_store *store);

/*
 * Syncs the store with its server: fetches the remote index, diffs it with
 * the local one, and before writing anything checks that the server's
 * records open under this store's key (RS_EKEY naming both key ids) and
 * that this device's shards on the server are the ones in the store
 * (RS_EAHEAD or RS_ECONFLICT for a store restored from an old copy). Then
 * it downloads the other devices' new records and uploads this device's,
 * in pages bounded by count and bytes; each downloaded page is checked
 * (contiguous, the shard asked for, opens under the key) and applied in
 * one transaction, so a failure or a crash at any point leaves a
 * consistent store and the next sync resumes. On success the report goes to *out
 * (free with rs_sync_report_free) and the store keeps it for rs_sync_last_get;
 * on failure nothing but the pages already applied is written. `opts` may
 * be NULL.
 *
 * A failure that concerns one shard alone holds that shard back and the
 * others sync: the call returns 0 with the shard, its position and the
 * reason in report->held (a partial sync). This device's records are
 * opened before they are uploaded, so a record damaged in the store is
 * never sent: its shard is uploaded up to it and held back from it.
 * Failures of the network, the account, the key or the local store stop
 * the whole sync and return their code.
 *
 * Snapshots (snapshot.h): a tag the store holds no records of, or whose
 * records the server pruned past what the store holds, starts from the
 * newest snapshot the server offers that covers the server's starts and
 * opens under the key; the sync then pulls only the records above it. A
 * store never syncs incrementally past pruned records: with no usable
 * snapshot those shards are held back (RS_EGONE). After the transfers the
 * sync acks the store's frontier, uploads snapshots written and not yet
 * uploaded, writes one for a tag past opts->snapshot_every new records,
 * and drops local records below the server's pruned start that a kept
 * snapshot covers.
 */
int rs_sync(rs_sync_report **out, rs_store *store, const rs_sync_opts *opts);
void rs_sync_report_free(rs_sync_report *report);

/* What rs_repair found and did. */
typedef struct rs_repair_report {
    uint64_t records;    /* records looked at */
    uint64_t damaged;    /* records that did not open (their bytes were altered) */
    uint64_t restored;   /* this device's records restored from the server's copy */
    uint64_t cut;        /* other devices' shards cut back below a damaged record */
    uint64_t dropped;    /* this device's records the server never received: lost */
    uint64_t resealed;   /* records after a lost one, sealed again one position lower */
    uint64_t unrepaired; /* damaged records left as they are (each named) */
} rs_repair_report;

/*
 * Repairs records damaged in the store (those rs_store_verify names as not
 * opening). Another device's damaged record: its shard is cut back below it
 * and the next sync downloads the rest again. This device's: restored from
 * the server's copy when that is the same record and opens; when the server
 * never received it, its content is lost everywhere, so it is dropped and
 * the shard's later records (none of which left this device) are sealed
 * again one position lower, keeping their ids and clocks. States of the
 * tags touched are rebuilt. One transaction: on failure nothing changes.
 * Needs the server only for this device's own damaged records (RS_ENET
 * and the like when it cannot be reached: nothing is dropped without its
 * word). `on_step` (may be NULL) hears each thing done or left, with a
 * negative code for what could not be repaired; that makes the call
 * return RS_ECRYPTO after committing the rest. `out` may be NULL.
 */
int rs_repair(rs_repair_report *out, rs_store *store, rs_problem_cb on_step, void *payload);

/* The server's index, as of now, with the default timeouts. */
int rs_remote_index(rs_index **out, rs_store *store);

/* As rs_remote_index, giving up after `timeout_ms` in all (0: the default). */
int rs_remote_index_timeout(rs_index **out, rs_store *store, long timeout_ms);

/* What the store remembers of its last successful sync. */
typedef struct rs_sync_last {
    uint64_t time_ms; /* when it ended, Unix milliseconds */
    rs_sync_outcome outcome;
    uint64_t uploaded;
    uint64_t downloaded;
    uint64_t seq;
    rs_index *remote; /* the server's index as the sync left it */
    /* the key the server's records were found to open under; empty if none was checked */
    char key_checked[RS_KEY_ID_STRLEN + 1];
} rs_sync_last;

/* RS_ENOTFOUND when the store never synced. Free with rs_sync_last_free. */
int rs_sync_last_get(rs_sync_last **out, rs_store *store);
void rs_sync_last_free(rs_sync_last *last);

/* ---- live sync ---- */

/* What an rs_watch callback reports. */
typedef enum rs_watch_kind {
    RS_WATCH_DOWNLOADED,  /* records of another device's shard were applied */
    RS_WATCH_UPLOADED,    /* this device's records were stored by the server */
    RS_WATCH_CONNECTED,   /* the event stream is open after `seq` */
    RS_WATCH_RESYNCED,    /* a full sync ran; the stream resumes after `seq` */
    RS_WATCH_DISCONNECTED /* the stream ended; `retry_ms` until the next attempt */
} rs_watch_kind;

typedef struct rs_watch_batch {
    rs_watch_kind kind;
    rs_uuid host; /* DOWNLOADED, UPLOADED: the shard */
    char tag[RS_TAG_MAX + 1];
    uint64_t start; /* the shard gained [start, end) */
    uint64_t end;
    uint64_t seq;      /* the server's seq for it (UPLOADED: the seq after the batch) */
    uint64_t count;    /* records applied (DOWNLOADED) or uploaded (UPLOADED) */
    long retry_ms;     /* DISCONNECTED */
    const char *error; /* DISCONNECTED, RESYNCED: why, or NULL */
} rs_watch_batch;

typedef void (*rs_watch_cb)(const rs_watch_batch *batch, void *payload);

typedef struct rs_watch_opts {
    rs_sync_opts sync;    /* the full syncs' settings (page sizes, timeouts) */
    int stop_fd;          /* > 0: the watch ends once this fd is readable (a self-pipe) */
    long backoff_min_ms;  /* first reconnect delay; 0: 50 ms */
    long backoff_max_ms;  /* bound of the doubling delay; 0: 5 s */
    long stall_ms;        /* a stream silent this long is reconnected; 0: 45 s */
    long idle_check_ms;   /* local writes are also looked for this often; 0: 250 ms */
    rs_watch_cb on_batch; /* may be NULL; called from the calling thread */
    void *payload;
} rs_watch_opts;

/*
 * Live sync until stopped: reads the server's resume point (GET
 * /api/v1/boot), runs a full sync, then follows the event stream from the
 * resume point, pulling each announced range of another device's shard
 * (one transaction per page) and pushing this device's records as soon as
 * the store changes, by this handle or by any other process (the store's
 * files are watched with inotify). A lost stream is reopened from the last
 * seq handled, with exponential backoff and jitter; a cursor the server no
 * longer keeps (410 resync_required) makes it sync fully and resume from a
 * fresh resume point. Returns 0 once `opts->stop_fd` is readable; a code
 * for what cannot heal by retrying (RS_EAUTH, RS_EKEY, RS_ECONFLICT, a
 * local store error). `opts` may be NULL.
 */
int rs_watch(rs_store *store, const rs_watch_opts *opts);

#ifdef __cplusplus
}
#endif
#endif
