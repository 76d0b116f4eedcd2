/*
 * The snapshot steps of a sync (snapshot_int.h): starting tags from
 * snapshots before the diff, and acks, snapshot upload and writing, and
 * local compaction after the transfers.
 *
 * The rule that keeps deletes from ever being skipped: a store whose end
 * of a shard is below the server's start (records pruned) never diffs past
 * the gap. It loads a snapshot that covers the server's start, whose state
 * holds every delete below it, or that shard is held back.
 */
#include "snapshot_int.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define META_ACKED "sync.acked"

void rs__sync_snaps_free(rs_sync_snaps *s)
{
    rs_free(s->list);
    rs_free(s->gone);
    memset(s, 0, sizeof(*s));
}

static int add_info(rs_sync_snaps *s, const rs_snapshot_info *info)
{
    if (s->count == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 4;
        rs_snapshot_info *grown = rs__realloc(s->list, cap * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory");
        s->list = grown;
        s->cap = cap;
    }
    s->list[s->count++] = *info;
    return 0;
}

static int add_gone(rs_sync_snaps *s, const char *tag, int code, const char *reason)
{
    void *grown = rs__realloc(s->gone, (s->gone_count + 1) * sizeof(*s->gone));
    if (grown == NULL)
        return rs__error(RS_ENOMEM, "out of memory");
    s->gone = grown;
    snprintf(s->gone[s->gone_count].tag, sizeof(s->gone->tag), "%s", tag);
    s->gone[s->gone_count].code = code;
    snprintf(s->gone[s->gone_count].reason, sizeof(s->gone->reason), "%s", reason);
    s->gone_count++;
    return 0;
}

const char *rs__sync_gone(const rs_sync_snaps *s, const char *tag, int *code)
{
    for (size_t i = 0; i < s->gone_count; i++)
        if (strcmp(s->gone[i].tag, tag) == 0) {
            *code = s->gone[i].code;
            return s->gone[i].reason;
        }
    return NULL;
}

/* Whether the store lacks records of `tag` that the server pruned (must load a snapshot). */
static int pruned_past(const char *tag, const rs_index *local, const rs_index *remote)
{
    for (size_t i = 0; i < remote->count; i++) {
        const rs_shard *rs = &remote->shards[i], *ls;
        if (strcmp(rs->tag, tag) != 0 || rs->start == 0)
            continue;
        ls = rs_index_find(local, &rs->host, tag);
        if ((ls ? ls->end : 0) < rs->start)
            return 1;
    }
    return 0;
}

/* Whether the store holds no record of `tag` while the server does. */
static int fresh(const char *tag, const rs_index *local, const rs_index *remote)
{
    uint64_t there = 0;
    for (size_t i = 0; local && i < local->count; i++)
        if (strcmp(local->shards[i].tag, tag) == 0 && local->shards[i].end > 0)
            return 0;
    for (size_t i = 0; i < remote->count; i++)
        if (strcmp(remote->shards[i].tag, tag) == 0)
            there += remote->shards[i].end - remote->shards[i].start;
    return there > 0;
}

/* A failure one tag can be held back for: the others still sync. */
static int tag_local(int code)
{
    return code == RS_EGONE || code == RS_ESERVER || code == RS_ECRYPTO || code == RS_EKEY ||
           code == RS_EHOLE || code == RS_ENOTFOUND || code == RS_ECLOCK;
}

int rs__sync_bootstrap(rs_sync_snaps *s, int *reloaded, rs_store *store, rs_client *client,
                       const rs_index *local, const rs_index *remote)
{
    int err = 0;
    *reloaded = 0;
    for (size_t i = 0; i < remote->count && err == 0; i++) {
        const char *tag = remote->shards[i].tag;
        rs_snapshot_info info;
        int must, loaded = 0, seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(remote->shards[j].tag, tag) == 0;
        if (seen)
            continue;
        must = pruned_past(tag, local, remote);
        if (!must && !(fresh(tag, local, remote) && rs_snapshot_supported(store, tag)))
            continue;
        err = rs__snapshot_bootstrap(&info, &loaded, store, client, tag, local, remote, must);
        if (err < 0 && tag_local(err)) {
            /* Without `must` a refused snapshot only means replaying the log. */
            err = must ? add_gone(s, tag, err, rs_error_last()) : 0;
            continue;
        }
        if (err == 0 && loaded) {
            info.loaded = 1;
            *reloaded = 1;
            err = add_info(s, &info);
        }
    }
    return err;
}

/*
 * Acks the store's frontier unless it is what was acked last: for every
 * shard the server has, the end below which the store applied everything
 * (no further than the server's end: an upload held back is not there).
 */
static int ack(rs_store *store, rs_client *client, const rs_index *remote)
{
    rs_index *local = NULL;
    rs_buf body = {0};
    char *last = NULL;
    const rs_buf *resp;
    int err;

    if ((err = rs_store_index(&local, store)) < 0)
        return err;
    size_t n = 0;
    for (size_t i = 0; i < local->count; i++) {
        rs_shard sh = local->shards[i];
        const rs_shard *rs = rs_index_find(remote, &sh.host, sh.tag);
        if (rs == NULL)
            continue;
        sh.start = 0;
        sh.end = sh.end < rs->end ? sh.end : rs->end;
        local->shards[n++] = sh;
    }
    local->count = n;
    if ((err = rs_wire_frontier_encode(&body, local)) < 0)
        goto done;
    if (rs_store_meta_get(&last, store, META_ACKED) == 0 && strcmp(last, body.ptr) == 0)
        goto done;
    if (local->count == 0)
        goto done;
    if ((err = rs__client_request(&resp, NULL, client, "/api/v1/acks", body.ptr, body.len, 1)) < 0)
        goto done;
    err = rs_store_meta_set(store, META_ACKED, body.ptr);
done:
    rs_free(last);
    rs_buf_free(&body);
    rs_index_free(local);
    return err;
}

static void warn(rs_store *store, const char *what)
{
    rs__warn(store, "sync: %s: %s", what, rs_error_last());
}

void rs__sync_after(rs_sync_snaps *s, rs_store *store, rs_client *client, const rs_index *remote,
                    uint64_t every, int moved)
{
    rs_index *local = NULL;
    uint64_t pushed = 0;

    /*
     * A sync that moved nothing changed no frontier and no count towards a
     * snapshot: only an upload a `recsync snapshot` left pending, and the
     * server's starts (it may have pruned since), are looked at; a no-op
     * sync stays a single request.
     */
    if (!moved) {
        if (rs__snapshot_push(&pushed, store, client) < 0)
            warn(store, "uploading a snapshot");
        if (rs__snapshot_compact(&s->compacted, store, remote) < 0)
            warn(store, "dropping local records below the server's pruned start");
        return;
    }
    if (ack(store, client, remote) < 0)
        warn(store, "acking the applied frontier");
    if (rs_store_index(&local, store) == 0) {
        for (size_t i = 0; i < local->count && every != UINT64_MAX; i++) {
            const char *tag = local->shards[i].tag;
            uint64_t due = 0;
            rs_snapshot_info info;
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++)
                seen = strcmp(local->shards[j].tag, tag) == 0;
            if (seen || !rs_snapshot_supported(store, tag))
                continue;
            if (rs__snapshot_due(&due, store, tag) < 0 || due < every)
                continue;
            if (rs_snapshot_write(&info, store, tag) < 0) {
                warn(store, "writing a snapshot");
                continue;
            }
            info.loaded = 0;
            if (add_info(s, &info) < 0)
                break;
        }
        rs_index_free(local);
    }
    if (rs__snapshot_push(&pushed, store, client) < 0)
        warn(store, "uploading a snapshot");
    if (rs__snapshot_compact(&s->compacted, store, remote) < 0)
        warn(store, "dropping local records below the server's pruned start");
}
