/*
 * Allocation failure injection (SQLite's faultsim, curl's torture mode):
 * each store operation is run with its 1st, 2nd, ... allocation failing
 * until it runs through without reaching the failure. Every failure must
 * come back as RS_ENOMEM and leave a store that verifies, holding exactly
 * what it held before; a failed allocation the operation ignored is a bug.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

#define MAX_STEPS 10000

/*
 * SQLite's allocations fail on demand too, through a wrapper around its
 * default allocator installed before SQLite initializes.
 */
static sqlite3_mem_methods sqlite_default;
static unsigned long sqlite_countdown;
static bool sqlite_fault_fired;

static unsigned long sqlite_allocations;

static bool sqlite_should_fail(void)
{
    sqlite_allocations++;
    if (sqlite_countdown == 0)
        return false;
    if (--sqlite_countdown > 0)
        return false;
    sqlite_fault_fired = true;
    return true;
}

static void *sqlite_fault_malloc(int n)
{
    return sqlite_should_fail() ? NULL : sqlite_default.xMalloc(n);
}

static void *sqlite_fault_realloc(void *p, int n)
{
    return sqlite_should_fail() ? NULL : sqlite_default.xRealloc(p, n);
}

static void sqlite_fail_at(unsigned long n)
{
    sqlite_fault_fired = false;
    sqlite_countdown = n;
}

static int install_sqlite_faults(void)
{
    static sqlite3_mem_methods wrapped;
    if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &sqlite_default) != SQLITE_OK)
        return -1;
    wrapped = sqlite_default;
    wrapped.xMalloc = sqlite_fault_malloc;
    wrapped.xRealloc = sqlite_fault_realloc;
    return sqlite3_config(SQLITE_CONFIG_MALLOC, &wrapped) == SQLITE_OK ? 0 : -1;
}

typedef test_fixture fixture;

static int teardown(void **state)
{
    rs__alloc_fail_at(0);
    sqlite_fail_at(0);
    return test_teardown(state);
}

/*
 * Whether the failure armed with rs__alloc_fail_at(n) was consumed: if not,
 * one of the next n allocations fails. Disarms it either way.
 */
static bool fault_fired(unsigned long n)
{
    bool fired = true;
    for (unsigned long i = 0; i < n; i++) {
        void *p = rs__malloc(1);
        if (p == NULL) {
            fired = false;
            break;
        }
        rs_free(p);
    }
    rs__alloc_fail_at(0);
    return fired;
}

/*
 * After the n-th step of a loop: a failure must be RS_ENOMEM; a success
 * must not have swallowed the failed allocation. Returns true when the
 * operation ran through without reaching allocation n (the loop is done).
 */
static bool step_result(unsigned long n, int err, const char *what)
{
    bool fired = fault_fired(n);
    if (err < 0) {
        if (err != RS_ENOMEM)
            fail_msg("%s with allocation %lu failing: got %d (%s), want RS_ENOMEM", what, n, err,
                     rs_error_last());
        if (!fired)
            fail_msg("%s failed (%s) without reaching allocation %lu", what, rs_error_last(), n);
        return false;
    }
    if (fired)
        fail_msg("%s succeeded although allocation %lu failed", what, n);
    return true;
}

static void expect_verifies(rs_store *store, uint64_t records)
{
    rs_verify_report report;
    int err = rs_store_verify(&report, store, NULL, NULL);
    if (err != 0)
        fail_msg("verify: %d %s", err, rs_error_last());
    assert_int_equal(report.records, records);
    assert_int_equal(test_record_rows(store), records);
}

static void alloc_fail_at_fails_exactly_the_nth_allocation(void **state)
{
    void *p1, *p2, *p3, *p4;
    char *s;
    (void)state;
    rs__alloc_fail_at(3);
    p1 = rs__malloc(8);
    p2 = rs__calloc(2, 8);
    p3 = rs__realloc(NULL, 8);
    p4 = rs__malloc(8);
    assert_non_null(p1);
    assert_non_null(p2);
    assert_null(p3);
    assert_non_null(p4);
    rs_free(p1);
    rs_free(p2);
    rs_free(p4);
    /* 0 disarms. */
    rs__alloc_fail_at(1);
    rs__alloc_fail_at(0);
    p1 = rs__malloc(8);
    assert_non_null(p1);
    rs_free(p1);
    /* strdup goes through the same counter. */
    rs__alloc_fail_at(1);
    assert_null(rs__strdup("x"));
    s = rs__strdup("x");
    assert_non_null(s);
    assert_string_equal(s, "x");
    rs_free(s);
    /* A failed realloc leaves the block as it was. */
    p1 = rs__malloc(4);
    assert_non_null(p1);
    memcpy(p1, "abc", 4);
    rs__alloc_fail_at(1);
    assert_null(rs__realloc(p1, 1 << 20));
    assert_string_equal((char *)p1, "abc");
    rs_free(p1);
}

static void append_fails_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    uint64_t before;
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&store, f->a, NULL));
    OK(rs_append(&rec, store, "things", 1, "first", 5));
    before = test_record_rows(store);
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs__alloc_fail_at(n);
        int err = rs_append(&rec, store, "things", 1, "payload under test", 18);
        done = step_result(n, err, "append");
        expect_verifies(store, done ? before + 1 : before);
    }
    assert_true(done);
    assert_true(n > 1);
    print_message("append: %lu allocations\n", n - 2);
    assert_int_equal(rec.idx, 1);
    /* The store goes on as if nothing happened. */
    OK(rs_append(&rec, store, "things", 1, "next", 4));
    assert_int_equal(rec.idx, 2);
    rs_store_free(store);
}

static void append_in_a_transaction_fails_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n;
    bool done = false;
    uint64_t expect_idx = 1;

    OK(rs_store_init(&store, f->a, NULL));
    OK(rs_store_begin(store));
    OK(rs_append(&rec, store, "things", 1, "first", 5));
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs__alloc_fail_at(n);
        int err = rs_append(&rec, store, "things", 1, "payload under test", 18);
        done = step_result(n, err, "append in a transaction");
        /* A failed append inside the transaction leaves the earlier one in place. */
        OK(rs_append(&rec, store, "things", 1, "filler", 6));
        expect_idx += done ? 2 : 1;
        assert_int_equal(rec.idx, expect_idx - 1);
    }
    assert_true(done);
    OK(rs_store_commit(store));
    expect_verifies(store, expect_idx);
    rs_store_free(store);
}

static void insert_fails_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *a = NULL, *b = NULL;
    char *key = NULL;
    rs_record recs[4];
    uint8_t *bufs[4];
    rs_uuid hb;
    unsigned long n;
    bool done = false;
    size_t inserted = 0;

    OK(rs_store_init(&a, f->a, NULL));
    OK(rs_store_key_export(&key, a));
    OK(rs_store_init_with_key(&b, f->b, key, NULL));
    rs_free(key);
    for (int i = 0; i < 4; i++) {
        char text[64];
        rs_record *got = NULL;
        snprintf(text, sizeof(text), "record %d from b, of some length %*s", i, i * 100, "");
        OK(rs_append(&recs[i], b, i % 2 ? "things" : "notes", 1, text, strlen(text)));
        OK(rs_store_get(&got, b, &recs[i].id));
        bufs[i] = malloc(got->data_len);
        assert_non_null(bufs[i]);
        memcpy(bufs[i], got->data, got->data_len);
        recs[i].data = bufs[i];
        recs[i].data_len = got->data_len;
        rs_record_free(got);
    }
    rs_store_host(&hb, b);
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs__alloc_fail_at(n);
        int err = rs_store_insert(&inserted, a, recs, 4);
        done = step_result(n, err, "insert");
        expect_verifies(a, done ? 4 : 0);
    }
    assert_true(done);
    print_message("insert: %lu allocations\n", n - 2);
    assert_int_equal(inserted, 4);
    for (int i = 0; i < 4; i++)
        free(bufs[i]);
    rs_store_free(a);
    rs_store_free(b);
}

static void open_fails_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&store, f->a, NULL));
    for (int i = 0; i < 3; i++)
        OK(rs_append(&rec, store, "things", 1, "kept", 4));
    rs_store_free(store);
    for (n = 1; n < MAX_STEPS && !done; n++) {
        store = NULL;
        rs__alloc_fail_at(n);
        int err = rs_store_open(&store, f->a, NULL);
        done = step_result(n, err, "open");
        if (!done) {
            assert_null(store);
            continue;
        }
        expect_verifies(store, 3);
        rs_store_free(store);
    }
    assert_true(done);
    assert_true(n > 2);
    print_message("open: %lu allocations\n", n - 2);
}

static void init_fails_cleanly_at_every_allocation_and_can_be_retried(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    unsigned long n;
    bool done = false;

    for (n = 1; n < MAX_STEPS && !done; n++) {
        char dir[TEST_PATH_MAX + 32];
        snprintf(dir, sizeof(dir), "%s/init-%lu", f->root, n);
        store = NULL;
        rs__alloc_fail_at(n);
        int err = rs_store_init(&store, dir, NULL);
        done = step_result(n, err, "init");
        if (!done) {
            assert_null(store);
            /* A failed init leaves nothing that blocks the next one. */
            OK(rs_store_init(&store, dir, NULL));
        }
        expect_verifies(store, 0);
        rs_store_free(store);
        store = NULL;
        OK(rs_store_open(&store, dir, NULL));
        rs_store_free(store);
    }
    assert_true(done);
}

static void reads_fail_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n;
    bool done;

    OK(rs_store_init(&store, f->a, NULL));
    for (int i = 0; i < 5; i++)
        OK(rs_append(&rec, store, i % 2 ? "things" : "notes", 1, "some bytes", 10));

    done = false;
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs_verify_report report;
        rs__alloc_fail_at(n);
        done = step_result(n, rs_store_verify(&report, store, NULL, NULL), "verify");
    }
    assert_true(done);

    done = false;
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs_record *got = NULL;
        uint8_t *plain = NULL;
        size_t len = 0;
        int err;
        rs__alloc_fail_at(n);
        err = rs_store_get(&got, store, &rec.id);
        if (err == 0)
            err = rs_record_open(&plain, &len, store, got);
        done = step_result(n, err, "get and open");
        if (done) {
            assert_int_equal(len, 10);
            assert_memory_equal(plain, "some bytes", 10);
        }
        rs_free(plain);
        rs_record_free(got);
    }
    assert_true(done);

    done = false;
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs_index *local = NULL;
        rs_diff *diff = NULL;
        rs_uuid self;
        int err;
        rs_store_host(&self, store);
        rs__alloc_fail_at(n);
        err = rs_store_index(&local, store);
        if (err == 0)
            err = rs_index_diff(&diff, local, NULL, &self);
        done = step_result(n, err, "index and diff");
        if (done) {
            assert_int_equal(local->count, 2);
            assert_int_equal(diff->count, 2);
        } else {
            assert_null(diff);
        }
        rs_diff_free(diff);
        rs_index_free(local);
    }
    assert_true(done);

    done = false;
    for (n = 1; n < MAX_STEPS && !done; n++) {
        char *text = NULL;
        int err;
        rs__alloc_fail_at(n);
        err = rs_store_key_export(&text, store);
        if (err == 0)
            err = rs_store_meta_set(store, "server", "http://127.0.0.1:9");
        done = step_result(n, err, "key export and meta");
        rs_free(text);
    }
    assert_true(done);
    rs_store_free(store);
}

static void key_import_fails_cleanly_at_every_allocation(void **state)
{
    fixture *f = *state;
    rs_store *a = NULL, *b = NULL;
    char *key_b = NULL, id_a[RS_KEY_ID_STRLEN + 1], id_b[RS_KEY_ID_STRLEN + 1],
         now[RS_KEY_ID_STRLEN + 1];
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&a, f->a, NULL));
    OK(rs_store_init(&b, f->b, NULL));
    OK(rs_store_key_export(&key_b, b));
    rs_store_key_id(id_a, a);
    rs_store_key_id(id_b, b);
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs__alloc_fail_at(n);
        int err = rs_store_key_import(a, key_b);
        done = step_result(n, err, "key import");
        rs_store_key_id(now, a);
        assert_string_equal(now, done ? id_b : id_a);
    }
    assert_true(done);
    rs_store_free(a);
    a = NULL;
    OK(rs_store_open(&a, f->a, NULL));
    rs_store_key_id(now, a);
    assert_string_equal(now, id_b);
    rs_free(key_b);
    rs_store_free(a);
    rs_store_free(b);
}

/*
 * SQLite may fail an allocation anywhere, even roll a transaction back by
 * itself; whatever the operation returns, the store must verify and hold
 * either everything the operation wrote or nothing of it.
 */
static void append_survives_sqlite_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    uint64_t count = 1;
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&store, f->a, NULL));
    OK(rs_append(&rec, store, "things", 1, "first", 5));
    for (n = 1; n < MAX_STEPS && !done; n++) {
        sqlite_fail_at(n);
        int err = rs_append(&rec, store, "things", 1, "payload under test", 18);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err == 0)
            count++;
        else if (done)
            fail_msg("append failed without a failed allocation: %s", rs_error_last());
        expect_verifies(store, count);
    }
    assert_true(done);
    print_message("append: %lu SQLite allocations\n", n - 2);
    OK(rs_append(&rec, store, "things", 1, "after", 5));
    assert_int_equal(rec.idx, count);
    rs_store_free(store);
}

static void transaction_survives_sqlite_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n;
    bool done = false;
    uint64_t count = 0;

    OK(rs_store_init(&store, f->a, NULL));
    for (n = 1; n < MAX_STEPS && !done; n++) {
        uint64_t in_txn = 0;
        int err;
        OK(rs_store_begin(store));
        OK(rs_append(&rec, store, "things", 1, "before", 6));
        in_txn++;
        sqlite_fail_at(n);
        err = rs_append(&rec, store, "things", 1, "payload under test", 18);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err == 0)
            in_txn++;
        /* The caller goes on after a failed append, as the API allows. */
        if (rs_append(&rec, store, "things", 1, "after", 5) == 0)
            in_txn++;
        if (rs_store_commit(store) == 0) {
            count += in_txn;
        } else {
            rs_store_rollback(store);
        }
        expect_verifies(store, count);
    }
    assert_true(done);
    rs_store_free(store);
}

/*
 * The same for a tag with an apply (kv): inside a transaction its apply and
 * the shard's end run in a savepoint, the record is undone by hand; the kv
 * state must hold a key exactly when its record was committed.
 */
static void kv_transaction_survives_sqlite_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    unsigned long n;
    bool done = false;
    uint64_t count = 0;
    char key[32];

    OK(rs_store_init(&store, f->a, NULL));
    for (n = 1; n < MAX_STEPS && !done; n++) {
        uint64_t in_txn = 0;
        int err, kept;
        char *value = NULL;
        snprintf(key, sizeof(key), "k%lu", n);
        OK(rs_store_begin(store));
        OK(rs_kv_set(store, "ns", "before", "x"));
        in_txn++;
        sqlite_fail_at(n);
        err = rs_kv_set(store, "ns", key, "under test");
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err == 0)
            in_txn++;
        if (rs_kv_set(store, "ns", "after", "y") == 0)
            in_txn++;
        /* The caller commits what went through, as the API allows. */
        kept = rs_store_commit(store) == 0;
        if (kept)
            count += in_txn;
        else
            rs_store_rollback(store);
        expect_verifies(store, count);
        kept = kept && err == 0;
        err = rs_kv_get(&value, store, "ns", key);
        if (kept)
            assert_int_equal(err, 0);
        else
            assert_int_equal(err, RS_ENOTFOUND);
        rs_free(value);
    }
    assert_true(done);
    rs_store_free(store);
}

static void insert_survives_sqlite_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *a = NULL, *b = NULL;
    char *key = NULL;
    rs_record recs[3];
    uint8_t *bufs[3];
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&a, f->a, NULL));
    OK(rs_store_key_export(&key, a));
    OK(rs_store_init_with_key(&b, f->b, key, NULL));
    rs_free(key);
    for (int i = 0; i < 3; i++) {
        rs_record *got = NULL;
        OK(rs_append(&recs[i], b, "things", 1, "from b", 6));
        OK(rs_store_get(&got, b, &recs[i].id));
        bufs[i] = malloc(got->data_len);
        assert_non_null(bufs[i]);
        memcpy(bufs[i], got->data, got->data_len);
        recs[i].data = bufs[i];
        recs[i].data_len = got->data_len;
        rs_record_free(got);
    }
    for (n = 1; n < MAX_STEPS && !done; n++) {
        size_t inserted = 0;
        sqlite_fail_at(n);
        int err = rs_store_insert(&inserted, a, recs, 3);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err == 0) {
            expect_verifies(a, 3);
            assert_int_equal(inserted, 3);
            break;
        }
        expect_verifies(a, 0);
    }
    for (int i = 0; i < 3; i++)
        free(bufs[i]);
    rs_store_free(a);
    rs_store_free(b);
}

/*
 * Opening and creating a store make hundreds of SQLite allocations (the
 * schema of every registered tag); failing each of them, with a fresh
 * store per step, would take minutes. The first 64 fail one by one, then
 * a stride spreads about 200 more steps over the rest.
 */
static unsigned long next_step(unsigned long n, unsigned long total)
{
    unsigned long stride = total > 64 ? (total - 64) / 200 + 1 : 1;
    return n < 64 ? n + 1 : n + stride;
}

static void open_and_init_survive_sqlite_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n, total;
    bool done = false;
    char dir[TEST_PATH_MAX + 32];

    OK(rs_store_init(&store, f->a, NULL));
    OK(rs_append(&rec, store, "things", 1, "kept", 4));
    rs_store_free(store);
    sqlite_allocations = 0;
    OK(rs_store_open(&store, f->a, NULL));
    total = sqlite_allocations;
    rs_store_free(store);
    for (n = 1; n < MAX_STEPS && !done; n = next_step(n, total)) {
        store = NULL;
        sqlite_fail_at(n);
        int err = rs_store_open(&store, f->a, NULL);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err < 0) {
            assert_null(store);
            continue;
        }
        expect_verifies(store, 1);
        rs_store_free(store);
    }
    assert_true(done);
    print_message("open: about %lu SQLite allocations\n", total);

    snprintf(dir, sizeof(dir), "%s/init-count", f->root);
    sqlite_allocations = 0;
    OK(rs_store_init(&store, dir, NULL));
    total = sqlite_allocations;
    rs_store_free(store);
    done = false;
    for (n = 1; n < MAX_STEPS && !done; n = next_step(n, total)) {
        snprintf(dir, sizeof(dir), "%s/init-%lu", f->root, n);
        store = NULL;
        sqlite_fail_at(n);
        int err = rs_store_init(&store, dir, NULL);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err < 0) {
            assert_null(store);
            /* A failed init leaves nothing that blocks the next one. */
            OK(rs_store_init(&store, dir, NULL));
        }
        expect_verifies(store, 0);
        rs_store_free(store);
        test_rmtree(dir);
    }
    assert_true(done);
    print_message("init: about %lu SQLite allocations\n", total);
}

static void verify_never_passes_a_store_it_did_not_read(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_record rec;
    unsigned long n;
    bool done = false;

    OK(rs_store_init(&store, f->a, NULL));
    for (int i = 0; i < 20; i++)
        OK(rs_append(&rec, store, i % 2 ? "things" : "notes", 1, "data", 4));
    for (n = 1; n < MAX_STEPS && !done; n++) {
        rs_verify_report report;
        memset(&report, 0, sizeof(report));
        sqlite_fail_at(n);
        int err = rs_store_verify(&report, store, NULL, NULL);
        done = !sqlite_fault_fired;
        sqlite_fail_at(0);
        if (err == 0) {
            assert_int_equal(report.records, 20);
            assert_int_equal(report.shards, 2);
        }
    }
    assert_true(done);
    rs_store_free(store);
}

#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(alloc_fail_at_fails_exactly_the_nth_allocation),
        T(append_fails_cleanly_at_every_allocation),
        T(append_in_a_transaction_fails_cleanly_at_every_allocation),
        T(insert_fails_cleanly_at_every_allocation),
        T(open_fails_cleanly_at_every_allocation),
        T(init_fails_cleanly_at_every_allocation_and_can_be_retried),
        T(reads_fail_cleanly_at_every_allocation),
        T(key_import_fails_cleanly_at_every_allocation),
        T(append_survives_sqlite_allocation_failures),
        T(transaction_survives_sqlite_allocation_failures),
        T(kv_transaction_survives_sqlite_allocation_failures),
        T(insert_survives_sqlite_allocation_failures),
        T(open_and_init_survive_sqlite_allocation_failures),
        T(verify_never_passes_a_store_it_did_not_read),
    };
    if (install_sqlite_faults() < 0) {
        fprintf(stderr, "cannot install the SQLite allocator wrapper\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
