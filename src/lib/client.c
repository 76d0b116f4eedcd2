/*
 * The HTTP client (client.h) on libcurl's easy interface.
 */
#include "client.h"

#include "curlapi.h"
#include <sodium.h>
#include <stdio.h>
#include <string.h>

struct rs_client {
    CURL *curl;
    struct curl_slist *headers;
    char *base; /* "http://host:port", no trailing slash */
    char *url;  /* base + the current path */
    size_t url_cap;
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_response;
    rs_buf body;     /* the last response */
    int overflow;    /* the response outgrew max_response */
    int write_error; /* out of memory storing the response */
    int head_done;   /* the answer's header block ended (its blank line came) */
    char errbuf[CURL_ERROR_SIZE];
};

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    rs_client *c = userdata;
    size_t n = size * nmemb;
    if (c->body.len + n > c->max_response) {
        c->overflow = 1;
        return 0;
    }
    if (rs_buf_put(&c->body, data, n) < 0) {
        c->write_error = 1;
        return 0;
    }
    return n;
}

/*
 * Notes the blank line that ends a header block. curl takes a connection
 * closed inside the headers after the status line as a complete, empty
 * answer; without the blank line it is a lost answer, not the server's.
 */
static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    rs_client *c = userdata;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0)
        c->head_done = 0;
    else if ((n == 2 && data[0] == '\r' && data[1] == '\n') || (n == 1 && data[0] == '\n'))
        c->head_done = 1;
    return n;
}

int rs__client_new(rs_client **out, const char *url, const char *token, const rs_client_opts *opts)
{
    rs_client *c = NULL;
    size_t n;
    int err = 0;

    if ((err = rs__curl_load()) < 0)
        return err;
    if (url == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return rs__error(RS_EINVAL, "server URL '%.200s' does not start with http:// or https://",
                         url ? url : "");
    c = rs__calloc(1, sizeof(*c));
    if (c == NULL || (c->base = rs__strdup(url)) == NULL)
        goto nomem;
    n = strlen(c->base);
    while (n > 0 && c->base[n - 1] == '/')
        c->base[--n] = '\0';
    c->connect_timeout_ms = RS_CLIENT_DEFAULT_CONNECT_MS;
    c->timeout_ms = RS_CLIENT_DEFAULT_TIMEOUT_MS;
    c->max_response = RS_CLIENT_DEFAULT_MAX_RESPONSE;
    if (opts && opts->connect_timeout_ms > 0)
        c->connect_timeout_ms = opts->connect_timeout_ms;
    if (opts && opts->timeout_ms > 0)
        c->timeout_ms = opts->timeout_ms;
    if (opts && opts->max_response > 0)
        c->max_response = opts->max_response;

    if ((c->curl = rs__curl.easy_init()) == NULL) {
        err = rs__error(RS_ENOMEM, "libcurl could not make a handle for %s", c->base);
        goto done;
    }
    /* "Expect:" stops curl from waiting for 100-continue before large bodies. */
    const char *fixed[] = {"Accept: application/json", "Content-Type: application/json", "Expect:"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        struct curl_slist *l = rs__curl.slist_append(c->headers, fixed[i]);
        if (l == NULL)
            goto nomem;
        c->headers = l;
    }
    if (token && *token) {
        rs_buf h = {0};
        struct curl_slist *l;
        if (rs_buf_printf(&h, "Authorization: Token %s", token) < 0)
            goto nomem;
        l = rs__curl.slist_append(c->headers, h.ptr);
        sodium_memzero(h.ptr, h.len);
        rs_buf_free(&h);
        if (l == NULL)
            goto nomem;
        c->headers = l;
    }
    rs__curl_long(c->curl, CURLOPT_NOSIGNAL, 1L);
    rs__curl_ptr(c->curl, CURLOPT_HTTPHEADER, c->headers);
    rs__curl_write_fn(c->curl, on_write);
    rs__curl_ptr(c->curl, CURLOPT_WRITEDATA, c);
    rs__curl.easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
    rs__curl_ptr(c->curl, CURLOPT_HEADERDATA, c);
    rs__curl_ptr(c->curl, CURLOPT_ERRORBUFFER, c->errbuf);
    rs__curl_long(c->curl, CURLOPT_TCP_NODELAY, 1L);
    rs__curl_long(c->curl, CURLOPT_TCP_KEEPALIVE, 1L);
    rs__curl_long(c->curl, CURLOPT_FOLLOWLOCATION, 0L);
    rs__curl_long(c->curl, CURLOPT_BUFFERSIZE, 256L * 1024L);
    rs__curl_long(c->curl, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    rs__curl_long(c->curl, CURLOPT_TIMEOUT_MS, c->timeout_ms);
#if LIBCURL_VERSION_NUM >= 0x075500
    rs__curl_ptr(c->curl, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    *out = c;
    return 0;
nomem:
    err = rs__error(RS_ENOMEM, "out of memory making a client for %.200s", url);
done:
    rs__client_free(c);
    return err;
}

void rs__client_free(rs_client *client)
{
    if (client == NULL)
        return;
    if (client->curl)
        rs__curl.easy_cleanup(client->curl);
    rs__curl.slist_free_all(client->headers);
    rs_buf_free(&client->body);
    rs_free(client->base);
    rs_free(client->url);
    rs_free(client);
}

const char *rs__client_url(const rs_client *client)
{
    return client->base;
}

void rs__client_set_timeout(rs_client *client, long timeout_ms)
{
    client->timeout_ms = timeout_ms > 0 ? timeout_ms : RS_CLIENT_DEFAULT_TIMEOUT_MS;
    rs__curl_long(client->curl, CURLOPT_TIMEOUT_MS, client->timeout_ms);
}

static int set_url(rs_client *c, const char *path)
{
    size_t need = strlen(c->base) + strlen(path) + 1;
    if (need > c->url_cap) {
        char *grown = rs__realloc(c->url, need);
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory for a URL");
        c->url = grown;
        c->url_cap = need;
    }
    snprintf(c->url, c->url_cap, "%s%s", c->base, path);
    return 0;
}

/* The RS code an error body's "error" names, or 0 when it names none we know. */
static int code_of(const char *name)
{
    static const struct {
        const char *name;
        int code;
    } table[] = {
        {"invalid", RS_EINVAL},        {"unauthorized", RS_EAUTH},
        {"forbidden", RS_EAUTH},       {"too_many_attempts", RS_EAUTH},
        {"not_found", RS_ENOTFOUND},   {"exists", RS_EEXISTS},
        {"conflict", RS_ECONFLICT},    {"hole", RS_EHOLE},
        {"resync_required", RS_EGONE}, {"too_big", RS_ETOOBIG},
        {"bad_envelope", RS_ECRYPTO},  {"wrong_key", RS_EKEY},
        {"clock", RS_ECLOCK},          {"version", RS_EVERSION},
        {"unavailable", RS_EUNAVAIL},  {"device_retired", RS_ERETIRED},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(name, table[i].name) == 0)
            return table[i].code;
    return 0;
}

/*
 * Turns a non-2xx answer into a code and message. The status decides the
 * code where the contract fixes it; otherwise the error body's name does.
 */
static int http_error(rs_client *c, long status, const char *method, const char *path)
{
    char name[64] = "", message[600] = "";
    int named;

    if (c->body.len > 0 && rs_wire_error_decode(name, sizeof(name), message, sizeof(message),
                                                c->body.ptr, c->body.len) < 0) {
        /* Not our error shape (a proxy's page, say): quote the start of it. */
        snprintf(message, sizeof(message), "%.200s", c->body.ptr);
        for (char *p = message; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        name[0] = '\0';
    }
    named = code_of(name);
    if (status >= 300 && status <= 399) {
        /* Never followed (another scheme, host or port is not the server the store trusts). */
        char *to = NULL, where[204];
        if (rs__curl.easy_getinfo(c->curl, CURLINFO_REDIRECT_URL, &to) != CURLE_OK || to == NULL)
            to = "nowhere valid";
        snprintf(where, sizeof(where), "%.200s", to);
        for (char *p = where; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        return rs__error(RS_ESERVER,
                         "server %s answered %s %.120s with %ld, a redirect to %s: not "
                         "followed; check the server URL (recsync login --server)",
                         c->base, method, path, status, where);
    }
    int code;
    if (status == 401 && named == RS_ERETIRED)
        code = RS_ERETIRED;
    else if (status == 401 || status == 403 || status == 429)
        code = RS_EAUTH;
    else if (status == 409)
        code = named == RS_EEXISTS || named == RS_EHOLE ? named : RS_ECONFLICT;
    else if (status == 410)
        code = RS_EGONE;
    else if (status == 503)
        code = RS_EUNAVAIL;
    else if (status == 507)
        code = RS_EQUOTA;
    else if (status >= 500)
        code = RS_ESERVER;
    else if (named)
        code = named;
    else if (status == 413)
        code = RS_ETOOBIG;
    else if (status == 404)
        code = RS_ENOTFOUND;
    else
        code = RS_ESERVER;
    return rs__error(code, "server %s answered %s %.120s with %ld%s%s: %s", c->base, method, path,
                     status, *name ? " " : "", name, *message ? message : "(no message)");
}

static int is_lost_response(CURLcode rc)
{
    return rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING ||
           rc == CURLE_PARTIAL_FILE;
}

static int net_error(rs_client *c, CURLcode rc, const char *method, const char *path)
{
    const char *detail = c->errbuf[0] ? c->errbuf : rs__curl.easy_strerror(rc);
    if (c->overflow)
        return rs__error(RS_ESERVER,
                         "server %s answered %s %.120s with more than %zu bytes; refusing it",
                         c->base, method, path, c->max_response);
    if (c->write_error)
        return rs__error(RS_ENOMEM, "out of memory reading the answer of server %s to %s %.120s",
                         c->base, method, path);
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return rs__error(RS_ENET, "server %s did not answer %s %.120s in time: %s", c->base, method,
                         path, detail);
    if (is_lost_response(rc))
        return rs__error(RS_ENET, "lost the connection to server %s during %s %.120s: %s", c->base,
                         method, path, detail);
    return rs__error(RS_ENET, "cannot reach server %s (%s %.120s): %s", c->base, method, path,
                     detail);
}

int rs__client_request(const rs_buf **out, long *status, rs_client *c, const char *path,
                       const char *body, size_t len, int retry)
{
    const char *method = body ? "POST" : "GET";
    CURLcode rc;
    long code = 0;
    int err;

    if ((err = set_url(c, path)) < 0)
        return err;
    rs__curl_ptr(c->curl, CURLOPT_URL, c->url);
    if (body) {
        rs__curl_long(c->curl, CURLOPT_POST, 1L);
        rs__curl_ptr(c->curl, CURLOPT_POSTFIELDS, body);
        rs__curl_off(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else {
        rs__curl_long(c->curl, CURLOPT_HTTPGET, 1L);
    }
    for (int attempt = 0;; attempt++) {
        rs_buf_clear(&c->body);
        c->overflow = c->write_error = c->head_done = 0;
        c->errbuf[0] = '\0';
        rc = rs__curl.easy_perform(c->curl);
        if (rc == CURLE_OK && !c->head_done) {
            rc = CURLE_PARTIAL_FILE;
            snprintf(c->errbuf, sizeof(c->errbuf),
                     "the connection closed inside the answer's headers");
        }
        if (attempt == 0 && retry && is_lost_response(rc) && !c->overflow && !c->write_error) {
            rs__curl_long(c->curl, CURLOPT_FRESH_CONNECT, 1L);
            continue;
        }
        break;
    }
    rs__curl_long(c->curl, CURLOPT_FRESH_CONNECT, 0L);
    if (rc != CURLE_OK)
        return net_error(c, rc, method, path);
    rs__curl_info_long(c->curl, CURLINFO_RESPONSE_CODE, &code);
    if (status)
        *status = code;
    if (code < 200 || code > 299)
        return http_error(c, code, method, path);
    if (c->body.ptr == NULL && rs_buf_reserve(&c->body, 0) < 0)
        return rs__error(RS_ENOMEM, "out of memory");
    *out = &c->body;
    return 0;
}
