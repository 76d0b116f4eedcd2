/*
 * Helpers shared by the unit tests (header only: each test is one program).
 * Temporary directories live under $TMPDIR (else /tmp) and are removed by
 * the test's teardown, pass or fail. The store helpers fail the running
 * cmocka test when a call they make fails.
 */
#ifndef RS_TESTUTIL_H
#define RS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "recsync.h"

#include <dirent.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_PATH_MAX 512

/* Makes a fresh empty directory; its path goes into out[TEST_PATH_MAX]. */
static inline int test_tempdir(char *out)
{
    const char *base = getenv("TMPDIR");
    snprintf(out, TEST_PATH_MAX, "%s/rs-unit-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(out) ? 0 : -1;
}

/* rm -rf `path` (does not follow symbolic links). */
static inline void test_rmtree(const char *path)
{
    struct stat st;
    DIR *dir;
    struct dirent *ent;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode) && (dir = opendir(path)) != NULL) {
        while ((ent = readdir(dir)) != NULL) {
            char child[TEST_PATH_MAX * 2];
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
                continue;
            if ((size_t)snprintf(child, sizeof(child), "%s/%s", path, ent->d_name) >= sizeof(child))
                continue;
            test_rmtree(child);
        }
        closedir(dir);
    }
    remove(path);
}

/* Whether `haystack` contains `needle` (for checking what a message names). */
static inline int test_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

/*
 * Fails the test with the call, its code and rs_error_last() unless `call`
 * returns 0. (A test that defines OK again must define it token for token
 * the same, as C allows.)
 */
#define OK(call)                                                                                   \
    do {                                                                                           \
        int ok_err_ = (call);                                                                      \
        if (ok_err_ != 0)                                                                          \
            fail_msg("%s: %d %s", #call, ok_err_, rs_error_last());                                \
    } while (0)

/*
 * A test's temporary root and the paths in it: three store directories
 * (not made: a test inits the stores it needs) and a file name.
 */
typedef struct test_fixture {
    char root[TEST_PATH_MAX];
    char a[TEST_PATH_MAX + 8];     /* a store */
    char b[TEST_PATH_MAX + 8];     /* another device of the same user (same key) */
    char c[TEST_PATH_MAX + 8];     /* a third device, or one of another user */
    char file[TEST_PATH_MAX + 16]; /* root/history: a file a test writes */
} test_fixture;

/* cmocka setup: a fresh root in a test_fixture in *state; -1 if none could be made. */
static inline int test_setup(void **state)
{
    test_fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || test_tempdir(f->root) < 0) {
        free(f);
        return -1;
    }
    snprintf(f->a, sizeof(f->a), "%s/a", f->root);
    snprintf(f->b, sizeof(f->b), "%s/b", f->root);
    snprintf(f->c, sizeof(f->c), "%s/c", f->root);
    snprintf(f->file, sizeof(f->file), "%s/history", f->root);
    *state = f;
    return 0;
}

/* cmocka teardown of test_setup: removes the root and all in it. */
static inline int test_teardown(void **state)
{
    test_fixture *f = *state;
    test_rmtree(f->root);
    free(f);
    return 0;
}

/* A new store in `dir` (fails the test if it cannot be made). */
static inline rs_store *test_init_store(const char *dir, const rs_store_opts *opts)
{
    rs_store *store = NULL;
    OK(rs_store_init(&store, dir, opts));
    return store;
}

/* The existing store in `dir` (fails the test if it cannot be opened). */
static inline rs_store *test_open_store(const char *dir, const rs_store_opts *opts)
{
    rs_store *store = NULL;
    OK(rs_store_open(&store, dir, opts));
    return store;
}

/* Another device of the same user: a new store in `dir` under `like`'s key. */
static inline rs_store *test_init_sibling(const char *dir, rs_store *like,
                                          const rs_store_opts *opts)
{
    rs_store *store = NULL;
    char *text = NULL;
    OK(rs_store_key_export(&text, like));
    OK(rs_store_init_with_key(&store, dir, text, opts));
    rs_free(text);
    return store;
}

/* Owned copies of records, as a page pulled from the server would be. */
typedef struct test_recs {
    rs_record *v;
    size_t n;
    size_t cap;
} test_recs;

/* A walk callback (payload: a test_recs) appending a copy of each record and its data. */
static inline int test_collect(const rs_record *rec, void *payload)
{
    test_recs *r = payload;
    uint8_t *data;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->v = realloc(r->v, r->cap * sizeof(*r->v));
        assert_non_null(r->v);
    }
    data = malloc(rec->data_len ? rec->data_len : 1);
    assert_non_null(data);
    memcpy(data, rec->data, rec->data_len);
    r->v[r->n] = *rec;
    r->v[r->n++].data = data;
    return 0;
}

/* Frees what test_collect copied and empties `r`. */
static inline void test_recs_free(test_recs *r)
{
    for (size_t i = 0; i < r->n; i++)
        free((void *)r->v[i].data);
    free(r->v);
    memset(r, 0, sizeof(*r));
}

/* Inserts every record of `from` into `to`, shard by shard in idx order. */
static inline void test_transfer(rs_store *to, rs_store *from)
{
    test_recs r = {NULL, 0, 0};
    OK(rs_store_foreach(from, NULL, test_collect, &r));
    OK(rs_store_insert(NULL, to, r.v, r.n));
    test_recs_free(&r);
}

/* How many records of `tag` (NULL: of every tag) the store holds, by a walk. */
static inline uint64_t test_count_records(rs_store *store, const char *tag)
{
    test_recs r = {NULL, 0, 0};
    uint64_t n;
    OK(rs_store_foreach(store, tag, test_collect, &r));
    n = r.n;
    test_recs_free(&r);
    return n;
}

/* The end of shard (host, tag) in `index`; 0 if the index has no such shard. */
static inline uint64_t test_index_end(const rs_index *index, const rs_uuid *host, const char *tag)
{
    uint64_t end = 0;
    for (size_t i = 0; i < index->count; i++)
        if (rs_uuid_cmp(&index->shards[i].host, host) == 0 &&
            strcmp(index->shards[i].tag, tag) == 0)
            end = index->shards[i].end;
    return end;
}

/* How many rows the store's records table holds, by SQL. */
static inline uint64_t test_record_rows(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    uint64_t n;
    assert_int_equal(
        sqlite3_prepare_v2(rs_store_db(store), "SELECT count(*) FROM records", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

#endif
