/*
 * The local half of reidentify (rs__reidentify_local): the records of the
 * old host id above what the server holds are sealed again as the new
 * host's shards from idx 0, with their ids, clocks and payloads, chained
 * afresh; the old shards are cut back; the state is rebuilt under the new
 * id; a record that does not open, or any allocation failing, leaves the
 * store exactly as it was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"
#include "reidentify_int.h"
#include "testutil.h"

#include <sodium.h>

typedef test_fixture fixture;

/* A digest of every row of the store's log, index, settings and kv state. */
static void store_digest(uint8_t *out, rs_store *store)
{
    static const char *const queries[] = {
        "SELECT host, tag, idx, id, hlc, version, data, head FROM records ORDER BY host, tag, idx",
        "SELECT host, tag, start, end, head, start_head FROM shards ORDER BY host, tag",
        "SELECT name, value FROM meta ORDER BY name",
        "SELECT ns, key, value, deleted, hlc, host FROM kv ORDER BY ns, key",
        "SELECT host, tag, idx FROM unapplied ORDER BY host, tag, idx",
    };
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    for (size_t q = 0; q < sizeof(queries) / sizeof(queries[0]); q++) {
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_prepare_v2(rs_store_db(store), queries[q], -1, &st, NULL),
                         SQLITE_OK);
        while (sqlite3_step(st) == SQLITE_ROW) {
            for (int c = 0; c < sqlite3_column_count(st); c++) {
                const void *b = sqlite3_column_blob(st, c);
                int n = sqlite3_column_bytes(st, c);
                crypto_generichash_update(&h, (const uint8_t *)&n, sizeof(n));
                if (b)
                    crypto_generichash_update(&h, b, (unsigned long long)n);
            }
        }
        sqlite3_finalize(st);
    }
    crypto_generichash_final(&h, out, 32);
}

static void kv_set(rs_store *store, const char *key, const char *value)
{
    OK(rs_kv_set(store, "ns", key, value));
}

/* The host of the write that won key `key`, through the kv state. */
typedef struct winner {
    const char *key;
    rs_uuid host;
    int found;
} winner;

static int find_winner(const rs_kv_entry *e, void *payload)
{
    winner *w = payload;
    if (strcmp(e->key, w->key) == 0) {
        w->host = e->host;
        w->found = 1;
    }
    return 0;
}

static rs_uuid winner_of(rs_store *store, const char *key)
{
    winner w = {key, {{0}}, 0};
    OK(rs_kv_foreach(store, "ns", find_winner, &w));
    assert_true(w.found);
    return w.host;
}

static void shard_records(test_recs *out, rs_store *store, const rs_uuid *host, const char *tag)
{
    memset(out, 0, sizeof(*out));
    OK(rs_store_range(store, host, tag, 0, UINT64_MAX, test_collect, out));
}

/* Checks that `moved` are `orig` from `from` on, under `host`, chained from its shard's start. */
static void check_moved(rs_store *store, const test_recs *moved, const test_recs *orig, size_t from,
                        const rs_uuid *host)
{
    uint8_t prev[RS_CHAIN_BYTES], got[RS_CHAIN_BYTES];
    rs__chain_start(prev, store->key, host, moved->n ? moved->v[0].tag : "");
    assert_int_equal(moved->n, orig->n - from);
    for (size_t i = 0; i < moved->n; i++) {
        const rs_record *m = &moved->v[i], *o = &orig->v[from + i];
        uint8_t *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        int chained = 0;
        assert_int_equal(rs_uuid_cmp(&m->host, host), 0);
        assert_int_equal(m->idx, i);
        assert_memory_equal(m->id.bytes, o->id.bytes, 16);
        assert_int_equal(m->hlc, o->hlc);
        assert_int_equal(m->version, o->version);
        OK(rs_record_open(&a, &alen, store, m));
        OK(rs_record_open(&b, &blen, store, o));
        assert_int_equal(alen, blen);
        assert_memory_equal(a, b, alen);
        rs_free(a);
        rs_free(b);
        /* It chains from its predecessor in the new shard. */
        uint8_t *scratch = malloc(m->data_len);
        assert_non_null(scratch);
        OK(rs__open_chained(scratch, NULL, got, &chained, store->key, m));
        free(scratch);
        assert_true(chained);
        assert_memory_equal(got, prev, RS_CHAIN_BYTES);
        rs__chain_head(prev, store->key, m);
    }
}

static void reidentify_reseals_what_the_server_lacks_under_the_new_host(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid old, now, fresh;
    rs_index *held = calloc(1, sizeof(*held)), *index = NULL;
    rs_reidentify_report rep;
    test_recs kv_before, notes_before, kv_new, notes_new, kv_old;
    rs_verify_report vr;
    char *token = NULL;

    assert_non_null(held);
    rs_store_host(&old, a);
    kv_set(a, "k0", "a");
    kv_set(a, "k1", "b");
    kv_set(a, "k2", "c");
    kv_set(a, "k1", "d");
    for (int i = 0; i < 5; i++) {
        char text[32];
        snprintf(text, sizeof(text), "note %d", i);
        OK(rs_append(NULL, a, "notes", 1, text, strlen(text)));
    }
    shard_records(&kv_before, a, &old, "kv");
    shard_records(&notes_before, a, &old, "notes");
    /* The server holds kv up to idx 2 and nothing of notes. */
    OK(rs_index_add(held, &old, "kv", 0, 2));
    rs_uuid_random(&fresh);

    OK(rs__reidentify_local(&rep, a, &fresh, "token-2", held));
    rs_store_host(&now, a);
    assert_int_equal(rs_uuid_cmp(&now, &fresh), 0);
    assert_int_equal(rs_uuid_cmp(&rep.old_host, &old), 0);
    assert_int_equal(rep.kept, 2);
    assert_int_equal(rep.resealed, 2 + 5);
    assert_int_equal(rep.count, 2);
    rs_free(rep.shards);

    OK(rs_store_index(&index, a));
    assert_int_equal(test_index_end(index, &old, "kv"), 2);
    assert_int_equal(test_index_end(index, &old, "notes"), 0);
    assert_int_equal(test_index_end(index, &fresh, "kv"), 2);
    assert_int_equal(test_index_end(index, &fresh, "notes"), 5);
    assert_int_equal(index->count, 3); /* the emptied old notes shard is gone */
    rs_index_free(index);

    shard_records(&kv_old, a, &old, "kv");
    assert_int_equal(kv_old.n, 2);
    assert_memory_equal(kv_old.v[1].data, kv_before.v[1].data, kv_before.v[1].data_len);
    shard_records(&kv_new, a, &fresh, "kv");
    shard_records(&notes_new, a, &fresh, "notes");
    check_moved(a, &kv_new, &kv_before, 2, &fresh);
    check_moved(a, &notes_new, &notes_before, 0, &fresh);
    OK(rs_store_verify(&vr, a, NULL, NULL));
    assert_int_equal(vr.records, 9);

    /* The state names the writes under their hosts now: k2 and the last k1 moved. */
    rs_uuid w = winner_of(a, "k0");
    assert_int_equal(rs_uuid_cmp(&w, &old), 0);
    w = winner_of(a, "k1");
    assert_int_equal(rs_uuid_cmp(&w, &fresh), 0);
    w = winner_of(a, "k2");
    assert_int_equal(rs_uuid_cmp(&w, &fresh), 0);

    /* Appends go on in the new shards, and the store reopens with the new id and token. */
    kv_set(a, "k3", "e");
    OK(rs_store_meta_get(&token, a, RS_META_TOKEN));
    assert_string_equal(token, "token-2");
    rs_free(token);
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    rs_store_host(&now, a);
    assert_int_equal(rs_uuid_cmp(&now, &fresh), 0);
    OK(rs_store_verify(&vr, a, NULL, NULL));
    assert_int_equal(vr.records, 10);
    OK(rs_store_index(&index, a));
    assert_int_equal(test_index_end(index, &fresh, "kv"), 3);
    rs_index_free(index);

    test_recs_free(&kv_before);
    test_recs_free(&notes_before);
    test_recs_free(&kv_new);
    test_recs_free(&notes_new);
    test_recs_free(&kv_old);
    rs_index_free(held);
    rs_store_free(a);
}

static void reidentify_of_a_store_the_server_holds_whole_moves_nothing(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid old, fresh;
    rs_index *held = calloc(1, sizeof(*held)), *index = NULL;
    rs_reidentify_report rep;

    assert_non_null(held);
    rs_store_host(&old, a);
    kv_set(a, "k0", "a");
    kv_set(a, "k1", "b");
    OK(rs_index_add(held, &old, "kv", 0, 2));
    rs_uuid_random(&fresh);
    OK(rs__reidentify_local(&rep, a, &fresh, NULL, held));
    assert_int_equal(rep.resealed, 0);
    assert_int_equal(rep.kept, 2);
    rs_free(rep.shards);
    OK(rs_store_index(&index, a));
    assert_int_equal(index->count, 1);
    assert_int_equal(test_index_end(index, &old, "kv"), 2);
    rs_index_free(index);
    /* The same id again is refused. */
    assert_int_equal(rs__reidentify_local(&rep, a, &fresh, NULL, held), RS_EINVAL);
    rs_free(rep.shards);
    rs_index_free(held);
    rs_store_free(a);
}

static void reidentify_changes_nothing_when_a_record_does_not_open(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid old, now, fresh;
    rs_index *held = calloc(1, sizeof(*held));
    rs_reidentify_report rep;
    uint8_t before[32], after[32];

    assert_non_null(held);
    rs_store_host(&old, a);
    for (int i = 0; i < 4; i++)
        OK(rs_append(NULL, a, "notes", 1, "x", 1));
    /* A byte of idx 2's ciphertext changed behind the store's back. */
    OK(rs__exec(a,
                "UPDATE records SET data = substr(data, 1, length(data) - 1) || "
                "x'00' WHERE idx = 2",
                "damaging a record"));
    store_digest(before, a);
    rs_uuid_random(&fresh);
    assert_int_equal(rs__reidentify_local(&rep, a, &fresh, "t", held), RS_ECRYPTO);
    assert_true(test_contains(rs_error_last(), "recsync repair"));
    rs_free(rep.shards);
    store_digest(after, a);
    assert_memory_equal(before, after, 32);
    rs_store_host(&now, a);
    assert_int_equal(rs_uuid_cmp(&now, &old), 0);
    rs_index_free(held);
    rs_store_free(a);
}

static void reidentify_is_all_or_nothing_under_allocation_failures(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid old, now, fresh;
    rs_index *held = calloc(1, sizeof(*held));
    rs_reidentify_report rep;
    uint8_t before[32], after[32];
    unsigned long n, failed = 0;
    int err = -1;

    assert_non_null(held);
    rs_store_host(&old, a);
    kv_set(a, "k0", "a");
    kv_set(a, "k1", "b");
    kv_set(a, "k0", "c");
    OK(rs_append(NULL, a, "notes", 1, "n", 1));
    OK(rs_index_add(held, &old, "kv", 0, 1));
    store_digest(before, a);
    rs_uuid_random(&fresh);
    for (n = 1; n < 2000 && err != 0; n++) {
        rs__alloc_fail_at(n);
        err = rs__reidentify_local(&rep, a, &fresh, "t", held);
        rs__alloc_fail_at(0);
        rs_free(rep.shards);
        rs_store_host(&now, a);
        if (err == 0)
            break;
        failed++;
        assert_int_equal(err, RS_ENOMEM);
        assert_int_equal(rs_uuid_cmp(&now, &old), 0);
        store_digest(after, a);
        assert_memory_equal(before, after, 32);
    }
    assert_int_equal(err, 0);
    assert_true(failed > 3);
    assert_int_equal(rs_uuid_cmp(&now, &fresh), 0);
    rs_verify_report vr;
    OK(rs_store_verify(&vr, a, NULL, NULL));
    assert_int_equal(vr.records, 4);
    rs_index_free(held);
    rs_store_free(a);
}

static void a_handle_opened_before_appends_under_the_new_host(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_open_store(f->a, NULL);
    rs_uuid old, fresh, seen;
    rs_index *held = calloc(1, sizeof(*held)), *index = NULL;
    rs_reidentify_report rep;
    rs_verify_report vr;

    assert_non_null(held);
    rs_store_host(&old, a);
    kv_set(a, "k0", "a");
    rs_uuid_random(&fresh);
    OK(rs__reidentify_local(&rep, a, &fresh, NULL, held));
    rs_free(rep.shards);
    /* b read the old id when it opened; its next write follows the store's. */
    kv_set(b, "k1", "b");
    OK(rs_store_begin(b));
    OK(rs_append(NULL, b, "notes", 1, "n", 1));
    OK(rs_store_commit(b));
    rs_store_host(&seen, b);
    assert_int_equal(rs_uuid_cmp(&seen, &fresh), 0);
    OK(rs_store_index(&index, a));
    assert_int_equal(index->count, 2);
    assert_int_equal(test_index_end(index, &fresh, "kv"), 2);
    assert_int_equal(test_index_end(index, &fresh, "notes"), 1);
    assert_int_equal(test_index_end(index, &old, "kv"), 0);
    rs_index_free(index);
    OK(rs_store_verify(&vr, a, NULL, NULL));
    assert_int_equal(vr.records, 3);
    rs_index_free(held);
    rs_store_free(b);
    rs_store_free(a);
}

static uint64_t snapshots_kept(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    uint64_t n;
    assert_int_equal(
        sqlite3_prepare_v2(rs_store_db(store), "SELECT count(*) FROM snapshots", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void reidentify_drops_snapshots_covering_moved_records(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    rs_uuid old_a, old_b, fresh;
    rs_index *held = calloc(1, sizeof(*held));
    rs_reidentify_report rep;
    rs_snapshot_info info;
    rs_verify_report vr;

    assert_non_null(held);
    rs_store_host(&old_a, a);
    rs_store_host(&old_b, b);
    for (int i = 0; i < 4; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        kv_set(a, key, "v");
        kv_set(b, key, "v");
    }
    OK(rs_snapshot_write(&info, a, "kv"));
    OK(rs_snapshot_write(&info, b, "kv"));
    assert_int_equal(snapshots_kept(a), 1);
    /* a's server holds kv up to 2: its snapshot (up to 4) says what no device may load. */
    OK(rs_index_add(held, &old_a, "kv", 0, 2));
    OK(rs_index_add(held, &old_b, "kv", 0, 4));
    rs_uuid_random(&fresh);
    OK(rs__reidentify_local(&rep, a, &fresh, NULL, held));
    rs_free(rep.shards);
    assert_int_equal(snapshots_kept(a), 0);
    OK(rs_store_verify(&vr, a, NULL, NULL));
    /* b's server holds all it has: nothing moves, its snapshot stays. */
    rs_uuid_random(&fresh);
    OK(rs__reidentify_local(&rep, b, &fresh, NULL, held));
    assert_int_equal(rep.resealed, 0);
    rs_free(rep.shards);
    assert_int_equal(snapshots_kept(b), 1);
    rs_index_free(held);
    rs_store_free(a);
    rs_store_free(b);
}

#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(reidentify_reseals_what_the_server_lacks_under_the_new_host),
        T(reidentify_of_a_store_the_server_holds_whole_moves_nothing),
        T(reidentify_changes_nothing_when_a_record_does_not_open),
        T(reidentify_is_all_or_nothing_under_allocation_failures),
        T(a_handle_opened_before_appends_under_the_new_host),
        T(reidentify_drops_snapshots_covering_moved_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
