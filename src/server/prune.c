/*
 * Pruning (docs/protocol.md, "Pruning"): a background thread that runs a
 * prune pass every --prune-interval-ms, never inside a request. A pass
 * deletes, per shard, the records below min(every active device's acked
 * end, the newest complete snapshot's frontier), and old snapshots beyond
 * --snapshots-kept; the backend does the work (backend.h, prune). Also
 * the prune and snapshot metrics, and the --test-hooks route that runs
 * one pass now.
 */
#include "server.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

rs_snap_metrics rs_snap_stats;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stopping;
    int started;
    pthread_t thread;
} pruner = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
};

int rs_prune_parse_expiry(uint64_t *out_ms, const char *spec)
{
    char *end;
    if (strcmp(spec, "never") == 0) {
        *out_ms = 0;
        return 0;
    }
    if (*spec < '0' || *spec > '9')
        return RS_EINVAL;
    unsigned long long v = strtoull(spec, &end, 10);
    uint64_t mult;
    if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return RS_EINVAL;
    if (v == 0 || v > 100000ull * 86400ull) /* at most about 270 years */
        return RS_EINVAL;
    *out_ms = v * mult;
    return 0;
}

/* Runs one pass and counts it in the metrics; 0 or the pass's error. */
int rs_prune_run(rs_prune_stats *out)
{
    int err = rs_srv.backend->ops->prune(rs_srv.backend, out, &rs_srv.cfg.prune);
    atomic_fetch_add(&rs_snap_stats.runs, 1);
    /* What a failed pass did before failing is committed: count it too. */
    atomic_fetch_add(&rs_snap_stats.records_pruned, out->records_pruned);
    atomic_fetch_add(&rs_snap_stats.snapshots_deleted, out->snapshots_deleted);
    if (err < 0) {
        atomic_fetch_add(&rs_snap_stats.errors, 1);
        fprintf(stderr, "recsyncd: prune: %s\n", rs_error_last());
    } else {
        atomic_store(&rs_snap_stats.last_run_ms, rs_now_ms());
    }
    return err;
}

/* Runs a pass every interval until stopped. */
static void *prune_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pruner.lock);
    while (!pruner.stopping) {
        struct timespec ts;
        unsigned ms = rs_srv.cfg.prune_interval_ms;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&pruner.cond, &pruner.lock, &ts);
        if (pruner.stopping)
            break;
        pthread_mutex_unlock(&pruner.lock);
        rs_prune_stats st;
        rs_prune_run(&st);
        pthread_mutex_lock(&pruner.lock);
    }
    pthread_mutex_unlock(&pruner.lock);
    return NULL;
}

int rs_prune_start(void)
{
    if (rs_srv.cfg.prune_interval_ms == 0)
        return 0;
    if (pthread_create(&pruner.thread, NULL, prune_main, NULL) != 0)
        return rs__error(RS_ERROR, "cannot start the prune thread");
    pruner.started = 1;
    return 0;
}

void rs_prune_stop(void)
{
    pthread_mutex_lock(&pruner.lock);
    pruner.stopping = 1;
    pthread_cond_broadcast(&pruner.cond);
    pthread_mutex_unlock(&pruner.lock);
    if (pruner.started)
        pthread_join(pruner.thread, NULL);
    pruner.started = 0;
}

/*
 * POST /api/v1/test/prune, only with --test-hooks (404 otherwise): runs
 * one prune pass in this request and answers what it did, so tests need
 * not wait for the thread. A pass here may overlap the thread's; passes
 * are safe against each other (backend.h).
 */
int rs_route_test_prune(rs_reply *out, struct MHD_Connection *conn)
{
    rs_prune_stats st;
    (void)conn;
    if (!rs_srv.cfg.test_hooks)
        return rs__error(RS_ENOTFOUND, "no route POST /api/v1/test/prune (needs --test-hooks)");
    int err = rs_prune_run(&st);
    if (err < 0)
        return err;
    return rs_buf_printf(&out->body,
                         "{\"records_pruned\":%llu,\"shards_pruned\":%llu,"
                         "\"snapshots_deleted\":%llu}",
                         (unsigned long long)st.records_pruned,
                         (unsigned long long)st.shards_pruned,
                         (unsigned long long)st.snapshots_deleted);
}

static int metric(rs_buf *out, const char *name, const char *help, const char *type, uint64_t value)
{
    return rs_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                         (unsigned long long)value);
}

int rs_prune_metrics_render(rs_buf *out, const rs_backend_stats *st)
{
    int err;
    if ((err = metric(out, "recsyncd_prune_runs_total", "Prune passes run.", "counter",
                      atomic_load(&rs_snap_stats.runs))) < 0 ||
        (err = metric(out, "recsyncd_prune_errors_total", "Prune passes that failed.", "counter",
                      atomic_load(&rs_snap_stats.errors))) < 0 ||
        (err = metric(out, "recsyncd_records_pruned_total",
                      "Records deleted below prune floors by this process.", "counter",
                      atomic_load(&rs_snap_stats.records_pruned))) < 0 ||
        (err = metric(out, "recsyncd_prune_last_run_timestamp_seconds",
                      "When a prune pass last completed.", "gauge",
                      atomic_load(&rs_snap_stats.last_run_ms) / 1000)) < 0 ||
        (err = metric(out, "recsyncd_snapshot_chunks_stored_total",
                      "Snapshot chunks stored by this process (re-sends not counted).", "counter",
                      atomic_load(&rs_snap_stats.chunks_stored))) < 0 ||
        (err = metric(out, "recsyncd_snapshots_deleted_total",
                      "Snapshots deleted by pruning (old complete ones, stale incomplete ones).",
                      "counter", atomic_load(&rs_snap_stats.snapshots_deleted))) < 0)
        return err;
    if (st == NULL)
        return 0;
    if ((err = metric(out, "recsyncd_pruned_below_floor",
                      "Records pruned below the floors: the sum of every shard's start.", "gauge",
                      st->pruned_below)) < 0 ||
        (err = metric(out, "recsyncd_snapshots", "Complete snapshots stored.", "gauge",
                      st->snapshots)) < 0 ||
        (err = metric(out, "recsyncd_snapshot_bytes", "Bytes of the complete snapshots stored.",
                      "gauge", st->snapshot_bytes)) < 0)
        return err;
    return 0;
}
