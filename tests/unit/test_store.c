/*
 * The local store: init and reopen, appends and inserts under the shard
 * rules (next idx, no holes, no second record at a taken idx), the payload
 * bound, transactions, verification against a byte changed behind the
 * store's back, key import, settings, and several handles on one store.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

#include <sodium.h>
#include <sys/stat.h>
#include <sys/wait.h>

typedef test_fixture fixture;

static void append_text(rs_record *out, rs_store *store, const char *tag, const char *text)
{
    OK(rs_append(out, store, tag, 1, text, strlen(text)));
}

static void shard_records(test_recs *out, rs_store *store, const rs_uuid *host, const char *tag)
{
    memset(out, 0, sizeof(*out));
    OK(rs_store_range(store, host, tag, 0, UINT64_MAX, test_collect, out));
}

/* The [start, end) of shard (host, tag) in the store's index; end 0 if absent. */
static uint64_t shard_end(rs_store *store, const rs_uuid *host, const char *tag)
{
    rs_index *index = NULL;
    uint64_t end;
    OK(rs_store_index(&index, store));
    end = test_index_end(index, host, tag);
    rs_index_free(index);
    return end;
}

static void expect_payload(rs_store *store, const rs_record *rec, const char *text)
{
    uint8_t *plain = NULL;
    size_t len = 0;
    OK(rs_record_open(&plain, &len, store, rec));
    assert_int_equal(len, strlen(text));
    assert_memory_equal(plain, text, len);
    rs_free(plain);
}

static void expect_verifies(rs_store *store)
{
    rs_verify_report report;
    int err = rs_store_verify(&report, store, NULL, NULL);
    if (err != 0)
        fail_msg("verify: %d %s", err, rs_error_last());
    assert_int_equal(report.problems, 0);
}

/*
 * A record of `host`'s shard sealed under `sealer`'s key, as another device
 * would make it (data in *buf, freed by the caller).
 */
static void craft(rs_record *out, uint8_t **buf, rs_store *sealer, const rs_uuid *host,
                  const char *tag, uint64_t idx, rs_hlc hlc, const char *text)
{
    size_t len = strlen(text);
    memset(out, 0, sizeof(*out));
    rs_uuid_v7(&out->id, RS_HLC_MS(hlc));
    out->host = *host;
    snprintf(out->tag, sizeof(out->tag), "%s", tag);
    out->idx = idx;
    out->hlc = hlc;
    out->version = 1;
    *buf = malloc(rs__envelope_len(len));
    assert_non_null(*buf);
    OK(rs__seal(*buf, sealer->key, out, (const uint8_t *)text, len));
    out->data = *buf;
    out->data_len = rs__envelope_len(len);
}

static void store_init_twice_refuses_and_keeps_the_first_key(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL), *again = NULL;
    char *first = NULL, *after = NULL, keypath[TEST_PATH_MAX + 16];
    rs_uuid host, host_after;
    struct stat st;

    OK(rs_store_key_export(&first, store));
    rs_store_host(&host, store);
    assert_false(rs_uuid_is_nil(&host));
    rs_store_free(store);

    rs_error_clear();
    assert_int_equal(rs_store_init(&again, f->a, NULL), RS_EEXISTS);
    assert_null(again);
    assert_non_null(strstr(rs_error_last(), f->a));
    assert_int_equal(rs_store_init_with_key(&again, f->a, first, NULL), RS_EEXISTS);
    assert_null(again);

    store = test_open_store(f->a, NULL);
    OK(rs_store_key_export(&after, store));
    assert_string_equal(after, first);
    rs_store_host(&host_after, store);
    assert_memory_equal(host_after.bytes, host.bytes, 16);
    rs_store_free(store);

    /* The key file is the user's alone, the directory too. */
    snprintf(keypath, sizeof(keypath), "%s/key", f->a);
    assert_int_equal(stat(keypath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(f->a, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    rs_free(first);
    rs_free(after);
}

static void store_open_of_a_directory_without_a_store_is_enotfound(void **state)
{
    fixture *f = *state;
    rs_store *store = NULL;
    rs_error_clear();
    assert_int_equal(rs_store_open(&store, f->a, NULL), RS_ENOTFOUND);
    assert_null(store);
    assert_non_null(strstr(rs_error_last(), f->a));
}

static void store_hosts_of_two_inits_differ(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid ha, hb;
    char ka[RS_KEY_ID_STRLEN + 1], kb[RS_KEY_ID_STRLEN + 1];
    rs_store_host(&ha, a);
    rs_store_host(&hb, b);
    assert_int_not_equal(rs_uuid_cmp(&ha, &hb), 0);
    rs_store_key_id(ka, a);
    rs_store_key_id(kb, b);
    assert_string_equal(ka, kb);
    assert_int_equal(strlen(ka), RS_KEY_ID_STRLEN);
    rs_store_free(a);
    rs_store_free(b);
}

static void store_reopens_with_its_data(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    const char *texts[] = {"one", "two", "", "four with more bytes"};
    rs_record recs[4], next;
    test_recs l;
    rs_uuid host;

    for (size_t i = 0; i < 4; i++)
        append_text(&recs[i], store, "notes", texts[i]);
    rs_store_host(&host, store);
    rs_store_free(store);

    store = test_open_store(f->a, NULL);
    assert_int_equal(shard_end(store, &host, "notes"), 4);
    shard_records(&l, store, &host, "notes");
    assert_int_equal(l.n, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_memory_equal(l.v[i].id.bytes, recs[i].id.bytes, 16);
        assert_int_equal(l.v[i].idx, i);
        assert_int_equal(l.v[i].hlc, recs[i].hlc);
        assert_int_equal(rs_record_payload_size(&l.v[i]), strlen(texts[i]));
        expect_payload(store, &l.v[i], texts[i]);
    }
    /* Appending after reopening continues the shard and the clock. */
    append_text(&next, store, "notes", "five");
    assert_int_equal(next.idx, 4);
    assert_true(next.hlc > recs[3].hlc);
    expect_verifies(store);
    test_recs_free(&l);
    rs_store_free(store);
}

static void append_takes_the_next_idx_of_its_shard(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record rec;
    rs_record *got = NULL;
    rs_uuid host;
    rs_hlc last = 0;
    uint64_t kv = 0, notes = 0;

    rs_store_host(&host, store);
    for (int i = 0; i < 30; i++) {
        const char *tag = i % 3 ? "things" : "notes";
        append_text(&rec, store, tag, "x");
        assert_int_equal(rec.idx, i % 3 ? kv++ : notes++);
        assert_memory_equal(rec.host.bytes, host.bytes, 16);
        assert_string_equal(rec.tag, tag);
        assert_int_equal(rec.version, 1);
        assert_null(rec.data);
        assert_true(rec.hlc > last);
        last = rec.hlc;
        /* The record id carries the clock's millisecond (UUIDv7). */
        assert_int_equal(rec.id.bytes[6] >> 4, 7);
    }
    assert_int_equal(shard_end(store, &host, "things"), 20);
    assert_int_equal(shard_end(store, &host, "notes"), 10);
    OK(rs_store_get(&got, store, &rec.id));
    assert_int_equal(got->idx, rec.idx);
    assert_string_equal(got->tag, rec.tag);
    expect_payload(store, got, "x");
    rs_record_free(got);
    assert_int_equal(rs_append(&rec, store, "Not Valid", 1, "x", 1), RS_EINVAL);
    assert_int_equal(rs_append(&rec, store, "", 1, "x", 1), RS_EINVAL);
    rs_store_free(store);
}

static void store_get_of_an_unknown_id_is_enotfound_naming_it(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record *got = NULL;
    rs_uuid id;
    char text[RS_UUID_STRLEN + 1];
    rs_uuid_v7(&id, rs_now_ms());
    rs_uuid_format(text, &id);
    rs_error_clear();
    assert_int_equal(rs_store_get(&got, store, &id), RS_ENOTFOUND);
    assert_null(got);
    assert_non_null(strstr(rs_error_last(), text));
    rs_store_free(store);
}

static int stop_at_third(const rs_record *rec, void *payload)
{
    int *seen = payload;
    (void)rec;
    return ++*seen == 3 ? 77 : 0;
}

static void range_reads_a_page_in_idx_order_and_stops_when_asked(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record rec;
    rs_uuid host;
    test_recs l;
    int seen = 0;

    for (int i = 0; i < 10; i++)
        append_text(&rec, store, "things", "v");
    rs_store_host(&host, store);
    memset(&l, 0, sizeof(l));
    OK(rs_store_range(store, &host, "things", 3, 7, test_collect, &l));
    assert_int_equal(l.n, 4);
    for (size_t i = 0; i < l.n; i++)
        assert_int_equal(l.v[i].idx, 3 + i);
    test_recs_free(&l);
    OK(rs_store_range(store, &host, "nope", 0, 10, test_collect, &l));
    assert_int_equal(l.n, 0);
    assert_int_equal(rs_store_range(store, &host, "things", 0, 10, stop_at_third, &seen), 77);
    assert_int_equal(seen, 3);
    rs_store_free(store);
}

static void insert_accepts_another_devices_records_in_order(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    test_recs l, got;
    rs_record rec;
    size_t inserted = 99;

    for (int i = 0; i < 5; i++) {
        char text[16];
        snprintf(text, sizeof(text), "b%d", i);
        append_text(&rec, b, "things", text);
    }
    rs_store_host(&hb, b);
    shard_records(&l, b, &hb, "things");
    OK(rs_store_insert(&inserted, a, l.v, l.n));
    assert_int_equal(inserted, 5);
    assert_int_equal(shard_end(a, &hb, "things"), 5);
    shard_records(&got, a, &hb, "things");
    assert_int_equal(got.n, 5);
    for (size_t i = 0; i < 5; i++) {
        char text[16];
        snprintf(text, sizeof(text), "b%zu", i);
        assert_memory_equal(got.v[i].id.bytes, l.v[i].id.bytes, 16);
        assert_int_equal(got.v[i].hlc, l.v[i].hlc);
        expect_payload(a, &got.v[i], text);
    }
    /* The receiver's clock moved past what it received. */
    append_text(&rec, a, "things", "after");
    assert_true(rec.hlc > l.v[4].hlc);
    expect_verifies(a);
    test_recs_free(&l);
    test_recs_free(&got);
    rs_store_free(a);
    rs_store_free(b);
}

static void insert_accepts_a_batch_that_interleaves_shards_and_devices(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL),
             *c = test_init_sibling(f->c, a, NULL);
    rs_uuid hb, hc;
    test_recs bt, bn, ct;
    rs_record rec, batch[8];
    size_t inserted = 0;

    for (int i = 0; i < 2; i++) {
        append_text(&rec, b, "things", "b things");
        append_text(&rec, b, "notes", "b notes");
        append_text(&rec, c, "things", "c things");
    }
    rs_store_host(&hb, b);
    rs_store_host(&hc, c);
    shard_records(&bt, b, &hb, "things");
    shard_records(&bn, b, &hb, "notes");
    shard_records(&ct, c, &hc, "things");
    batch[0] = bt.v[0];
    batch[1] = bn.v[0];
    batch[2] = ct.v[0];
    batch[3] = bt.v[1];
    batch[4] = ct.v[1];
    batch[5] = bn.v[1];
    batch[6] = bt.v[0]; /* already in: skipped */
    batch[7] = ct.v[1];
    OK(rs_store_insert(&inserted, a, batch, 8));
    assert_int_equal(inserted, 6);
    assert_int_equal(shard_end(a, &hb, "things"), 2);
    assert_int_equal(shard_end(a, &hb, "notes"), 2);
    assert_int_equal(shard_end(a, &hc, "things"), 2);
    expect_verifies(a);
    OK(rs_store_insert(&inserted, a, NULL, 0));
    assert_int_equal(inserted, 0);
    test_recs_free(&bt);
    test_recs_free(&bn);
    test_recs_free(&ct);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

static void append_of_an_empty_payload_opens_to_nothing(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record rec;
    rs_record *got = NULL;
    uint8_t *plain = NULL;
    size_t len = 99;

    OK(rs_append(&rec, store, "things", 1, NULL, 0));
    OK(rs_store_get(&got, store, &rec.id));
    assert_int_equal(rs_record_payload_size(got), 0);
    OK(rs_record_open(&plain, &len, store, got));
    assert_int_equal(len, 0);
    rs_free(plain);
    rs_record_free(got);
    OK(rs_append(NULL, store, "things", 1, "no out", 6));
    expect_verifies(store);
    rs_store_free(store);
}

static void insert_refuses_a_hole_and_keeps_nothing_of_the_batch(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    test_recs kv, notes;
    rs_record rec, batch[3];
    char shard[RS_UUID_STRLEN + 1];

    for (int i = 0; i < 6; i++)
        append_text(&rec, b, "things", "k");
    for (int i = 0; i < 2; i++)
        append_text(&rec, b, "notes", "n");
    rs_store_host(&hb, b);
    rs_uuid_format(shard, &hb);
    shard_records(&kv, b, &hb, "things");
    shard_records(&notes, b, &hb, "notes");
    OK(rs_store_insert(NULL, a, kv.v, 2));

    /* 2, 3, then 5: idx 4 is missing. */
    batch[0] = kv.v[2];
    batch[1] = kv.v[3];
    batch[2] = kv.v[5];
    rs_error_clear();
    assert_int_equal(rs_store_insert(NULL, a, batch, 3), RS_EHOLE);
    assert_non_null(strstr(rs_error_last(), shard));
    assert_non_null(strstr(rs_error_last(), "expected idx 4"));
    assert_int_equal(shard_end(a, &hb, "things"), 2);
    assert_int_equal(test_record_rows(a), 2);

    /* A good run of one shard, then a hole in another: the good run goes too. */
    batch[0] = notes.v[0];
    batch[1] = notes.v[1];
    batch[2] = kv.v[3];
    assert_int_equal(rs_store_insert(NULL, a, batch, 3), RS_EHOLE);
    assert_int_equal(shard_end(a, &hb, "notes"), 0);
    assert_int_equal(test_record_rows(a), 2);
    /* A first record that does not start the shard. */
    assert_int_equal(rs_store_insert(NULL, a, &notes.v[1], 1), RS_EHOLE);
    assert_int_equal(test_record_rows(a), 2);
    expect_verifies(a);

    /* Then in order, it goes in. */
    OK(rs_store_insert(NULL, a, kv.v + 2, 4));
    assert_int_equal(shard_end(a, &hb, "things"), 6);
    expect_verifies(a);
    test_recs_free(&kv);
    test_recs_free(&notes);
    rs_store_free(a);
    rs_store_free(b);
}

static void insert_skips_an_identical_record_at_a_taken_idx(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    test_recs l;
    rs_record rec;
    size_t inserted = 99;

    for (int i = 0; i < 5; i++)
        append_text(&rec, b, "things", "same");
    rs_store_host(&hb, b);
    shard_records(&l, b, &hb, "things");
    OK(rs_store_insert(&inserted, a, l.v, 3));
    assert_int_equal(inserted, 3);
    OK(rs_store_insert(&inserted, a, l.v, 5));
    assert_int_equal(inserted, 2);
    OK(rs_store_insert(&inserted, a, l.v, 5));
    assert_int_equal(inserted, 0);
    assert_int_equal(shard_end(a, &hb, "things"), 5);
    assert_int_equal(test_record_rows(a), 5);
    expect_verifies(a);
    test_recs_free(&l);
    rs_store_free(a);
    rs_store_free(b);
}

static void insert_refuses_a_different_record_at_a_taken_idx(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    test_recs l, got;
    rs_record rec, other, batch[2];
    uint8_t *buf = NULL, *resealed = NULL;
    char shard[RS_UUID_STRLEN + 1];
    size_t inserted = 99;

    for (int i = 0; i < 3; i++)
        append_text(&rec, b, "things", "original");
    rs_store_host(&hb, b);
    rs_uuid_format(shard, &hb);
    shard_records(&l, b, &hb, "things");
    OK(rs_store_insert(NULL, a, l.v, 3));

    /* A new record claiming idx 1 (a device whose store was lost, say). */
    craft(&other, &buf, b, &hb, "things", 1, l.v[1].hlc + 5, "impostor");
    rs_error_clear();
    assert_int_equal(rs_store_insert(&inserted, a, &other, 1), RS_ECONFLICT);
    assert_non_null(strstr(rs_error_last(), shard));
    assert_non_null(strstr(rs_error_last(), "idx 1"));

    /* The same header sealed again: same id, different bytes. */
    resealed = malloc(l.v[2].data_len);
    assert_non_null(resealed);
    other = l.v[2];
    OK(rs__seal(resealed, b->key, &other, (const uint8_t *)"original", 8));
    other.data = resealed;
    assert_int_equal(rs_store_insert(NULL, a, &other, 1), RS_ECONFLICT);

    /* In a batch whose other records are new, nothing is kept. */
    append_text(&rec, b, "things", "fourth");
    test_recs_free(&l);
    shard_records(&l, b, &hb, "things");
    batch[0] = l.v[3];
    batch[1] = other;
    assert_int_equal(rs_store_insert(NULL, a, batch, 2), RS_ECONFLICT);
    assert_int_equal(shard_end(a, &hb, "things"), 3);

    shard_records(&got, a, &hb, "things");
    assert_int_equal(got.n, 3);
    assert_memory_equal(got.v[1].id.bytes, l.v[1].id.bytes, 16);
    expect_payload(a, &got.v[1], "original");
    expect_verifies(a);
    free(buf);
    free(resealed);
    test_recs_free(&l);
    test_recs_free(&got);
    rs_store_free(a);
    rs_store_free(b);
}

static void insert_refuses_a_record_under_another_key_naming_both_keys(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *c = test_init_store(f->c, NULL);
    rs_uuid hc;
    test_recs l;
    rs_record rec;
    char ka[RS_KEY_ID_STRLEN + 1], kc[RS_KEY_ID_STRLEN + 1], id[RS_UUID_STRLEN + 1];

    append_text(&rec, c, "things", "secret");
    rs_store_host(&hc, c);
    shard_records(&l, c, &hc, "things");
    rs_store_key_id(ka, a);
    rs_store_key_id(kc, c);
    rs_uuid_format(id, &l.v[0].id);
    rs_error_clear();
    assert_int_equal(rs_store_insert(NULL, a, l.v, 1), RS_EKEY);
    assert_non_null(strstr(rs_error_last(), ka));
    assert_non_null(strstr(rs_error_last(), kc));
    assert_non_null(strstr(rs_error_last(), id));
    assert_int_equal(test_record_rows(a), 0);
    test_recs_free(&l);
    rs_store_free(a);
    rs_store_free(c);
}

static void insert_refuses_a_tampered_record_naming_it(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    test_recs l;
    rs_record rec;
    char id[RS_UUID_STRLEN + 1];

    append_text(&rec, b, "things", "payload");
    append_text(&rec, b, "things", "payload two");
    rs_store_host(&hb, b);
    shard_records(&l, b, &hb, "things");
    ((uint8_t *)l.v[1].data)[l.v[1].data_len - 3] ^= 0x20;
    rs_uuid_format(id, &l.v[1].id);
    rs_error_clear();
    assert_int_equal(rs_store_insert(NULL, a, l.v, 2), RS_ECRYPTO);
    assert_non_null(strstr(rs_error_last(), id));
    assert_int_equal(test_record_rows(a), 0);
    /* A moved record (header changed by the server) is caught the same way. */
    ((uint8_t *)l.v[1].data)[l.v[1].data_len - 3] ^= 0x20;
    l.v[1].hlc++;
    assert_int_equal(rs_store_insert(NULL, a, l.v, 2), RS_ECRYPTO);
    assert_int_equal(test_record_rows(a), 0);
    test_recs_free(&l);
    rs_store_free(a);
    rs_store_free(b);
}

static void insert_refuses_a_clock_beyond_the_drift_bound_naming_the_device(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_uuid hb;
    rs_record far, near, rec;
    uint8_t *far_buf = NULL, *near_buf = NULL;
    char host[RS_UUID_STRLEN + 1];
    uint64_t now = rs_now_ms();
    rs_hlc before;

    rs_store_host(&hb, b);
    rs_uuid_format(host, &hb);
    craft(&far, &far_buf, b, &hb, "things", 0, RS_HLC_MAKE(now + 10 * 60 * 1000, 0), "fast clock");
    before = a->clock.last;
    rs_error_clear();
    assert_int_equal(rs_store_insert(NULL, a, &far, 1), RS_ECLOCK);
    assert_non_null(strstr(rs_error_last(), host));
    assert_int_equal(a->clock.last, before);
    assert_int_equal(test_record_rows(a), 0);

    /* A minute ahead is within the bound, and later writes order after it. */
    craft(&near, &near_buf, b, &hb, "things", 0, RS_HLC_MAKE(now + 60 * 1000, 0), "a bit fast");
    OK(rs_store_insert(NULL, a, &near, 1));
    append_text(&rec, a, "things", "mine");
    assert_true(rec.hlc > near.hlc);
    /* Also after reopening: the clock was saved with the insert. */
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    append_text(&rec, a, "things", "mine again");
    assert_true(rec.hlc > near.hlc);
    free(far_buf);
    free(near_buf);
    rs_store_free(a);
    rs_store_free(b);
}

static void append_refuses_a_payload_beyond_the_bound_at_write(void **state)
{
    fixture *f = *state;
    rs_store_opts small = {.max_payload = 1000};
    rs_store *a = test_init_store(f->a, &small), *b = NULL;
    uint8_t *big = calloc(1, RS_DEFAULT_MAX_PAYLOAD + 1);
    rs_record rec;
    rs_uuid hb;
    test_recs l;

    assert_non_null(big);
    rs_error_clear();
    assert_int_equal(rs_append(&rec, a, "things", 1, big, 1001), RS_ETOOBIG);
    assert_non_null(strstr(rs_error_last(), "1001"));
    assert_int_equal(test_record_rows(a), 0);
    OK(rs_append(&rec, a, "things", 1, big, 1000));
    assert_int_equal(rec.idx, 0);

    /* The default bound is 1 MiB. */
    b = test_init_sibling(f->b, a, NULL);
    assert_int_equal(rs_append(&rec, b, "things", 1, big, RS_DEFAULT_MAX_PAYLOAD + 1), RS_ETOOBIG);
    OK(rs_append(&rec, b, "things", 1, big, 2000));
    assert_int_equal(rec.idx, 0);

    /* A received record beyond this store's bound is refused too. */
    rs_store_host(&hb, b);
    shard_records(&l, b, &hb, "things");
    rs_error_clear();
    assert_int_equal(rs_store_insert(NULL, a, l.v, 1), RS_ETOOBIG);
    assert_int_equal(test_record_rows(a), 1);
    test_recs_free(&l);
    free(big);
    rs_store_free(a);
    rs_store_free(b);
}

static void explicit_transaction_commits_many_appends_at_once(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL), *other = NULL;
    rs_record rec;
    rs_uuid host;
    test_recs l;

    rs_store_host(&host, store);
    OK(rs_store_begin(store));
    assert_int_equal(rs_store_begin(store), RS_EINVAL);
    for (int i = 0; i < 3000; i++) {
        char text[32];
        snprintf(text, sizeof(text), "line %d", i);
        append_text(&rec, store, "bulk", text);
        assert_int_equal(rec.idx, (uint64_t)i);
    }
    /* Another handle sees nothing until the commit. */
    other = test_open_store(f->a, NULL);
    assert_int_equal(shard_end(other, &host, "bulk"), 0);
    OK(rs_store_commit(store));
    assert_int_equal(rs_store_commit(store), RS_EINVAL);
    assert_int_equal(shard_end(other, &host, "bulk"), 3000);
    shard_records(&l, other, &host, "bulk");
    assert_int_equal(l.n, 3000);
    expect_payload(other, &l.v[2999], "line 2999");
    for (size_t i = 1; i < l.n; i++)
        assert_true(l.v[i].hlc > l.v[i - 1].hlc);
    expect_verifies(other);
    test_recs_free(&l);
    rs_store_free(other);
    rs_store_free(store);
}

static void explicit_transaction_rolled_back_keeps_nothing(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record rec, last;
    rs_uuid host;

    rs_store_host(&host, store);
    append_text(&last, store, "bulk", "kept");
    OK(rs_store_begin(store));
    for (int i = 0; i < 100; i++)
        append_text(&rec, store, "bulk", "dropped");
    rs_store_rollback(store);
    rs_store_rollback(store); /* no transaction: nothing happens */
    assert_int_equal(shard_end(store, &host, "bulk"), 1);
    assert_int_equal(test_record_rows(store), 1);
    append_text(&rec, store, "bulk", "next");
    assert_int_equal(rec.idx, 1);
    assert_true(rec.hlc > last.hlc);
    expect_verifies(store);
    /* Freeing a store with a transaction open rolls it back. */
    OK(rs_store_begin(store));
    append_text(&rec, store, "bulk", "lost");
    rs_store_free(store);
    store = test_open_store(f->a, NULL);
    assert_int_equal(shard_end(store, &host, "bulk"), 2);
    rs_store_free(store);
}

static int temp_store_setting(rs_store *store)
{
    sqlite3_stmt *st = NULL;
    int v;
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(store), "PRAGMA temp_store", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

/*
 * Bulk transactions keep SQLite's statement journal in memory (2 = MEMORY);
 * outside them temp storage is the default again (0), so large sorts spill.
 */
static void explicit_transaction_journals_in_memory_only_while_open(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record rec;

    assert_int_equal(temp_store_setting(store), 0);
    OK(rs_store_begin(store));
    assert_int_equal(temp_store_setting(store), 2);
    append_text(&rec, store, "bulk", "x");
    OK(rs_store_commit(store));
    assert_int_equal(temp_store_setting(store), 0);
    OK(rs_store_begin(store));
    rs_store_rollback(store);
    assert_int_equal(temp_store_setting(store), 0);
    append_text(&rec, store, "bulk", "y");
    assert_int_equal(temp_store_setting(store), 0);
    rs_store_free(store);
}

/* A tag whose apply fails on the payload "bad", after writing its state. */
static int picky_setup(sqlite3 *db, void *payload)
{
    (void)payload;
    return sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS picky(v TEXT)", NULL, NULL, NULL) ==
                   SQLITE_OK
               ? 0
               : RS_EIO;
}

static int picky_apply(sqlite3 *db, const rs_record *record, const uint8_t *plain, size_t len,
                       void *payload)
{
    sqlite3_stmt *st = NULL;
    int rc;
    (void)record;
    if (payload)
        (*(int *)payload)++;
    if (sqlite3_prepare_v2(db, "INSERT INTO picky(v) VALUES (?1)", -1, &st, NULL) != SQLITE_OK)
        return RS_EIO;
    sqlite3_bind_text(st, 1, (const char *)plain, (int)len, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return RS_EIO;
    if (len == 3 && memcmp(plain, "bad", 3) == 0)
        return rs__error(RS_EINVAL, "picky refuses 'bad'");
    return 0;
}

static int picky_reset(sqlite3 *db, void *payload)
{
    (void)payload;
    return sqlite3_exec(db, "DELETE FROM picky", NULL, NULL, NULL) == SQLITE_OK ? 0 : RS_EIO;
}

static const char *picky_rows(rs_store *store, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    out[0] = '\0';
    assert_int_equal(
        sqlite3_prepare_v2(rs_store_db(store), "SELECT v FROM picky ORDER BY rowid", -1, &st, NULL),
        SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        n += (size_t)snprintf(out + n, size - n, "%s,", sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
}

static void failing_append_inside_a_transaction_leaves_prior_appends_intact(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_tag_def def = {
        .tag = "picky",
        .version = 1,
        .setup = picky_setup,
        .apply = picky_apply,
        .reset = picky_reset,
    };
    rs_record rec;
    rs_uuid host;
    test_recs l;
    char rows[256];

    OK(rs_store_register(store, &def));
    rs_store_host(&host, store);
    OK(rs_store_begin(store));
    append_text(&rec, store, "picky", "a");
    append_text(&rec, store, "picky", "b");
    rs_error_clear();
    assert_int_equal(rs_append(&rec, store, "picky", 1, "bad", 3), RS_EINVAL);
    assert_non_null(strstr(rs_error_last(), "picky refuses"));
    append_text(&rec, store, "picky", "c");
    assert_int_equal(rec.idx, 2);
    OK(rs_store_commit(store));

    shard_records(&l, store, &host, "picky");
    assert_int_equal(l.n, 3);
    expect_payload(store, &l.v[0], "a");
    expect_payload(store, &l.v[1], "b");
    expect_payload(store, &l.v[2], "c");
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "a,b,c,");
    expect_verifies(store);
    /* Outside a transaction a failing append leaves nothing either. */
    assert_int_equal(rs_append(&rec, store, "picky", 1, "bad", 3), RS_EINVAL);
    assert_int_equal(shard_end(store, &host, "picky"), 3);
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "a,b,c,");
    test_recs_free(&l);
    rs_store_free(store);
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

static void register_applies_records_and_keeps_newer_versions_for_rebuild(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_tag_def def = {
        .tag = "picky",
        .version = 1,
        .setup = picky_setup,
        .apply = picky_apply,
        .reset = picky_reset,
    };
    rs_record rec;
    char rows[256], id[RS_UUID_STRLEN + 1];
    warnings w = {0, ""};

    /* Records that arrived before the tag was registered are applied at registration. */
    append_text(&rec, store, "picky", "early");
    OK(rs_store_register(store, &def));
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "early,");
    assert_int_equal(rs_store_register(store, &def), RS_EEXISTS);
    rs_store_on_warning(store, on_warning, &w);
    append_text(&rec, store, "picky", "old");
    assert_int_equal(w.count, 0);
    OK(rs_append(&rec, store, "picky", 2, "new", 3));
    rs_uuid_format(id, &rec.id);
    assert_int_equal(w.count, 1);
    assert_non_null(strstr(w.last, id));
    assert_non_null(strstr(w.last, "version 2"));
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "early,old,");
    rs_store_free(store);

    /* The same build again: nothing is rebuilt, nothing applied twice. */
    store = test_open_store(f->a, NULL);
    OK(rs_store_register(store, &def));
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "early,old,");
    rs_store_free(store);

    /* A build that understands version 2 applies it when it registers. */
    store = test_open_store(f->a, NULL);
    def.version = 2;
    OK(rs_store_register(store, &def));
    assert_string_equal(picky_rows(store, rows, sizeof(rows)), "early,old,new,");
    rs_store_free(store);
}

static void problem_counter(int code, const char *message, void *payload)
{
    int *n = payload;
    (void)code;
    (void)message;
    (*n)++;
}

/* Opens the store's database behind its back, as `sqlite3` would. */
static sqlite3 *raw_db(const char *dir)
{
    char path[TEST_PATH_MAX + 32];
    sqlite3 *db = NULL;
    snprintf(path, sizeof(path), "%s/store.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
}

/* Flips one bit of byte `at` of the stored envelope of record `id`. */
static void flip_stored_byte(const char *dir, const rs_uuid *id, size_t at)
{
    sqlite3 *db = raw_db(dir);
    sqlite3_stmt *st = NULL;
    uint8_t *data;
    int len;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT data FROM records WHERE id = ?1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    len = sqlite3_column_bytes(st, 0);
    assert_true((size_t)len > at);
    data = malloc((size_t)len);
    assert_non_null(data);
    memcpy(data, sqlite3_column_blob(st, 0), (size_t)len);
    sqlite3_finalize(st);
    data[at] ^= 0x04;
    assert_int_equal(
        sqlite3_prepare_v2(db, "UPDATE records SET data = ?1 WHERE id = ?2", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_blob(st, 1, data, len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, id->bytes, 16, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(data);
}

static void verify_finds_a_flipped_byte_naming_the_record(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record recs[10];
    rs_verify_report report;
    char id[RS_UUID_STRLEN + 1];
    int problems = 0;

    for (int i = 0; i < 10; i++)
        append_text(&recs[i], store, i < 5 ? "things" : "notes", "some payload to change");
    OK(rs_store_verify(&report, store, NULL, NULL));
    assert_int_equal(report.records, 10);
    assert_int_equal(report.shards, 2);
    assert_int_equal(report.problems, 0);

    flip_stored_byte(f->a, &recs[6].id, RS_ENVELOPE_OVERHEAD - 16 + 3); /* ciphertext */
    rs_uuid_format(id, &recs[6].id);
    rs_error_clear();
    assert_int_equal(rs_store_verify(&report, store, problem_counter, &problems), RS_ECRYPTO);
    assert_non_null(strstr(rs_error_last(), id));
    assert_int_equal(report.records, 10);
    assert_int_equal(report.problems, 1);
    assert_int_equal(problems, 1);

    /* A byte of the wrapped key of another record: two problems now. */
    flip_stored_byte(f->a, &recs[1].id, 40);
    problems = 0;
    assert_int_equal(rs_store_verify(&report, store, problem_counter, &problems), RS_ECRYPTO);
    assert_int_equal(report.problems, 2);
    assert_int_equal(problems, 2);
    rs_store_free(store);
}

static void verify_finds_a_missing_record_and_a_moved_one(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    rs_record recs[6];
    rs_verify_report report;
    rs_uuid host;
    sqlite3 *db;
    char shard[RS_UUID_STRLEN + 1], id[RS_UUID_STRLEN + 1];

    for (int i = 0; i < 6; i++)
        append_text(&recs[i], store, "things", "v");
    rs_store_host(&host, store);
    rs_uuid_format(shard, &host);
    db = raw_db(f->a);
    raw_exec(db, "DELETE FROM records WHERE idx = 2");
    sqlite3_close(db);
    rs_error_clear();
    assert_int_equal(rs_store_verify(NULL, store, NULL, NULL), RS_EHOLE);
    assert_non_null(strstr(rs_error_last(), shard));

    rs_store_free(store);
    test_rmtree(f->a);
    store = test_init_store(f->a, NULL);
    for (int i = 0; i < 6; i++)
        append_text(&recs[i], store, "things", "v");
    /* Two records swap places: each opens only where it was sealed. */
    db = raw_db(f->a);
    raw_exec(db, "UPDATE records SET idx = 1000 WHERE idx = 1");
    raw_exec(db, "UPDATE records SET idx = 1 WHERE idx = 4");
    raw_exec(db, "UPDATE records SET idx = 4 WHERE idx = 1000");
    sqlite3_close(db);
    /* The first problem in idx order is recs[4], now at idx 1. */
    rs_uuid_format(id, &recs[4].id);
    assert_int_equal(rs_store_verify(&report, store, NULL, NULL), RS_ECRYPTO);
    assert_non_null(strstr(rs_error_last(), id));
    assert_non_null(strstr(rs_error_last(), "idx 1"));
    assert_int_equal(report.problems, 2);
    rs_store_free(store);
}

static void key_import_is_refused_while_records_exist_under_another_key(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *c = test_init_store(f->c, NULL);
    char *text_c = NULL, ka[RS_KEY_ID_STRLEN + 1], kc[RS_KEY_ID_STRLEN + 1],
         after[RS_KEY_ID_STRLEN + 1];
    rs_record rec;
    rs_record *got = NULL;

    append_text(&rec, a, "things", "under a's key");
    OK(rs_store_key_export(&text_c, c));
    rs_store_key_id(ka, a);
    rs_store_key_id(kc, c);
    rs_error_clear();
    assert_int_equal(rs_store_key_import(a, text_c), RS_EKEY);
    assert_non_null(strstr(rs_error_last(), ka));
    assert_non_null(strstr(rs_error_last(), kc));
    rs_store_key_id(after, a);
    assert_string_equal(after, ka);
    rs_store_free(a);
    /* The key file was not replaced either. */
    a = test_open_store(f->a, NULL);
    rs_store_key_id(after, a);
    assert_string_equal(after, ka);
    OK(rs_store_get(&got, a, &rec.id));
    expect_payload(a, got, "under a's key");
    rs_record_free(got);
    assert_int_equal(rs_store_key_import(a, "rsk1:not a key"), RS_EINVAL);
    rs_store_free(a);
    rs_store_free(c);
    rs_free(text_c);
}

static void key_import_into_an_empty_store_replaces_the_key(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *c = test_init_store(f->c, NULL);
    char *text_c = NULL, *text_a = NULL, *back = NULL, kc[RS_KEY_ID_STRLEN + 1],
         after[RS_KEY_ID_STRLEN + 1], padded[256];
    rs_record rec;

    OK(rs_store_key_export(&text_a, a));
    OK(rs_store_key_export(&text_c, c));
    rs_store_key_id(kc, c);
    OK(rs_store_key_import(a, text_a)); /* the same key: nothing to do */
    /* Pasted with whitespace around it. */
    snprintf(padded, sizeof(padded), "\n  %s  \n", text_c);
    OK(rs_store_key_import(a, padded));
    rs_store_key_id(after, a);
    assert_string_equal(after, kc);
    append_text(&rec, a, "things", "under c's key");
    rs_store_free(a);
    a = test_open_store(f->a, NULL);
    rs_store_key_id(after, a);
    assert_string_equal(after, kc);
    OK(rs_store_key_export(&back, a));
    assert_string_equal(back, text_c);
    expect_verifies(a);
    /* The key file holds the key's canonical text, not the padding. */
    {
        char path[TEST_PATH_MAX + 16], buf[256];
        FILE *fp;
        size_t n;
        snprintf(path, sizeof(path), "%s/key", f->a);
        fp = fopen(path, "r");
        assert_non_null(fp);
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        assert_int_equal(strncmp(buf, text_c, strlen(text_c)), 0);
        assert_string_equal(buf + strlen(text_c), "\n");
    }
    rs_store_free(a);
    rs_store_free(c);
    rs_free(text_a);
    rs_free(text_c);
    rs_free(back);
}

static void meta_settings_are_kept_and_the_stores_own_are_protected(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    char *value = NULL;

    rs_error_clear();
    assert_int_equal(rs_store_meta_get(&value, store, "server"), RS_ENOTFOUND);
    assert_non_null(strstr(rs_error_last(), "server"));
    OK(rs_store_meta_set(store, "server", "http://127.0.0.1:1"));
    OK(rs_store_meta_set(store, "server", "http://127.0.0.1:2"));
    OK(rs_store_meta_set(store, "empty", ""));
    rs_store_free(store);
    store = test_open_store(f->a, NULL);
    OK(rs_store_meta_get(&value, store, "server"));
    assert_string_equal(value, "http://127.0.0.1:2");
    rs_free(value);
    OK(rs_store_meta_get(&value, store, "empty"));
    assert_string_equal(value, "");
    rs_free(value);
    OK(rs_store_meta_del(store, "server"));
    assert_int_equal(rs_store_meta_get(&value, store, "server"), RS_ENOTFOUND);
    OK(rs_store_meta_del(store, "server"));
    assert_int_equal(rs_store_meta_set(store, "host", "x"), RS_EINVAL);
    assert_int_equal(rs_store_meta_set(store, "hlc", "x"), RS_EINVAL);
    assert_int_equal(rs_store_meta_del(store, "host"), RS_EINVAL);
    assert_int_equal(rs_store_meta_set(store, "", "x"), RS_EINVAL);
    assert_int_equal(rs_store_meta_set(store, "server", NULL), RS_EINVAL);
    OK(rs_store_meta_get(&value, store, "host"));
    assert_int_equal(strlen(value), RS_UUID_STRLEN);
    rs_free(value);
    rs_store_free(store);
}

static void store_of_a_newer_schema_is_refused(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    sqlite3 *db;
    rs_store_free(store);
    db = raw_db(f->a);
    raw_exec(db, "PRAGMA user_version = 999");
    sqlite3_close(db);
    rs_error_clear();
    assert_int_equal(rs_store_open(&store, f->a, NULL), RS_EVERSION);
    assert_non_null(strstr(rs_error_last(), f->a));
}

static void records_are_clustered_by_shard_and_the_journal_is_wal(void **state)
{
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(store), "PRAGMA journal_mode", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(rs_store_db(store),
                                        "SELECT sql FROM sqlite_master WHERE name = 'records'", -1,
                                        &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_non_null(
        strstr((const char *)sqlite3_column_text(st, 0), "PRIMARY KEY(host, tag, idx)"));
    assert_non_null(strstr((const char *)sqlite3_column_text(st, 0), "WITHOUT ROWID"));
    sqlite3_finalize(st);
    rs_store_free(store);
}

static void expect_contiguous_and_monotonic(rs_store *store, const char *tag, size_t count)
{
    rs_uuid host;
    test_recs l;
    rs_store_host(&host, store);
    shard_records(&l, store, &host, tag);
    assert_int_equal(l.n, count);
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.v[i].idx, i);
        if (i > 0 && l.v[i].hlc <= l.v[i - 1].hlc)
            fail_msg("idx %zu has clock %llx, not after %llx", i, (unsigned long long)l.v[i].hlc,
                     (unsigned long long)l.v[i - 1].hlc);
    }
    assert_int_equal(shard_end(store, &host, tag), count);
    test_recs_free(&l);
}

static uint64_t slow_clock(void *ctx)
{
    (void)ctx;
    return rs_now_ms() - 3600 * 1000;
}

static void two_handles_appending_alternately_keep_idx_contiguous_and_clock_monotonic(void **state)
{
    fixture *f = *state;
    rs_store *h1 = test_init_store(f->a, NULL), *h2 = test_open_store(f->a, NULL);
    rs_record rec;
    rs_hlc last = 0;

    /* h2's wall clock runs an hour slow: the clock saved by h1 must still win. */
    h2->clock.now_ms = slow_clock;
    for (int i = 0; i < 400; i++) {
        rs_store *h = (i % 3 == 0) ? h2 : h1;
        append_text(&rec, h, "shared", "x");
        assert_int_equal(rec.idx, (uint64_t)i);
        assert_true(rec.hlc > last);
        last = rec.hlc;
    }
    /* A bulk transaction on one handle, then single appends on the other. */
    OK(rs_store_begin(h1));
    for (int i = 0; i < 50; i++)
        append_text(&rec, h1, "shared", "bulk");
    OK(rs_store_commit(h1));
    append_text(&rec, h2, "shared", "after bulk");
    assert_int_equal(rec.idx, 450);
    expect_contiguous_and_monotonic(h2, "shared", 451);
    expect_verifies(h1);
    rs_store_free(h1);
    rs_store_free(h2);
}

static void processes_appending_concurrently_keep_idx_contiguous_and_clock_monotonic(void **state)
{
    enum { PROCS = 3, EACH = 150 };
    fixture *f = *state;
    rs_store *store = test_init_store(f->a, NULL);
    pid_t pids[PROCS];

    rs_store_free(store);
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            rs_store *mine = NULL;
            rs_record rec;
            int code = 0;
            if (rs_store_open(&mine, f->a, NULL) < 0)
                _exit(10);
            for (int i = 0; i < EACH && code == 0; i++)
                if (rs_append(&rec, mine, "shared", 1, "from a process", 14) < 0)
                    code = 11;
            rs_store_free(mine);
            _exit(code);
        }
    }
    for (int p = 0; p < PROCS; p++) {
        int status = 0;
        assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    store = test_open_store(f->a, NULL);
    expect_contiguous_and_monotonic(store, "shared", PROCS * EACH);
    expect_verifies(store);
    rs_store_free(store);
}

#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(store_init_twice_refuses_and_keeps_the_first_key),
        T(store_open_of_a_directory_without_a_store_is_enotfound),
        T(store_hosts_of_two_inits_differ),
        T(store_reopens_with_its_data),
        T(append_takes_the_next_idx_of_its_shard),
        T(store_get_of_an_unknown_id_is_enotfound_naming_it),
        T(range_reads_a_page_in_idx_order_and_stops_when_asked),
        T(insert_accepts_another_devices_records_in_order),
        T(insert_accepts_a_batch_that_interleaves_shards_and_devices),
        T(append_of_an_empty_payload_opens_to_nothing),
        T(insert_refuses_a_hole_and_keeps_nothing_of_the_batch),
        T(insert_skips_an_identical_record_at_a_taken_idx),
        T(insert_refuses_a_different_record_at_a_taken_idx),
        T(insert_refuses_a_record_under_another_key_naming_both_keys),
        T(insert_refuses_a_tampered_record_naming_it),
        T(insert_refuses_a_clock_beyond_the_drift_bound_naming_the_device),
        T(append_refuses_a_payload_beyond_the_bound_at_write),
        T(explicit_transaction_commits_many_appends_at_once),
        T(explicit_transaction_rolled_back_keeps_nothing),
        T(explicit_transaction_journals_in_memory_only_while_open),
        T(failing_append_inside_a_transaction_leaves_prior_appends_intact),
        T(register_applies_records_and_keeps_newer_versions_for_rebuild),
        T(verify_finds_a_flipped_byte_naming_the_record),
        T(verify_finds_a_missing_record_and_a_moved_one),
        T(key_import_is_refused_while_records_exist_under_another_key),
        T(key_import_into_an_empty_store_replaces_the_key),
        T(meta_settings_are_kept_and_the_stores_own_are_protected),
        T(store_of_a_newer_schema_is_refused),
        T(records_are_clustered_by_shard_and_the_journal_is_wal),
        T(two_handles_appending_alternately_keep_idx_contiguous_and_clock_monotonic),
        T(processes_appending_concurrently_keep_idx_contiguous_and_clock_monotonic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
