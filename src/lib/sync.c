/*
 * Accounts and sync with a recsyncd server (sync.h).
 *
 * A sync is: the remote index, the diff with the local one, checks that
 * nothing would be written under the wrong key or over a diverged shard,
 * then the transfers. Each direction is a two-stage pipeline over a few
 * reusable page slots, so memory stays bounded by those slots whatever the
 * number of records:
 *
 *   upload:   main thread reads and encodes page k+1 while a worker POSTs page k
 *   download: a worker GETs and decodes page k+1 while the main thread opens
 *             and inserts page k (one SQLite transaction per page)
 *
 * The store's SQLite handle is only ever used by the calling thread; the
 * worker owns the HTTP client while the pipeline runs.
 */
#include "client.h"
#include "keyring.h"
#include "snapshot_int.h"

#include <jansson.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SHARD_NAME (RS_UUID_STRLEN + RS_TAG_MAX + 2)
#define PIPE_SLOTS 3

const char *rs_sync_outcome_name(rs_sync_outcome outcome)
{
    switch (outcome) {
    case RS_SYNC_NOOP:
        return "noop";
    case RS_SYNC_PULL:
        return "pull";
    case RS_SYNC_PUSH:
        return "push";
    case RS_SYNC_MERGE:
        return "merge";
    }
    return "unknown";
}

int rs_sync_outcome_parse(rs_sync_outcome *out, const char *name)
{
    static const rs_sync_outcome all[] = {RS_SYNC_NOOP, RS_SYNC_PULL, RS_SYNC_PUSH, RS_SYNC_MERGE};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (name && strcmp(name, rs_sync_outcome_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return rs__error(RS_EINVAL, "'%.40s' is not a sync outcome", name ? name : "");
}

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- accounts ---- */

/* The device's name for the server: `name`, else the hostname (control characters dropped). */
static void device_name(char *out, size_t size, const char *name)
{
    char host[256] = "", all[512];
    size_t n = 0, len = 0;
    if (name == NULL || *name == '\0') {
        if (gethostname(host, sizeof(host) - 1) != 0)
            host[0] = '\0';
        name = host;
    }
    for (const char *p = name; *p && len + 1 < sizeof(all); p++)
        if ((unsigned char)*p >= 0x20 && *p != 0x7f)
            all[len++] = *p;
    all[len] = '\0';
    n = len < RS_WIRE_DEVICE_NAME_MAX ? len : RS_WIRE_DEVICE_NAME_MAX;
    if (n + 1 > size)
        n = size - 1;
    /* Never cut a UTF-8 sequence in two. */
    while (n > 0 && n < len && ((unsigned char)all[n] & 0xc0) == 0x80)
        n--;
    memcpy(out, all, n);
    out[n] = '\0';
}

/*
 * register and login: one POST with the credentials, this device's host
 * id and name; a login then checks the key against one of the server's
 * records with the new token (a wrong key revokes that token again and
 * writes nothing). On success the URL, user and token go into the store
 * in one transaction. A different server or user than before forgets the
 * last sync, which described another account.
 */
static int account(rs_store *store, const char *url, const char *username, const char *password,
                   const char *name, int create)
{
    const char *path = create ? "/api/v1/register" : "/api/v1/login";
    rs_client *client = NULL;
    rs_buf body = {0};
    const rs_buf *resp = NULL;
    char *token = NULL, *user = NULL, *old_url = NULL, *old_user = NULL;
    rs_uuid host;
    char dev_name[RS_WIRE_DEVICE_NAME_MAX + 1];
    int err;

    if (username == NULL || !rs_wire_username_valid(username))
        return rs__error(RS_EINVAL, "user name '%.70s' is not valid: 1-64 of [A-Za-z0-9._@+-]",
                         username ? username : "");
    if (password == NULL || *password == '\0' || strlen(password) > RS_WIRE_PASSWORD_MAX)
        return rs__error(RS_EINVAL, "the password for user %s must be 1-%d bytes", username,
                         RS_WIRE_PASSWORD_MAX);
    if (name && *name && !rs_wire_device_name_valid(name))
        return rs__error(RS_EINVAL,
                         "device name '%.70s' is not valid: 1-64 bytes, no control "
                         "characters",
                         name);
    device_name(dev_name, sizeof(dev_name), name);
    rs_store_host(&host, store);
    if ((err = rs__client_new(&client, url, NULL, NULL)) < 0 ||
        (err = rs_wire_credentials_encode_named(&body, username, password, &host, dev_name)) < 0)
        goto done;
    if ((err = rs__client_request(&resp, NULL, client, path, body.ptr, body.len, 0)) < 0)
        goto done;
    if ((err = rs_wire_token_decode(&token, &user, resp->ptr, resp->len)) < 0) {
        err = rs__error(RS_ESERVER, "server %s answered %s for user %s with no token: %s",
                        rs__client_url(client), path, username, rs_error_last());
        goto done;
    }
    if (!create && (err = rs__login_key_check(store, rs__client_url(client), token)) < 0)
        goto done;
    if (rs_store_meta_get(&old_url, store, RS_META_SERVER) < 0)
        old_url = NULL;
    if (rs_store_meta_get(&old_user, store, RS_META_USER) < 0)
        old_user = NULL;
    if ((err = rs_store_begin(store)) < 0)
        goto done;
    if ((err = rs_store_meta_set(store, RS_META_SERVER, rs__client_url(client))) < 0 ||
        (err = rs_store_meta_set(store, RS_META_USER, user)) < 0 ||
        (err = rs_store_meta_set(store, RS_META_TOKEN, token)) < 0 ||
        (err = rs__chain_forget_alarm(store)) < 0) {
        rs_store_rollback(store);
        goto done;
    }
    if (old_url == NULL || old_user == NULL || strcmp(old_url, rs__client_url(client)) != 0 ||
        strcmp(old_user, user) != 0) {
        if ((err = rs_store_meta_del(store, RS_META_LAST_SYNC)) < 0 ||
            (err = rs_store_meta_del(store, RS_META_LAST_INDEX)) < 0) {
            rs_store_rollback(store);
            goto done;
        }
    }
    err = rs_store_commit(store);
done:
    if (body.ptr)
        sodium_memzero(body.ptr, body.len);
    rs_buf_free(&body);
    if (token) {
        sodium_memzero(token, strlen(token));
        rs_free(token);
    }
    rs_free(user);
    rs_free(old_url);
    rs_free(old_user);
    rs__client_free(client);
    return err;
}

int rs_register(rs_store *store, const char *url, const char *username, const char *password)
{
    return account(store, url, username, password, NULL, 1);
}

int rs_login(rs_store *store, const char *url, const char *username, const char *password)
{
    return account(store, url, username, password, NULL, 0);
}

int rs_register_ex(rs_store *store, const char *url, const char *username, const char *password,
                   const rs_login_opts *opts)
{
    return account(store, url, username, password, opts ? opts->device_name : NULL, 1);
}

int rs_login_ex(rs_store *store, const char *url, const char *username, const char *password,
                const rs_login_opts *opts)
{
    return account(store, url, username, password, opts ? opts->device_name : NULL, 0);
}

/* A client for the store's server and token. RS_EAUTH when it has none. */
int rs__store_client(rs_client **out, rs_store *store, const rs_client_opts *opts)
{
    char *url = NULL, *token = NULL;
    int err;

    err = rs_store_meta_get(&url, store, RS_META_SERVER);
    if (err == 0)
        err = rs_store_meta_get(&token, store, RS_META_TOKEN);
    if (err == RS_ENOTFOUND)
        err = rs__error(RS_EAUTH,
                        "store %s is not logged in to a server: run 'recsync register' or "
                        "'recsync login' first",
                        rs_store_dir(store));
    if (err == 0)
        err = rs__client_new(out, url, token, opts);
    rs_free(url);
    if (token) {
        sodium_memzero(token, strlen(token));
        rs_free(token);
    }
    return err;
}

int rs__fetch_index(rs_index **out, rs_client *client)
{
    const rs_buf *resp;
    int err = rs__client_request(&resp, NULL, client, "/api/v1/index", NULL, 0, 1);
    if (err < 0)
        return err;
    if ((err = rs_wire_index_decode(out, resp->ptr, resp->len)) < 0)
        return rs__error(RS_ESERVER, "server %s sent an index that does not parse: %s",
                         rs__client_url(client), rs_error_last());
    return 0;
}

int rs_remote_index_timeout(rs_index **out, rs_store *store, long timeout_ms)
{
    rs_client_opts opts = {0};
    rs_client *client = NULL;
    int err;
    if (timeout_ms > 0) {
        opts.timeout_ms = timeout_ms;
        opts.connect_timeout_ms = timeout_ms;
    }
    if ((err = rs__store_client(&client, store, &opts)) < 0)
        return err;
    err = rs__fetch_index(out, client);
    rs__client_free(client);
    return err;
}

int rs_remote_index(rs_index **out, rs_store *store)
{
    return rs_remote_index_timeout(out, store, 0);
}

/* ---- the pipeline: a few slots passed between a producer and a consumer ---- */

typedef struct pipeline {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t free_q[PIPE_SLOTS], free_head, free_n;
    size_t full_q[PIPE_SLOTS], full_head, full_n;
    int producer_done;
    int failed; /* the first failure's code, from either side */
    char message[1024];
    uint64_t done; /* records through the consumer */
} pipeline;

static void pl_init(pipeline *pl)
{
    memset(pl, 0, sizeof(*pl));
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv, NULL);
    for (size_t i = 0; i < PIPE_SLOTS; i++)
        pl->free_q[i] = i;
    pl->free_n = PIPE_SLOTS;
}

static void pl_destroy(pipeline *pl)
{
    pthread_mutex_destroy(&pl->mu);
    pthread_cond_destroy(&pl->cv);
}

/* Records this thread's failure `code` (its message is rs_error_last()) and wakes the other side.
 */
static int pl_fail(pipeline *pl, int code)
{
    pthread_mutex_lock(&pl->mu);
    if (pl->failed == 0) {
        pl->failed = code;
        snprintf(pl->message, sizeof(pl->message), "%s", rs_error_last());
    }
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
    return code;
}

/* The failure in this thread's error message; the caller holds the lock. */
static int pl_raise_locked(pipeline *pl)
{
    return rs__error(pl->failed, "%s", pl->message);
}

static int pl_take_free(pipeline *pl, size_t *slot)
{
    int err = 0;
    pthread_mutex_lock(&pl->mu);
    while (pl->free_n == 0 && pl->failed == 0)
        pthread_cond_wait(&pl->cv, &pl->mu);
    if (pl->failed) {
        err = pl_raise_locked(pl);
    } else {
        *slot = pl->free_q[pl->free_head];
        pl->free_head = (pl->free_head + 1) % PIPE_SLOTS;
        pl->free_n--;
    }
    pthread_mutex_unlock(&pl->mu);
    return err;
}

static void pl_put_full(pipeline *pl, size_t slot)
{
    pthread_mutex_lock(&pl->mu);
    pl->full_q[(pl->full_head + pl->full_n) % PIPE_SLOTS] = slot;
    pl->full_n++;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

/* 0 with a slot, 1 when the producer is done and nothing is left, <0 on failure. */
static int pl_take_full(pipeline *pl, size_t *slot)
{
    int ret = 0;
    pthread_mutex_lock(&pl->mu);
    while (pl->full_n == 0 && !pl->producer_done && pl->failed == 0)
        pthread_cond_wait(&pl->cv, &pl->mu);
    if (pl->failed) {
        ret = pl_raise_locked(pl);
    } else if (pl->full_n == 0) {
        ret = 1;
    } else {
        *slot = pl->full_q[pl->full_head];
        pl->full_head = (pl->full_head + 1) % PIPE_SLOTS;
        pl->full_n--;
    }
    pthread_mutex_unlock(&pl->mu);
    return ret;
}

static void pl_put_free(pipeline *pl, size_t slot, uint64_t records)
{
    pthread_mutex_lock(&pl->mu);
    pl->free_q[(pl->free_head + pl->free_n) % PIPE_SLOTS] = slot;
    pl->free_n++;
    pl->done += records;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

static void pl_producer_done(pipeline *pl)
{
    pthread_mutex_lock(&pl->mu);
    pl->producer_done = 1;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

static uint64_t pl_done(pipeline *pl)
{
    pthread_mutex_lock(&pl->mu);
    uint64_t d = pl->done;
    pthread_mutex_unlock(&pl->mu);
    return d;
}

/* ---- sync state ---- */

/* Why a diff op was held back (see hold): code is 0 until it is. */
typedef struct held_op {
    int code;
    uint64_t idx;
    char reason[600];
} held_op;

typedef struct sync_ctx {
    rs_store *store;
    rs_client *client;
    rs_sync_opts opts;
    rs_uuid self;
    const rs_diff *diff;
    uint64_t *moved;   /* per diff op: records uploaded or downloaded */
    uint64_t total;    /* records to move */
    uint64_t done;     /* records moved so far */
    uint64_t seq;      /* the highest seq the server reported */
    int key_checked;   /* a record of the server opened under the store's key */
    rs_wire_batch one; /* single-record fetches of the checks */
    held_op *held;     /* per diff op: why it was held back, if it was */
    pthread_mutex_t held_mu;
    rs_sync_snaps snaps; /* snapshots loaded and written, tags that needed one in vain */
} sync_ctx;

/*
 * Whether a failure concerns one shard only, so that shard is held back and
 * the sync goes on with the others: its records do not open or are
 * damaged, its clock is refused, the server's page for it is wrong or it
 * refused this shard's upload. Anything else (the network, the account,
 * the local disk) stops the whole sync.
 */
static int shard_local(int code)
{
    switch (code) {
    case RS_ESERVER:
    case RS_ECRYPTO:
    case RS_EKEY:
    case RS_ECLOCK:
    case RS_EHOLE:
    case RS_ETOOBIG:
    case RS_EVERSION:
    case RS_EQUOTA:
        return 1;
    default:
        return 0;
    }
}

/*
 * Holds diff op `op` back from idx `idx` for `code`, whose message is this
 * thread's rs_error_last(). The first reason given for an op is kept. Safe
 * from either thread of a pipeline.
 */
static void hold(sync_ctx *ctx, size_t op, int code, uint64_t idx)
{
    pthread_mutex_lock(&ctx->held_mu);
    held_op *h = &ctx->held[op];
    if (__atomic_load_n(&h->code, __ATOMIC_ACQUIRE) == 0) {
        h->idx = idx;
        snprintf(h->reason, sizeof(h->reason), "%s", rs_error_last());
        __atomic_store_n(&h->code, code, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&ctx->held_mu);
}

static int is_held(const sync_ctx *ctx, size_t op)
{
    return __atomic_load_n(&ctx->held[op].code, __ATOMIC_ACQUIRE) != 0;
}

/* Whether op is held back at or below `idx`: a page from idx must not be moved. */
static int held_from(const sync_ctx *ctx, size_t op, uint64_t idx)
{
    return is_held(ctx, op) && idx >= ctx->held[op].idx;
}

static void progress(sync_ctx *ctx, uint64_t done)
{
    if (ctx->opts.progress && ctx->total > 0)
        ctx->opts.progress(done, ctx->total, ctx->opts.progress_payload);
}

static int records_path(char *out, size_t size, const rs_uuid *host, const char *tag,
                        uint64_t start, uint64_t limit)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    int n = snprintf(out, size, "/api/v1/records?host=%s&tag=%s&start=%llu&limit=%llu", h, tag,
                     (unsigned long long)start, (unsigned long long)limit);
    return n > 0 && (size_t)n < size ? 0 : rs__error(RS_EINVAL, "records path too long");
}

/*
 * Checks that `batch`, the answer to a request for shard (host, tag) from
 * idx `start` with at most `limit` records, holds 1..limit records of that
 * shard at start, start + 1, ... RS_ESERVER naming the shard otherwise.
 */
static int check_page(const rs_wire_batch *batch, const rs_uuid *host, const char *tag,
                      uint64_t start, uint64_t limit, const char *url)
{
    char shard[SHARD_NAME];
    if (batch->count > 0 && batch->count <= limit) {
        size_t i = 0;
        for (; i < batch->count; i++) {
            const rs_record *rec = &batch->records[i];
            if (rec->idx != start + i || rs_uuid_cmp(&rec->host, host) != 0 ||
                strcmp(rec->tag, tag) != 0)
                break;
        }
        if (i == batch->count)
            return 0;
        rs__shard_name(shard, sizeof(shard), host, tag);
        char got[200];
        rs__record_name(got, sizeof(got), &batch->records[i]);
        return rs__error(RS_ESERVER,
                         "server %s answered a request for shard %s from idx %llu with %s at "
                         "position %zu of the page: not the shard and idx asked for",
                         url, shard, (unsigned long long)start, got, i);
    }
    rs__shard_name(shard, sizeof(shard), host, tag);
    return rs__error(RS_ESERVER,
                     "server %s answered a request for at most %llu records of shard %s from idx "
                     "%llu with %zu records",
                     url, (unsigned long long)limit, shard, (unsigned long long)start,
                     batch->count);
}

int rs__fetch_record(rs_wire_batch *one, rs_client *client, const rs_uuid *host, const char *tag,
                     uint64_t idx)
{
    char path[256];
    const rs_buf *resp;
    int err;
    if ((err = records_path(path, sizeof(path), host, tag, idx, 1)) < 0 ||
        (err = rs__client_request(&resp, NULL, client, path, NULL, 0, 1)) < 0)
        return err;
    if ((err = rs_wire_decode_records(one, resp->ptr, resp->len, RS_WIRE_PAGE, 0)) < 0)
        return rs__error(RS_ESERVER, "server %s sent a page that does not parse: %s",
                         rs__client_url(client), rs_error_last());
    return check_page(one, host, tag, idx, 1, rs__client_url(client));
}

/* Fetches the server's record at `idx` of shard (host, tag) into ctx->one. */
static int fetch_one(sync_ctx *ctx, const rs_uuid *host, const char *tag, uint64_t idx)
{
    return rs__fetch_record(&ctx->one, ctx->client, host, tag, idx);
}

/* The refusal of a sync whose store has another key than the server's records. */
static int wrong_key(sync_ctx *ctx)
{
    return rs__error(RS_EKEY,
                     "refusing to sync with %s: the server's records are sealed under another "
                     "key (%s). Nothing was uploaded or written. Use the account's key: "
                     "'recsync key export' on a device that syncs, 'recsync key import' into "
                     "a fresh store here",
                     rs__client_url(ctx->client), rs_error_last());
}

/* Opens the record in ctx->one under the store's key. */
static int check_key(sync_ctx *ctx)
{
    const rs_record *rec = &ctx->one.records[0];
    int err = rs__open(NULL, NULL, ctx->store->key, rec);
    if (err == RS_EKEY)
        return wrong_key(ctx);
    if (err < 0)
        return rs__error(err, "refusing to sync with %s: a record on the server does not open: %s",
                         rs__client_url(ctx->client), rs_error_last());
    return 0;
}

/*
 * Unless a record of the server already opened under the store's key in
 * this sync or the last one against this account, opens the last record
 * of another device's shard, trying each such shard until one opens, so a
 * store with the wrong key never uploads what no other device could read.
 * RS_EKEY when a record is under another key; the first failure when no
 * record opens at all; 0 when the server holds no other device's records.
 */
static int confirm_key(sync_ctx *ctx, const rs_index *remote)
{
    int err, first = 0;
    char first_msg[600] = "";
    if (ctx->key_checked)
        return 0;
    for (size_t i = 0; remote && i < remote->count; i++) {
        const rs_shard *rs = &remote->shards[i];
        if (rs_uuid_cmp(&rs->host, &ctx->self) == 0 || rs->end <= rs->start)
            continue;
        if ((err = fetch_one(ctx, &rs->host, rs->tag, rs->end - 1)) == 0 &&
            (err = check_key(ctx)) == 0) {
            ctx->key_checked = 1;
            return 0;
        }
        if (err == RS_EKEY || !shard_local(err))
            return err;
        if (first == 0) {
            first = err;
            snprintf(first_msg, sizeof(first_msg), "%s", rs_error_last());
        }
    }
    return first ? rs__error(first, "%s", first_msg) : 0;
}

typedef struct local_match {
    const rs_record *remote;
    int found;
    int same;
} local_match;

static int compare_local(const rs_record *rec, void *payload)
{
    local_match *m = payload;
    m->found = 1;
    m->same = memcmp(rec->id.bytes, m->remote->id.bytes, 16) == 0 && rec->hlc == m->remote->hlc &&
              rec->version == m->remote->version && rec->data_len == m->remote->data_len &&
              memcmp(rec->data, m->remote->data, rec->data_len) == 0;
    return 0;
}

/*
 * The checks made before anything is written, here or on the server:
 * - a shard to download is not pruned past the local end;
 * - the server's records open under the store's key. With something to
 *   download, the first page does that: it is opened before it is applied,
 *   downloads come before uploads, and a page that does not open is
 *   refused whole (see download_all). With only uploads, one record of
 *   another device's shard is opened here, unless an earlier sync already
 *   checked this key against this account (ctx->key_checked), so a store
 *   with the wrong key never uploads what no other device could read;
 * - for each own shard on the server, its last record there is the
 *   store's record at that idx (else the store is an old copy that wrote
 *   again, or another store has its host id), unless the last sync left
 *   the shard ending exactly there. Shards where both end alike are
 *   checked too: two histories of equal length diverge just the same.
 */
static int preflight(sync_ctx *ctx, const rs_index *local, const rs_index *remote,
                     const rs_index *last)
{
    const rs_diff *diff = ctx->diff;
    char shard[SHARD_NAME];
    int err, downloads = 0, uploads = 0;

    for (size_t i = 0; i < diff->count; i++) {
        const rs_diff_op *op = &diff->ops[i];
        if (op->kind != RS_DIFF_DOWNLOAD) {
            uploads = 1;
            continue;
        }
        downloads = 1;
        const rs_shard *rs = rs_index_find(remote, &op->host, op->tag);
        if (rs && rs->start > op->from) {
            /* Never past pruned records: they may hold deletes (sync_snap.c). */
            int code = RS_EGONE;
            const char *why = rs__sync_gone(&ctx->snaps, op->tag, &code);
            rs__shard_name(shard, sizeof(shard), &op->host, op->tag);
            hold(ctx, i,
                 rs__error(code,
                           "shard %s on server %s starts at idx %llu (older records were "
                           "pruned) but this store ends at %llu, and no snapshot replaced "
                           "them: %s",
                           shard, rs__client_url(ctx->client), (unsigned long long)rs->start,
                           (unsigned long long)op->from, why ? why : "none was tried"),
                 op->from);
        }
    }
    if (uploads && !downloads && (err = confirm_key(ctx, remote)) < 0)
        return err;
    for (size_t i = 0; local && i < local->count; i++) {
        const rs_shard *ls = &local->shards[i], *rs, *before;
        local_match m = {0};
        if (rs_uuid_cmp(&ls->host, &ctx->self) != 0)
            continue;
        rs = rs_index_find(remote, &ls->host, ls->tag);
        /* The diff refused a server ahead of the store: here rs->end <= ls->end. */
        if (rs == NULL || rs->end == 0 || rs->end <= rs->start || rs->end <= ls->start)
            continue;
        before = rs_index_find(last, &ls->host, ls->tag);
        if (before && before->end == rs->end)
            continue;
        if ((err = fetch_one(ctx, &ls->host, ls->tag, rs->end - 1)) < 0)
            return err;
        m.remote = &ctx->one.records[0];
        if ((err = rs_store_range(ctx->store, &ls->host, ls->tag, rs->end - 1, rs->end,
                                  compare_local, &m)) < 0)
            return err;
        if (m.found && !m.same) {
            rs__shard_name(shard, sizeof(shard), &ls->host, ls->tag);
            return rs__error(RS_ECONFLICT,
                             "this device's shard %s on server %s holds a different record at idx "
                             "%llu than the store: was the store restored from an old copy and "
                             "written to since, or is its host id used by another store? Refusing "
                             "to sync a second history of the shard. If this store directory was "
                             "copied (or restored from a backup) and written to on both sides, "
                             "run 'recsync reidentify' here, on the machine refused: it gives "
                             "this store its own host id and keeps what both wrote",
                             shard, rs__client_url(ctx->client), (unsigned long long)(rs->end - 1));
        }
    }
    return 0;
}

/* ---- upload ---- */

/*
 * A page of records to upload. The producer (reading and checking the
 * store) encodes each record into the page's body as it reads it; the
 * upload thread sends it, so the next page is read and encoded while the
 * server takes the one before.
 */
typedef struct up_slot {
    rs_buf body;
    size_t count;
    size_t op;
    uint64_t first;
    size_t bytes; /* the length `body` will have before "]}" */
} up_slot;

typedef struct up_job {
    pipeline pl;
    sync_ctx *ctx;
    up_slot slots[PIPE_SLOTS];
    uint64_t seq;
    /* the producer's current page, in the callback of rs_store_range */
    up_slot *cur;
    size_t cur_index;
    size_t op;
    uint64_t expect;
    uint8_t *plain; /* scratch for opening each record before it is sent */
    size_t plain_cap;
} up_job;

static void *up_worker(void *arg)
{
    up_job *job = arg;
    sync_ctx *ctx = job->ctx;
    size_t s = 0;
    int ret;

    while ((ret = pl_take_full(&job->pl, &s)) == 0) {
        up_slot *slot = &job->slots[s];
        const rs_diff_op *op = &ctx->diff->ops[slot->op];
        const rs_buf *resp;
        uint64_t accepted = 0, inserted = 0, seq = 0;
        if (held_from(ctx, slot->op, slot->first)) {
            /* A page from where the shard was held back: it waits for the next sync. */
            pl_put_free(&job->pl, s, 0);
            continue;
        }
        int err = rs__client_request(&resp, NULL, ctx->client, "/api/v1/records", slot->body.ptr,
                                     slot->body.len, 1);
        if (err == 0 && (err = rs_wire_upload_result_decode(&accepted, &inserted, &seq, resp->ptr,
                                                            resp->len)) < 0)
            err = rs__error(RS_ESERVER, "server %s answered an upload with: %s",
                            rs__client_url(ctx->client), rs_error_last());
        if (err == 0 && accepted != slot->count) {
            char shard[SHARD_NAME];
            rs__shard_name(shard, sizeof(shard), &op->host, op->tag);
            err = rs__error(RS_ESERVER,
                            "server %s accepted %llu of the %zu records of shard %s from idx %llu",
                            rs__client_url(ctx->client), (unsigned long long)accepted, slot->count,
                            shard, (unsigned long long)slot->first);
        }
        if (err < 0 && shard_local(err) && accepted == 0) {
            char shard[SHARD_NAME];
            rs__shard_name(shard, sizeof(shard), &op->host, op->tag);
            hold(ctx, slot->op,
                 rs__error(err, "the upload of shard %s from idx %llu was refused: %s", shard,
                           (unsigned long long)slot->first, rs_error_last()),
                 slot->first);
            pl_put_free(&job->pl, s, 0);
            continue;
        }
        if (err < 0) {
            pl_fail(&job->pl, err);
            return NULL;
        }
        if (seq > job->seq)
            job->seq = seq;
        ctx->moved[slot->op] += slot->count;
        pl_put_free(&job->pl, s, slot->count);
    }
    return NULL;
}

/* Closes the current page and hands it to the worker. */
static int up_flush(up_job *job)
{
    int err;
    if (job->cur == NULL)
        return 0;
    if ((err = rs_wire_upload_end(&job->cur->body)) < 0)
        return err;
    pl_put_full(&job->pl, job->cur_index);
    job->cur = NULL;
    return 0;
}

/*
 * Checks this device's record `rec` before it is sent: a record damaged in
 * the store would be refused by every other device and, once on the server,
 * could never be replaced. Its bytes are checked against the check tag
 * stored with it when it was written (a keyed SipHash, chain.c), or, in a
 * row stored before tags, against its chain head (a keyed BLAKE2b); both
 * cost a fraction of opening it. A record with neither, or whose bytes no
 * longer match, is opened, and one that does not open holds the op back
 * from it (returns 1: stop).
 */
static int up_check(up_job *job, const rs_record *rec, const uint8_t *check, const uint8_t *stored)
{
    sync_ctx *ctx = job->ctx;
    char shard[SHARD_NAME];
    size_t need = rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len - RS_ENVELOPE_OVERHEAD : 1;
    uint8_t head[RS_CHAIN_BYTES];
    int err;

    /* Each is this store's own (nothing secret to time): a plain compare. */
    if (check) {
        rs__chain_check(head, ctx->store->key, rec);
        if (memcmp(head, check, RS_CHECK_BYTES) == 0)
            return 0;
    } else if (stored) {
        rs__chain_head(head, ctx->store->key, rec);
        if (memcmp(head, stored, RS_CHAIN_BYTES) == 0)
            return 0;
    }

    if (need > job->plain_cap) {
        uint8_t *grown = rs__realloc(job->plain, need);
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory checking records to upload");
        job->plain = grown;
        job->plain_cap = need;
    }
    if ((err = rs__open(job->plain, NULL, ctx->store->key, rec)) == 0)
        return 0;
    if (!shard_local(err))
        return err;
    rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
    hold(ctx, job->op,
         rs__error(err,
                   "%s; it was not uploaded, nor anything after it in shard %s (records "
                   "before idx %llu were). The store's copy is damaged: 'recsync verify' lists "
                   "every damaged record, 'recsync repair' restores what the server still has "
                   "and drops what is lost",
                   rs_error_last(), shard, (unsigned long long)rec->idx),
         rec->idx);
    return 1;
}

static int up_add(const rs_record *rec, const uint8_t *check, const uint8_t *head, void *payload)
{
    up_job *job = payload;
    sync_ctx *ctx = job->ctx;
    int err;

    if (is_held(ctx, job->op))
        return 1;
    if ((err = up_check(job, rec, check, head)) != 0)
        return err;
    if (rec->idx != job->expect) {
        char shard[SHARD_NAME];
        rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
        return rs__error(RS_EHOLE, "local shard %s has no record at idx %llu (found %llu next)",
                         shard, (unsigned long long)job->expect, (unsigned long long)rec->idx);
    }
    if (job->cur && (job->cur->count >= ctx->opts.page_records ||
                     job->cur->bytes + rs_wire_record_size(rec) + 2 > ctx->opts.page_bytes)) {
        if ((err = up_flush(job)) < 0)
            return err;
    }
    if (job->cur == NULL) {
        size_t s = 0;
        progress(ctx, ctx->done + pl_done(&job->pl));
        if ((err = pl_take_free(&job->pl, &s)) < 0)
            return err;
        job->cur = &job->slots[s];
        job->cur_index = s;
        job->cur->count = 0;
        job->cur->op = job->op;
        job->cur->first = rec->idx;
        job->cur->bytes = strlen("{\"records\":[");
        rs_buf_clear(&job->cur->body);
        if ((err = rs_wire_records_begin(&job->cur->body)) < 0)
            return err;
    }
    if ((err = rs_wire_records_add(&job->cur->body, rec)) < 0)
        return err;
    job->cur->bytes += (job->cur->count ? 1 : 0) + rs_wire_record_size(rec);
    job->cur->count++;
    job->expect++;
    return 0;
}

static int upload_all(sync_ctx *ctx)
{
    up_job job;
    pthread_t worker;
    int err = 0, any = 0;

    for (size_t i = 0; i < ctx->diff->count; i++)
        any |= ctx->diff->ops[i].kind == RS_DIFF_UPLOAD;
    if (!any)
        return 0;
    memset(&job, 0, sizeof(job));
    pl_init(&job.pl);
    job.ctx = ctx;
    if (pthread_create(&worker, NULL, up_worker, &job) != 0) {
        pl_destroy(&job.pl);
        return rs__error(RS_ERROR, "cannot start the upload thread");
    }
    for (size_t i = 0; i < ctx->diff->count && err == 0; i++) {
        const rs_diff_op *op = &ctx->diff->ops[i];
        if (op->kind != RS_DIFF_UPLOAD)
            continue;
        job.op = i;
        job.expect = op->from;
        err = rs__store_range_heads(ctx->store, &op->host, op->tag, op->from, op->to, up_add, &job);
        if (err > 0)
            err = 0; /* held back: what came before it still goes */
        else if (err == 0 && job.expect != op->to) {
            char shard[SHARD_NAME];
            rs__shard_name(shard, sizeof(shard), &op->host, op->tag);
            err = rs__error(RS_EHOLE, "local shard %s ends at idx %llu, before its index's %llu",
                            shard, (unsigned long long)job.expect, (unsigned long long)op->to);
        }
        if (err == 0)
            err = up_flush(&job);
    }
    if (err < 0)
        pl_fail(&job.pl, err);
    pl_producer_done(&job.pl);
    pthread_join(worker, NULL);
    if (err == 0 && job.pl.failed)
        err = rs__error(job.pl.failed, "%s", job.pl.message);
    ctx->done += job.pl.done;
    if (job.seq > ctx->seq)
        ctx->seq = job.seq;
    for (size_t i = 0; i < PIPE_SLOTS; i++) {
        rs_buf_free(&job.slots[i].body);
    }
    if (job.plain) {
        sodium_memzero(job.plain, job.plain_cap);
        rs_free(job.plain);
    }
    pl_destroy(&job.pl);
    return err;
}

/* ---- download ---- */

typedef struct dl_slot {
    rs_wire_batch batch;
    size_t op;
    uint64_t start;
    rs_opened *opened; /* per record of batch, opened on the download thread */
    size_t opened_cap;
    uint8_t *plain; /* their plaintexts, wiped once applied */
    size_t plain_cap, plain_used;
} dl_slot;

typedef struct dl_job {
    pipeline pl;
    sync_ctx *ctx;
    int ahead; /* records are opened on the download thread (open_ahead) */
    dl_slot slots[PIPE_SLOTS];
} dl_job;

/*
 * Opens the records of a page on the download thread and computes their
 * chain heads, so the applying thread only checks and writes them: the two
 * halves of a pull then run on both cores. A record that does not open is
 * left to the insert, which opens it again and says why.
 */
static int open_ahead(dl_slot *slot, const rs_key *key)
{
    const rs_wire_batch *b = &slot->batch;
    size_t need = 0;
    for (size_t i = 0; i < b->count; i++)
        need += b->records[i].data_len > RS_ENVELOPE_OVERHEAD
                    ? b->records[i].data_len - RS_ENVELOPE_OVERHEAD
                    : 0;
    if (b->count > slot->opened_cap) {
        rs_opened *grown = rs__realloc(slot->opened, b->count * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory opening a page");
        slot->opened = grown;
        slot->opened_cap = b->count;
    }
    if (need + 1 > slot->plain_cap) {
        uint8_t *grown = rs__malloc(need + 1);
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory opening a page");
        if (slot->plain) {
            sodium_memzero(slot->plain, slot->plain_cap);
            rs_free(slot->plain);
        }
        slot->plain = grown;
        slot->plain_cap = need + 1;
    }
    slot->plain_used = need;
    for (size_t i = 0, at = 0; i < b->count; i++) {
        const rs_record *rec = &b->records[i];
        slot->opened[i].plain = slot->plain + at;
        rs__chain_open(&slot->opened[i], key, rec);
        at += rec->data_len > RS_ENVELOPE_OVERHEAD ? rec->data_len - RS_ENVELOPE_OVERHEAD : 0;
    }
    return 0;
}

static void *dl_worker(void *arg)
{
    dl_job *job = arg;
    sync_ctx *ctx = job->ctx;
    const char *url = rs__client_url(ctx->client);
    char path[256];
    int err = 0;

    for (size_t i = 0; i < ctx->diff->count && err == 0; i++) {
        const rs_diff_op *op = &ctx->diff->ops[i];
        uint64_t start = op->from;
        if (op->kind != RS_DIFF_DOWNLOAD)
            continue;
        while (start < op->to && !is_held(ctx, i)) {
            uint64_t limit = op->to - start;
            const rs_buf *resp;
            size_t s = 0;
            if (limit > ctx->opts.page_records)
                limit = ctx->opts.page_records;
            if ((err = pl_take_free(&job->pl, &s)) < 0)
                return NULL;
            dl_slot *slot = &job->slots[s];
            if ((err = records_path(path, sizeof(path), &op->host, op->tag, start, limit)) < 0 ||
                (err = rs__client_request(&resp, NULL, ctx->client, path, NULL, 0, 1)) < 0) {
                if (!shard_local(err) && err != RS_EGONE && err != RS_ENOTFOUND)
                    break;
                hold(ctx, i, err, start); /* about this shard alone; the others go on */
                err = 0;
                pl_put_free(&job->pl, s, 0);
                break;
            }
            if ((err = rs_wire_decode_records(&slot->batch, resp->ptr, resp->len, RS_WIRE_PAGE,
                                              0)) < 0)
                rs__error(RS_ESERVER, "server %s sent a page that does not parse: %s", url,
                          rs_error_last());
            else if ((err = check_page(&slot->batch, &op->host, op->tag, start, limit, url)) == 0)
                err = job->ahead ? open_ahead(slot, ctx->store->key) : 0;
            if (err < 0) {
                hold(ctx, i, err, start);
                err = 0;
                pl_put_free(&job->pl, s, 0);
                break;
            }
            slot->op = i;
            slot->start = start;
            start += slot->batch.count;
            pl_put_full(&job->pl, s);
        }
    }
    if (err < 0)
        pl_fail(&job->pl, err);
    else
        pl_producer_done(&job->pl);
    return NULL;
}

static int download_all(sync_ctx *ctx)
{
    dl_job job;
    pthread_t worker;
    size_t s = 0;
    int ret, err = 0, any = 0;

    for (size_t i = 0; i < ctx->diff->count; i++)
        any |= ctx->diff->ops[i].kind == RS_DIFF_DOWNLOAD;
    if (!any)
        return 0;
    memset(&job, 0, sizeof(job));
    pl_init(&job.pl);
    job.ctx = ctx;
    /*
     * Applying a record of rs.keys may add to the keyring (or change the
     * current key) while the download thread would read it: a sync that
     * downloads any opens its records on the applying thread alone.
     */
    job.ahead = 1;
    for (size_t i = 0; i < ctx->diff->count; i++)
        if (ctx->diff->ops[i].kind == RS_DIFF_DOWNLOAD &&
            strcmp(ctx->diff->ops[i].tag, RS_KEYS_TAG) == 0)
            job.ahead = 0;
    if (pthread_create(&worker, NULL, dl_worker, &job) != 0) {
        pl_destroy(&job.pl);
        return rs__error(RS_ERROR, "cannot start the download thread");
    }
    while ((ret = pl_take_full(&job.pl, &s)) == 0) {
        dl_slot *slot = &job.slots[s];
        size_t inserted = 0;
        if (held_from(ctx, slot->op, slot->start)) {
            pl_put_free(&job.pl, s, 0);
            continue;
        }
        err = rs__store_insert_opened(&inserted, ctx->store, slot->batch.records, slot->batch.count,
                                      job.ahead ? slot->opened : NULL);
        sodium_memzero(slot->plain, slot->plain_used);
        if (err < 0) {
            const rs_diff_op *op = &ctx->diff->ops[slot->op];
            if (err == RS_EKEY && !ctx->key_checked) {
                /* No record opened yet: nothing was written, nothing uploaded. */
                pl_fail(&job.pl, wrong_key(ctx));
                break;
            }
            char shard[SHARD_NAME];
            rs__shard_name(shard, sizeof(shard), &op->host, op->tag);
            err = rs__error(err, "page of shard %s from idx %llu refused, nothing of it kept: %s",
                            shard, (unsigned long long)slot->start, rs_error_last());
            if (!shard_local(err)) {
                pl_fail(&job.pl, err);
                break;
            }
            hold(ctx, slot->op, err, slot->start);
            err = 0;
            pl_put_free(&job.pl, s, 0);
            continue;
        }
        ctx->key_checked = 1;
        ctx->moved[slot->op] += inserted;
        ctx->done += slot->batch.count;
        progress(ctx, ctx->done);
        pl_put_free(&job.pl, s, slot->batch.count);
    }
    if (err == 0 && ret < 0)
        err = ret;
    pthread_join(worker, NULL);
    for (size_t i = 0; i < PIPE_SLOTS; i++) {
        dl_slot *slot = &job.slots[i];
        rs_wire_batch_free(&slot->batch);
        rs_free(slot->opened);
        if (slot->plain) {
            sodium_memzero(slot->plain, slot->plain_cap);
            rs_free(slot->plain);
        }
    }
    pl_destroy(&job.pl);
    return err;
}

/*
 * Before the first upload: downloads open every page before applying it, so
 * a sync that applied one has checked the key; one whose downloads were all
 * held back checks it here (see confirm_key).
 */
static int confirm_uploads(sync_ctx *ctx, const rs_index *remote)
{
    for (size_t i = 0; i < ctx->diff->count; i++)
        if (ctx->diff->ops[i].kind == RS_DIFF_UPLOAD)
            return confirm_key(ctx, remote);
    return 0;
}

/* ---- the last sync ---- */

/* The remote index as the sync left it: the own shards uploaded end where the store does. */
static int remote_after(rs_index **out, const rs_index *remote, const rs_diff *diff,
                        const uint64_t *moved, uint64_t seq)
{
    rs_index *idx = rs__calloc(1, sizeof(*idx));
    int err = 0;
    if (idx == NULL)
        return rs__error(RS_ENOMEM, "out of memory copying an index");
    /*
     * What this sync saw and checked: a shard it was to download ends where
     * the download got to (an index claiming more than the server served is
     * not remembered as seen, see checkpoint.c).
     */
    for (size_t i = 0; i < remote->count && err == 0; i++) {
        const rs_shard *rs = &remote->shards[i];
        uint64_t end = rs->end;
        for (size_t j = 0; j < diff->count; j++)
            if (diff->ops[j].kind == RS_DIFF_DOWNLOAD &&
                rs_uuid_cmp(&diff->ops[j].host, &rs->host) == 0 &&
                strcmp(diff->ops[j].tag, rs->tag) == 0)
                end = diff->ops[j].from + moved[j];
        if (end < rs->start)
            end = rs->start; /* held back below a pruned start: nothing of it was seen */
        err = rs_index_add(idx, &rs->host, rs->tag, rs->start, end);
    }
    for (size_t i = 0; i < diff->count && err == 0; i++) {
        const rs_diff_op *op = &diff->ops[i];
        rs_shard *sh;
        if (op->kind != RS_DIFF_UPLOAD)
            continue;
        if (moved[i] == 0)
            continue;
        sh = (rs_shard *)rs_index_find(idx, &op->host, op->tag);
        if (sh)
            sh->end = op->from + moved[i];
        else
            err = rs_index_add(idx, &op->host, op->tag, 0, op->from + moved[i]);
    }
    idx->seq = seq;
    if (err < 0) {
        rs_index_free(idx);
        return err;
    }
    *out = idx;
    return 0;
}

static int save_last(rs_store *store, const rs_sync_report *report, const rs_index *remote,
                     int key_checked)
{
    rs_buf last = {0}, index = {0};
    char key[RS_KEY_ID_STRLEN + 1] = "";
    int err;
    if (key_checked)
        rs_store_key_id(key, store);
    if ((err = rs_buf_printf(
             &last,
             "{\"time_ms\":%llu,\"outcome\":\"%s\",\"uploaded\":%llu,"
             "\"downloaded\":%llu,\"seq\":%llu,\"key_checked\":\"%s\"}",
             (unsigned long long)rs__store_now_ms(store), rs_sync_outcome_name(report->outcome),
             (unsigned long long)report->uploaded, (unsigned long long)report->downloaded,
             (unsigned long long)report->seq, key)) < 0 ||
        (err = rs_wire_index_encode(&index, remote)) < 0)
        goto done;
    if ((err = rs_store_begin(store)) < 0)
        goto done;
    if ((err = rs_store_meta_set(store, RS_META_LAST_SYNC, last.ptr)) < 0 ||
        (err = rs_store_meta_set(store, RS_META_LAST_INDEX, index.ptr)) < 0 ||
        (err = rs__checkpoint_clock_start(store)) < 0) {
        rs_store_rollback(store);
        goto done;
    }
    err = rs_store_commit(store);
done:
    rs_buf_free(&last);
    rs_buf_free(&index);
    return err;
}

static int json_u64(uint64_t *out, const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return RS_EINVAL;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int rs_sync_last_get(rs_sync_last **out, rs_store *store)
{
    char *text = NULL, *index = NULL;
    json_t *root = NULL;
    rs_sync_last *last = NULL;
    int err;

    if ((err = rs_store_meta_get(&text, store, RS_META_LAST_SYNC)) < 0) {
        if (err == RS_ENOTFOUND)
            rs__error(RS_ENOTFOUND, "store %s has not synced yet", rs_store_dir(store));
        return err;
    }
    if ((last = rs__calloc(1, sizeof(*last))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory");
        goto done;
    }
    root = json_loads(text, 0, NULL);
    if (root == NULL || json_u64(&last->time_ms, root, "time_ms") < 0 ||
        json_u64(&last->uploaded, root, "uploaded") < 0 ||
        json_u64(&last->downloaded, root, "downloaded") < 0 ||
        json_u64(&last->seq, root, "seq") < 0 ||
        rs_sync_outcome_parse(&last->outcome, json_string_value(json_object_get(root, "outcome"))) <
            0) {
        err = rs__error(RS_EIO, "store %s: setting %s is corrupt", rs_store_dir(store),
                        RS_META_LAST_SYNC);
        goto done;
    }
    const char *key = json_string_value(json_object_get(root, "key_checked"));
    if (key && strlen(key) == RS_KEY_ID_STRLEN)
        memcpy(last->key_checked, key, RS_KEY_ID_STRLEN + 1);
    err = rs_store_meta_get(&index, store, RS_META_LAST_INDEX);
    if (err == 0 && rs_wire_index_decode(&last->remote, index, strlen(index)) < 0)
        err = rs__error(RS_EIO, "store %s: setting %s is corrupt: %s", rs_store_dir(store),
                        RS_META_LAST_INDEX, rs_error_last());
    else if (err == RS_ENOTFOUND)
        err = 0;
done:
    json_decref(root);
    rs_free(text);
    rs_free(index);
    if (err < 0) {
        rs_sync_last_free(last);
        return err;
    }
    *out = last;
    return 0;
}

void rs_sync_last_free(rs_sync_last *last)
{
    if (last == NULL)
        return;
    rs_index_free(last->remote);
    rs_free(last);
}

/* ---- sync ---- */

void rs_sync_report_free(rs_sync_report *report)
{
    if (report == NULL)
        return;
    rs_free(report->shards);
    rs_free(report->held);
    rs_free(report->snapshots);
    rs_free(report);
}

static int make_report(rs_sync_report **out, const sync_ctx *ctx, uint64_t started)
{
    const rs_diff *diff = ctx->diff;
    rs_sync_report *r = rs__calloc(1, sizeof(*r));
    if (r == NULL ||
        (r->shards = rs__calloc(diff->count ? diff->count : 1, sizeof(rs_sync_shard))) == NULL ||
        (r->held = rs__calloc(diff->count ? diff->count : 1, sizeof(rs_sync_held))) == NULL) {
        rs_sync_report_free(r);
        return rs__error(RS_ENOMEM, "out of memory for the sync report");
    }
    for (size_t i = 0; i < diff->count; i++) {
        const rs_diff_op *op = &diff->ops[i];
        if (is_held(ctx, i)) {
            rs_sync_held *h = &r->held[r->held_count++];
            h->host = op->host;
            snprintf(h->tag, sizeof(h->tag), "%s", op->tag);
            h->upload = op->kind == RS_DIFF_UPLOAD;
            h->idx = ctx->held[i].idx;
            h->code = ctx->held[i].code;
            snprintf(h->reason, sizeof(h->reason), "%s", ctx->held[i].reason);
        }
        if (ctx->moved[i] == 0)
            continue;
        rs_sync_shard *sh = &r->shards[r->count++];
        sh->host = op->host;
        snprintf(sh->tag, sizeof(sh->tag), "%s", op->tag);
        if (op->kind == RS_DIFF_UPLOAD) {
            sh->uploaded = ctx->moved[i];
            r->uploaded += ctx->moved[i];
        } else {
            sh->downloaded = ctx->moved[i];
            r->downloaded += ctx->moved[i];
        }
    }
    r->outcome = r->uploaded && r->downloaded ? RS_SYNC_MERGE
                 : r->uploaded                ? RS_SYNC_PUSH
                 : r->downloaded              ? RS_SYNC_PULL
                                              : RS_SYNC_NOOP;
    r->seq = ctx->seq;
    r->elapsed_ms = monotonic_ms() - started;
    *out = r;
    return 0;
}

/* Moves the snapshots loaded and written into the report. */
static void report_snapshots(rs_sync_report *r, sync_ctx *ctx)
{
    r->snapshots = ctx->snaps.list;
    r->snapshot_count = ctx->snaps.count;
    r->compacted = ctx->snaps.compacted;
    ctx->snaps.list = NULL;
    ctx->snaps.count = ctx->snaps.cap = 0;
}

int rs_sync(rs_sync_report **out, rs_store *store, const rs_sync_opts *opts)
{
    uint64_t started = monotonic_ms();
    sync_ctx ctx;
    rs_client_opts copts = {0};
    rs_index *local = NULL, *remote = NULL, *after = NULL;
    rs_sync_last *last = NULL;
    char key[RS_KEY_ID_STRLEN + 1];
    rs_diff *diff = NULL;
    rs_sync_report *report = NULL;
    int err, reloaded = 0;

    memset(&ctx, 0, sizeof(ctx));
    pthread_mutex_init(&ctx.held_mu, NULL);
    ctx.store = store;
    if (opts)
        ctx.opts = *opts;
    if (ctx.opts.page_records == 0)
        ctx.opts.page_records = RS_SYNC_DEFAULT_PAGE_RECORDS;
    if (ctx.opts.page_bytes == 0)
        ctx.opts.page_bytes = RS_SYNC_DEFAULT_PAGE_BYTES;
    copts.connect_timeout_ms = ctx.opts.connect_timeout_ms;
    copts.timeout_ms = ctx.opts.timeout_ms;
    rs_store_host(&ctx.self, store);
    rs_store_key_id(key, store);
    /* What the last sync learned spares round trips (see preflight); none is no loss. */
    rs__store_read_begin(store);
    if (rs_sync_last_get(&last, store) < 0)
        last = NULL;
    ctx.key_checked = last && strcmp(last->key_checked, key) == 0;
    err = rs__store_client(&ctx.client, store, &copts);
    rs__store_read_end(store);

    int wrote = 0;
    if (err < 0 || (err = rs__fetch_index(&remote, ctx.client)) < 0 ||
        (err = rs__keyring_sync(store, ctx.client, remote)) < 0)
        goto done;
    rs__store_read_begin(store); /* the local side of the plan; a due checkpoint ends it */
    err = rs_store_index(&local, store);
    if (err == 0)
        err = rs__chain_preflight(store, rs__client_url(ctx.client), local, remote,
                                  last ? last->remote : NULL);
    if (err == 0)
        err = rs__checkpoint_maybe(&wrote, store, last ? last->remote : NULL,
                                   ctx.opts.checkpoint_ms ? ctx.opts.checkpoint_ms
                                                          : RS_CHECKPOINT_DEFAULT_MS);
    rs__store_read_end(store);
    if (err < 0 || (!ctx.opts.replay && (err = rs__sync_bootstrap(&ctx.snaps, &reloaded, store,
                                                                  ctx.client, local, remote)) < 0))
        goto done;
    if (reloaded || wrote) {
        rs_index_free(local);
        local = NULL;
        if ((err = rs_store_index(&local, store)) < 0)
            goto done;
    }
    if ((err = rs_index_diff(&diff, local, remote, &ctx.self)) < 0)
        goto done;
    rs__keyring_order_diff(diff); /* a rotation travels before what its key seals */
    ctx.diff = diff;
    ctx.seq = remote->seq;
    if ((ctx.moved = rs__calloc(diff->count ? diff->count : 1, sizeof(uint64_t))) == NULL ||
        (ctx.held = rs__calloc(diff->count ? diff->count : 1, sizeof(held_op))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory planning a sync");
        goto done;
    }
    for (size_t i = 0; i < diff->count; i++)
        ctx.total += diff->ops[i].to - diff->ops[i].from;
    if ((err = preflight(&ctx, local, remote, last ? last->remote : NULL)) < 0)
        goto done;
    progress(&ctx, 0);
    if ((err = download_all(&ctx)) < 0 || (err = confirm_uploads(&ctx, remote)) < 0 ||
        (err = upload_all(&ctx)) < 0 ||
        /* The audit reads only what inserted records, snapshots and checkpoints write: with
           none of them since the last audit it would find what that one found (and an alarm
           stays raised). */
        ((store->audit_due || reloaded || wrote) &&
         (err = rs__chain_audit(store, rs__client_url(ctx.client))) < 0))
        goto done;
    progress(&ctx, ctx.total);
    if ((err = make_report(&report, &ctx, started)) < 0 ||
        (err = remote_after(&after, remote, diff, ctx.moved, ctx.seq)) < 0 ||
        (err = save_last(store, report, after, ctx.key_checked)) < 0)
        goto done;
    rs__sync_after(&ctx.snaps, store, ctx.client, after,
                   ctx.opts.snapshot_every ? ctx.opts.snapshot_every : RS_SNAPSHOT_DEFAULT_EVERY,
                   report->uploaded + report->downloaded > 0 || ctx.snaps.count > 0);
    report_snapshots(report, &ctx);
    report->elapsed_ms = monotonic_ms() - started;
    *out = report;
    report = NULL;
done:
    if (err == RS_ECHAIN)
        rs__chain_raise(store, "%s", rs_error_last()); /* a pulled record that did not chain */
    rs_sync_report_free(report);
    rs_index_free(after);
    rs_sync_last_free(last);
    rs_index_free(local);
    rs_index_free(remote);
    rs_diff_free(diff);
    rs_free(ctx.moved);
    rs_free(ctx.held);
    rs__sync_snaps_free(&ctx.snaps);
    pthread_mutex_destroy(&ctx.held_mu);
    rs_wire_batch_free(&ctx.one);
    rs__client_free(ctx.client);
    return err;
}
