/*
 * The envelope and the master key: every header field and every byte of a
 * sealed envelope is authenticated, a record under another key is named as
 * such with both key ids, and the key's text form catches typos.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    rs_key *key;
    rs_record rec;
    uint8_t plain[200];
    uint8_t *env;
    size_t env_len;
    char name[RS_UUID_STRLEN + 1];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || sodium_init() < 0 || rs__key_new(&f->key) < 0)
        return -1;
    rs_uuid_v7(&f->rec.id, rs_now_ms());
    rs_uuid_random(&f->rec.host);
    strcpy(f->rec.tag, "history");
    f->rec.idx = 4242;
    f->rec.hlc = RS_HLC_MAKE(rs_now_ms(), 17);
    f->rec.version = 3;
    for (size_t i = 0; i < sizeof(f->plain); i++)
        f->plain[i] = (uint8_t)(i * 31 + 7);
    f->env_len = rs__envelope_len(sizeof(f->plain));
    f->env = malloc(f->env_len);
    if (f->env == NULL || rs__seal(f->env, f->key, &f->rec, f->plain, sizeof(f->plain)) < 0)
        return -1;
    f->rec.data = f->env;
    f->rec.data_len = f->env_len;
    rs_uuid_format(f->name, &f->rec.id);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rs__key_free(f->key);
    free(f->env);
    free(f);
    return 0;
}

static void envelope_opens_to_the_sealed_payload(void **state)
{
    fixture *f = *state;
    uint8_t out[200];
    size_t len = 0;
    assert_int_equal(f->env_len, sizeof(f->plain) + RS_ENVELOPE_OVERHEAD);
    assert_memory_equal(f->env, RS_ENVELOPE_MAGIC, 4);
    assert_memory_equal(f->env + 4, f->key->id, RS_KEY_ID_BYTES);
    assert_int_equal(rs__open(out, &len, f->key, &f->rec), 0);
    assert_int_equal(len, sizeof(f->plain));
    assert_memory_equal(out, f->plain, len);
    /* Authenticate only. */
    assert_int_equal(rs__open(NULL, NULL, f->key, &f->rec), 0);
}

static void envelope_hides_the_payload_and_is_fresh_each_time(void **state)
{
    fixture *f = *state;
    uint8_t *again = malloc(f->env_len);
    assert_non_null(again);
    assert_int_equal(rs__seal(again, f->key, &f->rec, f->plain, sizeof(f->plain)), 0);
    /* Fresh nonces and CEK: the same record seals to different bytes. */
    assert_memory_not_equal(again + 12, f->env + 12, f->env_len - 12);
    /* No run of 16 plaintext bytes appears in the envelope. */
    for (size_t i = 0; i + 16 <= f->env_len; i++)
        assert_memory_not_equal(f->env + i, f->plain, 16);
    free(again);
}

static void envelope_of_an_empty_payload_opens(void **state)
{
    fixture *f = *state;
    uint8_t env[RS_ENVELOPE_OVERHEAD], out[1];
    rs_record rec = f->rec;
    size_t len = 99;
    assert_int_equal(rs__seal(env, f->key, &rec, (const uint8_t *)"", 0), 0);
    rec.data = env;
    rec.data_len = sizeof(env);
    assert_int_equal(rs__open(out, &len, f->key, &rec), 0);
    assert_int_equal(len, 0);
}

/* Opens `rec` expecting `code`, with a message that names `needle`. */
static void expect_refused(fixture *f, const rs_record *rec, int code, const char *needle,
                           const char *what)
{
    uint8_t out[300];
    rs_error_clear();
    int err = rs__open(out, NULL, f->key, rec);
    if (err != code)
        fail_msg("%s: got %d (%s), want %d", what, err, rs_error_last(), code);
    if (strstr(rs_error_last(), needle) == NULL)
        fail_msg("%s: message '%s' does not name %s", what, rs_error_last(), needle);
}

static void envelope_detects_every_tampered_header_field(void **state)
{
    fixture *f = *state;
    char name[RS_UUID_STRLEN + 1];
    rs_record r;

    r = f->rec;
    r.id.bytes[15] ^= 1;
    rs_uuid_format(name, &r.id);
    expect_refused(f, &r, RS_ECRYPTO, name, "id");

    r = f->rec;
    r.host.bytes[0] ^= 0x80;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "host");

    r = f->rec;
    strcpy(r.tag, "historz");
    expect_refused(f, &r, RS_ECRYPTO, f->name, "tag");
    r = f->rec;
    strcpy(r.tag, "history.x");
    expect_refused(f, &r, RS_ECRYPTO, f->name, "longer tag");
    r = f->rec;
    strcpy(r.tag, "histor");
    expect_refused(f, &r, RS_ECRYPTO, f->name, "shorter tag");

    r = f->rec;
    r.idx++;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "idx + 1");
    r = f->rec;
    r.idx ^= UINT64_C(1) << 63;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "idx high bit");

    r = f->rec;
    r.hlc++;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "hlc + 1");
    r = f->rec;
    r.hlc ^= UINT64_C(1) << 63;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "hlc high bit");

    r = f->rec;
    r.version++;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "version + 1");
    r = f->rec;
    r.version ^= 1u << 31;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "version high bit");

    /* Every single bit of id and host. */
    for (int bit = 0; bit < 128; bit++) {
        r = f->rec;
        r.host.bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        expect_refused(f, &r, RS_ECRYPTO, f->name, "host bit");
        r = f->rec;
        r.id.bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        rs_uuid_format(name, &r.id);
        expect_refused(f, &r, RS_ECRYPTO, name, "id bit");
    }
}

static void envelope_detects_every_flipped_byte(void **state)
{
    fixture *f = *state;
    uint8_t *copy = malloc(f->env_len);
    rs_record r = f->rec;
    char what[64];
    assert_non_null(copy);
    r.data = copy;
    for (size_t i = 0; i < f->env_len; i++) {
        static const uint8_t flips[] = {0x01, 0x80, 0xff};
        for (size_t k = 0; k < sizeof(flips); k++) {
            memcpy(copy, f->env, f->env_len);
            copy[i] ^= flips[k];
            snprintf(what, sizeof(what), "byte %zu ^ 0x%02x", i, flips[k]);
            /* A changed key id claims another key: refused before decrypting. */
            if (i >= 4 && i < 4 + RS_KEY_ID_BYTES)
                expect_refused(f, &r, RS_EKEY, f->name, what);
            else
                expect_refused(f, &r, RS_ECRYPTO, f->name, what);
        }
    }
    free(copy);
}

static void envelope_detects_truncation_and_extension(void **state)
{
    fixture *f = *state;
    uint8_t *longer = malloc(f->env_len + 1);
    rs_record r = f->rec;
    assert_non_null(longer);
    for (size_t len = 0; len < f->env_len; len++) {
        r.data_len = len;
        expect_refused(f, &r, RS_ECRYPTO, f->name, "truncated");
    }
    memcpy(longer, f->env, f->env_len);
    longer[f->env_len] = 0;
    r.data = longer;
    r.data_len = f->env_len + 1;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "extended");
    free(longer);
}

static void envelope_with_swapped_parts_of_two_records_does_not_open(void **state)
{
    fixture *f = *state;
    uint8_t *other = malloc(f->env_len), *mixed = malloc(f->env_len);
    rs_record r = f->rec;
    assert_non_null(other);
    assert_non_null(mixed);
    assert_int_equal(rs__seal(other, f->key, &f->rec, f->plain, sizeof(f->plain)), 0);
    /* The key wrap of one with the payload of the other (same header). */
    memcpy(mixed, f->env, RS_ENVELOPE_OVERHEAD - 16 - 24);
    memcpy(mixed + RS_ENVELOPE_OVERHEAD - 16 - 24, other + RS_ENVELOPE_OVERHEAD - 16 - 24,
           f->env_len - (RS_ENVELOPE_OVERHEAD - 16 - 24));
    r.data = mixed;
    expect_refused(f, &r, RS_ECRYPTO, f->name, "mixed envelope");
    free(other);
    free(mixed);
}

static void envelope_under_another_key_is_ekey_naming_both_key_ids(void **state)
{
    fixture *f = *state;
    rs_key *other = NULL;
    char ours[RS_KEY_ID_STRLEN + 1], theirs[RS_KEY_ID_STRLEN + 1];
    uint8_t out[300], id[RS_KEY_ID_BYTES];

    assert_int_equal(rs__key_new(&other), 0);
    assert_memory_not_equal(other->id, f->key->id, RS_KEY_ID_BYTES);
    rs__key_id_hex(ours, other->id);
    rs__key_id_hex(theirs, f->key->id);
    rs_error_clear();
    assert_int_equal(rs__open(out, NULL, other, &f->rec), RS_EKEY);
    assert_true(strstr(rs_error_last(), ours) != NULL);
    assert_true(strstr(rs_error_last(), theirs) != NULL);
    assert_true(strstr(rs_error_last(), f->name) != NULL);
    /* The key id is readable without the key. */
    assert_int_equal(rs__envelope_key_id(id, f->env, f->env_len), 0);
    assert_memory_equal(id, f->key->id, RS_KEY_ID_BYTES);
    assert_int_equal(rs__envelope_key_id(id, f->env, RS_ENVELOPE_OVERHEAD - 1), RS_ECRYPTO);
    rs__key_free(other);
}

static void envelope_under_a_key_with_a_forged_id_does_not_open(void **state)
{
    fixture *f = *state;
    rs_key *other = NULL;
    uint8_t out[300];
    assert_int_equal(rs__key_new(&other), 0);
    /* An attacker's key that claims our key id still cannot open the record. */
    memcpy(other->id, f->key->id, RS_KEY_ID_BYTES);
    rs_error_clear();
    assert_int_equal(rs__open(out, NULL, other, &f->rec), RS_ECRYPTO);
    assert_true(strstr(rs_error_last(), f->name) != NULL);
    rs__key_free(other);
}

static void key_id_is_derived_from_the_key(void **state)
{
    fixture *f = *state;
    rs_key *copy = NULL;
    uint8_t bytes[RS_KEY_BYTES];
    memcpy(bytes, f->key->bytes, RS_KEY_BYTES);
    assert_int_equal(rs__key_from_bytes(&copy, bytes), 0);
    assert_memory_equal(copy->id, f->key->id, RS_KEY_ID_BYTES);
    rs__key_free(copy);
    bytes[0] ^= 1;
    assert_int_equal(rs__key_from_bytes(&copy, bytes), 0);
    assert_memory_not_equal(copy->id, f->key->id, RS_KEY_ID_BYTES);
    rs__key_free(copy);
}

static void key_text_round_trips(void **state)
{
    fixture *f = *state;
    char *text = NULL, *spaced = NULL;
    rs_key *back = NULL;
    size_t n;

    assert_int_equal(rs__key_to_text(&text, f->key), 0);
    assert_int_equal(strncmp(text, "rsk1:", 5), 0);
    assert_int_equal(rs__key_from_text(&back, text), 0);
    assert_memory_equal(back->bytes, f->key->bytes, RS_KEY_BYTES);
    assert_memory_equal(back->id, f->key->id, RS_KEY_ID_BYTES);
    rs__key_free(back);
    back = NULL;
    /* Surrounding whitespace and a trailing newline, as a pasted key has. */
    n = strlen(text) + 8;
    spaced = malloc(n);
    assert_non_null(spaced);
    snprintf(spaced, n, "  %s\r\n", text);
    assert_int_equal(rs__key_from_text(&back, spaced), 0);
    assert_memory_equal(back->bytes, f->key->bytes, RS_KEY_BYTES);
    rs__key_free(back);
    free(spaced);
    rs_free(text);
}

static void key_text_with_any_typo_is_rejected_by_its_checksum(void **state)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    fixture *f = *state;
    char *text = NULL;
    size_t len;
    rs_key *back = NULL;

    assert_int_equal(rs__key_to_text(&text, f->key), 0);
    len = strlen(text);
    /* Every position after the prefix, every other base64url character. */
    for (size_t i = 5; i < len; i++) {
        char saved = text[i];
        for (const char *c = alphabet; *c; c++) {
            if (*c == saved)
                continue;
            text[i] = *c;
            rs_error_clear();
            if (rs__key_from_text(&back, text) != RS_EINVAL)
                fail_msg("key text with '%c' for '%c' at %zu was accepted", *c, saved, i);
            assert_true(strstr(rs_error_last(), "key") != NULL);
        }
        text[i] = saved;
    }
    /* Two neighbouring characters swapped. */
    for (size_t i = 5; i + 1 < len; i++) {
        char a = text[i], b = text[i + 1];
        if (a == b)
            continue;
        text[i] = b;
        text[i + 1] = a;
        assert_int_equal(rs__key_from_text(&back, text), RS_EINVAL);
        text[i] = a;
        text[i + 1] = b;
    }
    assert_null(back);
    rs_free(text);
}

static void key_text_truncated_or_extended_is_rejected(void **state)
{
    fixture *f = *state;
    char *text = NULL, longer[128];
    size_t len;
    rs_key *back = NULL;

    assert_int_equal(rs__key_to_text(&text, f->key), 0);
    len = strlen(text);
    for (size_t cut = 0; cut < len; cut++) {
        char saved = text[cut];
        text[cut] = '\0';
        if (rs__key_from_text(&back, text) != RS_EINVAL)
            fail_msg("key text cut to %zu characters was accepted", cut);
        text[cut] = saved;
    }
    snprintf(longer, sizeof(longer), "%sA", text);
    assert_int_equal(rs__key_from_text(&back, longer), RS_EINVAL);
    snprintf(longer, sizeof(longer), "%sAAAA", text);
    assert_int_equal(rs__key_from_text(&back, longer), RS_EINVAL);
    snprintf(longer, sizeof(longer), "%s junk", text);
    assert_int_equal(rs__key_from_text(&back, longer), RS_EINVAL);
    snprintf(longer, sizeof(longer), "rsk2:%s", text + 5);
    assert_int_equal(rs__key_from_text(&back, longer), RS_EINVAL);
    assert_int_equal(rs__key_from_text(&back, ""), RS_EINVAL);
    assert_null(back);
    rs_free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(envelope_opens_to_the_sealed_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_hides_the_payload_and_is_fresh_each_time, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(envelope_of_an_empty_payload_opens, setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_detects_every_tampered_header_field, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(envelope_detects_every_flipped_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_detects_truncation_and_extension, setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_with_swapped_parts_of_two_records_does_not_open,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_under_another_key_is_ekey_naming_both_key_ids,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(envelope_under_a_key_with_a_forged_id_does_not_open, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(key_id_is_derived_from_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(key_text_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(key_text_with_any_typo_is_rejected_by_its_checksum, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(key_text_truncated_or_extended_is_rejected, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
