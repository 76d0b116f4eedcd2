/*
 * Helpers shared by the in-process benchmarks (bench_kv, bench_history):
 * a monotonic clock, dying with the library's message, a temporary root,
 * and records copied out of one store to be inserted into another in
 * sync-sized pages. Define BENCH_NAME (the program's name, for messages)
 * before including it, and _GNU_SOURCE (for nftw) before any header.
 */
#ifndef RS_BENCHUTIL_H
#define RS_BENCHUTIL_H

#include "builtin.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Seconds on the monotonic clock. */
static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds (user + system) of this process so far: what a loaded machine does not inflate. */
static inline double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Prints "BENCH_NAME: <what>: <err> <rs_error_last()>" on stderr and exits 1. */
static inline void die(const char *what, int err)
{
    fprintf(stderr, BENCH_NAME ": %s: %d %s\n", what, err, rs_error_last());
    exit(1);
}

/* A fresh directory $TMPDIR/<prefix>-XXXXXX (else in /tmp), its path in root; dies on failure. */
static inline void make_root(char *root, size_t size, const char *prefix)
{
    const char *base = getenv("TMPDIR");
    snprintf(root, size, "%s/%s-XXXXXX", base && *base ? base : "/tmp", prefix);
    if (mkdtemp(root) == NULL)
        die("making a temporary directory", RS_EIO);
}

static inline int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf `root` (does not follow symbolic links). */
static inline void remove_root(const char *root)
{
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Owned copies of records, as pages pulled from the server would be. */
typedef struct recs {
    rs_record *v;
    size_t n;
    size_t cap;
} recs;

/* A walk callback (payload: a recs) copying each record; RS_ENOMEM when out of memory. */
static inline int collect(const rs_record *rec, void *payload)
{
    recs *r = payload;
    uint8_t *data = malloc(rec->data_len);
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1024;
        r->v = realloc(r->v, r->cap * sizeof(*r->v));
    }
    if (r->v == NULL || data == NULL)
        return RS_ENOMEM;
    memcpy(data, rec->data, rec->data_len);
    r->v[r->n] = *rec;
    r->v[r->n++].data = data;
    return 0;
}

static inline void recs_free(recs *r)
{
    for (size_t i = 0; i < r->n; i++)
        free((void *)r->v[i].data);
    free(r->v);
}

/* Inserts `r` into `store` in pages of the sync default; returns the seconds it took. */
static inline double insert_pages(rs_store *store, recs *r)
{
    double t = now_s();
    int err;
    for (size_t i = 0; i < r->n; i += RS_SYNC_DEFAULT_PAGE_RECORDS) {
        size_t n =
            r->n - i < RS_SYNC_DEFAULT_PAGE_RECORDS ? r->n - i : RS_SYNC_DEFAULT_PAGE_RECORDS;
        if ((err = rs_store_insert(NULL, store, r->v + i, n)) < 0)
            die("inserting a page", err);
    }
    return now_s() - t;
}

#endif
