/*
 * recsyncd internals shared by its modules: configuration, the HTTP reply
 * every route fills in, authentication, live events and metrics.
 */
#ifndef RS_SERVER_H
#define RS_SERVER_H

#include "backend.h"

#include <microhttpd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

/* Server-local error codes (see backend.h for RS_EFORBIDDEN). */
#define RS_ETHROTTLED (-1002) /* too many failed logins: wait (429) */
#define RS_EMETHOD (-1003)    /* the route exists, the method does not (405) */
#define RS_EBODY (-1004)      /* request body over --body-max (413) */
/* A retired device's token: RS_ERETIRED (include/recsync/common.h), 401 device_retired. */

typedef struct rs_config {
    const char *db;
    const char *listen;
    unsigned threads;
    unsigned heartbeat_ms;
    rs_retention retention;
    unsigned retention_interval_ms;
    rs_prune_policy prune;      /* --device-expiry, --snapshots-kept */
    unsigned prune_interval_ms; /* 0: no prune thread */
    size_t page_default;
    size_t page_max;
    size_t page_bytes;
    size_t body_max;
    size_t max_payload;
    unsigned login_delay_ms;
    unsigned token_cache_ms; /* 0: every request looks its token up */
    unsigned connection_timeout_s;
    unsigned max_conns_per_ip;   /* connections per client address, streams aside (0: no bound) */
    unsigned max_streams_per_ip; /* event streams per client address (0: no bound) */
    unsigned max_connections;    /* --max-connections (0: from RLIMIT_NOFILE) */
    unsigned request_deadline_s; /* a request must be read within this (0: no deadline) */
    size_t body_budget;          /* request body bytes held at once, all connections */
    bool argon2_fast;
    bool test_hooks;
    bool sync_full;
    int registration;            /* RS_REGISTRATION_OPEN, _CLOSED or _INVITE */
    unsigned register_burst;     /* registrations an address may make at once (0: no bound) */
    uint64_t register_period_ms; /* ...and again over this long */
    uint64_t quota_bytes;        /* envelope bytes per user (0: no quota) */
    const char *make_invite;     /* --make-invite: print an invite and exit ("": any name) */
    const char *real_ip_header;  /* the client's address from a loopback proxy (NULL: none) */
} rs_config;

enum { RS_REGISTRATION_OPEN, RS_REGISTRATION_CLOSED, RS_REGISTRATION_INVITE };

/* The running server: one per process. */
typedef struct rs_server {
    rs_config cfg;
    rs_backend *backend;
    struct MHD_Daemon *daemon;
    unsigned max_connections; /* what MHD was given (connection_limit in main.c) */
} rs_server;

extern rs_server rs_srv;

/*
 * What a route answers. Routes fill status and body (JSON unless
 * content_type says otherwise), or a prebuilt MHD response (the event
 * stream); on failure they return a negative code instead and the one error
 * table (http.c) picks status and error code.
 */
typedef struct rs_reply {
    unsigned status;
    rs_buf body;
    const char *content_type;
    struct MHD_Response *response;
    unsigned retry_after_s; /* 429: Retry-After */
    const char *allow;      /* 405: Allow */
} rs_reply;

/* Metrics route labels. */
typedef enum rs_route {
    ROUTE_REGISTER,
    ROUTE_LOGIN,
    ROUTE_INDEX,
    ROUTE_RECORDS_POST,
    ROUTE_RECORDS_GET,
    ROUTE_BOOT,
    ROUTE_EVENTS,
    ROUTE_ACKS_POST,
    ROUTE_ACKS_GET,
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_SNAPSHOTS_POST,
    ROUTE_SNAPSHOTS_GET,
    ROUTE_SNAPSHOT_GET,
    ROUTE_TEST_PRUNE,
    ROUTE_DEVICES_GET,
    ROUTE_DEVICES_RETIRE,
    ROUTE_DEVICES_RENAME,
    ROUTE_LOGOUT,
    ROUTE_ACCOUNT_PASSWORD,
    ROUTE_ACCOUNT_DELETE,
    ROUTE_OTHER,
    ROUTE_COUNT
} rs_route;

/* ---- http.c ---- */

/* The access handler and completion callback given to MHD. */
enum MHD_Result rs_http_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls);
void rs_http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe);
/* MHD's connection callback: the per-address count and the request deadline. */
void rs_http_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode code);

/* Starts and stops the thread that cuts connections past their request deadline. */
int rs_http_start(void);
void rs_http_stop(void);

/*
 * The server's log on stderr: one whole line per call (one write), at most
 * RS_LOG_LINES_PER_S a second; the rest are counted and summed up in one
 * line. `topic` ("http: ", or "") follows "recsyncd: ".
 */
#define RS_LOG_LINES_PER_S 20
void rs_log(const char *fmt, ...) RS_PRINTF(1, 2);
void rs_vlog(const char *topic, const char *fmt, va_list ap);

/* ---- routes.c ---- */

int rs_route_register(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len);
int rs_route_login(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len);
int rs_route_index(rs_reply *out, struct MHD_Connection *conn);
int rs_route_records_post(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len);
int rs_route_records_get(rs_reply *out, struct MHD_Connection *conn);
int rs_route_boot(rs_reply *out, struct MHD_Connection *conn);
int rs_route_events(rs_reply *out, struct MHD_Connection *conn);
int rs_route_acks_post(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len);
int rs_route_acks_get(rs_reply *out, struct MHD_Connection *conn);
int rs_route_healthz(rs_reply *out, struct MHD_Connection *conn);
int rs_route_metrics(rs_reply *out, struct MHD_Connection *conn);

/* ---- snapshots.c ---- */

int rs_route_snapshots_post(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len);
int rs_route_snapshots_get(rs_reply *out, struct MHD_Connection *conn);
int rs_route_snapshot_get(rs_reply *out, struct MHD_Connection *conn);

/* ---- devices.c ---- */

int rs_route_devices_get(rs_reply *out, struct MHD_Connection *conn);
int rs_route_devices_retire(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len);
int rs_route_devices_rename(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len);
int rs_route_logout(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len);
int rs_route_account_password(rs_reply *out, struct MHD_Connection *conn, const char *body,
                              size_t len);
int rs_route_account_delete(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len);

/* ---- prune.c ---- */

typedef struct rs_snap_metrics {
    atomic_uint_fast64_t runs;
    atomic_uint_fast64_t errors;
    atomic_uint_fast64_t records_pruned;
    atomic_uint_fast64_t snapshots_deleted;
    atomic_uint_fast64_t chunks_stored;
    atomic_uint_fast64_t last_run_ms;
} rs_snap_metrics;

extern rs_snap_metrics rs_snap_stats;

/* "90d", "12h", "30m", "2s" or "never" (0) into milliseconds; RS_EINVAL otherwise. */
int rs_prune_parse_expiry(uint64_t *out_ms, const char *spec);
/* Starts the prune thread (none when --prune-interval-ms is 0); stop joins it. */
int rs_prune_start(void);
void rs_prune_stop(void);
/* One prune pass now, counted in the metrics. */
int rs_prune_run(rs_prune_stats *out);
int rs_route_test_prune(rs_reply *out, struct MHD_Connection *conn);
/* The prune and snapshot metrics; `st` NULL when the database did not answer. */
int rs_prune_metrics_render(rs_buf *out, const rs_backend_stats *st);

/* ---- auth.c ---- */

int rs_auth_init(void);
void rs_auth_shutdown(void);

/*
 * The device whose `Authorization: Token <token>` the request carries;
 * RS_EAUTH otherwise, RS_ERETIRED (naming when) for a retired device's.
 */
int rs_auth_device(rs_device *out, struct MHD_Connection *conn);

/*
 * Whether the token `dev` authenticated with (rs_auth_device) still
 * does: 0, RS_EAUTH (replaced, logged out, user deleted) or RS_ERETIRED.
 * Answers from the token cache while its entry lives; open event streams
 * ask at every heartbeat, so another process's revocation reaches them.
 */
int rs_auth_recheck(const rs_device *dev);

/* Drops the cached tokens of device `host` (after it logged in again, retired, logged out). */
void rs_auth_forget_device(const rs_uuid *host);
/* Drops the cached tokens of every device of `user` (deleted). */
void rs_auth_forget_user(int64_t user);

/* A new token: its text (RS_TOKEN_TEXT_LEN hex digits) and what the backend stores. */
#define RS_TOKEN_TEXT_LEN (2 * (RS_TOKEN_ID_BYTES + 32))
void rs_auth_new_token(char *text, rs_token *token);

/* argon2id hash of `password` into out[crypto_pwhash_STRBYTES]; RS_EBUSY (and
 * *retry_after_s) when every argon2id slot is taken. */
int rs_auth_hash_password(char *out, const char *password, unsigned *retry_after_s);

/*
 * Verifies `password` for `username` (account NULL: unknown user, still
 * spending the time a verification takes), with failed attempts slowed per
 * (client address, user), per address, and per user for addresses failing
 * for it (auth.c); `known_device` (the request carries a valid token of the
 * account) is never slowed. RS_ETHROTTLED with *retry_after_s set when the
 * caller must wait; RS_EBUSY (503, *retry_after_s) when every argon2id slot
 * is taken; RS_EAUTH for a wrong name or password.
 */
int rs_auth_login(const rs_account *account, const char *username, const char *password,
                  struct MHD_Connection *conn, int known_device, unsigned *retry_after_s);

/* Takes one of the client address's registrations (--register-rate); RS_ETHROTTLED if none. */
int rs_auth_register_admit(struct MHD_Connection *conn, unsigned *retry_after_s);

/* "N/PERIOD" (20/h, 5/m, 100/d, 2/30s) or "off" into cfg's register_burst and _period_ms. */
int rs_auth_parse_register_rate(rs_config *cfg, const char *text);

/* Makes and stores an invite (for `username`, or any name when NULL or ""); prints its code. */
int rs_auth_make_invite(const char *username);

/* An invite code's hash as the backend stores it. */
void rs_auth_invite_hash(uint8_t *out, const char *code);

/* ---- events.c ---- */

int rs_events_start(void);
/* Ends every stream and stops the background threads (before MHD_stop_daemon). */
void rs_events_stop(void);
void rs_events_join(void);
/* The backend's notify callback. */
void rs_events_notify(int64_t user, uint64_t seq, void *payload);
/* Opens a stream for `dev` after seq `after` (the user's seq when has_after is false). */
int rs_events_open(rs_reply *out, struct MHD_Connection *conn, const rs_device *dev, int has_after,
                   uint64_t after);
/*
 * Ends this process's open streams of device `host` of `user` (host NULL:
 * every device of the user) with an `error` event `code` ("device_retired",
 * "unauthorized") and `message`.
 */
void rs_events_revoke(int64_t user, const rs_uuid *host, const char *code, const char *message);

/* ---- metrics.c ---- */

typedef struct rs_metrics {
    atomic_uint_fast64_t records_stored;
    atomic_uint_fast64_t bytes_stored;
    atomic_uint_fast64_t records_served;
    atomic_uint_fast64_t bytes_served;
    atomic_uint_fast64_t events_sent;
    atomic_uint_fast64_t heartbeats_sent;
    atomic_uint_fast64_t subscribers;
    atomic_uint_fast64_t streams_opened;
    atomic_uint_fast64_t streams_gone;
    atomic_uint_fast64_t login_failures;
    atomic_uint_fast64_t login_throttled;
    atomic_uint_fast64_t retention_runs;
    atomic_uint_fast64_t retention_errors;
    atomic_uint_fast64_t events_pruned;
    atomic_uint_fast64_t retention_last_ms;
    atomic_uint_fast64_t connections;    /* open now, event streams included */
    atomic_uint_fast64_t conns_refused;  /* over --max-conns-per-ip */
    atomic_uint_fast64_t requests_cut;   /* past --request-deadline-s */
    atomic_uint_fast64_t bodies_refused; /* over the route's body bound (413) */
    atomic_uint_fast64_t bodies_busy;    /* over --body-budget (503) */
    atomic_uint_fast64_t body_bytes;     /* request body bytes held now */
    atomic_uint_fast64_t log_suppressed;
    atomic_uint_fast64_t quota_refused;
    atomic_uint_fast64_t register_throttled;
    atomic_uint_fast64_t hashing_busy;
} rs_metrics;

extern rs_metrics rs_stats;

const char *rs_route_name(rs_route route);
void rs_metrics_request(rs_route route, unsigned status, uint64_t duration_ns);
int rs_metrics_render(rs_buf *out);

uint64_t rs_monotonic_ns(void);

#endif
