/*
 * The HTTP client of librecsync (libcurl): one easy handle per client,
 * reused so requests ride one keep-alive connection, with connect and total
 * timeouts, bounded responses, and the server's errors mapped to RS codes.
 * Not API. A client is used by one thread at a time.
 */
#ifndef RS_CLIENT_H
#define RS_CLIENT_H

#include "wire.h"

#define RS_CLIENT_DEFAULT_CONNECT_MS 5000L
#define RS_CLIENT_DEFAULT_TIMEOUT_MS 120000L
#define RS_CLIENT_DEFAULT_MAX_RESPONSE ((size_t)64 << 20)

typedef struct rs_client rs_client;

typedef struct rs_client_opts {
    long connect_timeout_ms; /* 0: RS_CLIENT_DEFAULT_CONNECT_MS */
    long timeout_ms;         /* each request; 0: RS_CLIENT_DEFAULT_TIMEOUT_MS */
    size_t max_response;     /* bytes; 0: RS_CLIENT_DEFAULT_MAX_RESPONSE */
} rs_client_opts;

/*
 * A client for the server at `url` ("http://host:port", a trailing slash
 * is dropped). `token` (may be NULL) goes in every request's
 * Authorization header. Both are copied. `opts` may be NULL.
 */
int rs__client_new(rs_client **out, const char *url, const char *token, const rs_client_opts *opts);
void rs__client_free(rs_client *client);
const char *rs__client_url(const rs_client *client);

/*
 * One request to `path` ("/api/v1/index"); `body` (len bytes of JSON) makes
 * it a POST. On a 2xx answer returns 0 with *status set and the body in
 * *out: the client's own buffer, NUL-terminated, valid until the next
 * request. Otherwise a code with a message naming the server URL, the
 * request and what went wrong:
 *   cannot connect, timeout, connection lost  RS_ENET
 *   401 device_retired                        RS_ERETIRED
 *   401, 403, 429                             RS_EAUTH (the server's message)
 *   409                                       RS_ECONFLICT, RS_EEXISTS or RS_EHOLE
 *   410                                       RS_EGONE
 *   503                                       RS_EUNAVAIL
 *   507                                       RS_EQUOTA
 *   other 5xx, a body over the bound          RS_ESERVER
 *   other 4xx                                 the code the server's error names
 * With `retry`, a request whose connection broke after it was sent (a lost
 * response) is sent once more on a fresh connection: only for requests
 * the server treats idempotently.
 */
int rs__client_request(const rs_buf **out, long *status, rs_client *client, const char *path,
                       const char *body, size_t len, int retry);

/* Changes the total timeout of later requests (0: the default). */
void rs__client_set_timeout(rs_client *client, long timeout_ms);

/* From sync.c, for the other users of a store's server (repair.c). */

/* A client for the store's server and token. RS_EAUTH when it has none. */
int rs__store_client(rs_client **out, rs_store *store, const rs_client_opts *opts);

/* The server's index (GET /api/v1/index); RS_ESERVER if it does not parse. */
int rs__fetch_index(rs_index **out, rs_client *client);

/*
 * The server's record at `idx` of shard (host, tag) into one->records[0],
 * checked to be that shard and idx (RS_ESERVER otherwise).
 */
int rs__fetch_record(rs_wire_batch *one, rs_client *client, const rs_uuid *host, const char *tag,
                     uint64_t idx);

/* From account.c. */

/*
 * After the server at `url` accepted a login (token `token`): fetches one
 * of the server's records (the last of another device's shard, else of
 * this device's) and checks it opens under the store's key; RS_EKEY
 * naming both key ids, and then this device is retired again (POST
 * /api/v1/devices/retire: its new token refused, no hold on pruning)
 * since the store will not keep the token. 0 when the server holds no
 * record to check.
 */
int rs__login_key_check(rs_store *store, const char *url, const char *token);

#endif
