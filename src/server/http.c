/*
 * recsyncd's HTTP layer on libmicrohttpd: routing, request bodies (bounded
 * per route and in total), the one table that maps error codes to HTTP
 * statuses, and turning a route's reply into a response. Also what keeps
 * one client from taking the server down: connections counted per client
 * address, a deadline for reading each request that trickling bytes cannot
 * extend, and the log (whole lines, rate-limited).
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BODY_RESERVE_MAX (4u << 20)
#define BODY_GROW_MIN 4096u
/* The body bound of every route but the two authenticated uploads. */
#define SMALL_BODY_MAX (64u << 10)
/* An announced upload gets a second more to arrive per this many bytes. */
#define BODY_MIN_RATE (64u << 10)
#define BUSY_RETRY_S 2
#define STREAMS_RETRY_S 30
#define LOG_LINE_MAX 1024
#define WATCH_INTERVAL_MS 200
/* Freed body bytes after which the watchdog hands free heap back to the system. */
#define TRIM_AFTER_BYTES (64u << 20)
#define PEER_BUCKETS 4096

typedef struct conn_state conn_state;

/* One request in flight: kept in MHD's per-request pointer. */
typedef struct request {
    rs_route route;
    uint64_t started_ns;
    unsigned status;
    int is_post;
    int error; /* refused (no such route, body too big, no budget): answered when read */
    unsigned retry_after_s; /* with error: Retry-After */
    const char *allow;
    char error_message[256];
    conn_state *cs;
    size_t limit;       /* the largest body this route takes */
    uint64_t announced; /* Content-Length; 0: none (chunked, or no body) */
    size_t charged;     /* bytes of --body-budget this request holds */
    size_t dropped;     /* body bytes of a request to no route, dropped */
    bool answer_now;    /* refused in the middle of its body: answer_now() */
    rs_buf body;
} request;

/*
 * The one error table: every code a route can fail with, its HTTP status
 * and its wire code. 4xx are the client's faults; anything not listed is a
 * bug and answers 500.
 */
static const struct {
    int code;
    unsigned status;
    const char *name;
} error_table[] = {
    {RS_EINVAL, 400, "invalid"},
    {RS_EAUTH, 401, "unauthorized"},
    {RS_ERETIRED, 401, "device_retired"},
    {RS_EFORBIDDEN, 403, "forbidden"},
    {RS_ENOTFOUND, 404, "not_found"},
    {RS_EMETHOD, 405, "method_not_allowed"},
    {RS_EEXISTS, 409, "exists"},
    {RS_ECONFLICT, 409, "conflict"},
    {RS_EHOLE, 409, "hole"},
    {RS_EGONE, 410, "resync_required"},
    {RS_ESNAPSHOT, 410, "snapshot_required"},
    {RS_ETOOBIG, 413, "too_big"},
    {RS_EBODY, 413, "too_big"},
    {RS_ECRYPTO, 422, "bad_envelope"},
    {RS_EKEY, 422, "wrong_key"},
    {RS_ECLOCK, 422, "clock"},
    {RS_EVERSION, 422, "version"},
    {RS_ETHROTTLED, 429, "too_many_attempts"},
    {RS_EQUOTA, 507, "quota_exceeded"},
    {RS_EBUSY, 503, "unavailable"},
    {RS_EUNAVAIL, 503, "unavailable"},
    {RS_EIO, 503, "unavailable"},
    {RS_ENOMEM, 503, "unavailable"},
};

uint64_t rs_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the log ---- */

static struct {
    pthread_mutex_t lock;
    uint64_t second;     /* the monotonic second being counted */
    unsigned lines;      /* lines written in it */
    uint64_t suppressed; /* lines dropped since the last summary */
} logs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Starts counting second `now`, first summing up what the last ones suppressed. Log lock held. */
static void log_roll(uint64_t now)
{
    if (now == logs.second)
        return;
    if (logs.suppressed > 0) {
        char line[128];
        int n = snprintf(line, sizeof(line),
                         "recsyncd: log: %llu lines suppressed (more than %u a second)\n",
                         (unsigned long long)logs.suppressed, RS_LOG_LINES_PER_S);
        write_all(line, (size_t)n);
        logs.suppressed = 0;
    }
    logs.second = now;
    logs.lines = 0;
}

/*
 * Builds the whole line first ("recsyncd: " topic message, inner line
 * breaks made spaces, one '\n', at most LOG_LINE_MAX bytes) and writes it
 * with one write(2) under the log lock, so lines from different threads
 * never interleave. Past RS_LOG_LINES_PER_S in a second it only counts.
 */
void rs_vlog(const char *topic, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    int n = snprintf(line, sizeof(line), "recsyncd: %.64s", topic);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    size_t len = (size_t)n + (m > 0 ? (size_t)m : 0);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    while (len > (size_t)n && strchr("\r\n ", line[len - 1]) != NULL)
        len--;
    for (size_t i = (size_t)n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';
    pthread_mutex_lock(&logs.lock);
    log_roll(rs_monotonic_ns() / 1000000000u);
    if (logs.lines < RS_LOG_LINES_PER_S) {
        logs.lines++;
        write_all(line, len);
    } else {
        logs.suppressed++;
        atomic_fetch_add_explicit(&rs_stats.log_suppressed, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&logs.lock);
}

void rs_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rs_vlog("", fmt, ap);
    va_end(ap);
}

/* ---- connections: counted per client address, each request read by a deadline ---- */

typedef struct peer {
    struct peer *next;
    unsigned char addr[16]; /* IPv4 as ::ffff:a.b.c.d, IPv6 by its /64 */
    unsigned conns;         /* connections reading, answering or between requests */
    unsigned closing;       /* ...of them shut down, not yet closed by MHD */
    unsigned streams;       /* connections holding an event stream */
    conn_state *first;      /* all of them */
} peer;

/* One connection, from MHD's STARTED to its CLOSED: MHD's socket context. */
struct conn_state {
    struct conn_state *prev, *next;           /* every connection */
    struct conn_state *peer_prev, *peer_next; /* its address's */
    peer *peer;
    int fd;
    uint64_t deadline_ns; /* the request being read must be whole by then; 0: none */
    uint64_t idle_since;  /* when its last request completed, if idle */
    bool idle;            /* between requests: may be closed for a new connection */
    bool stream;
    bool cut;
};

/*
 * The lock orders everything here, and the watchdog's shutdown(2) of a
 * socket against MHD closing it: MHD calls NOTIFY_CLOSED, which takes the
 * lock, before it closes the socket.
 */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    peer *buckets[PEER_BUCKETS];
    conn_state *head;
    uint32_t seed;
    bool started, stopping;
    pthread_t thread;
} lim = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static atomic_uint_fast64_t freed_since_trim;

static void peer_key(unsigned char *key, const struct sockaddr *sa)
{
    memset(key, 0, 16);
    if (sa != NULL && sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        memcpy(key, a, IN6_IS_ADDR_V4MAPPED(a) ? 16 : 8);
    }
}

/* The address as the log names it: a.b.c.d, or the IPv6 /64. */
static void peer_text(char *out, size_t size, const unsigned char *key)
{
    static const unsigned char v4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(key, v4, 12) == 0) {
        if (inet_ntop(AF_INET, key + 12, out, (socklen_t)size) == NULL)
            snprintf(out, size, "?");
        return;
    }
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(AF_INET6, key, text, sizeof(text)) == NULL)
        snprintf(text, sizeof(text), "?");
    snprintf(out, size, "%s/64", text);
}

static peer **peer_slot(const unsigned char *key)
{
    uint32_t h = 2166136261u ^ lim.seed;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    peer **pp = &lim.buckets[h % PEER_BUCKETS];
    while (*pp && memcmp((*pp)->addr, key, 16) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* The entry of address `key`, made on first use; NULL when out of memory. Lock held. */
static peer *peer_get(const unsigned char *key)
{
    peer **pp = peer_slot(key);
    if (*pp == NULL && (*pp = rs__calloc(1, sizeof(peer))) != NULL)
        memcpy((*pp)->addr, key, 16);
    return *pp;
}

/*
 * Shuts the connection's socket down (MHD then reads the end of input and
 * closes it); it no longer counts against its address's bound. Lock held.
 */
static void conn_cut(conn_state *cs)
{
    if (cs->cut)
        return;
    shutdown(cs->fd, SHUT_RDWR);
    cs->cut = true;
    if (!cs->stream)
        cs->peer->closing++;
}

/*
 * Room for one more connection of `p`: below --max-conns-per-ip, or by
 * closing the address's longest idle keep-alive connection (so a client
 * that keeps many connections alive is never refused; only connections
 * busy with a request count). false when every one is busy. Lock held.
 */
static bool peer_admit(peer *p)
{
    unsigned most = rs_srv.cfg.max_conns_per_ip;
    if (most == 0 || p->conns - p->closing < most)
        return true;
    conn_state *oldest = NULL;
    for (conn_state *cs = p->first; cs; cs = cs->peer_next)
        if (cs->idle && !cs->cut && !cs->stream &&
            (oldest == NULL || cs->idle_since < oldest->idle_since))
            oldest = cs;
    if (oldest == NULL)
        return false;
    conn_cut(oldest);
    return true;
}

/* Forgets `p` once nothing of its address is open. Lock held. */
static void peer_drop(peer *p)
{
    if (p->conns > 0 || p->streams > 0)
        return;
    peer **pp = peer_slot(p->addr);
    *pp = p->next;
    rs_free(p);
}

static conn_state *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* now + `seconds` (0: no deadline, when --request-deadline-s is 0). */
static uint64_t deadline_after(uint64_t seconds)
{
    if (rs_srv.cfg.request_deadline_s == 0)
        return 0;
    return rs_monotonic_ns() + seconds * 1000000000u;
}

static void set_deadline(conn_state *cs, uint64_t deadline_ns)
{
    pthread_mutex_lock(&lim.lock);
    cs->deadline_ns = deadline_ns;
    pthread_mutex_unlock(&lim.lock);
}

/* A request began (idle false) or completed (true) on the connection. */
static void set_idle(conn_state *cs, bool idle)
{
    pthread_mutex_lock(&lim.lock);
    cs->idle = idle;
    cs->idle_since = rs_monotonic_ns();
    pthread_mutex_unlock(&lim.lock);
}

/* Pushes the deadline of the request being read `seconds` later (an announced upload). */
static void extend_deadline(conn_state *cs, uint64_t seconds)
{
    pthread_mutex_lock(&lim.lock);
    if (cs->deadline_ns != 0)
        cs->deadline_ns += seconds * 1000000000u;
    pthread_mutex_unlock(&lim.lock);
}

/*
 * Links `cs` into, or out of, the list the watchdog walks. A stream has no
 * deadline, so it is out of the list while it streams: with thousands of
 * streams open, the walk every WATCH_INTERVAL_MS was most of the watchdog's
 * cost. Lock held.
 */
static void watch_link(conn_state *cs)
{
    cs->prev = NULL;
    cs->next = lim.head;
    if (lim.head)
        lim.head->prev = cs;
    lim.head = cs;
}

static void watch_unlink(conn_state *cs)
{
    if (cs->prev)
        cs->prev->next = cs->next;
    else
        lim.head = cs->next;
    if (cs->next)
        cs->next->prev = cs->prev;
    cs->prev = cs->next = NULL;
}

/*
 * The connection now holds an event stream: it moves from its address's
 * connections to its streams, and out of the watchdog's list. -1 when --max-streams-per-ip are open
 * (or the connection is being shut down).
 */
static int stream_begin(conn_state *cs)
{
    int err = 0;
    pthread_mutex_lock(&lim.lock);
    if (!cs->stream) {
        unsigned most = rs_srv.cfg.max_streams_per_ip;
        if (cs->cut || (most != 0 && cs->peer->streams >= most)) {
            err = -1;
        } else {
            cs->peer->conns--;
            cs->peer->streams++;
            cs->stream = true;
            watch_unlink(cs);
        }
    }
    pthread_mutex_unlock(&lim.lock);
    return err;
}

static void stream_end(conn_state *cs)
{
    pthread_mutex_lock(&lim.lock);
    if (cs->stream) {
        cs->peer->streams--;
        cs->peer->conns++;
        cs->stream = false;
        watch_link(cs);
    }
    pthread_mutex_unlock(&lim.lock);
}

/*
 * MHD's connection callback. STARTED counts the connection against its
 * address and starts the deadline of its first request. When the address
 * has --max-conns-per-ip connections busy with requests (none idle to
 * close instead), or memory is out, the socket is shut down at once: MHD
 * closes it, and since it has no state here, a request already read on it
 * is dropped too (rs_http_handle answers MHD_NO). CLOSED uncounts it.
 */
void rs_http_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode code)
{
    conn_state *cs = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (cs == NULL)
            return;
        pthread_mutex_lock(&lim.lock);
        if (!cs->stream) /* a stream is not in the watchdog's list */
            watch_unlink(cs);
        if (cs->peer_prev)
            cs->peer_prev->peer_next = cs->peer_next;
        else
            cs->peer->first = cs->peer_next;
        if (cs->peer_next)
            cs->peer_next->peer_prev = cs->peer_prev;
        if (cs->stream)
            cs->peer->streams--;
        else
            cs->peer->conns--;
        if (cs->cut && !cs->stream)
            cs->peer->closing--;
        peer_drop(cs->peer);
        pthread_mutex_unlock(&lim.lock);
        atomic_fetch_sub_explicit(&rs_stats.connections, 1, memory_order_relaxed);
        rs_free(cs);
        *socket_context = NULL;
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    const union MHD_ConnectionInfo *fdi =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    int fd = fdi ? fdi->connect_fd : -1;
    unsigned char key[16];
    unsigned open = 0;
    peer_key(key, ai ? ai->client_addr : NULL);
    cs = rs__calloc(1, sizeof(*cs));
    pthread_mutex_lock(&lim.lock);
    peer *p = cs ? peer_get(key) : NULL;
    if (p != NULL && peer_admit(p)) {
        p->conns++;
        cs->peer = p;
        cs->fd = fd;
        cs->deadline_ns = deadline_after(rs_srv.cfg.request_deadline_s);
        watch_link(cs);
        cs->peer_next = p->first;
        if (p->first)
            p->first->peer_prev = cs;
        p->first = cs;
        *socket_context = cs;
        pthread_mutex_unlock(&lim.lock);
        atomic_fetch_add_explicit(&rs_stats.connections, 1, memory_order_relaxed);
        return;
    }
    if (p != NULL) {
        open = p->conns - p->closing;
        peer_drop(p);
    }
    pthread_mutex_unlock(&lim.lock);
    rs_free(cs);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    atomic_fetch_add_explicit(&rs_stats.conns_refused, 1, memory_order_relaxed);
    char who[INET6_ADDRSTRLEN + 8];
    peer_text(who, sizeof(who), key);
    if (p != NULL)
        rs_log("refused a connection from %s: %u already open from that address "
               "(--max-conns-per-ip)",
               who, open);
    else
        rs_log("refused a connection from %s: out of memory", who);
}

/*
 * The watchdog, every WATCH_INTERVAL_MS: shuts down the socket of every
 * connection whose request is not whole by its deadline (MHD then sees the
 * end of input and closes it), however many bytes it keeps trickling in;
 * writes the log's suppressed-lines summary; and after many body bytes were
 * freed and few are held, hands the heap's free pages back to the system.
 */
static void *watchdog(void *payload)
{
    uint64_t last_trim = 0;
    pthread_mutex_lock(&lim.lock);
    while (!lim.stopping) {
        uint64_t now = rs_monotonic_ns();
        unsigned cut = 0;
        for (conn_state *cs = lim.head; cs; cs = cs->next) {
            if (cs->deadline_ns == 0 || cs->cut || now < cs->deadline_ns)
                continue;
            /* Counted before the socket goes: a client that sees it closed sees it counted. */
            atomic_fetch_add_explicit(&rs_stats.requests_cut, 1, memory_order_relaxed);
            conn_cut(cs);
            cut++;
        }
        pthread_mutex_unlock(&lim.lock);
        if (cut > 0) {
            rs_log("closed %u connection%s that had not sent a whole request within "
                   "--request-deadline-s (%u s)",
                   cut, cut == 1 ? "" : "s", rs_srv.cfg.request_deadline_s);
        }
        pthread_mutex_lock(&logs.lock);
        log_roll(now / 1000000000u);
        pthread_mutex_unlock(&logs.lock);
        if (atomic_load(&freed_since_trim) >= TRIM_AFTER_BYTES &&
            atomic_load(&rs_stats.body_bytes) < TRIM_AFTER_BYTES / 4 &&
            now - last_trim >= 1000000000u) {
            atomic_store(&freed_since_trim, 0);
            last_trim = now;
            malloc_trim(0);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WATCH_INTERVAL_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&lim.lock);
        if (!lim.stopping)
            pthread_cond_timedwait(&lim.cond, &lim.lock, &ts);
    }
    pthread_mutex_unlock(&lim.lock);
    return NULL;
}

int rs_http_start(void)
{
    lim.seed = randombytes_random();
    lim.stopping = false;
    int rc = pthread_create(&lim.thread, NULL, watchdog, NULL);
    if (rc != 0)
        return rs__error(RS_ERROR, "cannot start the connection watchdog: %s", strerror(rc));
    lim.started = true;
    return 0;
}

void rs_http_stop(void)
{
    if (!lim.started)
        return;
    pthread_mutex_lock(&lim.lock);
    lim.stopping = true;
    pthread_cond_signal(&lim.cond);
    pthread_mutex_unlock(&lim.lock);
    pthread_join(lim.thread, NULL);
    lim.started = false;
}

/* ---- request bodies ---- */

/* Takes `n` bytes of --body-budget; -1 when they would take it past its bound. */
static int budget_take(size_t n)
{
    uint_fast64_t cur = atomic_load(&rs_stats.body_bytes);
    size_t most = rs_srv.cfg.body_budget;
    do {
        if (n > most || cur > most - n)
            return -1;
    } while (!atomic_compare_exchange_weak(&rs_stats.body_bytes, &cur, cur + n));
    return 0;
}

static void budget_give(size_t n)
{
    atomic_fetch_sub(&rs_stats.body_bytes, n);
    atomic_fetch_add(&freed_since_trim, n);
}

static void free_body(void *p)
{
    rs_free(p);
}

/*
 * Queues `reply` on `conn`, handing the body buffer to MHD (no copy).
 * Returns MHD_NO only if MHD could not take the response.
 */
static enum MHD_Result send_reply(struct MHD_Connection *conn, request *req, rs_reply *reply)
{
    struct MHD_Response *resp = reply->response;
    if (resp == NULL) {
        size_t len = reply->body.len;
        char *body = rs_buf_detach(&reply->body);
        if (body == NULL)
            return MHD_NO;
        resp = MHD_create_response_from_buffer_with_free_callback(len, body, free_body);
        if (resp == NULL) {
            rs_free(body);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                reply->content_type ? reply->content_type : "application/json");
    }
    if (reply->retry_after_s) {
        char v[16];
        snprintf(v, sizeof(v), "%u", reply->retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (reply->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, reply->allow);
    req->status = reply->status;
    /* Counted when queued, so a client that reads its answer then /metrics sees it counted. */
    rs_metrics_request(req->route, req->status,
                       req->route == ROUTE_EVENTS ? 0 : rs_monotonic_ns() - req->started_ns);
    enum MHD_Result r = MHD_queue_response(conn, reply->status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Fills `reply` with the error body for `code` and this thread's message. */
static void error_reply(rs_reply *reply, int code)
{
    unsigned status = 500;
    const char *name = "internal";
    for (size_t i = 0; i < sizeof(error_table) / sizeof(error_table[0]); i++) {
        if (error_table[i].code == code) {
            status = error_table[i].status;
            name = error_table[i].name;
            break;
        }
    }
    const char *message = rs_error_last();
    if (*message == '\0')
        message = rs_strerror(code);
    if (status == 500)
        rs_log("internal error %d: %s", code, message);
    if (reply->response) {
        MHD_destroy_response(reply->response);
        reply->response = NULL;
    }
    rs_buf_clear(&reply->body);
    reply->status = status;
    reply->content_type = NULL;
    if (rs_wire_error_encode(&reply->body, name, message) < 0) {
        rs_buf_clear(&reply->body);
        rs_buf_puts(&reply->body, "{\"error\":\"unavailable\",\"message\":\"out of memory\"}");
        reply->status = 503;
    }
}

typedef struct route_entry {
    const char *path;
    rs_route get; /* ROUTE_OTHER: no GET */
    rs_route post;
    const char *allow;
} route_entry;

static const route_entry routes[] = {
    {"/api/v1/register", ROUTE_OTHER, ROUTE_REGISTER, "POST"},
    {"/api/v1/login", ROUTE_OTHER, ROUTE_LOGIN, "POST"},
    {"/api/v1/index", ROUTE_INDEX, ROUTE_OTHER, "GET"},
    {"/api/v1/records", ROUTE_RECORDS_GET, ROUTE_RECORDS_POST, "GET, POST"},
    {"/api/v1/boot", ROUTE_BOOT, ROUTE_OTHER, "GET"},
    {"/api/v1/events", ROUTE_EVENTS, ROUTE_OTHER, "GET"},
    {"/api/v1/acks", ROUTE_ACKS_GET, ROUTE_ACKS_POST, "GET, POST"},
    {"/healthz", ROUTE_HEALTHZ, ROUTE_OTHER, "GET"},
    {"/metrics", ROUTE_METRICS, ROUTE_OTHER, "GET"},
    {"/api/v1/snapshots", ROUTE_SNAPSHOTS_GET, ROUTE_SNAPSHOTS_POST, "GET, POST"},
    {"/api/v1/snapshot", ROUTE_SNAPSHOT_GET, ROUTE_OTHER, "GET"},
    {"/api/v1/test/prune", ROUTE_OTHER, ROUTE_TEST_PRUNE, "POST"},
    {"/api/v1/devices", ROUTE_DEVICES_GET, ROUTE_OTHER, "GET"},
    {"/api/v1/devices/retire", ROUTE_OTHER, ROUTE_DEVICES_RETIRE, "POST"},
    {"/api/v1/devices/rename", ROUTE_OTHER, ROUTE_DEVICES_RENAME, "POST"},
    {"/api/v1/logout", ROUTE_OTHER, ROUTE_LOGOUT, "POST"},
    {"/api/v1/account/password", ROUTE_OTHER, ROUTE_ACCOUNT_PASSWORD, "POST"},
    {"/api/v1/account/delete", ROUTE_OTHER, ROUTE_ACCOUNT_DELETE, "POST"},
};

/*
 * Resolves url and method to a route; ROUTE_OTHER with *code set to
 * RS_ENOTFOUND or RS_EMETHOD (and *allow) when there is none.
 */
static rs_route resolve(const char *url, const char *method, int *code, const char **allow)
{
    int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(url, routes[i].path) != 0)
            continue;
        if (get && routes[i].get != ROUTE_OTHER)
            return routes[i].get;
        if (post && routes[i].post != ROUTE_OTHER)
            return routes[i].post;
        *code = RS_EMETHOD;
        *allow = routes[i].allow;
        return ROUTE_OTHER;
    }
    *code = RS_ENOTFOUND;
    return ROUTE_OTHER;
}

static int dispatch(rs_reply *reply, struct MHD_Connection *conn, request *req)
{
    const char *body = req->body.ptr ? req->body.ptr : "";
    size_t len = req->body.len;
    switch (req->route) {
    case ROUTE_REGISTER:
        return rs_route_register(reply, conn, body, len);
    case ROUTE_LOGIN:
        return rs_route_login(reply, conn, body, len);
    case ROUTE_INDEX:
        return rs_route_index(reply, conn);
    case ROUTE_RECORDS_POST:
        return rs_route_records_post(reply, conn, body, len);
    case ROUTE_RECORDS_GET:
        return rs_route_records_get(reply, conn);
    case ROUTE_BOOT:
        return rs_route_boot(reply, conn);
    case ROUTE_EVENTS:
        return rs_route_events(reply, conn);
    case ROUTE_ACKS_POST:
        return rs_route_acks_post(reply, conn, body, len);
    case ROUTE_ACKS_GET:
        return rs_route_acks_get(reply, conn);
    case ROUTE_HEALTHZ:
        return rs_route_healthz(reply, conn);
    case ROUTE_METRICS:
        return rs_route_metrics(reply, conn);
    case ROUTE_SNAPSHOTS_POST:
        return rs_route_snapshots_post(reply, conn, body, len);
    case ROUTE_SNAPSHOTS_GET:
        return rs_route_snapshots_get(reply, conn);
    case ROUTE_SNAPSHOT_GET:
        return rs_route_snapshot_get(reply, conn);
    case ROUTE_TEST_PRUNE:
        return rs_route_test_prune(reply, conn);
    case ROUTE_DEVICES_GET:
        return rs_route_devices_get(reply, conn);
    case ROUTE_DEVICES_RETIRE:
        return rs_route_devices_retire(reply, conn, body, len);
    case ROUTE_DEVICES_RENAME:
        return rs_route_devices_rename(reply, conn, body, len);
    case ROUTE_LOGOUT:
        return rs_route_logout(reply, conn, body, len);
    case ROUTE_ACCOUNT_PASSWORD:
        return rs_route_account_password(reply, conn, body, len);
    case ROUTE_ACCOUNT_DELETE:
        return rs_route_account_delete(reply, conn, body, len);
    default:
        return rs__error(RS_ERROR, "no handler for route %d", (int)req->route);
    }
}

/* Answers at once with an error (unknown route, body too large). */
static enum MHD_Result fail_now(struct MHD_Connection *conn, request *req, int code,
                                const char *allow, unsigned retry_after_s)
{
    rs_reply reply = {0};
    error_reply(&reply, code);
    reply.allow = allow;
    reply.retry_after_s = retry_after_s;
    return send_reply(conn, req, &reply);
}

/*
 * The body bound of `route`: --body-max for the authenticated uploads (records, acks,
 * snapshot chunks), a small one otherwise.
 */
static size_t body_limit(rs_route route)
{
    size_t most = rs_srv.cfg.body_max;
    if (route == ROUTE_RECORDS_POST || route == ROUTE_ACKS_POST || route == ROUTE_SNAPSHOTS_POST)
        return most;
    return most < SMALL_BODY_MAX ? most : SMALL_BODY_MAX;
}

/* Frees the body and gives its bytes back to --body-budget. */
static void body_release(request *req)
{
    rs_buf_free(&req->body);
    if (req->charged > 0)
        budget_give(req->charged);
    req->charged = 0;
}

/* Refuses the request being read with `code` and this message: answer_now answers it. */
static void refuse(request *req, int code, unsigned retry_after_s, const char *fmt, ...)
    RS_PRINTF(4, 5);
static void refuse(request *req, int code, unsigned retry_after_s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->error_message, sizeof(req->error_message), fmt, ap);
    va_end(ap);
    req->error = code;
    req->retry_after_s = retry_after_s;
    req->answer_now = true;
    body_release(req);
}

/*
 * Answers a request refused in the middle of its body at once, and has MHD
 * close the connection (MHD_NO). libmicrohttpd 0.9.75 cannot queue a
 * response while a body arrives (MHD_queue_response refuses that state),
 * and reading the rest of a body only to refuse it would keep a thread
 * busy for as long as the client cares to send. So the error is written to
 * the socket here, where MHD has written nothing for this request (a
 * "100 Continue" is already out); the client reads it before the end of
 * the connection.
 */
static enum MHD_Result answer_now(struct MHD_Connection *conn, request *req)
{
    rs_reply reply = {0};
    char head[256];
    unsigned status = 0;
    rs__error(req->error, "%s", req->error_message);
    error_reply(&reply, req->error);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %u %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n",
                     reply.status, MHD_get_reason_phrase_for(reply.status), reply.body.len);
    if (req->retry_after_s && n > 0 && (size_t)n < sizeof(head))
        n +=
            snprintf(head + n, sizeof(head) - (size_t)n, "Retry-After: %u\r\n", req->retry_after_s);
    if (n > 0 && (size_t)n < sizeof(head) - 2) {
        memcpy(head + n, "\r\n", 2);
        struct iovec iov[2] = {{head, (size_t)n + 2}, {reply.body.ptr, reply.body.len}};
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
        if (sendmsg(req->cs->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            status = reply.status; /* else the client is gone: counted as no answer */
    }
    req->status = reply.status; /* answered: not counted again when MHD ends it */
    rs_metrics_request(req->route, status, status ? rs_monotonic_ns() - req->started_ns : 0);
    rs_buf_free(&reply.body);
    return MHD_NO;
}

/*
 * Grows the body's buffer to hold `need` bytes: doubling, never past what
 * the request may send (its Content-Length, or the route's bound), each
 * byte charged to --body-budget before it is allocated. RS_EBUSY when the
 * budget cannot take it, RS_ENOMEM. The caller keeps `need` within the
 * route's bound.
 */
static int body_grow(request *req, size_t need)
{
    if (need <= req->body.cap)
        return 0;
    size_t most = (req->announced ? (size_t)req->announced : req->limit) + 1;
    size_t cap = req->body.cap * 2;
    if (cap < need)
        cap = need;
    if (cap < BODY_GROW_MIN)
        cap = BODY_GROW_MIN;
    if (cap > most)
        cap = most;
    if (cap > req->charged) {
        if (budget_take(cap - req->charged) < 0)
            return RS_EBUSY;
        req->charged = cap;
    }
    char *p = rs__realloc(req->body.ptr, cap);
    if (p == NULL)
        return RS_ENOMEM;
    req->body.ptr = p;
    req->body.cap = cap;
    return 0;
}

/* Appends a piece of the body, or refuses the request (413 over its bound, 503 over budget). */
static void body_put(request *req, const char *method, const char *url, const char *data,
                     size_t size)
{
    if (size > req->limit - req->body.len) {
        atomic_fetch_add_explicit(&rs_stats.bodies_refused, 1, memory_order_relaxed);
        refuse(req, RS_EBODY, 0, "request body is over the %zu bytes %s %.200s takes", req->limit,
               method, url);
        return;
    }
    int err = body_grow(req, req->body.len + size + 1);
    if (err == RS_EBUSY) {
        atomic_fetch_add_explicit(&rs_stats.bodies_busy, 1, memory_order_relaxed);
        refuse(req, RS_EBUSY, BUSY_RETRY_S,
               "the server holds all the request bodies --body-budget allows (%zu bytes); "
               "retry in a moment",
               rs_srv.cfg.body_budget);
        return;
    }
    if (err < 0) {
        refuse(req, RS_ENOMEM, BUSY_RETRY_S, "out of memory reading a request body");
        return;
    }
    memcpy(req->body.ptr + req->body.len, data, size);
    req->body.len += size;
    req->body.ptr[req->body.len] = '\0';
}

/*
 * The headers of a request to a known route are in. Before a byte of its
 * body is read: a Content-Length over the route's bound gets 413, an
 * upload without a valid token 401, and a body --body-budget cannot hold
 * 503 with Retry-After. An announced body is charged to the budget whole
 * (so it never runs out halfway) but allocated as it arrives.
 */
static enum MHD_Result begin_request(struct MHD_Connection *conn, request *req, const char *method,
                                     const char *url)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
    req->limit = body_limit(req->route);
    if (n > req->limit) {
        atomic_fetch_add_explicit(&rs_stats.bodies_refused, 1, memory_order_relaxed);
        rs__error(RS_EBODY, "request body of %llu bytes is over the %zu bytes %s %.200s takes", n,
                  req->limit, method, url);
        return fail_now(conn, req, RS_EBODY, NULL, 0);
    }
    /* Uploads need a token: refuse a stranger before reading the body. */
    if (req->route == ROUTE_RECORDS_POST || req->route == ROUTE_ACKS_POST ||
        req->route == ROUTE_SNAPSHOTS_POST) {
        rs_device dev;
        int err = rs_auth_device(&dev, conn);
        if (err < 0)
            return fail_now(conn, req, err, NULL, 0);
    }
    if (n == 0)
        return MHD_YES;
    if (budget_take((size_t)n + 1) < 0) {
        atomic_fetch_add_explicit(&rs_stats.bodies_busy, 1, memory_order_relaxed);
        rs__error(RS_EBUSY,
                  "the server holds all the request bodies --body-budget allows (%zu bytes); "
                  "retry in a moment",
                  rs_srv.cfg.body_budget);
        return fail_now(conn, req, RS_EBUSY, NULL, BUSY_RETRY_S);
    }
    req->charged = (size_t)n + 1;
    req->announced = n;
    if (n > SMALL_BODY_MAX)
        extend_deadline(req->cs, n / BODY_MIN_RATE);
    /* Reserve what Content-Length announces, up to a bound: a claim is not data. */
    if (body_grow(req, n < BODY_RESERVE_MAX ? (size_t)n + 1 : BODY_RESERVE_MAX) < 0)
        return fail_now(conn, req, RS_ENOMEM, NULL, BUSY_RETRY_S);
    return MHD_YES;
}

/*
 * MHD calls this at least twice per request: first with the headers (the
 * route is resolved, an oversized or unauthenticated upload refused before
 * its body is read), then with each piece of the body, then once more with
 * nothing, when the route runs and its reply is queued. Answering only
 * after the whole request is read keeps the connection alive. The request
 * deadline (rs_http_notify) runs until that last call.
 */
enum MHD_Result rs_http_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    request *req = *con_cls;
    if (req == NULL) {
        int code = 0;
        const char *allow = NULL;
        conn_state *cs = conn_of(conn);
        if (cs == NULL)
            return MHD_NO; /* refused when it connected */
        if ((req = rs__calloc(1, sizeof(*req))) == NULL)
            return MHD_NO;
        *con_cls = req;
        req->cs = cs;
        set_idle(cs, false);
        req->started_ns = rs_monotonic_ns();
        req->route = resolve(url, method, &code, &allow);
        req->is_post = strcmp(method, "POST") == 0;
        if (req->route == ROUTE_OTHER) {
            req->error = code;
            req->allow = allow;
            snprintf(req->error_message, sizeof(req->error_message),
                     code == RS_EMETHOD ? "%s %.200s is not allowed" : "no route %s %.200s", method,
                     url);
            return MHD_YES;
        }
        return begin_request(conn, req, method, url);
    }
    if (*upload_data_size > 0) {
        size_t size = *upload_data_size;
        *upload_data_size = 0;
        if (req->status != 0)
            return MHD_YES; /* answered at its headers */
        if (req->error == 0)
            body_put(req, method, url, upload_data, size);
        else if ((req->dropped += size) > SMALL_BODY_MAX) /* no such route: a small body only */
            refuse(req, RS_EBODY, 0, "request body is over the %u bytes %s %.200s may send",
                   SMALL_BODY_MAX, method, url);
        return req->answer_now ? answer_now(conn, req) : MHD_YES;
    }
    if (req->status != 0)
        return MHD_YES;
    set_deadline(req->cs, 0); /* read whole: answering it is not bound by the deadline */
    if (req->error != 0) {
        rs__error(req->error, "%s", req->error_message);
        return fail_now(conn, req, req->error, req->allow, req->retry_after_s);
    }
    if (req->route == ROUTE_EVENTS && stream_begin(req->cs) < 0) {
        rs__error(RS_EBUSY, "%u event streams are open from this address (--max-streams-per-ip)",
                  rs_srv.cfg.max_streams_per_ip);
        return fail_now(conn, req, RS_EBUSY, NULL, STREAMS_RETRY_S);
    }

    rs_reply reply = {0};
    reply.status = 200;
    rs_error_clear();
    int err = dispatch(&reply, conn, req);
    if (err < 0)
        error_reply(&reply, err);
    body_release(req);
    if (req->route == ROUTE_EVENTS && reply.response == NULL)
        stream_end(req->cs); /* refused: not a stream */
    enum MHD_Result r = send_reply(conn, req, &reply);
    rs_buf_free(&reply.body);
    return r;
}

/*
 * MHD is done with a request: count one that got no answer, free its
 * state. A stream's connection counts as a connection again, and the next
 * request on it may idle --timeout-s (MHD's own idle timeout) and then has
 * the deadline to arrive whole.
 */
void rs_http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe)
{
    request *req = *con_cls;
    if (req == NULL)
        return;
    if (req->status == 0) /* the client went away before an answer */
        rs_metrics_request(req->route, 0, 0);
    conn_state *cs = conn_of(conn);
    if (cs != NULL) {
        stream_end(cs);
        set_idle(cs, true);
        set_deadline(cs, deadline_after((uint64_t)rs_srv.cfg.connection_timeout_s +
                                        rs_srv.cfg.request_deadline_s));
    }
    body_release(req);
    rs_free(req);
    *con_cls = NULL;
}
