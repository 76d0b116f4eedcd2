/*
 * recsyncd's metrics in Prometheus text format: requests by route and
 * status, request durations as a histogram per route, records and bytes
 * stored and served, live streams, logins, and retention. Counters are
 * atomics updated without locks on the request path.
 */
#include "server.h"

#include <stdio.h>
#include <string.h>

rs_metrics rs_stats;

static const unsigned statuses[] = {200, 201, 400, 401, 403, 404, 405, 409,
                                    410, 413, 422, 429, 500, 503, 507};
#define STATUS_COUNT (sizeof(statuses) / sizeof(statuses[0]))
#define STATUS_OTHER STATUS_COUNT

/* Histogram bucket bounds in microseconds (le labels are in seconds). */
static const uint64_t bucket_us[] = {100,   250,   500,    1000,   2500,   5000,    10000,
                                     25000, 50000, 100000, 250000, 500000, 1000000, 5000000};
#define BUCKET_COUNT (sizeof(bucket_us) / sizeof(bucket_us[0]))

static atomic_uint_fast64_t requests[ROUTE_COUNT][STATUS_COUNT + 1];
static atomic_uint_fast64_t buckets[ROUTE_COUNT][BUCKET_COUNT + 1];
static atomic_uint_fast64_t duration_sum_us[ROUTE_COUNT];
static atomic_uint_fast64_t duration_count[ROUTE_COUNT];

static const char *const route_names[ROUTE_COUNT] = {
    [ROUTE_REGISTER] = "register",
    [ROUTE_LOGIN] = "login",
    [ROUTE_INDEX] = "index",
    [ROUTE_RECORDS_POST] = "records_upload",
    [ROUTE_RECORDS_GET] = "records_page",
    [ROUTE_BOOT] = "boot",
    [ROUTE_EVENTS] = "events",
    [ROUTE_ACKS_POST] = "acks_post",
    [ROUTE_ACKS_GET] = "acks_get",
    [ROUTE_HEALTHZ] = "healthz",
    [ROUTE_METRICS] = "metrics",
    [ROUTE_SNAPSHOTS_POST] = "snapshots_upload",
    [ROUTE_SNAPSHOTS_GET] = "snapshots_list",
    [ROUTE_SNAPSHOT_GET] = "snapshot_chunk",
    [ROUTE_TEST_PRUNE] = "test_prune",
    [ROUTE_DEVICES_GET] = "devices_list",
    [ROUTE_DEVICES_RETIRE] = "devices_retire",
    [ROUTE_DEVICES_RENAME] = "devices_rename",
    [ROUTE_LOGOUT] = "logout",
    [ROUTE_ACCOUNT_PASSWORD] = "account_password",
    [ROUTE_ACCOUNT_DELETE] = "account_delete",
    [ROUTE_OTHER] = "other",
};

const char *rs_route_name(rs_route route)
{
    return route < ROUTE_COUNT ? route_names[route] : "other";
}

void rs_metrics_request(rs_route route, unsigned status, uint64_t duration_ns)
{
    size_t s = STATUS_OTHER;
    if (route >= ROUTE_COUNT)
        route = ROUTE_OTHER;
    for (size_t i = 0; i < STATUS_COUNT; i++) {
        if (statuses[i] == status) {
            s = i;
            break;
        }
    }
    atomic_fetch_add_explicit(&requests[route][s], 1, memory_order_relaxed);
    if (duration_ns == 0)
        return;
    uint64_t us = duration_ns / 1000;
    size_t b = 0;
    while (b < BUCKET_COUNT && us > bucket_us[b])
        b++;
    atomic_fetch_add_explicit(&buckets[route][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_sum_us[route], us, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_count[route], 1, memory_order_relaxed);
}

static uint64_t load(atomic_uint_fast64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int counter(rs_buf *out, const char *name, const char *help, const char *type,
                   uint64_t value)
{
    return rs_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                         (unsigned long long)value);
}

/* Writes every metric in Prometheus text format; database totals when it answers. */
int rs_metrics_render(rs_buf *out)
{
    int err;
    rs_backend_stats st;
    int have_stats = rs_srv.backend->ops->stats(rs_srv.backend, &st) == 0;

    if ((err = rs_buf_puts(out, "# HELP recsyncd_requests_total HTTP requests by route and "
                                "status.\n# TYPE recsyncd_requests_total counter\n")) < 0)
        return err;
    for (size_t r = 0; r < ROUTE_COUNT; r++) {
        for (size_t s = 0; s <= STATUS_COUNT; s++) {
            uint64_t n = load(&requests[r][s]);
            if (n == 0)
                continue;
            char status[8];
            if (s == STATUS_OTHER)
                snprintf(status, sizeof(status), "other");
            else
                snprintf(status, sizeof(status), "%u", statuses[s]);
            if ((err = rs_buf_printf(out,
                                     "recsyncd_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
                                     route_names[r], status, (unsigned long long)n)) < 0)
                return err;
        }
    }

    if ((err = rs_buf_puts(out, "# HELP recsyncd_request_duration_seconds Time to answer a "
                                "request (event streams excluded).\n"
                                "# TYPE recsyncd_request_duration_seconds histogram\n")) < 0)
        return err;
    for (size_t r = 0; r < ROUTE_COUNT; r++) {
        uint64_t count = load(&duration_count[r]);
        if (count == 0)
            continue;
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= BUCKET_COUNT; b++) {
            cumulative += load(&buckets[r][b]);
            char le[24];
            if (b == BUCKET_COUNT)
                snprintf(le, sizeof(le), "+Inf");
            else
                snprintf(le, sizeof(le), "%g", (double)bucket_us[b] / 1e6);
            if ((err = rs_buf_printf(
                     out,
                     "recsyncd_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"} "
                     "%llu\n",
                     route_names[r], le, (unsigned long long)cumulative)) < 0)
                return err;
        }
        if ((err = rs_buf_printf(out,
                                 "recsyncd_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
                                 "recsyncd_request_duration_seconds_count{route=\"%s\"} %llu\n",
                                 route_names[r], (double)load(&duration_sum_us[r]) / 1e6,
                                 route_names[r], (unsigned long long)count)) < 0)
            return err;
    }

    struct {
        const char *name, *help, *type;
        uint64_t value;
    } simple[] = {
        {"recsyncd_records_stored_total", "Records stored by this process.", "counter",
         load(&rs_stats.records_stored)},
        {"recsyncd_bytes_stored_total", "Envelope bytes stored by this process.", "counter",
         load(&rs_stats.bytes_stored)},
        {"recsyncd_records_served_total", "Records served in pages.", "counter",
         load(&rs_stats.records_served)},
        {"recsyncd_bytes_served_total", "Envelope bytes served in pages.", "counter",
         load(&rs_stats.bytes_served)},
        {"recsyncd_events_sent_total", "Events sent on live streams.", "counter",
         load(&rs_stats.events_sent)},
        {"recsyncd_heartbeats_sent_total", "Heartbeats sent on live streams.", "counter",
         load(&rs_stats.heartbeats_sent)},
        {"recsyncd_streams_opened_total", "Event streams opened.", "counter",
         load(&rs_stats.streams_opened)},
        {"recsyncd_streams_resync_total", "Event streams refused or ended: cursor pruned (410).",
         "counter", load(&rs_stats.streams_gone)},
        {"recsyncd_subscribers", "Event streams open now.", "gauge", load(&rs_stats.subscribers)},
        {"recsyncd_connections", "Connections open now (event streams included).", "gauge",
         load(&rs_stats.connections)},
        {"recsyncd_connections_max",
         "Connections the server holds at most (--max-connections, from the open-file limit).",
         "gauge", rs_srv.max_connections},
        {"recsyncd_connections_refused_total",
         "Connections refused: their address had --max-conns-per-ip open.", "counter",
         load(&rs_stats.conns_refused)},
        {"recsyncd_requests_cut_total",
         "Connections closed: their request was not whole by --request-deadline-s.", "counter",
         load(&rs_stats.requests_cut)},
        {"recsyncd_bodies_refused_total", "Request bodies over their route's bound (413).",
         "counter", load(&rs_stats.bodies_refused)},
        {"recsyncd_bodies_busy_total", "Request bodies refused over --body-budget (503).",
         "counter", load(&rs_stats.bodies_busy)},
        {"recsyncd_body_bytes", "Request body bytes held now (bounded by --body-budget).", "gauge",
         load(&rs_stats.body_bytes)},
        {"recsyncd_log_suppressed_total", "Log lines dropped by the log's rate limit.", "counter",
         load(&rs_stats.log_suppressed)},
        {"recsyncd_login_failures_total", "Failed logins.", "counter",
         load(&rs_stats.login_failures)},
        {"recsyncd_login_throttled_total", "Logins refused for too many failures (429).", "counter",
         load(&rs_stats.login_throttled)},
        {"recsyncd_quota_refused_total", "Uploads refused over --quota-bytes (507).", "counter",
         load(&rs_stats.quota_refused)},
        {"recsyncd_register_throttled_total", "Registrations refused by --register-rate (429).",
         "counter", load(&rs_stats.register_throttled)},
        {"recsyncd_hashing_busy_total",
         "Logins and registrations refused: every argon2id slot "
         "busy (503).",
         "counter", load(&rs_stats.hashing_busy)},
        {"recsyncd_retention_runs_total", "Retention passes run.", "counter",
         load(&rs_stats.retention_runs)},
        {"recsyncd_retention_errors_total", "Retention passes that failed.", "counter",
         load(&rs_stats.retention_errors)},
        {"recsyncd_events_pruned_total", "Events dropped by retention.", "counter",
         load(&rs_stats.events_pruned)},
        {"recsyncd_retention_last_run_timestamp_seconds", "When retention last completed.", "gauge",
         load(&rs_stats.retention_last_ms) / 1000},
        {"recsyncd_retention_keep_events", "Retention: newest events kept per user (0: no bound).",
         "gauge", rs_srv.cfg.retention.keep_events},
        {"recsyncd_retention_keep_seconds", "Retention: age of events kept (0: no bound).", "gauge",
         rs_srv.cfg.retention.keep_seconds},
    };
    for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
        if ((err = counter(out, simple[i].name, simple[i].help, simple[i].type, simple[i].value)) <
            0)
            return err;
    if (have_stats) {
        if ((err = counter(out, "recsyncd_users", "Registered users.", "gauge", st.users)) < 0 ||
            (err = counter(out, "recsyncd_devices", "Registered devices.", "gauge", st.devices)) <
                0 ||
            (err = counter(out, "recsyncd_shards", "Shards stored.", "gauge", st.shards)) < 0 ||
            (err = counter(out, "recsyncd_records", "Records stored in the database.", "gauge",
                           st.records)) < 0 ||
            (err = counter(out, "recsyncd_bytes", "Envelope bytes stored in the database.", "gauge",
                           st.bytes)) < 0)
            return err;
    }
    if ((err = rs_prune_metrics_render(out, have_stats ? &st : NULL)) < 0)
        return err;
    if (have_stats && st.checkpointer) {
        if ((err = counter(out, "recsyncd_sqlite_checkpoints_total",
                           "WAL checkpoints run by the checkpointer thread (not by requests).",
                           "counter", st.checkpoints)) < 0 ||
            (err = counter(out, "recsyncd_sqlite_checkpoint_pages_total",
                           "WAL pages copied into the database by those checkpoints.", "counter",
                           st.checkpoint_pages)) < 0 ||
            (err = counter(out, "recsyncd_sqlite_checkpoint_milliseconds_total",
                           "Time spent in those checkpoints.", "counter", st.checkpoint_ms)) < 0 ||
            (err = counter(out, "recsyncd_sqlite_checkpoint_errors_total",
                           "Checkpoints that failed (retried on the next run).", "counter",
                           st.checkpoint_errors)) < 0 ||
            (err = counter(out, "recsyncd_sqlite_wal_pages",
                           "The WAL's size in pages when the checkpointer last ran.", "gauge",
                           st.wal_pages)) < 0)
            return err;
    }
    return counter(out, "recsyncd_backend_up", "1 when the database answered this scrape.", "gauge",
                   (uint64_t)have_stats);
}
