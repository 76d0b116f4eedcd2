/*
 * Errors: a description for every code, the per-thread message, and how
 * SQLite's result codes map to RS codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <pthread.h>
#include <string.h>

static void strerror_describes_every_code_distinctly(void **state)
{
    (void)state;
    for (int a = RS_ERETIRED; a <= RS_OK; a++) {
        const char *da = rs_strerror(a);
        assert_non_null(da);
        assert_string_not_equal(da, "unknown error");
        for (int b = RS_ERETIRED; b < a; b++)
            assert_string_not_equal(da, rs_strerror(b));
    }
    assert_string_equal(rs_strerror(RS_ERETIRED - 1), "unknown error");
    assert_string_equal(rs_strerror(1), "unknown error");
}

static void error_codes_keep_their_numbers(void **state)
{
    (void)state;
    /* Released numbers never change (docs/conventions.md). */
    assert_int_equal(RS_ERROR, -1);
    assert_int_equal(RS_ENOMEM, -2);
    assert_int_equal(RS_EINVAL, -3);
    assert_int_equal(RS_ENOTFOUND, -4);
    assert_int_equal(RS_EEXISTS, -5);
    assert_int_equal(RS_ECONFLICT, -6);
    assert_int_equal(RS_EHOLE, -7);
    assert_int_equal(RS_ECRYPTO, -8);
    assert_int_equal(RS_EKEY, -9);
    assert_int_equal(RS_EAUTH, -10);
    assert_int_equal(RS_ENET, -11);
    assert_int_equal(RS_ESERVER, -12);
    assert_int_equal(RS_EIO, -13);
    assert_int_equal(RS_ECLOCK, -14);
    assert_int_equal(RS_ETOOBIG, -15);
    assert_int_equal(RS_EAHEAD, -16);
    assert_int_equal(RS_EGONE, -17);
    assert_int_equal(RS_EVERSION, -18);
    assert_int_equal(RS_EBUSY, -19);
    assert_int_equal(RS_EINTR, -20);
    assert_int_equal(RS_EUNAVAIL, -21);
    assert_int_equal(RS_EQUOTA, -22);
    assert_int_equal(RS_ECHAIN, -23);
    assert_int_equal(RS_ERETIRED, -24);
}

static void error_sets_the_message_and_returns_the_code(void **state)
{
    (void)state;
    rs_error_clear();
    assert_string_equal(rs_error_last(), "");
    assert_int_equal(rs__error(RS_EHOLE, "shard %s idx %d", "abc/kv", 7), RS_EHOLE);
    assert_string_equal(rs_error_last(), "shard abc/kv idx 7");
    /* The last message may be part of the next one. */
    assert_int_equal(rs__error(RS_EIO, "opening store: %s", rs_error_last()), RS_EIO);
    assert_string_equal(rs_error_last(), "opening store: shard abc/kv idx 7");
    rs_error_clear();
    assert_string_equal(rs_error_last(), "");
}

static void error_message_is_truncated_not_overflowed(void **state)
{
    static char big[4000];
    (void)state;
    memset(big, 'x', sizeof(big) - 1);
    rs__error(RS_EINVAL, "%s", big);
    assert_true(strlen(rs_error_last()) < sizeof(big) - 1);
    assert_true(strlen(rs_error_last()) > 500);
}

static void *other_thread(void *arg)
{
    char *seen = arg;
    /* A fresh thread starts with no message, whatever the others did. */
    strcpy(seen, rs_error_last());
    rs__error(RS_ENET, "from the other thread");
    return NULL;
}

static void error_message_is_per_thread(void **state)
{
    pthread_t t;
    char seen[64] = "unset";
    (void)state;
    rs__error(RS_EKEY, "main thread message");
    assert_int_equal(pthread_create(&t, NULL, other_thread, seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(seen, "");
    assert_string_equal(rs_error_last(), "main thread message");
}

static void sqlite_failures_map_to_named_codes(void **state)
{
    static const struct {
        int rc;
        int code;
    } cases[] = {
        {SQLITE_FULL, RS_EIO},
        {SQLITE_IOERR, RS_EIO},
        {SQLITE_IOERR_WRITE, RS_EIO},
        {SQLITE_IOERR_NOMEM, RS_ENOMEM},
        {SQLITE_CORRUPT, RS_EIO},
        {SQLITE_NOTADB, RS_EIO},
        {SQLITE_CANTOPEN, RS_EIO},
        {SQLITE_READONLY, RS_EIO},
        {SQLITE_BUSY, RS_EBUSY},
        {SQLITE_BUSY_SNAPSHOT, RS_EBUSY},
        {SQLITE_LOCKED, RS_EBUSY},
        {SQLITE_NOMEM, RS_ENOMEM},
        {SQLITE_CONSTRAINT, RS_ECONFLICT},
        {SQLITE_CONSTRAINT_UNIQUE, RS_ECONFLICT},
        {SQLITE_ERROR, RS_ERROR},
        {SQLITE_MISUSE, RS_ERROR},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rs_error_clear();
        int code = rs__sqlite_error(NULL, cases[i].rc, "reading shard x/kv");
        if (code != cases[i].code)
            fail_msg("SQLite code %d mapped to %d, want %d", cases[i].rc, code, cases[i].code);
        assert_non_null(strstr(rs_error_last(), "reading shard x/kv"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(strerror_describes_every_code_distinctly),
        cmocka_unit_test(error_codes_keep_their_numbers),
        cmocka_unit_test(error_sets_the_message_and_returns_the_code),
        cmocka_unit_test(error_message_is_truncated_not_overflowed),
        cmocka_unit_test(error_message_is_per_thread),
        cmocka_unit_test(sqlite_failures_map_to_named_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
