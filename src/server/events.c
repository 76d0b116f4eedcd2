/*
 * Live events: Server-Sent Events streams per user, and the retention
 * thread that prunes old events.
 *
 * Streams run on MHD's thread pool with suspend/resume rather than a
 * thread per connection: a stream with nothing to send suspends its
 * connection, and is resumed when the backend notifies a commit for its
 * user (rs_events_notify, from the writer's thread: the lowest latency) or
 * when its heartbeat is due (the hub thread). Events are read from the
 * database by seq cursor every time, never from an in-memory queue, so a
 * subscriber that connects, lags or reconnects sees every event once, in
 * seq order, and a slow consumer costs no memory: it is only fed as the
 * socket drains, and MHD's connection timeout closes one that stops
 * reading.
 *
 * The hub lock orders suspend against resume: a stream suspends only with
 * the lock held and after checking no notify arrived (the dirty flag), and
 * notify resumes only streams marked suspended, under the same lock. MHD
 * forbids resuming a connection that is not suspended and stopping the
 * daemon with suspended connections; rs_events_stop resumes them all and
 * bars new suspends first.
 */
#include "server.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* How soon a stream whose events query found the database away polls again. */
#define STREAM_RETRY_MS 200

#define EVENTS_PER_QUERY 256
#define STREAM_BLOCK 16384
/* Streams are also listed by user, so a commit wakes its user's without walking every stream. */
#define USER_BUCKETS 16384 /* a power of two */

typedef struct subscriber {
    struct subscriber *prev, *next;
    struct subscriber *uprev, *unext; /* the user's bucket */
    struct MHD_Connection *conn;
    int64_t user;
    rs_device dev; /* the device and token it authenticated with, checked again at heartbeats */
    const char *revoked; /* under the hub lock: the error code the stream ends with, or NULL */
    char revoked_message[300];
    uint64_t last;         /* seq of the last event sent */
    uint64_t next_beat_ms; /* when a heartbeat is due */
    int dirty;             /* a commit was notified since the last query */
    int suspended;
    int ended;
    size_t fetched; /* events added by the current query */
    rs_buf out;
    size_t out_pos;
} subscriber;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    subscriber *head;
    subscriber *by_user[USER_BUCKETS];
    int stopping;
    int started;
    pthread_t hub_thread;
    pthread_t retention_thread;
} hub = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
};

static uint64_t mono_ms(void)
{
    return rs_monotonic_ns() / 1000000u;
}

/* The bucket of `user`'s streams (Fibonacci hashing of the id). */
static subscriber **user_bucket(int64_t user)
{
    uint64_t h = (uint64_t)user * 0x9e3779b97f4a7c15ull;
    return &hub.by_user[(h >> 40) & (USER_BUCKETS - 1)];
}

/* Resumes `s` if suspended. Hub lock held. */
static void wake(subscriber *s)
{
    if (s->suspended) {
        s->suspended = 0;
        MHD_resume_connection(s->conn);
    }
}

/*
 * A commit for `user`: marks every stream of that user dirty and resumes
 * the suspended ones. Called from the backend, on any thread.
 */
void rs_events_notify(int64_t user, uint64_t seq, void *payload)
{
    pthread_mutex_lock(&hub.lock);
    /* s->last belongs to the stream's own thread: do not read it here. */
    for (subscriber *s = *user_bucket(user); s; s = s->unext) {
        if (s->user == user) {
            s->dirty = 1;
            wake(s);
        }
    }
    pthread_mutex_unlock(&hub.lock);
}

void rs_events_revoke(int64_t user, const rs_uuid *host, const char *code, const char *message)
{
    pthread_mutex_lock(&hub.lock);
    for (subscriber *s = *user_bucket(user); s; s = s->unext) {
        if (s->user == user && (host == NULL || rs_uuid_cmp(&s->dev.host, host) == 0)) {
            s->revoked = code;
            snprintf(s->revoked_message, sizeof(s->revoked_message), "%s", message);
            s->dirty = 1;
            wake(s);
        }
    }
    pthread_mutex_unlock(&hub.lock);
}

/* Queues the `error` event that ends a revoked stream. */
static int end_revoked(subscriber *s, const char *code, const char *message)
{
    if (rs_buf_puts(&s->out, "event: error\ndata: ") < 0 ||
        rs_wire_error_encode(&s->out, code, message) < 0 || rs_buf_puts(&s->out, "\n\n") < 0)
        return RS_ENOMEM;
    s->ended = 1;
    return 0;
}

/*
 * At a heartbeat: whether the stream's token still authenticates (another
 * process may have retired or logged out its device). 1 when the stream
 * was ended for it; a database that does not answer ends nothing.
 */
static int recheck(subscriber *s)
{
    int err = rs_auth_recheck(&s->dev);
    if (err != RS_ERETIRED && err != RS_EAUTH)
        return 0;
    if (end_revoked(s, err == RS_ERETIRED ? "device_retired" : "unauthorized", rs_error_last()) < 0)
        return -1;
    return 1;
}

/* Appends one event to a stream's buffer and advances its cursor. */
static int add_event(const rs_wire_event *ev, void *payload)
{
    subscriber *s = payload;
    int err;
    if ((err = rs_buf_printf(
             &s->out, "id: %llu\nevent: records\ndata: ", (unsigned long long)ev->seq)) < 0 ||
        (err = rs_wire_event_encode(&s->out, ev)) < 0 || (err = rs_buf_puts(&s->out, "\n\n")) < 0)
        return err;
    s->last = ev->seq;
    s->fetched++;
    atomic_fetch_add_explicit(&rs_stats.events_sent, 1, memory_order_relaxed);
    return 0;
}

/*
 * Fills s->out with the events after s->last (repeating while queries come
 * back full). On a pruned cursor, queues an `error` event and ends the
 * stream; the client reconnects and gets 410.
 */
static int fetch(subscriber *s)
{
    for (;;) {
        uint64_t before = s->last;
        size_t len = s->out.len;
        s->fetched = 0;
        int err = rs_srv.backend->ops->events(rs_srv.backend, s->user, s->last, EVENTS_PER_QUERY,
                                              add_event, s);
        if (err == RS_EGONE) {
            atomic_fetch_add(&rs_stats.streams_gone, 1);
            s->out.len = len;
            s->last = before;
            if (rs_buf_puts(&s->out, "event: error\ndata: ") < 0 ||
                rs_wire_error_encode(&s->out, "resync_required", rs_error_last()) < 0 ||
                rs_buf_puts(&s->out, "\n\n") < 0)
                return RS_ENOMEM;
            s->ended = 1;
            return 0;
        }
        if (err < 0) {
            s->out.len = len;
            s->last = before;
            return err;
        }
        if (s->fetched < EVENTS_PER_QUERY)
            return 0;
    }
}

/*
 * MHD's content reader for a stream: sends what is buffered, else events
 * past the cursor, else a heartbeat when due, else suspends.
 */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    subscriber *s = cls;
    for (;;) {
        if (s->out_pos < s->out.len) {
            size_t n = s->out.len - s->out_pos;
            if (n > max)
                n = max;
            memcpy(buf, s->out.ptr + s->out_pos, n);
            s->out_pos += n;
            if (s->out_pos == s->out.len) {
                rs_buf_clear(&s->out);
                s->out_pos = 0;
                if (s->out.cap > (1u << 20))
                    rs_buf_free(&s->out);
            }
            s->next_beat_ms = mono_ms() + rs_srv.cfg.heartbeat_ms;
            return (ssize_t)n;
        }
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;

        pthread_mutex_lock(&hub.lock);
        int stopping = hub.stopping, dirty = s->dirty;
        const char *revoked = s->revoked;
        char message[sizeof(s->revoked_message)];
        if (revoked)
            memcpy(message, s->revoked_message, sizeof(message));
        s->dirty = 0;
        pthread_mutex_unlock(&hub.lock);
        if (stopping)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (revoked) {
            if (end_revoked(s, revoked, message) < 0)
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        /* A due heartbeat polls too, so a lost notification costs one heartbeat of delay. */
        int beat = mono_ms() >= s->next_beat_ms;
        if (beat) {
            int r = recheck(s);
            if (r < 0)
                return MHD_CONTENT_READER_END_WITH_ERROR;
            if (r > 0)
                continue;
        }
        int retry = 0;
        if (dirty || beat) {
            int err = fetch(s);
            if (err == RS_EUNAVAIL || err == RS_EBUSY) {
                /* The database is away (a restart, a failover, a lock): the stream stays and
                   polls again shortly, without a heartbeat that would push that back. */
                retry = 1;
                s->next_beat_ms = mono_ms() + STREAM_RETRY_MS;
            } else if (err < 0) {
                fprintf(stderr, "recsyncd: ending a stream: %s\n", rs_error_last());
                return MHD_CONTENT_READER_END_WITH_ERROR;
            } else if (s->out.len > 0) {
                continue;
            }
        }
        if (beat && !retry) {
            atomic_fetch_add_explicit(&rs_stats.heartbeats_sent, 1, memory_order_relaxed);
            if (rs_buf_puts(&s->out, ":\n\n") < 0)
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }

        pthread_mutex_lock(&hub.lock);
        if (!s->dirty && !hub.stopping) {
            s->suspended = 1;
            MHD_suspend_connection(s->conn);
            pthread_mutex_unlock(&hub.lock);
            return 0;
        }
        pthread_mutex_unlock(&hub.lock);
    }
}

/* MHD is done with a stream's response: unlink and free the subscriber. */
static void stream_free(void *cls)
{
    subscriber *s = cls;
    pthread_mutex_lock(&hub.lock);
    if (s->prev)
        s->prev->next = s->next;
    else if (hub.head == s)
        hub.head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->uprev)
        s->uprev->unext = s->unext;
    else if (*user_bucket(s->user) == s)
        *user_bucket(s->user) = s->unext;
    if (s->unext)
        s->unext->uprev = s->uprev;
    pthread_mutex_unlock(&hub.lock);
    atomic_fetch_sub(&rs_stats.subscribers, 1);
    rs_buf_free(&s->out);
    rs_free(s);
}

/*
 * Checks the cursor against what the user's events still cover (410
 * otherwise, before any streaming), then registers a subscriber whose
 * response MHD pulls through stream_read.
 */
int rs_events_open(rs_reply *out, struct MHD_Connection *conn, const rs_device *dev, int has_after,
                   uint64_t after)
{
    uint64_t seq = 0, floor = 0;
    int err = rs_srv.backend->ops->seq(rs_srv.backend, &seq, &floor, dev->user);
    if (err < 0)
        return err;
    if (!has_after) {
        after = seq;
    } else if (after < floor || after > seq) {
        atomic_fetch_add(&rs_stats.streams_gone, 1);
        return rs__error(RS_EGONE,
                         "event cursor %llu is outside what the server keeps (%llu to %llu): "
                         "resync by index and resume from a fresh resume_point",
                         (unsigned long long)after, (unsigned long long)floor,
                         (unsigned long long)seq);
    }
    subscriber *s = rs__calloc(1, sizeof(*s));
    if (s == NULL)
        return rs__error(RS_ENOMEM, "out of memory for an event stream");
    s->conn = conn;
    s->user = dev->user;
    s->dev = *dev;
    s->last = after;
    s->dirty = 1;
    s->next_beat_ms = mono_ms() + rs_srv.cfg.heartbeat_ms;
    if ((err = rs_buf_printf(&s->out, "retry: 1000\n: stream after %llu\n\n",
                             (unsigned long long)after)) < 0) {
        rs_free(s);
        return err;
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK,
                                                                  stream_read, s, stream_free);
    if (resp == NULL) {
        rs_buf_free(&s->out);
        rs_free(s);
        return rs__error(RS_ENOMEM, "cannot create an event stream response");
    }
    atomic_fetch_add(&rs_stats.subscribers, 1); /* stream_free takes it back */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");

    pthread_mutex_lock(&hub.lock);
    if (hub.stopping) {
        pthread_mutex_unlock(&hub.lock);
        MHD_destroy_response(resp); /* frees s through stream_free */
        return rs__error(RS_EUNAVAIL, "the server is shutting down");
    }
    s->next = hub.head;
    if (hub.head)
        hub.head->prev = s;
    hub.head = s;
    subscriber **b = user_bucket(s->user);
    s->unext = *b;
    if (*b)
        (*b)->uprev = s;
    *b = s;
    pthread_mutex_unlock(&hub.lock);
    atomic_fetch_add(&rs_stats.streams_opened, 1);
    out->status = 200;
    out->response = resp;
    return 0;
}

/*
 * Wakes streams whose heartbeat is due, every 100 ms at most: each woken
 * stream checks its token and polls its events on an HTTP thread, and with
 * many thousands of streams one wake a second made a burst that requests
 * queued behind.
 */
static void *hub_main(void *arg)
{
    unsigned tick = rs_srv.cfg.heartbeat_ms / 4;
    if (tick < 10)
        tick = 10;
    if (tick > 100)
        tick = 100;
    pthread_mutex_lock(&hub.lock);
    while (!hub.stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(tick % 1000) * 1000000L;
        ts.tv_sec += tick / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&hub.cond, &hub.lock, &ts);
        uint64_t now = mono_ms();
        for (subscriber *s = hub.head; s; s = s->next)
            if (s->suspended && now >= s->next_beat_ms)
                wake(s);
    }
    pthread_mutex_unlock(&hub.lock);
    return NULL;
}

/* Runs retention every interval until stopped; never inside a request. */
static void *retention_main(void *arg)
{
    pthread_mutex_lock(&hub.lock);
    while (!hub.stopping) {
        struct timespec ts;
        unsigned ms = rs_srv.cfg.retention_interval_ms;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&hub.cond, &hub.lock, &ts);
        if (hub.stopping)
            break;
        pthread_mutex_unlock(&hub.lock);
        rs_retention_stats st;
        int err = rs_srv.backend->ops->retain(rs_srv.backend, &st, &rs_srv.cfg.retention);
        atomic_fetch_add(&rs_stats.retention_runs, 1);
        if (err < 0) {
            atomic_fetch_add(&rs_stats.retention_errors, 1);
            fprintf(stderr, "recsyncd: retention: %s\n", rs_error_last());
        } else {
            atomic_fetch_add(&rs_stats.events_pruned, st.events_pruned);
            atomic_store(&rs_stats.retention_last_ms, rs_now_ms());
        }
        pthread_mutex_lock(&hub.lock);
    }
    pthread_mutex_unlock(&hub.lock);
    return NULL;
}

int rs_events_start(void)
{
    if (pthread_create(&hub.hub_thread, NULL, hub_main, NULL) != 0)
        return rs__error(RS_ERROR, "cannot start the event hub thread");
    if (rs_srv.cfg.retention.keep_events || rs_srv.cfg.retention.keep_seconds) {
        if (pthread_create(&hub.retention_thread, NULL, retention_main, NULL) != 0) {
            rs_events_stop();
            rs_events_join();
            return rs__error(RS_ERROR, "cannot start the retention thread");
        }
        hub.started |= 2;
    }
    hub.started |= 1;
    return 0;
}

void rs_events_stop(void)
{
    pthread_mutex_lock(&hub.lock);
    hub.stopping = 1;
    for (subscriber *s = hub.head; s; s = s->next)
        wake(s);
    pthread_cond_broadcast(&hub.cond);
    pthread_mutex_unlock(&hub.lock);
}

void rs_events_join(void)
{
    if (hub.started & 1)
        pthread_join(hub.hub_thread, NULL);
    if (hub.started & 2)
        pthread_join(hub.retention_thread, NULL);
    hub.started = 0;
}
