/*
 * Identifiers: UUIDv7 record ids, random host ids, their text form, tags,
 * hex, and the names errors give to records and shards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <ctype.h>
#include <string.h>

static uint64_t v7_ms(const rs_uuid *id)
{
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | id->bytes[i];
    return ms;
}

static void uuid_v7_has_version_7_variant_10_and_the_time_in_front(void **state)
{
    (void)state;
    for (uint64_t i = 0; i < 2000; i++) {
        uint64_t ms = UINT64_C(1700000000000) + i * 7919;
        rs_uuid id;
        char text[RS_UUID_STRLEN + 1];
        rs_uuid_v7(&id, ms);
        assert_int_equal(id.bytes[6] >> 4, 7);
        assert_int_equal(id.bytes[8] >> 6, 2);
        assert_int_equal(v7_ms(&id), ms);
        rs_uuid_format(text, &id);
        assert_int_equal(text[14], '7');
        assert_true(strchr("89ab", text[19]) != NULL);
    }
}

static void uuid_v7_orders_by_time_as_bytes_and_as_text(void **state)
{
    rs_uuid prev, id;
    char prev_text[RS_UUID_STRLEN + 1], text[RS_UUID_STRLEN + 1];
    (void)state;
    rs_uuid_v7(&prev, 1);
    rs_uuid_format(prev_text, &prev);
    for (uint64_t ms = 2; ms < UINT64_C(1) << 47; ms = ms * 3 + 1) {
        rs_uuid_v7(&id, ms);
        rs_uuid_format(text, &id);
        assert_true(rs_uuid_cmp(&prev, &id) < 0);
        assert_true(strcmp(prev_text, text) < 0);
        prev = id;
        memcpy(prev_text, text, sizeof(text));
    }
}

static void uuid_v7_ids_of_one_millisecond_differ(void **state)
{
    rs_uuid a, b;
    (void)state;
    rs_uuid_v7(&a, 1234567);
    rs_uuid_v7(&b, 1234567);
    assert_int_equal(v7_ms(&a), v7_ms(&b));
    assert_int_not_equal(rs_uuid_cmp(&a, &b), 0);
}

static void uuid_random_is_version_4_and_not_nil(void **state)
{
    rs_uuid a, b;
    (void)state;
    rs_uuid_random(&a);
    rs_uuid_random(&b);
    assert_int_equal(a.bytes[6] >> 4, 4);
    assert_int_equal(a.bytes[8] >> 6, 2);
    assert_false(rs_uuid_is_nil(&a));
    assert_int_not_equal(rs_uuid_cmp(&a, &b), 0);
}

static void uuid_nil_is_recognized(void **state)
{
    rs_uuid id;
    (void)state;
    memset(&id, 0, sizeof(id));
    assert_true(rs_uuid_is_nil(&id));
    id.bytes[15] = 1;
    assert_false(rs_uuid_is_nil(&id));
    assert_int_equal(rs_uuid_parse(&id, "00000000-0000-0000-0000-000000000000"), 0);
    assert_true(rs_uuid_is_nil(&id));
}

static void uuid_text_round_trips_in_canonical_lowercase(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++) {
        rs_uuid id, back;
        char text[RS_UUID_STRLEN + 1];
        if (i % 2)
            rs_uuid_random(&id);
        else
            rs_uuid_v7(&id, rs_now_ms());
        memset(text, 'x', sizeof(text));
        rs_uuid_format(text, &id);
        assert_int_equal(strlen(text), RS_UUID_STRLEN);
        for (int k = 0; k < RS_UUID_STRLEN; k++) {
            if (k == 8 || k == 13 || k == 18 || k == 23)
                assert_int_equal(text[k], '-');
            else
                assert_true(isxdigit((unsigned char)text[k]) && !isupper((unsigned char)text[k]));
        }
        assert_int_equal(rs_uuid_parse(&back, text), 0);
        assert_memory_equal(back.bytes, id.bytes, 16);
    }
}

static void uuid_parse_reads_known_text_either_case(void **state)
{
    static const uint8_t want[16] = {0x01, 0x8f, 0x3a, 0x2b, 0xc4, 0xd5, 0x7e, 0x6f,
                                     0x80, 0x91, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7};
    rs_uuid id;
    char text[RS_UUID_STRLEN + 1];
    (void)state;
    assert_int_equal(rs_uuid_parse(&id, "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f7"), 0);
    assert_memory_equal(id.bytes, want, 16);
    memset(&id, 0, sizeof(id));
    assert_int_equal(rs_uuid_parse(&id, "018F3A2B-C4D5-7E6F-8091-A2B3C4D5E6F7"), 0);
    assert_memory_equal(id.bytes, want, 16);
    rs_uuid_format(text, &id);
    assert_string_equal(text, "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f7");
}

static void uuid_parse_rejects_malformed_text_naming_it(void **state)
{
    static const char *const bad[] = {
        "",
        "018f3a2b",
        "018f3a2bc4d57e6f8091a2b3c4d5e6f7",          /* no hyphens */
        "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f",       /* one digit short */
        "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f77",     /* one digit long */
        "018f3a2bc-4d5-7e6f-8091-a2b3c4d5e6f7",      /* hyphen moved */
        "018f3a2b-c4d5-7e6f-8091a-2b3c4d5e6f7",      /* hyphen moved */
        "018f3a2b_c4d5_7e6f_8091_a2b3c4d5e6f7",      /* wrong separators */
        "018f3a2g-c4d5-7e6f-8091-a2b3c4d5e6f7",      /* not hex */
        "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f ",      /* trailing space */
        " 018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f",      /* leading space */
        "{018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f7}",    /* braces */
        "urn:uuid:018f3a2b-c4d5-7e6f-8091-a2b3c4d5", /* urn prefix */
        "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6-7",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rs_uuid id;
        rs_error_clear();
        if (rs_uuid_parse(&id, bad[i]) != RS_EINVAL)
            fail_msg("'%s' was accepted as a UUID", bad[i]);
        if (*bad[i] && !strstr(rs_error_last(), bad[i]))
            fail_msg("the message '%s' does not name '%s'", rs_error_last(), bad[i]);
    }
    {
        rs_uuid id;
        assert_int_equal(rs_uuid_parse(&id, NULL), RS_EINVAL);
    }
}

static void uuid_cmp_is_bytewise(void **state)
{
    rs_uuid a, b;
    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.bytes[0] = 1;
    b.bytes[15] = 0xff;
    assert_true(rs_uuid_cmp(&a, &b) > 0);
    assert_true(rs_uuid_cmp(&b, &a) < 0);
    assert_int_equal(rs_uuid_cmp(&a, &a), 0);
}

static void tag_valid_accepts_1_to_64_of_the_allowed_characters(void **state)
{
    char tag[80];
    (void)state;
    assert_true(rs_tag_valid("kv"));
    assert_true(rs_tag_valid("a"));
    assert_true(rs_tag_valid("my-app.notes_v2"));
    assert_true(rs_tag_valid("0123456789"));
    memset(tag, 'a', 64);
    tag[64] = '\0';
    assert_true(rs_tag_valid(tag));
    tag[64] = 'a';
    tag[65] = '\0';
    assert_false(rs_tag_valid(tag));
    assert_false(rs_tag_valid(""));
    assert_false(rs_tag_valid(NULL));
    assert_false(rs_tag_valid("KV"));
    assert_false(rs_tag_valid("k v"));
    assert_false(rs_tag_valid("a/b"));
    assert_false(rs_tag_valid("caf\xc3\xa9"));
    assert_false(rs_tag_valid("kv\n"));
}

static void hex_round_trips_and_unhex_rejects_bad_digits_and_length(void **state)
{
    uint8_t bytes[4] = {0x00, 0x9f, 0xa0, 0xff}, back[4];
    char text[9];
    (void)state;
    rs__hex(text, bytes, 4);
    assert_string_equal(text, "009fa0ff");
    assert_int_equal(rs__unhex(back, 4, text), 0);
    assert_memory_equal(back, bytes, 4);
    assert_int_equal(rs__unhex(back, 4, "009fa0f"), RS_EINVAL);
    assert_int_equal(rs__unhex(back, 4, "009fa0ff0"), RS_EINVAL);
    assert_int_equal(rs__unhex(back, 4, "009fa0fg"), RS_EINVAL);
    assert_int_equal(rs__unhex(back, 4, "0x9fa0ff"), RS_EINVAL);
}

static void record_name_gives_id_shard_and_idx(void **state)
{
    rs_record rec;
    char name[200];
    (void)state;
    memset(&rec, 0, sizeof(rec));
    assert_int_equal(rs_uuid_parse(&rec.id, "018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f7"), 0);
    assert_int_equal(rs_uuid_parse(&rec.host, "3f2a0000-0000-4000-8000-000000000001"), 0);
    strcpy(rec.tag, "kv");
    rec.idx = 42;
    rs__record_name(name, sizeof(name), &rec);
    assert_string_equal(name, "record 018f3a2b-c4d5-7e6f-8091-a2b3c4d5e6f7 (shard "
                              "3f2a0000-0000-4000-8000-000000000001/kv idx 42)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uuid_v7_has_version_7_variant_10_and_the_time_in_front),
        cmocka_unit_test(uuid_v7_orders_by_time_as_bytes_and_as_text),
        cmocka_unit_test(uuid_v7_ids_of_one_millisecond_differ),
        cmocka_unit_test(uuid_random_is_version_4_and_not_nil),
        cmocka_unit_test(uuid_nil_is_recognized),
        cmocka_unit_test(uuid_text_round_trips_in_canonical_lowercase),
        cmocka_unit_test(uuid_parse_reads_known_text_either_case),
        cmocka_unit_test(uuid_parse_rejects_malformed_text_naming_it),
        cmocka_unit_test(uuid_cmp_is_bytewise),
        cmocka_unit_test(tag_valid_accepts_1_to_64_of_the_allowed_characters),
        cmocka_unit_test(hex_round_trips_and_unhex_rejects_bad_digits_and_length),
        cmocka_unit_test(record_name_gives_id_shard_and_idx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
