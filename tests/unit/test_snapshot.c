/*
 * Snapshots in the store (snapshot.c): writing one seals the state, a store
 * compacted below it still verifies (against the snapshot) and rebuilds the
 * same state from it plus the records above, and a snapshot altered in the
 * store is caught by verify and never loaded.
 */
#include "testutil.h"

#include "snapshot_int.h"

/* The kv table as text, tombstones included, in key order. */
static void kv_dump(rs_store *store, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    size_t len = 0;
    out[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(store),
                                        "SELECT ns, key, ifnull(value, '-'), deleted, hlc, "
                                        "hex(host) FROM kv ORDER BY ns, key",
                                        -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW && len + 200 < size)
        len += (size_t)snprintf(out + len, size - len, "%s/%s=%s d%d %lld %s\n",
                                sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
                                sqlite3_column_text(st, 2), sqlite3_column_int(st, 3),
                                (long long)sqlite3_column_int64(st, 4), sqlite3_column_text(st, 5));
    sqlite3_finalize(st);
}

/* The history table as text, search index included (a match for every live command). */
static void history_dump(rs_store *store, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    size_t len = 0;
    out[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(store),
                                        "SELECT rid, hex(id), ifnull(command, '-'), deleted, hlc, "
                                        "CASE WHEN deleted THEN 9 ELSE (SELECT count(*) FROM "
                                        "history_fts WHERE history_fts MATCH '\"' || "
                                        "replace(h.command, '\"', '') || '\"' AND rowid = "
                                        "h.rid) END FROM history h ORDER BY rid",
                                        -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW && len + 300 < size)
        len += (size_t)snprintf(out + len, size - len, "%lld %s %s d%d %lld fts%d\n",
                                (long long)sqlite3_column_int64(st, 0), sqlite3_column_text(st, 1),
                                sqlite3_column_text(st, 2), sqlite3_column_int(st, 3),
                                (long long)sqlite3_column_int64(st, 4), sqlite3_column_int(st, 5));
    sqlite3_finalize(st);
}

/* A remote index that pruned every shard of the store to its end. */
static rs_index *pruned_everything(rs_store *store)
{
    rs_index *local = NULL, *remote = calloc(1, sizeof(*remote));
    OK(rs_store_index(&local, store));
    for (size_t i = 0; i < local->count; i++)
        OK(rs_index_add(remote, &local->shards[i].host, local->shards[i].tag, local->shards[i].end,
                        local->shards[i].end));
    rs_index_free(local);
    return remote;
}

static void snapshot_compact_verify_rebuild_keeps_the_state(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_snapshot_info info;
    rs_verify_report vr;
    char before[8192], after[8192], key[32];
    uint64_t dropped = 0, due = 0;

    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "k%d", i % 40);
        OK(rs_kv_set(a, "ns", key, key));
    }
    for (int i = 0; i < 40; i += 5) {
        snprintf(key, sizeof(key), "k%d", i);
        OK(rs_kv_del(a, "ns", key));
    }
    OK(rs__snapshot_due(&due, a, RS_KV_TAG));
    assert_int_equal(due, 308);
    OK(rs_snapshot_write(&info, a, RS_KV_TAG));
    assert_int_equal(info.covered, 308);
    assert_int_equal(info.items, 40);
    assert_true(info.chunks >= 1);
    OK(rs__snapshot_due(&due, a, RS_KV_TAG));
    assert_int_equal(due, 0);
    kv_dump(a, before, sizeof(before));

    /* Two writes after the snapshot, then the records below it go. */
    OK(rs_kv_set(a, "ns", "k1", "after"));
    OK(rs_kv_del(a, "ns", "k2"));
    kv_dump(a, before, sizeof(before));
    rs_index *remote = pruned_everything(a);
    remote->shards[0].start = 308;
    OK(rs__snapshot_compact(&dropped, a, remote));
    assert_int_equal(dropped, 308);
    assert_int_equal(test_count_records(a, RS_KV_TAG), 2);
    OK(rs_store_verify(&vr, a, NULL, NULL));
    assert_int_equal(vr.records, 2);

    /* A rebuild starts from the kept snapshot, then applies the two records. */
    OK(rs_store_rebuild(a, RS_KV_TAG));
    kv_dump(a, after, sizeof(after));
    assert_string_equal(before, after);
    rs_store_free(a);

    /* Reopened, the same. */
    a = test_open_store(f->a, NULL);
    OK(rs_store_rebuild(a, RS_KV_TAG));
    kv_dump(a, after, sizeof(after));
    assert_string_equal(before, after);
    rs_index_free(remote);
    rs_store_free(a);
}

static void snapshot_of_history_keeps_rows_tombstones_and_search(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_snapshot_info info;
    char before[16384], after[16384], cmd[64];
    rs_uuid ids[50];
    uint64_t dropped = 0;

    for (int i = 0; i < 50; i++) {
        rs_history_entry e;
        memset(&e, 0, sizeof(e));
        snprintf(cmd, sizeof(cmd), "echo command-%d", i);
        e.command = cmd;
        e.time_ms = 1700000000000 + i;
        e.cwd = "/tmp";
        OK(rs_history_add(&ids[i], a, &e));
    }
    for (int i = 0; i < 50; i += 10)
        OK(rs_history_delete(a, &ids[i]));
    history_dump(a, before, sizeof(before));
    OK(rs_snapshot_write(&info, a, RS_HISTORY_TAG));
    assert_int_equal(info.items, 50);
    rs_index *remote = pruned_everything(a);
    OK(rs__snapshot_compact(&dropped, a, remote));
    assert_int_equal(dropped, 55);
    OK(rs_store_rebuild(a, RS_HISTORY_TAG));
    history_dump(a, after, sizeof(after));
    assert_string_equal(before, after);
    assert_non_null(strstr(after, "fts1"));
    assert_null(strstr(after, "fts0"));
    assert_non_null(strstr(after, "d1"));
    rs_index_free(remote);
    rs_store_free(a);
}

static void snapshot_altered_in_the_store_is_caught(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_verify_report vr;
    uint64_t dropped = 0;
    char before[8192], after[8192];

    OK(rs_kv_set(a, "ns", "k", "v"));
    OK(rs_snapshot_write(NULL, a, RS_KV_TAG));
    rs_index *remote = pruned_everything(a);
    OK(rs__snapshot_compact(&dropped, a, remote));
    assert_int_equal(dropped, 1);
    kv_dump(a, before, sizeof(before));
    assert_int_equal(sqlite3_exec(rs_store_db(a),
                                  "UPDATE snapshot_chunks SET data = "
                                  "substr(data, 1, 40) || x'00' || substr(data, 42)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(rs_store_verify(&vr, a, NULL, NULL), RS_ECRYPTO);
    assert_true(test_contains(rs_error_last(), "does not open"));
    assert_int_equal(rs_store_rebuild(a, RS_KV_TAG), RS_ECRYPTO);
    kv_dump(a, after, sizeof(after));
    assert_string_equal(before, after);
    rs_index_free(remote);
    rs_store_free(a);
}

static void compacted_shard_without_a_snapshot_fails_verify(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_verify_report vr;
    OK(rs_kv_set(a, "ns", "k", "v"));
    OK(rs_kv_set(a, "ns", "k", "w"));
    assert_int_equal(sqlite3_exec(rs_store_db(a),
                                  "DELETE FROM records WHERE idx = 0; UPDATE shards SET start = 1",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(rs_store_verify(&vr, a, NULL, NULL), RS_EHOLE);
    assert_true(test_contains(rs_error_last(), "keeps no snapshot"));
    rs_store_free(a);
}

static void snapshot_of_an_unknown_tag_is_refused(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    assert_int_equal(rs_snapshot_write(NULL, a, "notes"), RS_ENOTFOUND);
    assert_int_equal(rs_snapshot_supported(a, "notes"), 0);
    assert_int_equal(rs_snapshot_supported(a, RS_KV_TAG), 1);
    rs_store_free(a);
}

/*
 * A snapshot of a tag the store holds nothing of yet (a device's first
 * `recsync snapshot`, or history on a device that only wrote kv): an empty
 * state at an empty frontier, written without touching a NULL array
 * (UBSan caught qsort(NULL, 0, ...) in frontier_digest here).
 */
static void snapshot_of_an_empty_tag(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_snapshot_info info;
    OK(rs_snapshot_write(&info, a, RS_HISTORY_TAG));
    assert_int_equal(info.covered, 0);
    assert_int_equal(info.items, 0);
    assert_int_equal(info.chunks, 1);
    OK(rs_kv_set(a, "ns", "k", "v"));
    OK(rs_snapshot_write(&info, a, RS_KV_TAG));
    assert_int_equal(info.covered, 1);
    rs_store_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(snapshot_compact_verify_rebuild_keeps_the_state, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(snapshot_of_history_keeps_rows_tombstones_and_search,
                                        test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(snapshot_altered_in_the_store_is_caught, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(compacted_shard_without_a_snapshot_fails_verify, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(snapshot_of_an_unknown_tag_is_refused, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(snapshot_of_an_empty_tag, test_setup, test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
