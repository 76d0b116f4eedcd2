/*
 * The keyring and key rotation (keyring.c), without a server: records move
 * between stores with rs_store_insert as a sync would store them.
 */
#include "testutil.h"

#include "keyring.h"

#include <sodium.h>

typedef struct copy_state {
    rs_uuid host;
    int keys; /* 1: only the rs.keys records, 0: only the others */
    rs_record *recs;
    uint8_t **data;
    size_t count, cap;
} copy_state;

static int collect(const rs_record *rec, void *payload)
{
    copy_state *cs = payload;
    if (rs_uuid_cmp(&rec->host, &cs->host) != 0 || (strcmp(rec->tag, RS_KEYS_TAG) == 0) != cs->keys)
        return 0;
    if (cs->count == cs->cap) {
        cs->cap = cs->cap ? 2 * cs->cap : 64;
        cs->recs = realloc(cs->recs, cs->cap * sizeof(*cs->recs));
        cs->data = realloc(cs->data, cs->cap * sizeof(*cs->data));
        assert_non_null(cs->recs);
        assert_non_null(cs->data);
    }
    cs->recs[cs->count] = *rec;
    cs->data[cs->count] = malloc(rec->data_len);
    memcpy(cs->data[cs->count], rec->data, rec->data_len);
    cs->recs[cs->count].data = cs->data[cs->count];
    cs->count++;
    return 0;
}

/*
 * Inserts every record of `from`'s own shards into `to`, those of rs.keys
 * first as a sync's look-ahead reads them first; rs_store_insert's result.
 */
static int copy_own(rs_store *from, rs_store *to)
{
    int err = 0;
    for (int keys = 1; keys >= 0 && err == 0; keys--) {
        copy_state cs = {0};
        cs.keys = keys;
        rs_store_host(&cs.host, from);
        OK(rs_store_foreach(from, NULL, collect, &cs));
        err = rs_store_insert(NULL, to, cs.recs, cs.count);
        for (size_t i = 0; i < cs.count; i++)
            free(cs.data[i]);
        free(cs.recs);
        free(cs.data);
    }
    return err;
}

static void current_id(char *out, rs_store *store)
{
    rs_store_key_id(out, store);
}

static size_t ring_size(rs_store *store)
{
    rs_keyring_entry *list = NULL;
    size_t n = 0;
    OK(rs_keyring_list(&list, &n, store));
    rs_free(list);
    return n;
}

/* Every record of the store opens (its own and what it received). */
static int open_all_cb(const rs_record *rec, void *payload)
{
    rs_store *store = payload;
    uint8_t *plain = NULL;
    size_t len = 0;
    int err = rs_record_open(&plain, &len, store, rec);
    rs_free(plain);
    return err;
}

static void verify_ok(rs_store *store)
{
    rs_verify_report rep;
    OK(rs_store_verify(&rep, store, NULL, NULL));
    OK(rs_store_foreach(store, NULL, open_all_cb, store));
}

static void rotate_to(rs_store *store, rs_store **others, size_t n)
{
    uint8_t pks[4][RS_DEVICE_PK_BYTES];
    rs_uuid hosts[4];
    assert_true(n < 4);
    rs_store_host(&hosts[0], store);
    OK(rs__device_pk(pks[0], store));
    for (size_t i = 0; i < n; i++) {
        rs_store_host(&hosts[i + 1], others[i]);
        OK(rs__device_pk(pks[i + 1], others[i]));
    }
    OK(rs__key_rotate_local(store, (const uint8_t(*)[RS_DEVICE_PK_BYTES])pks, hosts, n + 1, NULL, 0,
                            NULL));
}

static void ring_lookup_by_id(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = NULL;
    char before[RS_KEY_ID_STRLEN + 1], after[RS_KEY_ID_STRLEN + 1];
    rs_record rec;
    current_id(before, a);
    OK(rs_append(&rec, a, "notes", 1, "old", 3));
    b = test_init_sibling(f->b, a, NULL);
    rotate_to(a, &b, 1);
    current_id(after, a);
    assert_string_not_equal(before, after);
    assert_int_equal(ring_size(a), 2);
    /* An older record opens with the key its id names; a new one is sealed under the new key. */
    OK(rs_append(NULL, a, "notes", 1, "new", 3));
    verify_ok(a);
    /* A key id the ring does not hold: the current key (the open then names both ids). */
    uint8_t junk[RS_ENVELOPE_OVERHEAD];
    memset(junk, 0x5a, sizeof(junk));
    assert_ptr_equal(rs__key_for(a->key, junk, sizeof(junk)), a->key);
    assert_null(rs__key_find(a->key, junk + 4));
    rs_store_free(a);
    rs_store_free(b);
}

static void rotation_reaches_the_recipients_only(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_store *c = test_init_sibling(f->c, a, NULL);
    char ida[RS_KEY_ID_STRLEN + 1], idb[RS_KEY_ID_STRLEN + 1], old[RS_KEY_ID_STRLEN + 1];
    current_id(old, a);
    OK(rs_append(NULL, a, "notes", 1, "before", 6));
    rotate_to(a, &b, 1); /* c is not a recipient */
    OK(rs_append(NULL, a, "notes", 1, "after", 5));
    current_id(ida, a);

    OK(copy_own(a, b));
    rs_store_free(b);
    b = test_open_store(f->b, NULL); /* the rule runs at open (and at every sync) */
    current_id(idb, b);
    assert_string_equal(idb, ida);
    assert_int_equal(ring_size(b), 2);
    verify_ok(b);
    /* b now writes under the new key, and a reads it. */
    OK(rs_append(NULL, b, "notes", 1, "from b", 6));
    OK(copy_own(b, a));
    verify_ok(a);

    /* c, not a recipient, cannot store what was written under the new key, nor learn it. */
    assert_int_equal(copy_own(a, c), RS_EKEY);
    current_id(idb, c);
    assert_string_equal(idb, old);
    assert_int_equal(ring_size(c), 1);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

static void keyring_survives_reopen_and_the_key_file_follows(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    char id[RS_KEY_ID_STRLEN + 1], again[RS_KEY_ID_STRLEN + 1], *text = NULL;
    OK(rs_append(NULL, a, "kv-like", 1, "x", 1));
    rotate_to(a, &b, 1);
    current_id(id, a);
    OK(rs_store_key_export(&text, a));
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    current_id(again, a);
    assert_string_equal(id, again);
    assert_int_equal(ring_size(a), 2);
    verify_ok(a);
    /* The key file holds the current key: a store made with its text opens new records. */
    rs_store *d = NULL;
    OK(rs_store_init_with_key(&d, f->c, text, NULL));
    current_id(again, d);
    assert_string_equal(id, again);
    rs_free(text);
    rs_store_free(d);
    rs_store_free(a);
    rs_store_free(b);
}

/* Two rotations from the same key, each unaware of the other: highest (hlc, host) wins. */
static void concurrent_rotations_agree_on_one_key(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    char ida[RS_KEY_ID_STRLEN + 1], idb[RS_KEY_ID_STRLEN + 1];
    sqlite3_stmt *st = NULL;
    rotate_to(a, &b, 1);
    rotate_to(b, &a, 1);
    OK(rs_append(NULL, a, "notes", 1, "a under its key", 15));
    OK(rs_append(NULL, b, "notes", 1, "b under its key", 15));
    OK(copy_own(a, b));
    OK(copy_own(b, a));
    rs_store_free(a);
    rs_store_free(b);
    a = test_open_store(f->a, NULL);
    b = test_open_store(f->b, NULL);
    current_id(ida, a);
    current_id(idb, b);
    assert_string_equal(ida, idb);
    assert_int_equal(ring_size(a), 3);
    assert_int_equal(ring_size(b), 3);
    /* The rule, computed here: the rotation with the highest hlc, then host bytes. */
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(a),
                                        "SELECT lower(hex(new_id)) FROM key_rotations "
                                        "ORDER BY hlc DESC, host DESC LIMIT 1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), ida);
    sqlite3_finalize(st);
    verify_ok(a);
    verify_ok(b);
    rs_store_free(a);
    rs_store_free(b);
}

/* A store made before key rotation (no keyring tables) gets a key pair when opened. */
static void a_store_made_before_gets_a_key_pair(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    char fp[RS_KEY_FP_STRLEN + 1], fp2[RS_KEY_FP_STRLEN + 1];
    OK(rs_append(NULL, a, "notes", 1, "x", 1));
    assert_int_equal(sqlite3_exec(rs_store_db(a),
                                  "DROP TABLE key_device; DROP TABLE keyring; DROP TABLE "
                                  "key_devices; DROP TABLE key_rotations",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    OK(rs_device_key_fingerprint(fp, a));
    assert_int_equal(strlen(fp), RS_KEY_FP_STRLEN);
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    OK(rs_device_key_fingerprint(fp2, a));
    assert_string_equal(fp, fp2);
    verify_ok(a);
    rs_store_free(a);
}

/* A rotation must include this device, and a failure leaves the old key current. */
static void a_rotation_without_this_device_is_refused(void **state)
{
    test_fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    uint8_t pk[1][RS_DEVICE_PK_BYTES];
    rs_uuid host;
    char before[RS_KEY_ID_STRLEN + 1], after[RS_KEY_ID_STRLEN + 1];
    current_id(before, a);
    rs_store_host(&host, b);
    OK(rs__device_pk(pk[0], b));
    assert_int_equal(
        rs__key_rotate_local(a, (const uint8_t(*)[RS_DEVICE_PK_BYTES])pk, &host, 1, NULL, 0, NULL),
        RS_EINVAL);
    current_id(after, a);
    assert_string_equal(before, after);
    assert_int_equal(ring_size(a), 1);
    rs_store_free(a);
    rs_store_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(ring_lookup_by_id, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(rotation_reaches_the_recipients_only, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(keyring_survives_reopen_and_the_key_file_follows,
                                        test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(concurrent_rotations_agree_on_one_key, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(a_store_made_before_gets_a_key_pair, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(a_rotation_without_this_device_is_refused, test_setup,
                                        test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
