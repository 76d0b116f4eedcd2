/*
 * The client and sync against a scripted HTTP server on a loopback port:
 * every error status maps to its code with the server's message and URL,
 * unreachable and slow servers, bounded responses, the retry of a lost
 * response; and sync against a server that breaks the protocol (another
 * shard, a hole, too many records, an empty page, a tampered record, records
 * under another key): each is refused with nothing of the bad page kept and,
 * before anything is written, nothing at all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "client.h"
#include "curlapi.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

/* ---- a scripted HTTP/1.1 server ---- */

typedef struct fake fake;

/* Fills status and body for one request; returns 0, or -1 to close without answering. */
typedef int (*fake_handler)(fake *f, const char *method, const char *path, const char *body,
                            size_t len, int *status, rs_buf *out);

#define FAKE_MAX_CONN 16

/*
 * Handlers run under `mu`, one at a time; the test reads what they record
 * after fake_settle(), which orders it after the last handler.
 */
struct fake {
    int fd;
    int port;
    atomic_int stop;
    pthread_t acceptor;
    pthread_t conns[FAKE_MAX_CONN];
    int conn_fds[FAKE_MAX_CONN];
    atomic_int nconn;
    pthread_mutex_t mu;
    fake_handler handler;
    void *ctx;
    atomic_int requests;
    atomic_int posts;
    atomic_int drops_left; /* close this many requests without answering */
    atomic_uint delay_ms;
};

static void fake_settle(fake *f)
{
    pthread_mutex_lock(&f->mu);
    pthread_mutex_unlock(&f->mu);
}

typedef struct conn_arg {
    fake *f;
    int fd;
} conn_arg;

/* Reads until `need` bytes are in buf or the peer closes; bounded by poll timeouts. */
static int read_more(int fd, rs_buf *buf)
{
    char chunk[65536];
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0)
        return -1;
    ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0)
        return -1;
    return rs_buf_put(buf, chunk, (size_t)n) < 0 ? -1 : 0;
}

static void *serve_conn(void *arg)
{
    conn_arg *ca = arg;
    fake *f = ca->f;
    int fd = ca->fd;
    rs_buf in = {0}, out = {0}, head = {0};
    free(ca);
    while (!f->stop) {
        char *end, method[8] = "", path[2048] = "";
        size_t hlen, clen = 0;
        while ((in.ptr == NULL || (end = strstr(in.ptr, "\r\n\r\n")) == NULL))
            if (read_more(fd, &in) < 0)
                goto done;
        hlen = (size_t)(end - in.ptr) + 4;
        sscanf(in.ptr, "%7s %2047s", method, path);
        for (char *p = in.ptr; p < end; p++) {
            if (strncasecmp(p, "\r\nContent-Length:", 17) == 0) {
                clen = strtoul(p + 17, NULL, 10);
                break;
            }
        }
        while (in.len < hlen + clen)
            if (read_more(fd, &in) < 0)
                goto done;
        int status = 200, drop = 0, rc;
        rs_buf_clear(&out);
        f->requests++;
        if (strcmp(method, "POST") == 0)
            f->posts++;
        if (f->drops_left > 0) {
            f->drops_left--;
            drop = 1;
        }
        if (f->delay_ms)
            usleep(f->delay_ms * 1000u);
        pthread_mutex_lock(&f->mu);
        rc = f->handler(f, method, path, in.ptr + hlen, clen, &status, &out);
        pthread_mutex_unlock(&f->mu);
        if (rc < 0 || drop)
            goto done;
        rs_buf_clear(&head);
        rs_buf_printf(&head,
                      "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\n\r\n",
                      status, out.len);
        if (send(fd, head.ptr, head.len, MSG_NOSIGNAL) < 0 ||
            (out.len && send(fd, out.ptr, out.len, MSG_NOSIGNAL) < 0))
            goto done;
        memmove(in.ptr, in.ptr + hlen + clen, in.len - hlen - clen);
        in.len -= hlen + clen;
        in.ptr[in.len] = '\0';
    }
done:
    close(fd);
    rs_buf_free(&in);
    rs_buf_free(&out);
    rs_buf_free(&head);
    return NULL;
}

static void *accept_loop(void *arg)
{
    fake *f = arg;
    while (!f->stop) {
        struct pollfd p = {f->fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int c = accept(f->fd, NULL, NULL);
        if (c < 0)
            continue;
        pthread_mutex_lock(&f->mu);
        if (f->nconn == FAKE_MAX_CONN) {
            pthread_mutex_unlock(&f->mu);
            close(c);
            continue;
        }
        conn_arg *ca = malloc(sizeof(*ca));
        ca->f = f;
        ca->fd = c;
        f->conn_fds[f->nconn] = c;
        pthread_create(&f->conns[f->nconn++], NULL, serve_conn, ca);
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

static fake *fake_start(fake_handler handler, void *ctx)
{
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    fake *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->handler = handler;
    f->ctx = ctx;
    pthread_mutex_init(&f->mu, NULL);
    f->fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(f->fd, 16), 0);
    getsockname(f->fd, (struct sockaddr *)&addr, &alen);
    f->port = ntohs(addr.sin_port);
    pthread_create(&f->acceptor, NULL, accept_loop, f);
    return f;
}

static void fake_stop(fake *f)
{
    f->stop = 1;
    pthread_join(f->acceptor, NULL);
    for (int i = 0; i < atomic_load(&f->nconn); i++) {
        shutdown(f->conn_fds[i], SHUT_RDWR);
        pthread_join(f->conns[i], NULL);
    }
    close(f->fd);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void fake_url(char *out, size_t size, const fake *f)
{
    snprintf(out, size, "http://127.0.0.1:%d", f->port);
}

/* ---- the client ---- */

typedef struct canned {
    const char *path;
    int status;
    const char *body;
} canned;

static const canned answers[] = {
    {"/ok", 200, "{\"fine\":true}"},
    {"/e401", 401, "{\"error\":\"unauthorized\",\"message\":\"unknown token\"}"},
    {"/e403", 403, "{\"error\":\"forbidden\",\"message\":\"shard belongs to another device\"}"},
    {"/e409x", 409, "{\"error\":\"exists\",\"message\":\"user alice exists\"}"},
    {"/e409c", 409, "{\"error\":\"conflict\",\"message\":\"a different record at idx 4\"}"},
    {"/e409h", 409, "{\"error\":\"hole\",\"message\":\"expected idx 3\"}"},
    {"/e410", 410, "{\"error\":\"resync_required\",\"message\":\"cursor pruned\"}"},
    {"/e413", 413, "{\"error\":\"too_big\",\"message\":\"body over the bound\"}"},
    {"/e400", 400, "{\"error\":\"invalid\",\"message\":\"records[0].idx: missing\"}"},
    {"/e429", 429, "{\"error\":\"too_many_attempts\",\"message\":\"wait 3 s\"}"},
    {"/e503", 503, "{\"error\":\"unavailable\",\"message\":\"database locked\"}"},
    {"/e500", 500, "{\"error\":\"internal\",\"message\":\"a bug\"}"},
    {"/e502", 502, "<html>Bad Gateway</html>"},
    {"/big", 200, NULL},
};

static int canned_handler(fake *f, const char *method, const char *path, const char *body,
                          size_t len, int *status, rs_buf *out)
{
    for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
        if (strcmp(path, answers[i].path) != 0)
            continue;
        *status = answers[i].status;
        if (answers[i].body)
            return rs_buf_puts(out, answers[i].body);
        for (int k = 0; k < 5000; k++)
            rs_buf_puts(out, "x");
        return 0;
    }
    *status = 404;
    return rs_buf_puts(out, "{\"error\":\"not_found\",\"message\":\"no route\"}");
}

/* 1 if a shared object whose path contains `name` is mapped into this process. */
static int mapped(const char *name)
{
    char line[1024];
    int found = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, name) != NULL;
    fclose(f);
    return found;
}

/*
 * Runs first: a process that works only on its store (open, append, read)
 * never maps libcurl; the first client opens it, once.
 */
static void libcurl_is_loaded_by_the_first_client_only(void **state)
{
    char dir[TEST_PATH_MAX];
    rs_store *store = NULL;
    rs_record meta, *rec = NULL;
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    rs_client *c = NULL;
    (void)state;
    assert_int_equal(test_tempdir(dir), 0);
    OK(rs_store_init(&store, dir, NULL));
    rs_store_free(store);
    OK(rs_store_open(&store, dir, NULL));
    OK(rs_append(&meta, store, "note", 1, "hello", 5));
    OK(rs_store_get(&rec, store, &meta.id));
    OK(rs_record_open(&plain, &plain_len, store, rec));
    assert_int_equal(plain_len, 5);
    rs_free(plain);
    rs_record_free(rec);
    rs_store_free(store);
    test_rmtree(dir);
    assert_int_equal(rs__curl_loaded(), 0);
    assert_false(mapped("libcurl"));

    OK(rs__client_new(&c, "http://127.0.0.1:9", NULL, NULL));
    assert_int_equal(rs__curl_loaded(), 1);
    assert_true(mapped("libcurl"));
    rs__client_free(c);
    OK(rs__curl_load()); /* again: the same library, no error */
}

static void client_maps_statuses_to_codes(void **state)
{
    static const struct {
        const char *path;
        int code;
        const char *says;
    } cases[] = {
        {"/e401", RS_EAUTH, "unknown token"},    {"/e403", RS_EAUTH, "another device"},
        {"/e409x", RS_EEXISTS, "alice exists"},  {"/e409c", RS_ECONFLICT, "idx 4"},
        {"/e409h", RS_EHOLE, "expected idx 3"},  {"/e410", RS_EGONE, "cursor pruned"},
        {"/e413", RS_ETOOBIG, "over the bound"}, {"/e400", RS_EINVAL, "records[0].idx"},
        {"/e429", RS_EAUTH, "wait 3 s"},         {"/e503", RS_EUNAVAIL, "database locked"},
        {"/e500", RS_ESERVER, "a bug"},          {"/e502", RS_ESERVER, "Bad Gateway"},
        {"/nothing", RS_ENOTFOUND, "no route"},
    };
    fake *f = fake_start(canned_handler, NULL);
    rs_client *c = NULL;
    const rs_buf *body = NULL;
    long status = 0;
    char url[64];
    (void)state;
    fake_url(url, sizeof(url), f);
    OK(rs__client_new(&c, url, "tok", NULL));
    OK(rs__client_request(&body, &status, c, "/ok", NULL, 0, 0));
    assert_int_equal(status, 200);
    assert_string_equal(body->ptr, "{\"fine\":true}");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int err = rs__client_request(&body, &status, c, cases[i].path, NULL, 0, 0);
        if (err != cases[i].code || !test_contains(rs_error_last(), cases[i].says) ||
            !test_contains(rs_error_last(), url) || !test_contains(rs_error_last(), cases[i].path))
            fail_msg("%s: got %d (%s), want %d naming '%s'", cases[i].path, err, rs_error_last(),
                     cases[i].code, cases[i].says);
    }
    /* One connection served them all (keep-alive). */
    assert_int_equal(f->nconn, 1);
    rs__client_free(c);
    fake_stop(f);
}

static void client_bounds_response_size(void **state)
{
    fake *f = fake_start(canned_handler, NULL);
    rs_client_opts opts = {.max_response = 1000};
    rs_client *c = NULL;
    const rs_buf *body = NULL;
    char url[64];
    (void)state;
    fake_url(url, sizeof(url), f);
    OK(rs__client_new(&c, url, NULL, &opts));
    assert_int_equal(rs__client_request(&body, NULL, c, "/big", NULL, 0, 0), RS_ESERVER);
    assert_true(test_contains(rs_error_last(), "more than 1000 bytes"));
    OK(rs__client_request(&body, NULL, c, "/ok", NULL, 0, 0));
    rs__client_free(c);
    fake_stop(f);
}

static void client_unreachable_and_slow_servers_are_enet(void **state)
{
    rs_client *c = NULL;
    rs_client_opts opts = {.timeout_ms = 300};
    const rs_buf *body = NULL;
    char url[64];
    struct timespec t0, t1;
    (void)state;
    /* A port that was just free: nothing listens there. */
    fake *f = fake_start(canned_handler, NULL);
    fake_url(url, sizeof(url), f);
    fake_stop(f);
    OK(rs__client_new(&c, url, NULL, NULL));
    assert_int_equal(rs__client_request(&body, NULL, c, "/ok", NULL, 0, 1), RS_ENET);
    assert_true(test_contains(rs_error_last(), "cannot reach server"));
    assert_true(test_contains(rs_error_last(), url));
    rs__client_free(c);

    f = fake_start(canned_handler, NULL);
    f->delay_ms = 2000;
    fake_url(url, sizeof(url), f);
    OK(rs__client_new(&c, url, NULL, &opts));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(rs__client_request(&body, NULL, c, "/ok", NULL, 0, 0), RS_ENET);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(test_contains(rs_error_last(), "in time"));
    assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 1500);
    rs__client_free(c);
    fake_stop(f);

    assert_int_equal(rs__client_new(&c, "ftp://x", NULL, NULL), RS_EINVAL);
}

static void client_retries_a_lost_response_once(void **state)
{
    /* Each case on a fresh client: libcurl itself resends a request whose
     * reused keep-alive connection turns out dead, so only a first
     * connection shows what the client does. */
    static const struct {
        int drops, retry, want, posts;
    } cases[] = {{1, 1, 0, 2}, {1, 0, RS_ENET, 1}, {2, 1, RS_ENET, 2}};
    fake *f = fake_start(canned_handler, NULL);
    const rs_buf *body = NULL;
    char url[64];
    (void)state;
    fake_url(url, sizeof(url), f);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rs_client *c = NULL;
        int before = f->posts;
        OK(rs__client_new(&c, url, NULL, NULL));
        f->drops_left = cases[i].drops;
        int err = rs__client_request(&body, NULL, c, "/ok", "{}", 2, cases[i].retry);
        rs__client_free(c);
        if (err != cases[i].want || f->posts - before != cases[i].posts)
            fail_msg("case %zu: got %d after %d POSTs (%s), want %d after %d", i, err,
                     f->posts - before, rs_error_last(), cases[i].want, cases[i].posts);
        if (err < 0)
            assert_true(test_contains(rs_error_last(), "lost the connection"));
    }
    fake_stop(f);
}

/* ---- sync against a server that misbehaves ---- */

typedef enum scenario {
    HONEST,
    OTHER_SHARD,   /* the page holds records of another tag */
    HOLE,          /* the page skips an idx */
    TOO_MANY,      /* more records than asked */
    EMPTY,         /* an empty page before the index's end */
    TAMPERED_PAGE2 /* the second page has a record whose ciphertext changed */
} scenario;

#define SRC_RECORDS 10

typedef struct remote {
    rs_record recs[SRC_RECORDS];
    uint8_t *data[SRC_RECORDS];
    rs_uuid host;
    char tag[8];
    scenario sc;
    uint64_t page_starts[64];
    int pages;
    int uploaded; /* records POSTed */
    rs_uuid own;  /* the device under test: its uploads show in the index as own/mine */
    int acks;     /* POST /api/v1/acks */
} remote;

static int copy_out(const rs_record *rec, void *payload)
{
    remote *r = payload;
    size_t i = (size_t)rec->idx;
    r->recs[i] = *rec;
    r->data[i] = malloc(rec->data_len);
    memcpy(r->data[i], rec->data, rec->data_len);
    r->recs[i].data = r->data[i];
    return 0;
}

static void remote_free(remote *r)
{
    for (int i = 0; i < SRC_RECORDS; i++)
        free(r->data[i]);
}

static uint64_t query_u64(const char *path, const char *name)
{
    const char *p = strstr(path, name);
    return p ? strtoull(p + strlen(name), NULL, 10) : 0;
}

static int remote_handler(fake *f, const char *method, const char *path, const char *body,
                          size_t len, int *status, rs_buf *out)
{
    remote *r = f->ctx;
    if (strcmp(path, "/api/v1/index") == 0) {
        rs_index idx = {0};
        rs_index_add(&idx, &r->host, r->tag, 0, SRC_RECORDS);
        if (r->uploaded > 0)
            rs_index_add(&idx, &r->own, "mine", 0, (uint64_t)r->uploaded);
        idx.seq = SRC_RECORDS + (uint64_t)r->uploaded;
        int err = rs_wire_index_encode(out, &idx);
        rs_free(idx.shards);
        return err;
    }
    if (strcmp(method, "POST") == 0 && strcmp(path, "/api/v1/records") == 0) {
        rs_wire_batch b = {0};
        if (rs_wire_decode_records(&b, body, len, RS_WIRE_UPLOAD, 0) < 0) {
            *status = 400;
            return rs_buf_puts(out, "{\"error\":\"invalid\",\"message\":\"bad upload\"}");
        }
        r->uploaded += (int)b.count;
        rs_buf_printf(out, "{\"accepted\":%zu,\"inserted\":%zu,\"seq\":%d}", b.count, b.count,
                      SRC_RECORDS + r->uploaded);
        rs_wire_batch_free(&b);
        return 0;
    }
    if (strcmp(method, "POST") == 0 && strcmp(path, "/api/v1/acks") == 0) {
        r->acks++;
        return rs_buf_puts(out, "{\"acked\":1}");
    }
    if (strncmp(path, "/api/v1/records?", 16) != 0) {
        *status = 404;
        return rs_buf_puts(out, "{\"error\":\"not_found\",\"message\":\"no route\"}");
    }
    uint64_t start = query_u64(path, "start="), limit = query_u64(path, "limit=");
    uint64_t end = start + limit > SRC_RECORDS ? SRC_RECORDS : start + limit;
    if (limit > 1 && r->pages < 64)
        r->page_starts[r->pages++] = start;
    if (r->sc == TOO_MANY && limit > 1 && end < SRC_RECORDS)
        end++;
    if (r->sc == EMPTY && limit > 1)
        end = start;
    rs_wire_records_begin(out);
    for (uint64_t i = start; i < end; i++) {
        rs_record rec = r->recs[i];
        uint8_t copy[4096];
        if (r->sc == OTHER_SHARD && limit > 1 && i == start + 1)
            strcpy(rec.tag, "other");
        if (r->sc == HOLE && limit > 1 && i == start + 1)
            continue;
        if (r->sc == TAMPERED_PAGE2 && limit > 1 && start > 0 && i == start + 1) {
            memcpy(copy, rec.data, rec.data_len);
            copy[rec.data_len - 1] ^= 1;
            rec.data = copy;
        }
        rs_wire_records_add(out, &rec);
    }
    return rs_wire_page_end(out, end < SRC_RECORDS, end);
}

typedef struct sync_fixture {
    char root[TEST_PATH_MAX];
    char src[TEST_PATH_MAX + 8];
    char dst[TEST_PATH_MAX + 8];
    char other[TEST_PATH_MAX + 8];
    rs_store *source; /* wrote the remote's records */
    rs_store *store;  /* the device under test: same key, empty */
    remote remote;
} sync_fixture;

static int sync_setup(void **state)
{
    sync_fixture *sf = calloc(1, sizeof(*sf));
    char *key = NULL;
    if (sf == NULL || test_tempdir(sf->root) < 0)
        return -1;
    snprintf(sf->src, sizeof(sf->src), "%s/src", sf->root);
    snprintf(sf->dst, sizeof(sf->dst), "%s/dst", sf->root);
    snprintf(sf->other, sizeof(sf->other), "%s/other", sf->root);
    if (rs_store_init(&sf->source, sf->src, NULL) < 0 ||
        rs_store_key_export(&key, sf->source) < 0 ||
        rs_store_init_with_key(&sf->store, sf->dst, key, NULL) < 0)
        return -1;
    rs_free(key);
    for (int i = 0; i < SRC_RECORDS; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "record %d", i);
        if (rs_append(NULL, sf->source, "t", 1, payload, strlen(payload)) < 0)
            return -1;
    }
    rs_store_host(&sf->remote.host, sf->source);
    strcpy(sf->remote.tag, "t");
    if (rs_store_range(sf->source, &sf->remote.host, "t", 0, SRC_RECORDS, copy_out, &sf->remote) <
        0)
        return -1;
    *state = sf;
    return 0;
}

static int sync_teardown(void **state)
{
    sync_fixture *sf = *state;
    rs_store_free(sf->source);
    rs_store_free(sf->store);
    remote_free(&sf->remote);
    test_rmtree(sf->root);
    free(sf);
    return 0;
}

static fake *serve_remote(sync_fixture *sf, scenario sc)
{
    char url[64];
    sf->remote.sc = sc;
    sf->remote.pages = 0;
    rs_store_host(&sf->remote.own, sf->store);
    fake *f = fake_start(remote_handler, &sf->remote);
    fake_url(url, sizeof(url), f);
    OK(rs_store_meta_set(sf->store, RS_META_SERVER, url));
    OK(rs_store_meta_set(sf->store, RS_META_TOKEN, "t0ken"));
    return f;
}

static uint64_t local_records(rs_store *store)
{
    rs_index *idx = NULL;
    uint64_t n = 0;
    OK(rs_store_index(&idx, store));
    for (size_t i = 0; i < idx->count; i++)
        n += idx->shards[i].end - idx->shards[i].start;
    rs_index_free(idx);
    return n;
}

typedef struct progress_log {
    uint64_t last;
    uint64_t total;
    int calls;
    int backwards;
} progress_log;

static void on_progress(uint64_t done, uint64_t total, void *payload)
{
    progress_log *p = payload;
    if (done < p->last)
        p->backwards = 1;
    p->last = done;
    p->total = total;
    p->calls++;
}

static void sync_pulls_in_pages_from_honest_server(void **state)
{
    sync_fixture *sf = *state;
    progress_log pl = {0};
    rs_sync_opts opts = {.page_records = 4, .progress = on_progress, .progress_payload = &pl};
    rs_sync_report *report = NULL;
    fake *f = serve_remote(sf, HONEST);
    OK(rs_sync(&report, sf->store, &opts));
    assert_int_equal(report->outcome, RS_SYNC_PULL);
    assert_int_equal(report->downloaded, SRC_RECORDS);
    assert_int_equal(report->count, 1);
    assert_int_equal(report->shards[0].downloaded, SRC_RECORDS);
    assert_int_equal(report->seq, SRC_RECORDS);
    fake_settle(f);
    assert_int_equal(sf->remote.pages, 3);
    assert_int_equal(sf->remote.page_starts[0], 0);
    assert_int_equal(sf->remote.page_starts[1], 4);
    assert_int_equal(sf->remote.page_starts[2], 8);
    assert_int_equal(local_records(sf->store), SRC_RECORDS);
    assert_int_equal(pl.total, SRC_RECORDS);
    assert_int_equal(pl.last, SRC_RECORDS);
    assert_false(pl.backwards);
    rs_sync_report_free(report);

    rs_sync_last *last = NULL;
    OK(rs_sync_last_get(&last, sf->store));
    assert_int_equal(last->outcome, RS_SYNC_PULL);
    assert_int_equal(last->downloaded, SRC_RECORDS);
    assert_non_null(last->remote);
    assert_int_equal(last->remote->count, 1);
    assert_int_equal(last->remote->shards[0].end, SRC_RECORDS);
    rs_sync_last_free(last);

    OK(rs_sync(&report, sf->store, &opts));
    assert_int_equal(report->outcome, RS_SYNC_NOOP);
    rs_sync_report_free(report);
    fake_stop(f);
}

/*
 * A wrong page holds its shard back: the sync returns a partial report
 * naming the shard, where it stopped and why, keeps only the whole pages
 * before it, and the store still verifies.
 */
static void expect_held(sync_fixture *sf, scenario sc, int code, const char *says, uint64_t kept)
{
    rs_sync_opts opts = {.page_records = 4};
    rs_sync_report *report = NULL;
    fake *f = serve_remote(sf, sc);
    int err = rs_sync(&report, sf->store, &opts);
    if (err != 0 || report->held_count != 1 || report->held[0].code != code ||
        !test_contains(report->held[0].reason, says))
        fail_msg("scenario %d: got %d (%s), held %zu with %d (%s), want one held with %d naming "
                 "'%s'",
                 (int)sc, err, rs_error_last(), report ? report->held_count : 0,
                 report && report->held_count ? report->held[0].code : 0,
                 report && report->held_count ? report->held[0].reason : "", code, says);
    assert_int_equal(report->held[0].upload, 0);
    assert_int_equal(report->held[0].idx, kept);
    assert_int_equal(report->downloaded, kept);
    assert_int_equal(local_records(sf->store), kept);
    rs_sync_report_free(report);
    rs_verify_report vr;
    OK(rs_store_verify(&vr, sf->store, NULL, NULL));
    fake_stop(f);
}

static void sync_refuses_another_shard(void **state)
{
    expect_held(*state, OTHER_SHARD, RS_ESERVER, "not the shard and idx asked for", 0);
}

static void sync_refuses_a_hole(void **state)
{
    expect_held(*state, HOLE, RS_ESERVER, "not the shard and idx asked for", 0);
}

static void sync_refuses_more_than_asked(void **state)
{
    expect_held(*state, TOO_MANY, RS_ESERVER, "at most 4 records", 0);
}

static void sync_refuses_an_empty_page(void **state)
{
    expect_held(*state, EMPTY, RS_ESERVER, "with 0 records", 0);
}

static void sync_keeps_nothing_of_a_tampered_page(void **state)
{
    /* The first page is applied; the second, with one altered record, is not. */
    expect_held(*state, TAMPERED_PAGE2, RS_ECRYPTO, "nothing of it kept", 4);
}

static void sync_refuses_another_key_before_writing(void **state)
{
    sync_fixture *sf = *state;
    rs_store *other = NULL;
    rs_sync_report *report = NULL;
    char ours[RS_KEY_ID_STRLEN + 1], theirs[RS_KEY_ID_STRLEN + 1];
    /* The remote's records come from a device with another key. */
    remote_free(&sf->remote);
    memset(&sf->remote, 0, sizeof(sf->remote));
    OK(rs_store_init(&other, sf->other, NULL));
    for (int i = 0; i < SRC_RECORDS; i++)
        OK(rs_append(NULL, other, "t", 1, "x", 1));
    rs_store_host(&sf->remote.host, other);
    strcpy(sf->remote.tag, "t");
    OK(rs_store_range(other, &sf->remote.host, "t", 0, SRC_RECORDS, copy_out, &sf->remote));
    rs_store_key_id(theirs, other);
    rs_store_key_id(ours, sf->store);
    /* Something to upload too: it must not go. */
    OK(rs_append(NULL, sf->store, "mine", 1, "y", 1));
    fake *f = serve_remote(sf, HONEST);
    assert_int_equal(rs_sync(&report, sf->store, NULL), RS_EKEY);
    assert_true(test_contains(rs_error_last(), ours));
    assert_true(test_contains(rs_error_last(), theirs));
    fake_settle(f);
    assert_int_equal(sf->remote.uploaded, 0);
    assert_int_equal(f->posts, 0);
    assert_int_equal(local_records(sf->store), 1);
    fake_stop(f);
    rs_store_free(other);
}

static void sync_uploads_in_byte_bounded_pages(void **state)
{
    sync_fixture *sf = *state;
    rs_sync_opts opts = {.page_records = 1000, .page_bytes = 2048};
    rs_sync_report *report = NULL;
    fake *f = serve_remote(sf, HONEST);
    for (int i = 0; i < 30; i++)
        OK(rs_append(NULL, sf->store, "mine", 1, "0123456789abcdef0123456789abcdef", 32));
    OK(rs_sync(&report, sf->store, &opts));
    assert_int_equal(report->outcome, RS_SYNC_MERGE);
    assert_int_equal(report->uploaded, 30);
    assert_int_equal(report->downloaded, SRC_RECORDS);
    fake_settle(f);
    assert_int_equal(sf->remote.uploaded, 30);
    /* About 370 bytes a record: at most five fit in 2 KiB, so at least six POSTs. */
    assert_true(f->posts >= 6);
    rs_sync_report_free(report);
    fake_stop(f);
}

static void sync_spares_round_trips_it_has_made_before(void **state)
{
    sync_fixture *sf = *state;
    rs_sync_report *report = NULL;
    fake *f = serve_remote(sf, HONEST);
    /* A pull: the index, one page (its first page proves the key), and the ack. */
    OK(rs_sync(&report, sf->store, NULL));
    assert_int_equal(report->downloaded, SRC_RECORDS);
    rs_sync_report_free(report);
    assert_int_equal(f->requests, 3);
    assert_int_equal(sf->remote.acks, 1);
    /* A push after it: the index and the upload, no key check again. */
    OK(rs_append(NULL, sf->store, "mine", 1, "z", 1));
    OK(rs_sync(&report, sf->store, NULL));
    assert_int_equal(report->outcome, RS_SYNC_PUSH);
    rs_sync_report_free(report);
    assert_int_equal(f->requests, 6);
    /* A no-op: the index alone; the own shard ends where the last sync left it, and
       the frontier is the one acked last. */
    OK(rs_sync(&report, sf->store, NULL));
    assert_int_equal(report->outcome, RS_SYNC_NOOP);
    rs_sync_report_free(report);
    assert_int_equal(f->requests, 7);
    assert_int_equal(sf->remote.acks, 2);
    fake_settle(f);
    assert_int_equal(sf->remote.uploaded, 1);
    fake_stop(f);
}

static void sync_without_account_is_eauth(void **state)
{
    sync_fixture *sf = *state;
    rs_sync_report *report = NULL;
    assert_int_equal(rs_sync(&report, sf->store, NULL), RS_EAUTH);
    assert_true(test_contains(rs_error_last(), "not logged in"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(libcurl_is_loaded_by_the_first_client_only),
        cmocka_unit_test(client_maps_statuses_to_codes),
        cmocka_unit_test(client_bounds_response_size),
        cmocka_unit_test(client_unreachable_and_slow_servers_are_enet),
        cmocka_unit_test(client_retries_a_lost_response_once),
        cmocka_unit_test_setup_teardown(sync_pulls_in_pages_from_honest_server, sync_setup,
                                        sync_teardown),
        cmocka_unit_test_setup_teardown(sync_refuses_another_shard, sync_setup, sync_teardown),
        cmocka_unit_test_setup_teardown(sync_refuses_a_hole, sync_setup, sync_teardown),
        cmocka_unit_test_setup_teardown(sync_refuses_more_than_asked, sync_setup, sync_teardown),
        cmocka_unit_test_setup_teardown(sync_refuses_an_empty_page, sync_setup, sync_teardown),
        cmocka_unit_test_setup_teardown(sync_keeps_nothing_of_a_tampered_page, sync_setup,
                                        sync_teardown),
        cmocka_unit_test_setup_teardown(sync_refuses_another_key_before_writing, sync_setup,
                                        sync_teardown),
        cmocka_unit_test_setup_teardown(sync_uploads_in_byte_bounded_pages, sync_setup,
                                        sync_teardown),
        cmocka_unit_test_setup_teardown(sync_spares_round_trips_it_has_made_before, sync_setup,
                                        sync_teardown),
        cmocka_unit_test_setup_teardown(sync_without_account_is_eauth, sync_setup, sync_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
