/*
 * The kv store: set/get/del/list, the highest (HLC, host) winning whatever
 * the order records arrive in, tombstones against late older writes, state
 * kept in the transaction of its records, and forward compatibility (a tag
 * this build does not know, a record version newer than it understands, a
 * payload that does not parse, and the upgrade that applies them).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin.h"
#include "testutil.h"

typedef test_fixture fixture;

static int teardown(void **state)
{
    rs__kv_version = RS_KV_VERSION;
    return test_teardown(state);
}

/* A wall clock the test sets. */
typedef struct fake_clock {
    uint64_t now;
} fake_clock;

static uint64_t fake_now(void *ctx)
{
    return ((fake_clock *)ctx)->now;
}

static void use_clock(rs_store *store, fake_clock *clock)
{
    store->clock.now_ms = fake_now;
    store->clock.now_ctx = clock;
}

static char *get(rs_store *store, const char *ns, const char *key)
{
    char *value = NULL;
    int err = rs_kv_get(&value, store, ns, key);
    if (err == RS_ENOTFOUND)
        return NULL;
    OK(err);
    return value;
}

static void assert_value(rs_store *store, const char *ns, const char *key, const char *want)
{
    char *value = get(store, ns, key);
    if (want == NULL) {
        if (value)
            fail_msg("%s/%s: expected no value, got '%s'", ns, key, value);
        return;
    }
    if (value == NULL)
        fail_msg("%s/%s: expected '%s', got nothing", ns, key, want);
    assert_string_equal(value, want);
    rs_free(value);
}

/* The state row of one key, tombstone or live. */
typedef struct row {
    int found;
    int deleted;
    rs_hlc hlc;
    rs_uuid host;
    char value[64];
} row;

static int find_row(const rs_kv_entry *e, void *payload)
{
    row *r = payload;
    if (strcmp(e->key, (const char *)r->value) != 0)
        return 0;
    r->found = 1;
    r->deleted = e->value == NULL;
    r->hlc = e->hlc;
    r->host = e->host;
    snprintf(r->value, sizeof(r->value), "%s", e->value ? e->value : "");
    return 1;
}

static row state_of(rs_store *store, const char *ns, const char *key)
{
    row r;
    memset(&r, 0, sizeof(r));
    snprintf(r.value, sizeof(r.value), "%s", key);
    assert_true(rs_kv_foreach(store, ns, find_row, &r) >= 0);
    return r;
}

static void kv_set_get_overwrite_and_missing(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    char *value = (char *)"untouched";

    OK(rs_kv_set(a, "ns", "k", "one"));
    assert_value(a, "ns", "k", "one");
    OK(rs_kv_set(a, "ns", "k", "two"));
    assert_value(a, "ns", "k", "two");
    OK(rs_kv_set(a, "other", "k", ""));
    assert_value(a, "other", "k", "");
    assert_int_equal(rs_kv_get(&value, a, "ns", "missing"), RS_ENOTFOUND);
    assert_string_equal(value, "untouched");
    assert_true(test_contains(rs_error_last(), "missing"));
    assert_true(test_contains(rs_error_last(), "ns"));
    assert_int_equal(test_count_records(a, RS_KV_TAG), 3);
    rs_store_free(a);
}

static void kv_del_leaves_a_tombstone_and_refuses_a_missing_key(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    row r;

    OK(rs_kv_set(a, "ns", "k", "v"));
    OK(rs_kv_del(a, "ns", "k"));
    assert_value(a, "ns", "k", NULL);
    r = state_of(a, "ns", "k");
    assert_true(r.found);
    assert_true(r.deleted);
    assert_int_equal(rs_kv_del(a, "ns", "k"), RS_ENOTFOUND);
    assert_int_equal(rs_kv_del(a, "ns", "never"), RS_ENOTFOUND);
    assert_true(test_contains(rs_error_last(), "never"));
    /* Refused deletes write nothing. */
    assert_int_equal(test_count_records(a, RS_KV_TAG), 2);
    OK(rs_kv_set(a, "ns", "k", "back"));
    assert_value(a, "ns", "k", "back");
    rs_store_free(a);
}

typedef struct listing {
    char text[512];
} listing;

static int append_listing(const char *ns, const char *key, const char *value, void *payload)
{
    listing *l = payload;
    size_t n = strlen(l->text);
    snprintf(l->text + n, sizeof(l->text) - n, "%s/%s=%s;", ns, key, value);
    return 0;
}

static int stop_at_first(const char *ns, const char *key, const char *value, void *payload)
{
    (void)ns;
    (void)key;
    (void)value;
    (*(int *)payload)++;
    return 7;
}

static void kv_list_orders_filters_and_skips_tombstones(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    listing l;
    int calls = 0;

    OK(rs_kv_set(a, "b", "z", "1"));
    OK(rs_kv_set(a, "a", "y", "2"));
    OK(rs_kv_set(a, "b", "a", "3"));
    OK(rs_kv_set(a, "b", "gone", "4"));
    OK(rs_kv_del(a, "b", "gone"));
    memset(&l, 0, sizeof(l));
    OK(rs_kv_list(a, NULL, append_listing, &l));
    assert_string_equal(l.text, "a/y=2;b/a=3;b/z=1;");
    memset(&l, 0, sizeof(l));
    OK(rs_kv_list(a, "b", append_listing, &l));
    assert_string_equal(l.text, "b/a=3;b/z=1;");
    assert_int_equal(rs_kv_list(a, NULL, stop_at_first, &calls), 7);
    assert_int_equal(calls, 1);
    rs_store_free(a);
}

static void kv_refuses_empty_names_and_bad_utf8(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);

    assert_int_equal(rs_kv_set(a, "", "k", "v"), RS_EINVAL);
    assert_true(test_contains(rs_error_last(), "namespace"));
    assert_int_equal(rs_kv_set(a, "ns", "", "v"), RS_EINVAL);
    assert_true(test_contains(rs_error_last(), "key"));
    assert_int_equal(rs_kv_set(a, "ns", "k", "\xff\xfe"), RS_EINVAL);
    assert_true(test_contains(rs_error_last(), "value is not valid UTF-8"));
    assert_int_equal(rs_kv_set(a, "ns", "\xc0\xaf", "v"), RS_EINVAL);
    assert_int_equal(rs_kv_set(a, "ns", "k", NULL), RS_EINVAL);
    assert_int_equal(test_count_records(a, NULL), 0);
    OK(rs_kv_set(a, "ns", "k", "caf\xc3\xa9 \xf0\x9f\x98\x80"));
    assert_value(a, "ns", "k", "caf\xc3\xa9 \xf0\x9f\x98\x80");
    rs_store_free(a);
}

/*
 * Two devices set one key before syncing; whichever order the records
 * arrive in, every device keeps the write with the higher HLC.
 */
static void kv_concurrent_sets_converge_on_the_higher_hlc(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL),
             *c = test_init_sibling(f->c, a, NULL);
    fake_clock ca = {rs_now_ms()}, cb = {ca.now + 5};
    row r;

    use_clock(a, &ca);
    use_clock(b, &cb);
    OK(rs_kv_set(b, "ns", "k", "from b, later"));
    OK(rs_kv_set(a, "ns", "k", "from a, earlier"));
    test_transfer(a, b);
    test_transfer(b, a);
    test_transfer(c, b); /* c: b's record first, then a's */
    test_transfer(c, a);
    assert_value(a, "ns", "k", "from b, later");
    assert_value(b, "ns", "k", "from b, later");
    assert_value(c, "ns", "k", "from b, later");
    r = state_of(a, "ns", "k");
    assert_int_equal(RS_HLC_MS(r.hlc), cb.now);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

/* Writes in the same millisecond: the HLCs tie and the higher host id wins. */
static void kv_same_millisecond_tie_goes_to_the_higher_host(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    fake_clock same = {rs_now_ms() + 10};
    rs_uuid ha, hb;
    row ra, rb;
    const char *want;

    use_clock(a, &same);
    use_clock(b, &same);
    OK(rs_kv_set(a, "ns", "k", "a"));
    OK(rs_kv_set(b, "ns", "k", "b"));
    rs_store_host(&ha, a);
    rs_store_host(&hb, b);
    want = rs_uuid_cmp(&ha, &hb) > 0 ? "a" : "b";
    test_transfer(a, b);
    test_transfer(b, a);
    assert_value(a, "ns", "k", want);
    assert_value(b, "ns", "k", want);
    ra = state_of(a, "ns", "k");
    rb = state_of(b, "ns", "k");
    assert_int_equal(ra.hlc, rb.hlc);
    assert_int_equal(ra.hlc, RS_HLC_MAKE(same.now, 0));
    assert_memory_equal(ra.host.bytes, rb.host.bytes, 16);
    assert_memory_equal(ra.host.bytes, (want[0] == 'a' ? &ha : &hb)->bytes, 16);
    rs_store_free(a);
    rs_store_free(b);
}

/*
 * A delete reaches the other device and stays when an older set (from a
 * device whose clock runs behind) arrives after it; a newer set still wins.
 */
static void kv_delete_survives_a_late_older_set(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL),
             *c = test_init_sibling(f->c, a, NULL);
    uint64_t t = rs_now_ms();
    fake_clock ca = {t + 10}, cc = {t};
    test_recs late = {NULL, 0, 0};
    row r;

    use_clock(a, &ca);
    use_clock(c, &cc);
    OK(rs_kv_set(a, "ns", "k", "new"));
    test_transfer(b, a);
    assert_value(b, "ns", "k", "new");
    ca.now = t + 20;
    OK(rs_kv_del(a, "ns", "k"));
    test_transfer(b, a);
    assert_value(b, "ns", "k", NULL);
    cc.now = t + 5; /* c, behind, sets the key "before" the delete */
    OK(rs_kv_set(c, "ns", "k", "old"));
    test_transfer(b, c);
    assert_value(b, "ns", "k", NULL);
    r = state_of(b, "ns", "k");
    assert_true(r.deleted);
    assert_int_equal(RS_HLC_MS(r.hlc), t + 20);
    test_transfer(a, c);
    assert_value(a, "ns", "k", NULL);
    /* Once c's clock passes the delete, its set is newer and wins. */
    cc.now = t + 30;
    OK(rs_kv_set(c, "ns", "k", "newest"));
    OK(rs_store_range(c, &c->host, RS_KV_TAG, 1, 2, test_collect, &late));
    OK(rs_store_insert(NULL, b, late.v, late.n));
    assert_value(b, "ns", "k", "newest");
    test_recs_free(&late);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

/*
 * State changes in the transaction of its records: a batch refused part
 * way (a hole) changes no state, and a successful one is applied whole.
 */
static void kv_refused_batch_changes_no_state(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    test_recs r = {NULL, 0, 0};
    rs_record tmp;

    OK(rs_kv_set(a, "ns", "k1", "1"));
    OK(rs_kv_set(a, "ns", "k2", "2"));
    OK(rs_kv_set(a, "ns", "k3", "3"));
    OK(rs_store_foreach(a, RS_KV_TAG, test_collect, &r));
    assert_int_equal(r.n, 3);
    tmp = r.v[1]; /* k1 then k3: a hole at idx 1 */
    r.v[1] = r.v[2];
    r.v[2] = tmp;
    assert_int_equal(rs_store_insert(NULL, b, r.v, 2), RS_EHOLE);
    assert_value(b, "ns", "k1", NULL);
    assert_int_equal(test_count_records(b, NULL), 0);
    test_recs_free(&r);
    test_transfer(b, a);
    assert_value(b, "ns", "k1", "1");
    assert_value(b, "ns", "k3", "3");
    rs_store_free(a);
    rs_store_free(b);
}

/* Reads come from the materialized table, never from the log. */
static void kv_reads_do_not_replay_the_log(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);

    OK(rs_kv_set(a, "ns", "k", "v"));
    OK(rs__exec(a, "DELETE FROM records WHERE tag = 'kv'", "emptying the log behind kv's back"));
    assert_value(a, "ns", "k", "v");
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    assert_value(a, "ns", "k", "v");
    rs_store_free(a);
}

typedef struct warnings {
    int count;
    char last[1024];
} warnings;

static void on_warning(const char *message, void *payload)
{
    warnings *w = payload;
    w->count++;
    snprintf(w->last, sizeof(w->last), "%s", message);
}

static uint64_t count_unapplied(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    uint64_t n = 0;
    assert_int_equal(
        sqlite3_prepare_v2(rs_store_db(store), "SELECT count(*) FROM unapplied", -1, &st, NULL),
        SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* A payload that does not parse is kept, named in a warning, and applies nothing. */
static void kv_malformed_payload_is_kept_and_named(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    warnings w;
    rs_record rec;
    char id[RS_UUID_STRLEN + 1];
    static const char *const bad[] = {"not json", "{\"op\":\"set\",\"ns\":\"n\"}",
                                      "{\"op\":\"rename\",\"ns\":\"n\",\"key\":\"k\"}",
                                      "{\"op\":\"set\",\"ns\":\"n\",\"key\":\"k\",\"value\":5}"};

    memset(&w, 0, sizeof(w));
    rs_store_on_warning(b, on_warning, &w);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        OK(rs_append(&rec, a, RS_KV_TAG, RS_KV_VERSION, bad[i], strlen(bad[i])));
    OK(rs_kv_set(a, "n", "k", "good"));
    test_transfer(b, a);
    assert_int_equal(w.count, 4);
    rs_uuid_format(id, &rec.id);
    assert_true(test_contains(w.last, id));
    assert_true(test_contains(w.last, "not applied"));
    assert_int_equal(test_count_records(b, RS_KV_TAG), 5);
    assert_int_equal(count_unapplied(b), 4);
    assert_value(b, "n", "k", "good");
    rs_store_free(a);
    rs_store_free(b);
}

/* Records of a tag no store here knows are stored (and handed on), not applied. */
static void kv_unknown_tag_is_stored_not_applied(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL),
             *c = test_init_sibling(f->c, a, NULL);
    rs_record rec, *got = NULL;
    uint8_t *plain = NULL;
    size_t len = 0;
    warnings w;

    memset(&w, 0, sizeof(w));
    rs_store_on_warning(b, on_warning, &w);
    OK(rs_append(&rec, a, "future.tag", 3, "{\"op\":\"set\"}", 12));
    test_transfer(b, a);
    test_transfer(c, b); /* b hands it on as any record */
    OK(rs_store_get(&got, c, &rec.id));
    OK(rs_record_open(&plain, &len, c, got));
    assert_int_equal(len, 12);
    assert_memory_equal(plain, "{\"op\":\"set\"}", 12);
    assert_int_equal(w.count, 0);
    assert_int_equal(count_unapplied(b), 0);
    rs_free(plain);
    rs_record_free(got);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

/*
 * A kv record of version 2 reaches a version-1 build: kept, named in a
 * warning, not applied. After the upgrade (the store opened by a build
 * whose kv understands version 2) it is applied by the rebuild that
 * registration runs, in HLC order among the others.
 */
static void kv_newer_version_is_kept_then_applied_after_upgrade(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    static const char v2[] = "{\"op\":\"set\",\"ns\":\"ns\",\"key\":\"k\",\"value\":\"from v2\","
                             "\"expires\":4102444800000}";
    warnings w;
    rs_record rec;
    char id[RS_UUID_STRLEN + 1];
    fake_clock cb = {rs_now_ms()}, ca = {cb.now + 5}; /* the v2 write is the newer */

    memset(&w, 0, sizeof(w));
    use_clock(a, &ca);
    use_clock(b, &cb);
    rs_store_on_warning(b, on_warning, &w);
    OK(rs_kv_set(b, "ns", "k", "from v1, older"));
    OK(rs_append(&rec, a, RS_KV_TAG, 2, v2, strlen(v2)));
    OK(rs_kv_set(a, "ns", "other", "v1"));
    test_transfer(b, a);
    rs_uuid_format(id, &rec.id);
    assert_int_equal(w.count, 1);
    assert_true(test_contains(w.last, id));
    assert_true(test_contains(w.last, "version 2"));
    assert_value(b, "ns", "k", "from v1, older");
    assert_value(b, "ns", "other", "v1");
    assert_int_equal(count_unapplied(b), 1);
    rs_store_free(b);

    rs__kv_version = 2;
    b = test_open_store(f->b, NULL);
    assert_value(b, "ns", "k", "from v2");
    assert_value(b, "ns", "other", "v1");
    assert_int_equal(count_unapplied(b), 0);
    rs_store_free(b);
    rs_store_free(a);
}

/* An application's own tag through the public API, upgraded the same way. */
typedef struct notes {
    int applied;
} notes;

static int notes_setup(sqlite3 *db, void *payload)
{
    (void)payload;
    return sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS notes(text TEXT)", NULL, NULL, NULL) ==
                   SQLITE_OK
               ? 0
               : RS_EIO;
}

static int notes_apply(sqlite3 *db, const rs_record *rec, const uint8_t *plain, size_t len,
                       void *payload)
{
    sqlite3_stmt *st = NULL;
    int rc;
    (void)rec;
    ((notes *)payload)->applied++;
    if (sqlite3_prepare_v2(db, "INSERT INTO notes(text) VALUES (?1)", -1, &st, NULL) != SQLITE_OK)
        return RS_EIO;
    sqlite3_bind_text(st, 1, (const char *)plain, (int)len, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : RS_EIO;
}

static int notes_reset(sqlite3 *db, void *payload)
{
    (void)payload;
    return sqlite3_exec(db, "DELETE FROM notes", NULL, NULL, NULL) == SQLITE_OK ? 0 : RS_EIO;
}

static int count_notes(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    int n = -1;
    if (sqlite3_prepare_v2(rs_store_db(store), "SELECT count(*) FROM notes", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void app_tag_newer_version_is_applied_after_registering_the_upgrade(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    notes n1 = {0}, n2 = {0};
    rs_tag_def def = {"notes", 1, notes_setup, notes_apply, notes_reset, &n1, NULL, NULL, NULL};
    warnings w;

    memset(&w, 0, sizeof(w));
    OK(rs_store_register(b, &def));
    rs_store_on_warning(b, on_warning, &w);
    OK(rs_append(NULL, a, "notes", 1, "first", 5));
    OK(rs_append(NULL, a, "notes", 2, "second, v2", 10));
    test_transfer(b, a);
    assert_int_equal(n1.applied, 1);
    assert_int_equal(count_notes(b), 1);
    assert_int_equal(w.count, 1);
    assert_true(test_contains(w.last, "version 2"));
    rs_store_free(b);

    b = test_open_store(f->b, NULL);
    def.version = 2;
    def.payload = &n2;
    OK(rs_store_register(b, &def));
    assert_int_equal(n2.applied, 2);
    assert_int_equal(count_notes(b), 2);
    assert_int_equal(rs_store_register(b, &def), RS_EEXISTS);
    rs_store_free(b);
    rs_store_free(a);
}

static int dump_entry(const rs_kv_entry *e, void *payload)
{
    char *out = payload, hlc[RS_HLC_STRLEN + 1];
    size_t n = strlen(out);
    rs_hlc_format(hlc, e->hlc);
    snprintf(out + n, 4096 - n, "%s/%s=%s@%s:%02x;", e->ns, e->key, e->value ? e->value : "(del)",
             hlc, e->host.bytes[0]);
    return 0;
}

/* A rebuild (recovery) gives exactly the state applying as records came gave. */
static void kv_rebuild_reproduces_the_state(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    char before[4096] = "", after[4096] = "";
    char key[16], value[16];

    for (int i = 0; i < 40; i++) {
        rs_store *s = i % 3 ? a : b;
        snprintf(key, sizeof(key), "k%d", i % 7);
        snprintf(value, sizeof(value), "v%d", i);
        if (i % 5 == 4 && rs_kv_del(s, "ns", key) == 0)
            continue;
        OK(rs_kv_set(s, "ns", key, value));
        if (i % 9 == 0)
            test_transfer(b, a);
    }
    test_transfer(a, b);
    test_transfer(b, a);
    OK(rs_kv_foreach(a, NULL, dump_entry, before));
    OK(rs_kv_foreach(b, NULL, dump_entry, after));
    assert_string_equal(before, after);
    after[0] = '\0';
    OK(rs_store_rebuild(a, RS_KV_TAG));
    OK(rs_kv_foreach(a, NULL, dump_entry, after));
    assert_string_equal(before, after);
    rs_store_free(a);
    rs_store_free(b);
}

#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(kv_set_get_overwrite_and_missing),
        T(kv_del_leaves_a_tombstone_and_refuses_a_missing_key),
        T(kv_list_orders_filters_and_skips_tombstones),
        T(kv_refuses_empty_names_and_bad_utf8),
        T(kv_concurrent_sets_converge_on_the_higher_hlc),
        T(kv_same_millisecond_tie_goes_to_the_higher_host),
        T(kv_delete_survives_a_late_older_set),
        T(kv_refused_batch_changes_no_state),
        T(kv_reads_do_not_replay_the_log),
        T(kv_malformed_payload_is_kept_and_named),
        T(kv_unknown_tag_is_stored_not_applied),
        T(kv_newer_version_is_kept_then_applied_after_upgrade),
        T(app_tag_newer_version_is_applied_after_registering_the_upgrade),
        T(kv_rebuild_reproduces_the_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
