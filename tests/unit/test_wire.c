/*
 * The JSON wire codec: round trips of every shape, and every malformed
 * field refused with a message naming it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "wire.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

static void fill_record(rs_record *rec, uint8_t *data, size_t len, uint64_t idx, const char *tag)
{
    memset(rec, 0, sizeof(*rec));
    rs_uuid_v7(&rec->id, 1700000000000ull + idx);
    memset(rec->host.bytes, 0x3c, sizeof(rec->host.bytes));
    snprintf(rec->tag, sizeof(rec->tag), "%s", tag);
    rec->idx = idx;
    rec->hlc = RS_HLC_MAKE(1700000000000ull + idx, idx & 0xffff);
    rec->version = (uint32_t)(idx * 7 + 1);
    memcpy(data, RS_ENVELOPE_MAGIC, 4);
    randombytes_buf(data + 4, len - 4);
    rec->data = data;
    rec->data_len = len;
}

static void assert_same_record(const rs_record *a, const rs_record *b)
{
    assert_memory_equal(a->id.bytes, b->id.bytes, 16);
    assert_memory_equal(a->host.bytes, b->host.bytes, 16);
    assert_string_equal(a->tag, b->tag);
    assert_int_equal(a->idx, b->idx);
    assert_int_equal(a->hlc, b->hlc);
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->data_len, b->data_len);
    assert_memory_equal(a->data, b->data, a->data_len);
}

static void wire_records_round_trip_as_upload_and_page(void **state)
{
    static uint8_t d0[RS_ENVELOPE_OVERHEAD], d1[RS_ENVELOPE_OVERHEAD + 1],
        d2[RS_ENVELOPE_OVERHEAD + 70000];
    rs_record recs[3];
    fill_record(&recs[0], d0, sizeof(d0), 0, "kv");
    fill_record(&recs[1], d1, sizeof(d1), 1, "history");
    fill_record(&recs[2], d2, sizeof(d2), UINT64_C(9007199254740993), "a.b_c-9");
    recs[2].version = UINT32_MAX;

    rs_buf b = {0};
    rs_wire_batch batch = {0};
    assert_int_equal(rs_wire_records_begin(&b), 0);
    for (int i = 0; i < 3; i++) {
        size_t before = b.len;
        assert_int_equal(rs_wire_records_add(&b, &recs[i]), 0);
        assert_int_equal(b.len - before - (i > 0), rs_wire_record_size(&recs[i]));
    }
    assert_int_equal(rs_wire_upload_end(&b), 0);
    assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_UPLOAD, 0), 0);
    assert_int_equal(batch.count, 3);
    for (int i = 0; i < 3; i++)
        assert_same_record(&batch.records[i], &recs[i]);

    /* The same records as a page, with and without a next. */
    rs_buf_clear(&b);
    rs_wire_records_begin(&b);
    rs_wire_records_add(&b, &recs[1]);
    assert_int_equal(rs_wire_page_end(&b, 1, 44), 0);
    assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_PAGE, 0), 0);
    assert_int_equal(batch.count, 1);
    assert_true(batch.has_next);
    assert_int_equal(batch.next, 44);
    assert_same_record(&batch.records[0], &recs[1]);

    rs_buf_clear(&b);
    rs_wire_records_begin(&b);
    assert_int_equal(rs_wire_page_end(&b, 0, 0), 0);
    assert_string_equal(b.ptr, "{\"records\":[],\"next\":null}");
    assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_PAGE, 0), 0);
    assert_int_equal(batch.count, 0);
    assert_false(batch.has_next);

    rs_wire_batch_free(&batch);
    rs_buf_free(&b);
}

static void wire_encoding_refuses_an_invalid_tag(void **state)
{
    uint8_t d[RS_ENVELOPE_OVERHEAD];
    rs_record rec;
    rs_buf b = {0};
    fill_record(&rec, d, sizeof(d), 0, "kv");
    strcpy(rec.tag, "Bad\"Tag");
    rs_wire_records_begin(&b);
    assert_int_equal(rs_wire_records_add(&b, &rec), RS_EINVAL);
    rs_buf_free(&b);
}

/* A valid record object as jansson, for tests to break one field of. */
static json_t *good_record_json(uint64_t idx)
{
    uint8_t env[RS_ENVELOPE_OVERHEAD + 10];
    char b64[sodium_base64_ENCODED_LEN(sizeof(env), sodium_base64_VARIANT_ORIGINAL)];
    memcpy(env, RS_ENVELOPE_MAGIC, 4);
    randombytes_buf(env + 4, sizeof(env) - 4);
    sodium_bin2base64(b64, sizeof(b64), env, sizeof(env), sodium_base64_VARIANT_ORIGINAL);
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s}", "id",
                     "0190a3b4-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "host",
                     "3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c", "tag", "kv", "idx", (json_int_t)idx,
                     "hlc", "0000018bcfe56800", "version", 1, "data", b64);
}

/* Decodes {"records": [good, bad]} where bad has `field` set to `value` (NULL: removed). */
static int decode_with_bad_field(const char *field, json_t *value)
{
    json_t *bad = good_record_json(1);
    if (value)
        json_object_set_new(bad, field, value);
    else
        json_object_del(bad, field);
    json_t *body = json_pack("{s:[o,o]}", "records", good_record_json(0), bad);
    char *text = json_dumps(body, 0);
    rs_wire_batch batch = {0};
    int err = rs_wire_decode_records(&batch, text, strlen(text), RS_WIRE_UPLOAD, 0);
    assert_int_equal(batch.count, 0);
    rs_wire_batch_free(&batch);
    free(text);
    json_decref(body);
    return err;
}

static void wire_every_malformed_record_field_is_refused_by_name(void **state)
{
    struct {
        const char *field;
        json_t *value;
        const char *message;
    } cases[] = {
        {"id", NULL, "records[1].id: missing"},
        {"id", json_string("0190a3b4-1c2d-7e3f-8a4b-5c6d7e8f9a0"), "records[1].id: not a UUID"},
        {"id", json_string("0190a3b4x1c2d-7e3f-8a4b-5c6d7e8f9a0b"), "records[1].id: not a UUID"},
        {"id", json_integer(5), "records[1].id: not a UUID"},
        {"host", NULL, "records[1].host: missing"},
        {"host", json_null(), "records[1].host: not a UUID"},
        {"tag", NULL, "records[1].tag: missing"},
        {"tag", json_string(""), "records[1].tag: not a tag"},
        {"tag", json_string("UPPER"), "records[1].tag: not a tag"},
        {"tag", json_string("with space"), "records[1].tag: not a tag"},
        {"tag", json_string("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
         "records[1].tag: not a tag"},
        {"tag", json_true(), "records[1].tag: not a tag"},
        {"idx", NULL, "records[1].idx: missing"},
        {"idx", json_integer(-1), "records[1].idx: not a non-negative integer"},
        {"idx", json_real(1.0), "records[1].idx: not a non-negative integer"},
        {"idx", json_string("1"), "records[1].idx: not a non-negative integer"},
        {"hlc", NULL, "records[1].hlc: missing"},
        {"hlc", json_string("0000018bcfe5680"), "records[1].hlc: not a clock"},
        {"hlc", json_string("0000018bcfe5680g"), "records[1].hlc: not a clock"},
        {"hlc", json_integer(12), "records[1].hlc: not a clock"},
        {"version", NULL, "records[1].version: missing"},
        {"version", json_integer(-1), "records[1].version: not a non-negative integer"},
        {"version", json_integer((json_int_t)UINT32_MAX + 1), "records[1].version: out of range"},
        {"version", json_string("1"), "records[1].version: not a non-negative integer"},
        {"data", NULL, "records[1].data: missing"},
        {"data", json_integer(1), "records[1].data: not a base64 string"},
        {"data", json_string("not base64!"), "records[1].data: not standard base64"},
        {"data", json_string("UlNFMQ"), "records[1].data: not standard base64"},
        {"data", json_string("-_-_"), "records[1].data: not standard base64"},
        {"data", json_string(""), "records[1].data: not a sealed envelope"},
        {"data", json_string("UlNFMQ=="), "records[1].data: not a sealed envelope"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int err = decode_with_bad_field(cases[i].field, cases[i].value);
        if (err != RS_EINVAL ||
            strncmp(rs_error_last(), cases[i].message, strlen(cases[i].message)))
            fail_msg("case %zu (%s): got %d '%s', want '%s'", i, cases[i].field, err,
                     rs_error_last(), cases[i].message);
    }
}

static void wire_an_envelope_without_the_magic_is_refused(void **state)
{
    uint8_t env[RS_ENVELOPE_OVERHEAD];
    char b64[sodium_base64_ENCODED_LEN(sizeof(env), sodium_base64_VARIANT_ORIGINAL)];
    memset(env, 'x', sizeof(env));
    sodium_bin2base64(b64, sizeof(b64), env, sizeof(env), sodium_base64_VARIANT_ORIGINAL);
    assert_int_equal(decode_with_bad_field("data", json_string(b64)), RS_EINVAL);
    assert_string_equal(rs_error_last(), "records[1].data: not a sealed envelope");
}

static void wire_an_envelope_over_the_bound_is_too_big(void **state)
{
    size_t n = RS_ENVELOPE_OVERHEAD + 100;
    uint8_t env[RS_ENVELOPE_OVERHEAD + 101] = {0};
    char b64[sodium_base64_ENCODED_LEN(sizeof(env), sodium_base64_VARIANT_ORIGINAL)];
    memcpy(env, RS_ENVELOPE_MAGIC, 4);
    char body[1024];
    rs_wire_batch batch = {0};
    for (int over = 0; over <= 1; over++) {
        sodium_bin2base64(b64, sizeof(b64), env, n + (size_t)over, sodium_base64_VARIANT_ORIGINAL);
        snprintf(body, sizeof(body),
                 "{\"records\":[{\"id\":\"0190a3b4-1c2d-7e3f-8a4b-5c6d7e8f9a0b\",\"host\":"
                 "\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"idx\":0,\"hlc\":"
                 "\"0000018bcfe56800\",\"version\":1,\"data\":\"%s\"}]}",
                 b64);
        int err = rs_wire_decode_records(&batch, body, strlen(body), RS_WIRE_UPLOAD, n);
        if (over) {
            assert_int_equal(err, RS_ETOOBIG);
            assert_non_null(strstr(rs_error_last(), "records[0].data"));
        } else {
            assert_int_equal(err, 0);
            assert_int_equal(batch.records[0].data_len, n);
        }
    }
    /* Far over the bound: refused from the base64 length alone, before decoding. */
    char big[4096], *p = big;
    p += sprintf(p, "{\"records\":[{\"data\":\"");
    for (int i = 0; i < 200; i++)
        p += sprintf(p, "QUFB");
    sprintf(p, "\"}]}");
    assert_int_equal(rs_wire_decode_records(&batch, big, strlen(big), RS_WIRE_UPLOAD, n),
                     RS_ETOOBIG);
    assert_non_null(strstr(rs_error_last(), "exceeds the bound of 224"));
    rs_wire_batch_free(&batch);
}

static void wire_document_level_errors_are_named(void **state)
{
    struct {
        const char *text;
        rs_wire_kind kind;
        const char *message;
    } cases[] = {
        {"", RS_WIRE_UPLOAD, "body: invalid JSON"},
        {"{\"records\":[}", RS_WIRE_UPLOAD, "body: invalid JSON"},
        {"[]", RS_WIRE_UPLOAD, "body: not a JSON object"},
        {"{}", RS_WIRE_UPLOAD, "records: missing"},
        {"{\"records\":null}", RS_WIRE_UPLOAD, "records: not an array"},
        {"{\"records\":[7]}", RS_WIRE_UPLOAD, "records[0]: not an object"},
        {"{\"records\":[]}", RS_WIRE_PAGE, "next: missing"},
        {"{\"records\":[],\"next\":-1}", RS_WIRE_PAGE, "next: not a non-negative integer or null"},
        {"{\"records\":[],\"next\":\"3\"}", RS_WIRE_PAGE,
         "next: not a non-negative integer or null"},
    };
    rs_wire_batch batch = {0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int err =
            rs_wire_decode_records(&batch, cases[i].text, strlen(cases[i].text), cases[i].kind, 0);
        if (err != RS_EINVAL ||
            strncmp(rs_error_last(), cases[i].message, strlen(cases[i].message)))
            fail_msg("case %zu: got %d '%s'", i, err, rs_error_last());
    }
    /* An upload body may omit next; the text need not be NUL-terminated. */
    const char text[] = "{\"records\":[]}garbage";
    assert_int_equal(rs_wire_decode_records(&batch, text, 14, RS_WIRE_UPLOAD, 0), 0);
    rs_wire_batch_free(&batch);
}

static void wire_index_round_trips_and_is_validated(void **state)
{
    rs_index *in = rs__calloc(1, sizeof(*in)), *out = NULL;
    rs_uuid h1, h2;
    rs_uuid_random(&h1);
    rs_uuid_random(&h2);
    assert_int_equal(rs_index_add(in, &h1, "kv", 0, 42), 0);
    assert_int_equal(rs_index_add(in, &h1, "history", 3, 3), 0);
    assert_int_equal(rs_index_add(in, &h2, "kv", 5, UINT64_C(1) << 62), 0);
    in->seq = 917;
    rs_buf b = {0};
    assert_int_equal(rs_wire_index_encode(&b, in), 0);
    assert_int_equal(rs_wire_index_decode(&out, b.ptr, b.len), 0);
    assert_int_equal(out->count, 3);
    assert_int_equal(out->seq, 917);
    for (size_t i = 0; i < 3; i++) {
        assert_memory_equal(&out->shards[i].host, &in->shards[i].host, 16);
        assert_string_equal(out->shards[i].tag, in->shards[i].tag);
        assert_int_equal(out->shards[i].start, in->shards[i].start);
        assert_int_equal(out->shards[i].end, in->shards[i].end);
    }
    rs_index_free(out);

    const char *bad[][2] = {
        {"{\"shards\":[]}", "seq: missing"},
        {"{\"seq\":1}", "shards: missing"},
        {"{\"shards\":{},\"seq\":1}", "shards: not an array"},
        {"{\"shards\":[1],\"seq\":1}", "shards[0]: not an object"},
        {"{\"shards\":[{\"tag\":\"kv\",\"start\":0,\"end\":1}],\"seq\":1}",
         "shards[0].host: missing"},
        {"{\"shards\":[{\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"start\":"
         "2,"
         "\"end\":1}],\"seq\":1}",
         "shards[0].start: greater than end"},
        {"{\"shards\":[{\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"start\":"
         "0,"
         "\"end\":1},{\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"start\":0,"
         "\"end\":1}],\"seq\":1}",
         "shards: shard 3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c/kv listed twice"},
        {"{\"shards\":[{\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"start\":"
         "0,"
         "\"end\":-1}],\"seq\":1}",
         "shards[0].end: not a non-negative integer"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = NULL;
        int err = rs_wire_index_decode(&out, bad[i][0], strlen(bad[i][0]));
        if (err != RS_EINVAL || strncmp(rs_error_last(), bad[i][1], strlen(bad[i][1])) || out)
            fail_msg("case %zu: got %d '%s'", i, err, rs_error_last());
    }
    rs_buf_free(&b);
    rs_index_free(in);
}

static void wire_boot_round_trips_with_a_nested_index(void **state)
{
    rs_index *in = rs__calloc(1, sizeof(*in));
    rs_uuid h;
    rs_uuid_random(&h);
    rs_index_add(in, &h, "kv", 0, 3);
    in->seq = 3;
    rs_buf b = {0};
    rs_wire_boot boot;
    assert_int_equal(rs_wire_boot_encode(&b, "al\"ice", in, 3), 0);
    assert_int_equal(rs_wire_boot_decode(&boot, b.ptr, b.len), 0);
    assert_string_equal(boot.user, "al\"ice");
    assert_int_equal(boot.resume_point, 3);
    assert_int_equal(boot.index->count, 1);
    assert_int_equal(boot.index->shards[0].end, 3);
    rs_wire_boot_clear(&boot);
    const char *bad = "{\"user\":\"a\",\"index\":{\"shards\":[{}],\"seq\":1},\"resume_point\":1}";
    assert_int_equal(rs_wire_boot_decode(&boot, bad, strlen(bad)), RS_EINVAL);
    assert_string_equal(rs_error_last(), "index.shards[0].host: missing");
    assert_null(boot.index);
    rs_buf_free(&b);
    rs_index_free(in);
}

static void wire_events_round_trip(void **state)
{
    rs_wire_event ev = {.start = 40, .end = 44, .seq = 919}, got;
    rs_uuid_random(&ev.host);
    strcpy(ev.tag, "kv");
    rs_buf b = {0};
    assert_int_equal(rs_wire_event_encode(&b, &ev), 0);
    assert_int_equal(rs_wire_event_decode(&got, b.ptr, b.len), 0);
    assert_memory_equal(&got, &ev, offsetof(rs_wire_event, tag));
    assert_string_equal(got.tag, "kv");
    assert_int_equal(got.seq, 919);
    const char *bad =
        "{\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\",\"tag\":\"kv\",\"start\":5,"
        "\"end\":4,\"seq\":1}";
    assert_int_equal(rs_wire_event_decode(&got, bad, strlen(bad)), RS_EINVAL);
    rs_buf_free(&b);
}

static void wire_frontier_round_trips(void **state)
{
    rs_index *in = rs__calloc(1, sizeof(*in)), *out = NULL;
    rs_uuid h;
    rs_uuid_random(&h);
    rs_index_add(in, &h, "kv", 0, 12);
    rs_index_add(in, &h, "history", 0, 0);
    rs_buf b = {0};
    assert_int_equal(rs_wire_frontier_encode(&b, in), 0);
    assert_null(strstr(b.ptr, "start"));
    assert_int_equal(rs_wire_frontier_decode(&out, b.ptr, b.len), 0);
    assert_int_equal(out->count, 2);
    assert_int_equal(out->shards[0].end, 12);
    assert_string_equal(out->shards[1].tag, "history");
    rs_index_free(out);
    rs_buf_free(&b);
    rs_index_free(in);
}

static void wire_credentials_round_trip_and_are_validated(void **state)
{
    rs_uuid host;
    rs_uuid_random(&host);
    rs_buf b = {0};
    rs_wire_credentials c;
    const char *pw = "p\"a\\s\ns\x01w\xc3\xa9rd";
    assert_int_equal(rs_wire_credentials_encode(&b, "alice@example.org", pw, &host), 0);
    assert_int_equal(rs_wire_credentials_decode(&c, b.ptr, b.len), 0);
    assert_string_equal(c.username, "alice@example.org");
    assert_string_equal(c.password, pw);
    assert_memory_equal(c.host.bytes, host.bytes, 16);
    rs_wire_credentials_clear(&c);
    assert_null(c.password);

    const char *bad[][2] = {
        {"{\"password\":\"p\",\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\"}",
         "username: missing"},
        {"{\"username\":\"a "
         "b\",\"password\":\"p\",\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\"}",
         "username: not a user name"},
        {"{\"username\":\"a\",\"password\":\"\",\"host\":\"3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\"}",
         "password: not a string"},
        {"{\"username\":\"a\",\"password\":\"p\"}", "host: missing"},
        {"{\"username\":\"a\",\"password\":\"p\",\"host\":\"00000000-0000-0000-0000-"
         "000000000000\"}",
         "host: the nil UUID"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int err = rs_wire_credentials_decode(&c, bad[i][0], strlen(bad[i][0]));
        if (err != RS_EINVAL || strncmp(rs_error_last(), bad[i][1], strlen(bad[i][1])))
            fail_msg("case %zu: got %d '%s'", i, err, rs_error_last());
        rs_wire_credentials_clear(&c);
    }
    assert_true(rs_wire_username_valid("A.b_c+d-e@f"));
    assert_false(rs_wire_username_valid(""));
    assert_false(rs_wire_username_valid("x\"y"));
    rs_buf_free(&b);
}

static void wire_small_documents_round_trip(void **state)
{
    rs_buf b = {0};
    char *token = NULL, *user = NULL;
    assert_int_equal(rs_wire_token_encode(&b, "abc123", "bob"), 0);
    assert_int_equal(rs_wire_token_decode(&token, &user, b.ptr, b.len), 0);
    assert_string_equal(token, "abc123");
    assert_string_equal(user, "bob");
    rs_free(token);
    rs_free(user);

    uint64_t accepted, inserted, seq;
    rs_buf_clear(&b);
    assert_int_equal(rs_wire_upload_result_encode(&b, 2, 1, 919), 0);
    assert_int_equal(rs_wire_upload_result_decode(&accepted, &inserted, &seq, b.ptr, b.len), 0);
    assert_int_equal(accepted, 2);
    assert_int_equal(inserted, 1);
    assert_int_equal(seq, 919);

    /* Error bodies stay valid JSON whatever the message holds. */
    char code[32], message[128];
    rs_buf_clear(&b);
    assert_int_equal(rs_wire_error_encode(&b, "conflict", "bad \"quote\"\t\x02 and \xff\xfe bytes"),
                     0);
    assert_int_equal(
        rs_wire_error_decode(code, sizeof(code), message, sizeof(message), b.ptr, b.len), 0);
    assert_string_equal(code, "conflict");
    assert_string_equal(message, "bad \"quote\"\t\x02 and \xef\xbf\xbd\xef\xbf\xbd bytes");
    assert_int_equal(rs_wire_error_decode(code, sizeof(code), message, sizeof(message), "{}", 2),
                     RS_EINVAL);
    rs_buf_free(&b);
}

static void wire_a_batch_is_reused_across_decodes(void **state)
{
    static uint8_t d[RS_ENVELOPE_OVERHEAD + 500];
    rs_record recs[50];
    rs_buf b = {0};
    rs_wire_batch batch = {0};
    for (int round = 0; round < 3; round++) {
        size_t n = round == 1 ? 50 : 5;
        rs_buf_clear(&b);
        rs_wire_records_begin(&b);
        for (size_t i = 0; i < n; i++) {
            fill_record(&recs[i], d, sizeof(d) - (size_t)round, i, "kv");
            rs_wire_records_add(&b, &recs[i]);
        }
        rs_wire_upload_end(&b);
        assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_UPLOAD, 0), 0);
        assert_int_equal(batch.count, n);
        assert_same_record(&batch.records[n - 1], &recs[n - 1]);
    }
    assert_true(batch.records_cap >= 50);
    rs_wire_batch_free(&batch);
    rs_buf_free(&b);
}

static void wire_allocation_failures_are_reported(void **state)
{
    static uint8_t d[RS_ENVELOPE_OVERHEAD];
    rs_record rec;
    fill_record(&rec, d, sizeof(d), 0, "kv");
    rs_buf b = {0};
    rs__alloc_fail_at(1);
    assert_int_equal(rs_wire_records_begin(&b), RS_ENOMEM);
    rs__alloc_fail_at(0);
    rs_wire_records_begin(&b);
    rs_wire_records_add(&b, &rec);
    rs_wire_upload_end(&b);
    rs_wire_batch batch = {0};
    rs__alloc_fail_at(1);
    assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_UPLOAD, 0), RS_ENOMEM);
    assert_int_equal(batch.count, 0);
    rs__alloc_fail_at(0);
    assert_int_equal(rs_wire_decode_records(&batch, b.ptr, b.len, RS_WIRE_UPLOAD, 0), 0);
    rs_wire_batch_free(&batch);
    rs_buf_free(&b);
}

/* Texts the fast scanner gives up on decode the same through jansson. */
static void wire_fast_and_general_paths_agree(void **state)
{
    static uint8_t d[RS_ENVELOPE_OVERHEAD + 33];
    rs_record rec;
    rs_buf b = {0};
    rs_wire_batch fast = {0}, slow = {0};
    fill_record(&rec, d, sizeof(d), 12345, "kv");
    rs_wire_records_begin(&b);
    rs_wire_records_add(&b, &rec);
    rs_wire_records_add(&b, &rec);
    rs_wire_page_end(&b, 1, 7);
    assert_int_equal(rs_wire_decode_records(&fast, b.ptr, b.len, RS_WIRE_PAGE, 0), 0);

    json_error_t jerr;
    json_t *doc = json_loadb(b.ptr, b.len, 0, &jerr);
    assert_non_null(doc);
    json_t *r1 = json_array_get(json_object_get(doc, "records"), 1);
    char *variants[4];
    variants[0] = json_dumps(doc, JSON_INDENT(3)); /* whitespace everywhere: still fast */
    json_object_set_new(r1, "extra", json_pack("{s:[i]}", "x", 1));
    variants[1] = json_dumps(doc, JSON_SORT_KEYS); /* unknown field, other order */
    json_object_del(r1, "extra");
    variants[2] = json_dumps(doc, JSON_ESCAPE_SLASH | JSON_ENSURE_ASCII);
    /* an escaped tag: "k\u0076" is "kv" */
    char *esc = malloc(b.len + 16);
    memcpy(esc, b.ptr, b.len + 1);
    char *at = strstr(esc, "\"kv\"");
    assert_non_null(at);
    memmove(at + 9, at + 4, strlen(at + 4) + 1);
    memcpy(at, "\"k\\u0076\"", 9);
    variants[3] = esc;
    for (int v = 0; v < 4; v++) {
        if (rs_wire_decode_records(&slow, variants[v], strlen(variants[v]), RS_WIRE_PAGE, 0))
            fail_msg("variant %d: %s", v, rs_error_last());
        assert_int_equal(slow.count, 2);
        assert_true(slow.has_next);
        assert_int_equal(slow.next, 7);
        for (int i = 0; i < 2; i++)
            assert_same_record(&slow.records[i], &fast.records[i]);
        free(variants[v]);
    }
    json_decref(doc);
    rs_wire_batch_free(&fast);
    rs_wire_batch_free(&slow);
    rs_buf_free(&b);
}

/* Our base64 writes and accepts exactly what libsodium's ORIGINAL variant does. */
static void wire_base64_matches_libsodium(void **state)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n.";
    uint8_t bin[400], mine[400], theirs[400];
    char ours[600], ref[600];
    size_t mlen_ok = 0;
    for (size_t len = 0; len < 300; len++) {
        randombytes_buf(bin, len);
        size_t n = rs_base64_encode(ours, bin, len);
        sodium_bin2base64(ref, sizeof(ref), bin, len, sodium_base64_VARIANT_ORIGINAL);
        assert_int_equal(n, RS_BASE64_LEN(len));
        assert_int_equal(n, strlen(ref));
        assert_memory_equal(ours, ref, n);
        size_t got = 0;
        assert_int_equal(rs_base64_decode(mine, &got, ours, n), 0);
        assert_int_equal(got, len);
        assert_memory_equal(mine, bin, len);
    }
    static const char *const edges[] = {
        "",     "====",     "A===", "AA==", "AB==", "AAA=",  "AAB=",  "AAAA", "AA=A",
        "=AAA", "AA==AAAA", "AAA",  "AA",   "A",    "AAAAA", "AAA==", "Zg==", "Zm8="};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
        size_t mlen = 0, tlen = 0, len = strlen(edges[i]);
        const char *end = NULL;
        int a = rs_base64_decode(mine, &mlen, edges[i], len) == 0;
        int b = sodium_base642bin(theirs, sizeof(theirs), edges[i], len, NULL, &tlen, &end,
                                  sodium_base64_VARIANT_ORIGINAL) == 0 &&
                end == edges[i] + len;
        if (a != b || (a && (mlen != tlen || memcmp(mine, theirs, mlen))))
            fail_msg("'%s': ours %d, libsodium %d", edges[i], a, b);
    }
    /*
     * A byte outside ASCII anywhere is refused (libsodium is left out: it
     * takes some of them for alphabet characters).
     */
    for (size_t len = 4; len <= 16; len += 4) {
        char text[16];
        for (size_t at = 0; at < len; at++) {
            for (unsigned hi = 0x80; hi <= 0xff; hi += 0x7f) {
                size_t mlen = 0;
                memset(text, 'Q', len);
                text[at] = (char)hi;
                assert_int_equal(rs_base64_decode(mine, &mlen, text, len), RS_EINVAL);
            }
            memset(text, 'Q', len);
            assert_int_equal(rs_base64_decode(mine, &mlen_ok, text, len), 0);
        }
    }
    /* Random and mutated texts: both accept the same ones, with the same bytes. */
    for (int round = 0; round < 200000; round++) {
        char text[24];
        size_t len;
        if (round % 2) {
            len = randombytes_uniform(5) * 4 + randombytes_uniform(2) * randombytes_uniform(4);
            for (size_t i = 0; i < len; i++)
                text[i] = alphabet[randombytes_uniform(round % 4 == 1 ? 65 : sizeof(alphabet) - 1)];
        } else {
            uint8_t raw[12];
            size_t rl = randombytes_uniform(sizeof(raw) + 1);
            randombytes_buf(raw, rl);
            len = rs_base64_encode(text, raw, rl);
            if (len > 0)
                text[randombytes_uniform((uint32_t)len)] =
                    alphabet[randombytes_uniform(sizeof(alphabet) - 1)];
        }
        size_t mlen = 0, tlen = 0;
        const char *end = NULL;
        int a = rs_base64_decode(mine, &mlen, text, len) == 0;
        int b = sodium_base642bin(theirs, sizeof(theirs), text, len, NULL, &tlen, &end,
                                  sodium_base64_VARIANT_ORIGINAL) == 0 &&
                end == text + len;
        if (a != b)
            fail_msg("'%.*s': ours %s, libsodium %s", (int)len, text, a ? "accepts" : "refuses",
                     b ? "accepts" : "refuses");
        if (a) {
            assert_int_equal(mlen, tlen);
            assert_memory_equal(mine, theirs, mlen);
        }
    }
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wire_records_round_trip_as_upload_and_page),
        cmocka_unit_test(wire_encoding_refuses_an_invalid_tag),
        cmocka_unit_test(wire_every_malformed_record_field_is_refused_by_name),
        cmocka_unit_test(wire_an_envelope_without_the_magic_is_refused),
        cmocka_unit_test(wire_an_envelope_over_the_bound_is_too_big),
        cmocka_unit_test(wire_document_level_errors_are_named),
        cmocka_unit_test(wire_index_round_trips_and_is_validated),
        cmocka_unit_test(wire_boot_round_trips_with_a_nested_index),
        cmocka_unit_test(wire_events_round_trip),
        cmocka_unit_test(wire_frontier_round_trips),
        cmocka_unit_test(wire_credentials_round_trip_and_are_validated),
        cmocka_unit_test(wire_small_documents_round_trip),
        cmocka_unit_test(wire_a_batch_is_reused_across_decodes),
        cmocka_unit_test(wire_allocation_failures_are_reported),
        cmocka_unit_test(wire_base64_matches_libsodium),
        cmocka_unit_test(wire_fast_and_general_paths_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
