/*
 * Live sync (rs_watch in sync.h): one thread, one loop. It waits with
 * curl_multi_poll on the event stream's socket, an inotify descriptor on
 * the store's directory (local writes, from any process) and the caller's
 * stop descriptor. Pulls and pushes go through a second, kept-alive
 * connection (rs_client) while the stream's bytes wait in the socket.
 */
#include "client.h"
#include "internal.h"
#include "recsync/sync.h"

#include "curlapi.h"
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#define SHARD_TEXT 128
#define LINE_MAX_BYTES (64u << 10)
#define ERROR_BODY_MAX 4096
#define HOT_WINDOW_MS 30
#define SETTLE_TRIES 5
#define SETTLE_NS 100000L
#define OWN_WRITE_MS 5        /* file changes this soon after our own commit are taken for it */
#define CHECKPOINT_PAGES 1000 /* SQLite's own auto-checkpoint threshold */
#define CHECKPOINT_FORCE_PAGES 16384 /* checkpoint even when busy past this (64 MiB) */
#define CHECKPOINT_IDLE_MS 100

/* One of this device's shards and where the server's copy of it ends. */
typedef struct own_shard {
    char tag[RS_TAG_MAX + 1];
    uint64_t end;
} own_shard;

typedef struct watch {
    rs_store *store;
    rs_watch_opts opts;
    rs_uuid self;
    char *url;
    char *token;
    rs_client *client;
    sqlite3_stmt *st_version;
    int data_version;
    int inotify_fd;
    uint64_t hot_until; /* re-check the store on every turn until then (ms) */
    uint64_t next_idle_check;
    int wal_pages;         /* frames in the store's WAL after our last commit */
    uint64_t last_applied; /* when the last pull committed (ms) */

    own_shard *own;
    size_t own_count;
    size_t own_cap;

    /* the event stream */
    CURLM *multi;
    CURL *stream;
    struct curl_slist *headers;
    long status;      /* the stream's HTTP status, 0 until known */
    int announced;    /* RS_WATCH_CONNECTED was reported for this stream */
    int stream_error; /* 1: the stream broke the protocol; 2: it asked for a resync;
                         3: the device was retired (the message in `retired`) */
    char retired[600];
    rs_buf line;
    rs_buf data;
    char event[32];
    rs_buf error_body;
    rs_wire_event *queue;
    size_t queued;
    size_t queue_cap;
    uint64_t last_byte;
    uint64_t stream_seq; /* the cursor the stream opened after, then its last event's seq */

    uint64_t last_seq; /* every event up to it is applied */
    int need_resync;
    uint64_t retry_at;
    long backoff_ms;
    rs_wire_batch page;
    rs_buf body;
} watch;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void emit(watch *w, const rs_watch_batch *batch)
{
    if (w->opts.on_batch)
        w->opts.on_batch(batch, w->opts.payload);
}

/* Failures a later attempt may heal: the network, the server, a busy store. */
static int retryable(int err)
{
    return err == RS_ENET || err == RS_EUNAVAIL || err == RS_ESERVER || err == RS_EBUSY;
}

/* Schedules the next attempt after the backoff, with jitter, and doubles the backoff. */
static void schedule_retry(watch *w, const char *why)
{
    long delay = w->backoff_ms / 2 + (long)randombytes_uniform((uint32_t)(w->backoff_ms / 2 + 1));
    rs_watch_batch b = {.kind = RS_WATCH_DISCONNECTED, .retry_ms = delay, .error = why};
    w->retry_at = now_ms() + (uint64_t)delay;
    w->backoff_ms *= 2;
    if (w->backoff_ms > w->opts.backoff_max_ms)
        w->backoff_ms = w->opts.backoff_max_ms;
    b.seq = w->last_seq;
    emit(w, &b);
}

/* ---- the store's side ---- */

/* PRAGMA data_version of the watch's connection: changes when another connection commits. */
static int read_data_version(int *out, watch *w)
{
    int rc = sqlite3_step(w->st_version);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int(w->st_version, 0);
    sqlite3_reset(w->st_version);
    if (rc != SQLITE_ROW)
        return rs__error(RS_EIO, "cannot read the data version of store %s: %s",
                         rs_store_dir(w->store), sqlite3_errmsg(rs_store_db(w->store)));
    return 0;
}

/*
 * The WAL hook of the watch's connection. It replaces SQLite's automatic
 * checkpoint, whose fsyncs would land inside a pull's commit: the loop
 * checkpoints when the stream is idle instead (see maybe_checkpoint).
 */
static int on_wal(void *payload, sqlite3 *db, const char *name, int pages)
{
    watch *w = payload;
    (void)db;
    (void)name;
    w->wal_pages = pages;
    return SQLITE_OK;
}

/* Checkpoints the store's WAL once it is long and nothing was pulled for a while. */
static void maybe_checkpoint(watch *w, uint64_t now)
{
    if (w->wal_pages < CHECKPOINT_PAGES)
        return;
    if (now - w->last_applied < CHECKPOINT_IDLE_MS && w->wal_pages < CHECKPOINT_FORCE_PAGES)
        return;
    /* PASSIVE never waits for other connections; what it cannot copy now waits for the next. */
    sqlite3_wal_checkpoint_v2(rs_store_db(w->store), NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    w->wal_pages = 0;
}

static own_shard *own_find(watch *w, const char *tag)
{
    for (size_t i = 0; i < w->own_count; i++)
        if (strcmp(w->own[i].tag, tag) == 0)
            return &w->own[i];
    return NULL;
}

/* Notes that the server holds this device's shard `tag` up to `end` (never lowers it). */
static int own_set(watch *w, const char *tag, uint64_t end)
{
    own_shard *s = own_find(w, tag);
    if (s == NULL) {
        if (w->own_count == w->own_cap) {
            size_t cap = w->own_cap ? w->own_cap * 2 : 8;
            own_shard *grown = rs__realloc(w->own, cap * sizeof(*grown));
            if (grown == NULL)
                return rs__error(RS_ENOMEM, "out of memory noting shard %s", tag);
            w->own = grown;
            w->own_cap = cap;
        }
        s = &w->own[w->own_count++];
        snprintf(s->tag, sizeof(s->tag), "%s", tag);
        s->end = 0;
    }
    if (end > s->end)
        s->end = end;
    return 0;
}

/* Where shard (host, tag) ends in the store (0 when it has none of it). */
static int local_end(uint64_t *out, watch *w, const rs_uuid *host, const char *tag)
{
    rs_index *index = NULL;
    int err = rs_store_index(&index, w->store);
    *out = 0;
    if (err < 0)
        return err;
    for (size_t i = 0; i < index->count; i++)
        if (rs_uuid_cmp(&index->shards[i].host, host) == 0 &&
            strcmp(index->shards[i].tag, tag) == 0)
            *out = index->shards[i].end;
    rs_index_free(index);
    return 0;
}

typedef struct push_page {
    watch *w;
    size_t count;
    uint64_t expect;
} push_page;

static int push_add(const rs_record *rec, void *payload)
{
    push_page *p = payload;
    if (rec->idx != p->expect) {
        char shard[SHARD_TEXT];
        rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
        return rs__error(RS_EHOLE, "local shard %s has no record at idx %llu (found %llu next)",
                         shard, (unsigned long long)p->expect, (unsigned long long)rec->idx);
    }
    if (p->count >= p->w->opts.sync.page_records ||
        (p->count > 0 &&
         p->w->body.len + rs_wire_record_size(rec) + 2 > p->w->opts.sync.page_bytes))
        return 1; /* the page is full: stop here */
    p->count++;
    p->expect++;
    return rs_wire_records_add(&p->w->body, rec);
}

/*
 * Uploads [from, to) of this device's shard `tag` in pages, noting each
 * page the server stored. RS_EHOLE when the store lacks a record.
 */
static int push_shard(watch *w, const char *tag, uint64_t from, uint64_t to)
{
    while (from < to) {
        push_page p = {.w = w, .expect = from};
        const rs_buf *resp;
        uint64_t accepted = 0, inserted = 0, seq = 0;
        int err;

        rs_buf_clear(&w->body);
        if ((err = rs_wire_records_begin(&w->body)) < 0)
            return err;
        err = rs_store_range(w->store, &w->self, tag, from, to, push_add, &p);
        if (err < 0)
            return err;
        if (p.count == 0) {
            char shard[SHARD_TEXT];
            rs__shard_name(shard, sizeof(shard), &w->self, tag);
            return rs__error(RS_EHOLE, "local shard %s has no record at idx %llu", shard,
                             (unsigned long long)from);
        }
        if ((err = rs_wire_upload_end(&w->body)) < 0 ||
            (err = rs__client_request(&resp, NULL, w->client, "/api/v1/records", w->body.ptr,
                                      w->body.len, 1)) < 0)
            return err;
        if (rs_wire_upload_result_decode(&accepted, &inserted, &seq, resp->ptr, resp->len) < 0)
            return rs__error(RS_ESERVER, "server %s answered an upload with: %s", w->url,
                             rs_error_last());
        if (accepted != p.count) {
            char shard[SHARD_TEXT];
            rs__shard_name(shard, sizeof(shard), &w->self, tag);
            return rs__error(
                RS_ESERVER, "server %s accepted %llu of the %zu records of shard %s from idx %llu",
                w->url, (unsigned long long)accepted, p.count, shard, (unsigned long long)from);
        }
        if ((err = own_set(w, tag, from + p.count)) < 0)
            return err;
        rs_watch_batch b = {.kind = RS_WATCH_UPLOADED,
                            .host = w->self,
                            .start = from,
                            .end = from + p.count,
                            .seq = seq,
                            .count = p.count};
        snprintf(b.tag, sizeof(b.tag), "%s", tag);
        emit(w, &b);
        from += p.count;
    }
    return 0;
}

/* Uploads every record of this device's shards the server does not have yet. */
static int push(watch *w)
{
    rs_index *index = NULL;
    int err = rs_store_index(&index, w->store);
    if (err < 0)
        return err;
    for (size_t i = 0; i < index->count && err == 0; i++) {
        const rs_shard *s = &index->shards[i];
        own_shard *o;
        if (rs_uuid_cmp(&s->host, &w->self) != 0)
            continue;
        o = own_find(w, s->tag);
        if (s->end > (o ? o->end : 0))
            err = push_shard(w, s->tag, o ? o->end : 0, s->end);
    }
    rs_index_free(index);
    return err;
}

/*
 * Pulls what an event announces: shard (host, tag) up to `end`, from where
 * the store ends, one transaction per page.
 */
static int pull(watch *w, const rs_wire_event *ev)
{
    uint64_t start = 0;
    char path[256], h[RS_UUID_STRLEN + 1];
    int err;

    if ((err = local_end(&start, w, &ev->host, ev->tag)) < 0)
        return err;
    rs_uuid_format(h, &ev->host);
    while (start < ev->end) {
        uint64_t limit = ev->end - start;
        const rs_buf *resp;
        size_t inserted = 0;
        if (limit > w->opts.sync.page_records)
            limit = w->opts.sync.page_records;
        snprintf(path, sizeof(path), "/api/v1/records?host=%s&tag=%s&start=%llu&limit=%llu", h,
                 ev->tag, (unsigned long long)start, (unsigned long long)limit);
        if ((err = rs__client_request(&resp, NULL, w->client, path, NULL, 0, 1)) < 0)
            return err;
        if (rs_wire_decode_records(&w->page, resp->ptr, resp->len, RS_WIRE_PAGE, 0) < 0) {
            char shard[SHARD_TEXT];
            rs__shard_name(shard, sizeof(shard), &ev->host, ev->tag);
            return rs__error(RS_ESERVER,
                             "server %s sent a page of shard %s from idx %llu that does not "
                             "parse: %s",
                             w->url, shard, (unsigned long long)start, rs_error_last());
        }
        for (size_t i = 0; i < w->page.count || w->page.count == 0; i++) {
            const rs_record *rec = w->page.count ? &w->page.records[i] : NULL;
            if (rec == NULL || i >= limit || rec->idx != start + i ||
                rs_uuid_cmp(&rec->host, &ev->host) != 0 || strcmp(rec->tag, ev->tag) != 0) {
                char shard[SHARD_TEXT];
                rs__shard_name(shard, sizeof(shard), &ev->host, ev->tag);
                return rs__error(RS_ESERVER,
                                 "server %s answered a request for shard %s from idx %llu (its "
                                 "event %llu announced records up to %llu) with %zu records, not "
                                 "the ones asked for",
                                 w->url, shard, (unsigned long long)start,
                                 (unsigned long long)ev->seq, (unsigned long long)ev->end,
                                 w->page.count);
            }
        }
        if ((err = rs_store_insert(&inserted, w->store, w->page.records, w->page.count)) ==
            RS_EKEY) {
            /* Under a key not picked up yet (a rotation): a full sync learns it first. */
            w->need_resync = 1;
            return 0;
        }
        if (err < 0) {
            char shard[SHARD_TEXT];
            rs__shard_name(shard, sizeof(shard), &ev->host, ev->tag);
            return rs__error(err, "page of shard %s from idx %llu refused, nothing of it kept: %s",
                             shard, (unsigned long long)start, rs_error_last());
        }
        rs_watch_batch b = {.kind = RS_WATCH_DOWNLOADED,
                            .host = ev->host,
                            .start = start,
                            .end = start + w->page.count,
                            .seq = ev->seq,
                            .count = inserted};
        snprintf(b.tag, sizeof(b.tag), "%s", ev->tag);
        w->last_applied = now_ms();
        emit(w, &b);
        start += w->page.count;
    }
    return 0;
}

/* ---- the event stream ---- */

static void stream_close(watch *w)
{
    if (w->stream) {
        rs__curl.multi_remove_handle(w->multi, w->stream);
        rs__curl.easy_cleanup(w->stream);
        w->stream = NULL;
    }
    if (w->headers) /* else libcurl may never have been loaded */
        rs__curl.slist_free_all(w->headers);
    w->headers = NULL;
    rs_buf_clear(&w->line);
    rs_buf_clear(&w->data);
    rs_buf_clear(&w->error_body);
    w->event[0] = '\0';
    w->queued = 0;
    w->status = 0;
    w->announced = 0;
    w->stream_error = 0;
}

/* Handles one complete event (a blank line ended it). 0, or nonzero to end the stream. */
static int dispatch(watch *w)
{
    int ret = 0;
    if (strcmp(w->event, "records") == 0 && w->data.len > 0) {
        if (w->queued == w->queue_cap) {
            size_t cap = w->queue_cap ? w->queue_cap * 2 : 16;
            rs_wire_event *grown = rs__realloc(w->queue, cap * sizeof(*grown));
            if (grown == NULL) {
                w->stream_error = 1;
                ret = rs__error(RS_ENOMEM, "out of memory queueing an event");
                goto done;
            }
            w->queue = grown;
            w->queue_cap = cap;
        }
        if (rs_wire_event_decode(&w->queue[w->queued], w->data.ptr, w->data.len) < 0) {
            w->stream_error = 1;
            ret = rs__error(RS_ESERVER, "server %s sent an event that does not parse: %s", w->url,
                            rs_error_last());
            goto done;
        }
        /* A stream carries seqs above its cursor, each once and in order. */
        uint64_t floor = w->queued ? w->queue[w->queued - 1].seq : w->stream_seq;
        if (w->queue[w->queued].seq <= floor) {
            w->stream_error = 1;
            ret = rs__error(RS_ESERVER,
                            "server %s sent an event of seq %llu after seq %llu: its seq went "
                            "backwards",
                            w->url, (unsigned long long)w->queue[w->queued].seq,
                            (unsigned long long)floor);
            goto done;
        }
        w->stream_seq = w->queue[w->queued].seq;
        w->queued++;
    } else if (strcmp(w->event, "error") == 0) {
        char name[64] = "", message[400] = "";
        if (rs_wire_error_decode(name, sizeof(name), message, sizeof(message), w->data.ptr,
                                 w->data.len) == 0 &&
            strcmp(name, "resync_required") == 0)
            w->stream_error = 2;
        else if (strcmp(name, "device_retired") == 0)
            w->stream_error = 3;
        else
            w->stream_error = 1;
        ret = rs__error(w->stream_error == 2   ? RS_EGONE
                        : w->stream_error == 3 ? RS_ERETIRED
                                               : RS_ESERVER,
                        "server %s ended the event stream: %s %s", w->url, name, message);
        if (w->stream_error == 3)
            snprintf(w->retired, sizeof(w->retired), "%s", rs_error_last());
    }
done:
    rs_buf_clear(&w->data);
    w->event[0] = '\0';
    return ret;
}

/* One line of the stream, without its end of line. 0, or nonzero to end the stream. */
static int stream_line(watch *w, const char *line, size_t len)
{
    const char *value;
    size_t field, vlen;

    if (len == 0)
        return dispatch(w);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            w->stream_error = 1;
            return rs__error(RS_ESERVER,
                             "server %s sent an event stream line with control byte 0x%02x at "
                             "column %zu: not an event stream",
                             w->url, c, i + 1);
        }
    }
    if (line[0] == ':')
        return 0; /* a heartbeat or comment */
    for (field = 0; field < len && line[field] != ':'; field++)
        ;
    value = field < len ? line + field + 1 : line + len;
    vlen = (size_t)(line + len - value);
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (field == 4 && memcmp(line, "data", 4) == 0) {
        if (w->data.len + vlen + 1 > LINE_MAX_BYTES) {
            w->stream_error = 1;
            return rs__error(RS_ESERVER, "server %s sent an event over %u bytes", w->url,
                             LINE_MAX_BYTES);
        }
        if (w->data.len > 0 && rs_buf_put(&w->data, "\n", 1) < 0)
            return RS_ENOMEM;
        if (rs_buf_put(&w->data, value, vlen) < 0)
            return RS_ENOMEM;
    } else if (field == 5 && memcmp(line, "event", 5) == 0) {
        snprintf(w->event, sizeof(w->event), "%.*s", (int)vlen, value);
    }
    /* "id" repeats the data's seq; "retry" gives way to the caller's backoff. */
    return 0;
}

static size_t stream_write(char *bytes, size_t size, size_t nmemb, void *userdata)
{
    watch *w = userdata;
    size_t n = size * nmemb;

    w->last_byte = now_ms();
    if (w->status == 0)
        rs__curl_info_long(w->stream, CURLINFO_RESPONSE_CODE, &w->status);
    if (w->status != 200) {
        size_t room = ERROR_BODY_MAX - w->error_body.len;
        if (w->error_body.len < ERROR_BODY_MAX &&
            rs_buf_put(&w->error_body, bytes, n < room ? n : room) < 0)
            return 0;
        return n;
    }
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(bytes + i, '\n', n - i);
        size_t take = nl ? (size_t)(nl - (bytes + i)) : n - i;
        if (w->line.len + take > LINE_MAX_BYTES) {
            w->stream_error = 1;
            rs__error(RS_ESERVER, "server %s sent an event line over %u bytes", w->url,
                      LINE_MAX_BYTES);
            return 0;
        }
        if (rs_buf_put(&w->line, bytes + i, take) < 0)
            return 0;
        i += take;
        if (nl == NULL)
            break;
        i++;
        size_t len = w->line.len;
        if (len > 0 && w->line.ptr[len - 1] == '\r')
            len--;
        int ret = stream_line(w, w->line.ptr, len);
        rs_buf_clear(&w->line);
        if (ret != 0)
            return 0;
    }
    return n;
}

/* Opens the event stream after w->last_seq. */
static int stream_open(watch *w)
{
    char header[64];
    rs_buf path = {0};
    struct curl_slist *l;
    int err = 0;

    stream_close(w);
    if ((w->stream = rs__curl.easy_init()) == NULL)
        return rs__error(RS_ENOMEM, "libcurl could not make a handle for %s", w->url);
    snprintf(header, sizeof(header), "Last-Event-ID: %llu", (unsigned long long)w->last_seq);
    w->stream_seq = w->last_seq;
    const char *fixed[] = {"Accept: text/event-stream", header};
    for (size_t i = 0; i < 2; i++) {
        if ((l = rs__curl.slist_append(w->headers, fixed[i])) == NULL)
            goto nomem;
        w->headers = l;
    }
    if (rs_buf_printf(&path, "Authorization: Token %s", w->token) < 0)
        goto nomem;
    l = rs__curl.slist_append(w->headers, path.ptr);
    sodium_memzero(path.ptr, path.len);
    rs_buf_clear(&path);
    if (l == NULL)
        goto nomem;
    w->headers = l;
    if (rs_buf_printf(&path, "%s/api/v1/events", w->url) < 0)
        goto nomem;
    rs__curl_ptr(w->stream, CURLOPT_URL, path.ptr);
    rs__curl_ptr(w->stream, CURLOPT_HTTPHEADER, w->headers);
    rs__curl_write_fn(w->stream, stream_write);
    rs__curl_ptr(w->stream, CURLOPT_WRITEDATA, w);
    rs__curl_long(w->stream, CURLOPT_NOSIGNAL, 1L);
    rs__curl_long(w->stream, CURLOPT_TCP_NODELAY, 1L);
    rs__curl_long(w->stream, CURLOPT_TCP_KEEPALIVE, 1L);
    rs__curl_long(w->stream, CURLOPT_CONNECTTIMEOUT_MS,
                  w->opts.sync.connect_timeout_ms > 0 ? w->opts.sync.connect_timeout_ms
                                                      : RS_CLIENT_DEFAULT_CONNECT_MS);
#if LIBCURL_VERSION_NUM >= 0x075500
    rs__curl_ptr(w->stream, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    if (rs__curl.multi_add_handle(w->multi, w->stream) != CURLM_OK) {
        err = rs__error(RS_ERROR, "libcurl could not start the event stream of %s", w->url);
        goto done;
    }
    w->last_byte = now_ms();
    goto done;
nomem:
    err = rs__error(RS_ENOMEM, "out of memory opening the event stream of %s", w->url);
done:
    rs_buf_free(&path);
    if (err < 0)
        stream_close(w);
    return err;
}

/*
 * What an ended transfer means: 0 to reconnect after the backoff (a lost
 * connection, a 5xx), w->need_resync set for 410, a code for an answer
 * that retrying cannot change.
 */
static int stream_ended(watch *w, CURLcode rc, char *why, size_t why_size)
{
    long status = w->status;
    char name[64] = "", message[400] = "";

    if (status == 0)
        rs__curl_info_long(w->stream, CURLINFO_RESPONSE_CODE, &status);
    if (w->stream_error == 2 || status == 410) {
        w->need_resync = 1;
        snprintf(why, why_size, "server %s no longer keeps the events after seq %llu", w->url,
                 (unsigned long long)w->last_seq);
        return 0;
    }
    if (w->stream_error == 3)
        return rs__error(RS_ERETIRED, "%s", w->retired);
    if (status == 200 || status == 0) {
        snprintf(why, why_size, "event stream of %s ended: %s", w->url,
                 w->stream_error  ? rs_error_last()
                 : rc == CURLE_OK ? "the server closed it"
                                  : rs__curl.easy_strerror(rc));
        return 0;
    }
    if (w->error_body.len > 0)
        rs_wire_error_decode(name, sizeof(name), message, sizeof(message), w->error_body.ptr,
                             w->error_body.len);
    if (status >= 300 && status <= 399) {
        /* Never followed: the store trusts its server URL, no other. */
        char *to = NULL, where[204];
        if (rs__curl.easy_getinfo(w->stream, CURLINFO_REDIRECT_URL, &to) != CURLE_OK || to == NULL)
            to = "nowhere valid";
        snprintf(where, sizeof(where), "%.200s", to);
        for (char *p = where; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        snprintf(why, why_size,
                 "server %s answered GET /api/v1/events with %ld, a redirect to %s: not followed; "
                 "check the server URL (recsync login --server)",
                 w->url, status, where);
        return rs__error(RS_ESERVER, "%s", why);
    }
    snprintf(why, why_size, "server %s answered GET /api/v1/events with %ld %s: %s", w->url, status,
             name, *message ? message : "(no message)");
    if (status == 401 && strcmp(name, "device_retired") == 0)
        return rs__error(RS_ERETIRED, "%s", why);
    if (status == 401 || status == 403)
        return rs__error(RS_EAUTH, "%s", why);
    if (status >= 500 || status == 429)
        return 0;
    return rs__error(RS_ESERVER, "%s", why);
}

/* ---- the loop ---- */

/* Reads the resume point, syncs fully, and notes where this device's shards end on the server. */
static int resync(watch *w)
{
    const rs_buf *resp;
    rs_wire_boot boot;
    rs_sync_report *report = NULL;
    rs_sync_last *last = NULL;
    uint64_t resume;
    int err;

    memset(&boot, 0, sizeof(boot));
    if ((err = rs__client_request(&resp, NULL, w->client, "/api/v1/boot", NULL, 0, 1)) < 0)
        return err;
    if (rs_wire_boot_decode(&boot, resp->ptr, resp->len) < 0)
        return rs__error(RS_ESERVER, "server %s sent a boot document that does not parse: %s",
                         w->url, rs_error_last());
    resume = boot.resume_point;
    rs_wire_boot_clear(&boot);
    if ((err = rs_sync(&report, w->store, &w->opts.sync)) < 0)
        return err;
    if ((err = rs_sync_last_get(&last, w->store)) < 0)
        goto done;
    for (size_t i = 0; i < last->remote->count && err == 0; i++)
        if (rs_uuid_cmp(&last->remote->shards[i].host, &w->self) == 0)
            err = own_set(w, last->remote->shards[i].tag, last->remote->shards[i].end);
    if (err < 0)
        goto done;
    w->last_seq = resume;
    w->need_resync = 0;
    rs_watch_batch b = {
        .kind = RS_WATCH_RESYNCED, .seq = resume, .count = report->uploaded + report->downloaded};
    emit(w, &b);
done:
    rs_sync_last_free(last);
    rs_sync_report_free(report);
    return err;
}

/*
 * Notes where the server holds this device's shard after an event of it.
 * RS_ESERVER when the event claims records the store never wrote: such a
 * claim would stop the watch from uploading them.
 */
static int own_event(watch *w, const rs_wire_event *ev)
{
    uint64_t end = 0;
    int err = local_end(&end, w, &ev->host, ev->tag);
    if (err < 0)
        return err;
    if (ev->end > end) {
        char shard[SHARD_TEXT];
        rs__shard_name(shard, sizeof(shard), &ev->host, ev->tag);
        return rs__error(RS_ESERVER,
                         "server %s announced (event %llu) records of this device's shard %s up "
                         "to idx %llu, but the store ends at %llu",
                         w->url, (unsigned long long)ev->seq, shard, (unsigned long long)ev->end,
                         (unsigned long long)end);
    }
    return own_set(w, ev->tag, ev->end);
}

/* Applies the queued events in seq order; the seq of each applied one becomes the cursor. */
static int apply_queue(watch *w)
{
    int err = 0;
    for (size_t i = 0; i < w->queued && err == 0; i++) {
        const rs_wire_event *ev = &w->queue[i];
        if (ev->seq <= w->last_seq)
            continue; /* never twice, whatever the server sends */
        if (rs_uuid_cmp(&ev->host, &w->self) == 0)
            err = own_event(w, ev);
        else
            err = pull(w, ev);
        if (err == 0) {
            w->last_seq = ev->seq;
            /* Only a valid event applied proves the server sane: a 200 alone does not. */
            w->backoff_ms = w->opts.backoff_min_ms;
        }
    }
    w->queued = 0;
    return err;
}

/* Pushes when another connection changed the store since the last look. */
static int check_local(watch *w)
{
    int version = 0, err;
    if ((err = read_data_version(&version, w)) < 0)
        return err;
    if (version == w->data_version)
        return 0;
    w->data_version = version;
    return push(w);
}

static void drain_inotify(watch *w)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (read(w->inotify_fd, buf, sizeof(buf)) > 0)
        ;
}

/* A failed pull or push: a retryable one drops the stream and comes back after the backoff. */
static int soft_fail(watch *w, int err)
{
    if (err == RS_EGONE) {
        w->need_resync = 1;
        stream_close(w);
        schedule_retry(w, rs_error_last());
        return 0;
    }
    if (!retryable(err))
        return err;
    stream_close(w);
    schedule_retry(w, rs_error_last());
    return 0;
}

static int loop(watch *w)
{
    int err = 0;
    w->need_resync = 1;
    w->retry_at = 0;
    for (;;) {
        struct curl_waitfd fds[2];
        unsigned nfds = 0;
        uint64_t now = now_ms();
        long timeout;
        int running = 0, check = 0;
        CURLMsg *msg;
        int left;

        if (w->stream == NULL && now >= w->retry_at) {
            if (w->need_resync && (err = resync(w)) < 0) {
                if ((err = soft_fail(w, err)) < 0)
                    return err;
                continue;
            }
            if ((err = stream_open(w)) < 0)
                return err;
        }
        if (w->stream)
            timeout = w->opts.idle_check_ms;
        else
            timeout = (long)(w->retry_at > now ? w->retry_at - now : 0);
        if (timeout > w->opts.idle_check_ms)
            timeout = w->opts.idle_check_ms;
        if (now < w->hot_until)
            timeout = 1;
        if (w->opts.stop_fd > 0)
            fds[nfds++] = (struct curl_waitfd){.fd = w->opts.stop_fd, .events = CURL_WAIT_POLLIN};
        if (w->inotify_fd >= 0)
            fds[nfds++] = (struct curl_waitfd){.fd = w->inotify_fd, .events = CURL_WAIT_POLLIN};
        if (rs__curl.multi_poll(w->multi, fds, nfds, (int)timeout, NULL) != CURLM_OK)
            return rs__error(RS_ERROR, "waiting on the event stream of %s failed", w->url);
        for (unsigned i = 0; i < nfds; i++) {
            if (fds[i].fd == w->opts.stop_fd && w->opts.stop_fd > 0 && fds[i].revents)
                return 0;
            if (fds[i].fd == w->inotify_fd && fds[i].revents) {
                drain_inotify(w);
                check = 1;
            }
        }
        now = now_ms();
        if (check)
            w->hot_until = now + HOT_WINDOW_MS;
        if (check || now < w->hot_until || now >= w->next_idle_check) {
            if (now >= w->next_idle_check)
                maybe_checkpoint(w, now);
            w->next_idle_check = now + (uint64_t)w->opts.idle_check_ms;
            if ((err = check_local(w)) < 0 && (err = soft_fail(w, err)) < 0)
                return err;
        }
        if (w->stream == NULL)
            continue;
        rs__curl.multi_perform(w->multi, &running);
        if ((err = apply_queue(w)) < 0) {
            if ((err = soft_fail(w, err)) < 0)
                return err;
            continue;
        }
        if (w->status == 200 && !w->announced) {
            rs_watch_batch b = {.kind = RS_WATCH_CONNECTED, .seq = w->last_seq};
            w->announced = 1;
            emit(w, &b);
            /* Writes made while the stream was down go now. */
            if ((err = push(w)) < 0 && (err = soft_fail(w, err)) < 0)
                return err;
            if (w->stream == NULL)
                continue;
        }
        while ((msg = rs__curl.multi_info_read(w->multi, &left)) != NULL) {
            char why[600];
            if (msg->msg != CURLMSG_DONE || msg->easy_handle != w->stream)
                continue;
            if ((err = stream_ended(w, msg->data.result, why, sizeof(why))) < 0)
                return err;
            stream_close(w);
            schedule_retry(w, why);
            break;
        }
        if (w->stream && now_ms() - w->last_byte > (uint64_t)w->opts.stall_ms) {
            char why[300];
            snprintf(why, sizeof(why), "event stream of %s silent for %ld ms", w->url,
                     w->opts.stall_ms);
            stream_close(w);
            schedule_retry(w, why);
        }
    }
}

int rs_watch(rs_store *store, const rs_watch_opts *opts)
{
    watch w;
    rs_client_opts copts = {0};
    int err;

    memset(&w, 0, sizeof(w));
    w.inotify_fd = -1;
    w.store = store;
    if (opts)
        w.opts = *opts;
    if (w.opts.sync.page_records == 0)
        w.opts.sync.page_records = RS_SYNC_DEFAULT_PAGE_RECORDS;
    if (w.opts.sync.page_bytes == 0)
        w.opts.sync.page_bytes = RS_SYNC_DEFAULT_PAGE_BYTES;
    if (w.opts.backoff_min_ms <= 0)
        w.opts.backoff_min_ms = 50;
    if (w.opts.backoff_max_ms <= 0)
        w.opts.backoff_max_ms = 5000;
    if (w.opts.backoff_max_ms < w.opts.backoff_min_ms)
        w.opts.backoff_max_ms = w.opts.backoff_min_ms;
    if (w.opts.stall_ms <= 0)
        w.opts.stall_ms = 45000;
    if (w.opts.idle_check_ms <= 0)
        w.opts.idle_check_ms = 250;
    w.backoff_ms = w.opts.backoff_min_ms;
    rs_store_host(&w.self, store);

    err = rs_store_meta_get(&w.url, store, RS_META_SERVER);
    if (err == 0)
        err = rs_store_meta_get(&w.token, store, RS_META_TOKEN);
    if (err == RS_ENOTFOUND)
        err = rs__error(RS_EAUTH,
                        "store %s is not logged in to a server: run 'recsync register' or "
                        "'recsync login' first",
                        rs_store_dir(store));
    if (err < 0)
        goto done;
    copts.connect_timeout_ms = w.opts.sync.connect_timeout_ms;
    copts.timeout_ms = w.opts.sync.timeout_ms;
    if ((err = rs__client_new(&w.client, w.url, w.token, &copts)) < 0)
        goto done;
    if ((w.multi = rs__curl.multi_init()) == NULL) {
        err = rs__error(RS_ENOMEM, "libcurl could not make a multi handle for %s", w.url);
        goto done;
    }
    if (sqlite3_prepare_v2(rs_store_db(store), "PRAGMA data_version", -1, &w.st_version, NULL) !=
        SQLITE_OK) {
        err = rs__error(RS_EIO, "cannot prepare a data version query on store %s: %s",
                        rs_store_dir(store), sqlite3_errmsg(rs_store_db(store)));
        goto done;
    }
    /* Watch before the first look, so no write falls between the two. */
    w.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w.inotify_fd >= 0 &&
        inotify_add_watch(w.inotify_fd, rs_store_dir(store),
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
        close(w.inotify_fd);
        w.inotify_fd = -1; /* the idle checks still find local writes */
    }
    if ((err = read_data_version(&w.data_version, &w)) < 0)
        goto done;
    sqlite3_wal_hook(rs_store_db(store), on_wal, &w);
    err = loop(&w);
    /* The connection outlives the watch: give it back SQLite's automatic checkpoints. */
    sqlite3_wal_autocheckpoint(rs_store_db(store), CHECKPOINT_PAGES);
done:
    stream_close(&w);
    if (w.multi)
        rs__curl.multi_cleanup(w.multi);
    if (w.inotify_fd >= 0)
        close(w.inotify_fd);
    sqlite3_finalize(w.st_version);
    rs__client_free(w.client);
    rs_wire_batch_free(&w.page);
    rs_buf_free(&w.body);
    rs_buf_free(&w.line);
    rs_buf_free(&w.data);
    rs_buf_free(&w.error_body);
    rs_free(w.queue);
    rs_free(w.own);
    rs_free(w.url);
    if (w.token) {
        sodium_memzero(w.token, strlen(w.token));
        rs_free(w.token);
    }
    return err;
}
