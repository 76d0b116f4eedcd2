/*
 * recsyncd's HTTP layer on libmicrohttpd: routing, request bodies (bounded),
 * the one table that maps error codes to HTTP statuses, and turning a
 * route's reply into a response.
 */
#include "server.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define BODY_RESERVE_MAX (4u << 20)

/* One request in flight: kept in MHD's per-request pointer. */
typedef struct request {
    rs_route route;
    uint64_t started_ns;
    unsigned status;
    int is_post;
    int error; /* no such route or method: answered when the request is read */
    const char *allow;
    char error_message[256];
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
    if (status >= 500 && status != 503)
        fprintf(stderr, "recsyncd: internal error %d: %s\n", code, message);
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
                                const char *allow)
{
    rs_reply reply = {0};
    error_reply(&reply, code);
    reply.allow = allow;
    return send_reply(conn, req, &reply);
}

/*
 * MHD calls this at least twice per request: first with the headers (the
 * route is resolved, an oversized or unauthenticated upload refused before
 * its body is read), then with each piece of the body, then once more with
 * nothing, when the route runs and its reply is queued. Answering only
 * after the whole request is read keeps the connection alive.
 */
enum MHD_Result rs_http_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    request *req = *con_cls;
    if (req == NULL) {
        int code = 0;
        const char *allow = NULL;
        if ((req = rs__calloc(1, sizeof(*req))) == NULL)
            return MHD_NO;
        *con_cls = req;
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
        if (req->is_post) {
            const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
            if (n > rs_srv.cfg.body_max) {
                rs__error(RS_EBODY, "request body of %llu bytes exceeds the bound of %zu", n,
                          rs_srv.cfg.body_max);
                return fail_now(conn, req, RS_EBODY, NULL);
            }
            /* Uploads need a token: refuse a stranger before reading the body. */
            if (req->route == ROUTE_RECORDS_POST || req->route == ROUTE_ACKS_POST ||
                req->route == ROUTE_SNAPSHOTS_POST) {
                rs_device dev;
                int err = rs_auth_device(&dev, conn);
                if (err < 0)
                    return fail_now(conn, req, err, NULL);
            }
            /* Reserve what Content-Length announces, up to a bound: a claim is not data. */
            if (n > 0 &&
                rs_buf_reserve(&req->body, n < BODY_RESERVE_MAX ? (size_t)n : BODY_RESERVE_MAX) < 0)
                return fail_now(conn, req, RS_ENOMEM, NULL);
        }
        /* Answer once the whole request is read, so the connection stays alive. */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (req->status != 0 || req->error != 0) {
            *upload_data_size = 0; /* answered or refused: discard */
            return MHD_YES;
        }
        if (req->body.len + *upload_data_size > rs_srv.cfg.body_max) {
            rs__error(RS_EBODY, "request body exceeds the bound of %zu bytes", rs_srv.cfg.body_max);
            *upload_data_size = 0;
            return fail_now(conn, req, RS_EBODY, NULL);
        }
        int err = rs_buf_put(&req->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        if (err < 0)
            return fail_now(conn, req, err, NULL);
        return MHD_YES;
    }
    if (req->status != 0)
        return MHD_YES;
    if (req->error != 0) {
        rs__error(req->error, "%s", req->error_message);
        return fail_now(conn, req, req->error, req->allow);
    }

    rs_reply reply = {0};
    reply.status = 200;
    rs_error_clear();
    int err = dispatch(&reply, conn, req);
    if (err < 0)
        error_reply(&reply, err);
    rs_buf_free(&req->body);
    enum MHD_Result r = send_reply(conn, req, &reply);
    rs_buf_free(&reply.body);
    return r;
}

/* MHD is done with a request: count one that got no answer, free its state. */
void rs_http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe)
{
    request *req = *con_cls;
    if (req == NULL)
        return;
    if (req->status == 0) /* the client went away before an answer */
        rs_metrics_request(req->route, 0, 0);
    rs_buf_free(&req->body);
    rs_free(req);
    *con_cls = NULL;
}
