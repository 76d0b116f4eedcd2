/*
 * Hybrid logical clock: local ticks, merges of received clocks, the drift
 * bound, counter overflow, and the text form that sorts as the clock does.
 * The wall clock is injected through rs_hlc_clock.now_ms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct fake_clock {
    uint64_t now;
} fake_clock;

static uint64_t fake_now(void *ctx)
{
    return ((fake_clock *)ctx)->now;
}

static void clock_with_fake(rs_hlc_clock *clock, fake_clock *fc, rs_hlc last)
{
    rs_hlc_clock_init(clock, last);
    clock->now_ms = fake_now;
    clock->now_ctx = fc;
}

/* A small deterministic generator, so a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t next_rand(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static void hlc_stays_monotonic_when_wall_clock_steps_back(void **state)
{
    fake_clock fc = {1000000};
    rs_hlc_clock clock;
    rs_hlc a, b, c, d;
    (void)state;

    clock_with_fake(&clock, &fc, 0);
    assert_int_equal(rs_hlc_tick(&a, &clock), 0);
    assert_int_equal(a, RS_HLC_MAKE(1000000, 0));
    fc.now = 400000; /* the wall clock jumps back ten minutes */
    assert_int_equal(rs_hlc_tick(&b, &clock), 0);
    assert_true(b > a);
    assert_int_equal(RS_HLC_MS(b), 1000000);
    assert_int_equal(RS_HLC_COUNTER(b), 1);
    fc.now = 999999;
    assert_int_equal(rs_hlc_tick(&c, &clock), 0);
    assert_true(c > b);
    fc.now = 1000001;
    assert_int_equal(rs_hlc_tick(&d, &clock), 0);
    assert_int_equal(d, RS_HLC_MAKE(1000001, 0));
    assert_int_equal(clock.last, d);
}

static void hlc_stays_monotonic_over_a_random_walk_of_the_wall_clock(void **state)
{
    fake_clock fc = {5000000};
    rs_hlc_clock clock;
    rs_hlc prev = 0, h;
    (void)state;

    clock_with_fake(&clock, &fc, 0);
    for (int i = 0; i < 20000; i++) {
        /* Steps of -3..+3 ms: back, still and forward. */
        fc.now = fc.now + (next_rand() % 7) - 3;
        assert_int_equal(rs_hlc_tick(&h, &clock), 0);
        assert_true(h > prev);
        assert_true(RS_HLC_MS(h) >= fc.now);
        prev = h;
    }
}

static void hlc_counter_bumps_within_one_millisecond(void **state)
{
    fake_clock fc = {777};
    rs_hlc_clock clock;
    rs_hlc h;
    (void)state;

    clock_with_fake(&clock, &fc, 0);
    for (uint32_t i = 0; i < 1000; i++) {
        assert_int_equal(rs_hlc_tick(&h, &clock), 0);
        assert_int_equal(RS_HLC_MS(h), 777);
        assert_int_equal(RS_HLC_COUNTER(h), i);
    }
}

static void hlc_takes_the_wall_clock_and_resets_the_counter_when_it_advances(void **state)
{
    fake_clock fc = {2000};
    rs_hlc_clock clock;
    rs_hlc h;
    (void)state;

    clock_with_fake(&clock, &fc, RS_HLC_MAKE(2000, 41));
    assert_int_equal(rs_hlc_tick(&h, &clock), 0);
    assert_int_equal(h, RS_HLC_MAKE(2000, 42));
    fc.now = 2005;
    assert_int_equal(rs_hlc_tick(&h, &clock), 0);
    assert_int_equal(h, RS_HLC_MAKE(2005, 0));
}

static void hlc_tick_counter_overflow_is_eclock_and_leaves_clock_unchanged(void **state)
{
    fake_clock fc = {3000};
    rs_hlc_clock clock;
    rs_hlc h = 12345, full = RS_HLC_MAKE(3000, 0xffff);
    (void)state;

    clock_with_fake(&clock, &fc, full);
    rs_error_clear();
    assert_int_equal(rs_hlc_tick(&h, &clock), RS_ECLOCK);
    assert_int_equal(clock.last, full);
    assert_int_equal(h, 12345);
    assert_true(strstr(rs_error_last(), "overflow") != NULL);
    /* Behind the last write too: still no wrap. */
    fc.now = 10;
    assert_int_equal(rs_hlc_tick(&h, &clock), RS_ECLOCK);
    assert_int_equal(clock.last, full);
    /* Once the wall clock moves on, ticking works again. */
    fc.now = 3001;
    assert_int_equal(rs_hlc_tick(&h, &clock), 0);
    assert_int_equal(h, RS_HLC_MAKE(3001, 0));
}

static void hlc_default_drift_bound_is_five_minutes(void **state)
{
    rs_hlc_clock clock;
    (void)state;
    rs_hlc_clock_init(&clock, 0);
    assert_int_equal(clock.max_drift_ms, 5 * 60 * 1000);
    assert_int_equal(RS_HLC_DEFAULT_MAX_DRIFT_MS, 300000);
}

static void hlc_refuses_a_received_clock_beyond_the_drift_bound_naming_the_device(void **state)
{
    fake_clock fc = {10000000};
    rs_hlc_clock clock;
    rs_uuid from;
    char host[RS_UUID_STRLEN + 1];
    rs_hlc last = RS_HLC_MAKE(9999000, 3);
    (void)state;

    clock_with_fake(&clock, &fc, last);
    rs_uuid_random(&from);
    rs_uuid_format(host, &from);
    rs_error_clear();
    assert_int_equal(rs_hlc_recv(&clock, RS_HLC_MAKE(fc.now + 300001, 0), &from), RS_ECLOCK);
    assert_int_equal(clock.last, last);
    assert_true(strstr(rs_error_last(), host) != NULL);
    /* Far beyond, and with a counter: refused the same way. */
    assert_int_equal(rs_hlc_recv(&clock, RS_HLC_MAKE(fc.now + 86400000, 7), &from), RS_ECLOCK);
    assert_int_equal(clock.last, last);
    /* A configured bound is honoured. */
    clock.max_drift_ms = 1000;
    assert_int_equal(rs_hlc_recv(&clock, RS_HLC_MAKE(fc.now + 1001, 0), &from), RS_ECLOCK);
    assert_int_equal(clock.last, last);
}

static void hlc_accepts_a_received_clock_within_the_drift_bound(void **state)
{
    fake_clock fc = {10000000};
    rs_hlc_clock clock;
    rs_uuid from;
    rs_hlc edge = RS_HLC_MAKE(10000000 + 300000, 5), h;
    (void)state;

    clock_with_fake(&clock, &fc, RS_HLC_MAKE(9000000, 0));
    rs_uuid_random(&from);
    assert_int_equal(rs_hlc_recv(&clock, edge, &from), 0);
    assert_int_equal(clock.last, edge + 1);
    /* The next local write orders after what was received. */
    assert_int_equal(rs_hlc_tick(&h, &clock), 0);
    assert_true(h > edge);
    assert_int_equal(h, edge + 2);
}

typedef struct merge_case {
    rs_hlc local;
    rs_hlc received;
    uint64_t now;
    rs_hlc expect;
} merge_case;

static void hlc_merge_takes_the_max_of_local_received_and_now(void **state)
{
    static const merge_case cases[] = {
        /* The wall clock is ahead of both: (now, 0). */
        {RS_HLC_MAKE(100, 4), RS_HLC_MAKE(120, 9), 130, RS_HLC_MAKE(130, 0)},
        /* Local is ahead: local + 1. */
        {RS_HLC_MAKE(200, 4), RS_HLC_MAKE(150, 9), 130, RS_HLC_MAKE(200, 5)},
        /* Received is ahead: received + 1. */
        {RS_HLC_MAKE(100, 4), RS_HLC_MAKE(150, 9), 130, RS_HLC_MAKE(150, 10)},
        /* Same millisecond: the higher counter + 1. */
        {RS_HLC_MAKE(150, 4), RS_HLC_MAKE(150, 9), 130, RS_HLC_MAKE(150, 10)},
        {RS_HLC_MAKE(150, 12), RS_HLC_MAKE(150, 9), 130, RS_HLC_MAKE(150, 13)},
        /* Equal clocks. */
        {RS_HLC_MAKE(150, 9), RS_HLC_MAKE(150, 9), 150, RS_HLC_MAKE(150, 10)},
        /* Received in the current millisecond, local behind: received + 1. */
        {RS_HLC_MAKE(100, 0), RS_HLC_MAKE(130, 2), 130, RS_HLC_MAKE(130, 3)},
        /* Local in the current millisecond, received behind: local + 1. */
        {RS_HLC_MAKE(130, 6), RS_HLC_MAKE(100, 2), 130, RS_HLC_MAKE(130, 7)},
        /* A fresh clock receiving an old one. */
        {0, RS_HLC_MAKE(5, 5), 130, RS_HLC_MAKE(130, 0)},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fake_clock fc = {cases[i].now};
        rs_hlc_clock clock;
        rs_uuid from;
        rs_uuid_random(&from);
        clock_with_fake(&clock, &fc, cases[i].local);
        assert_int_equal(rs_hlc_recv(&clock, cases[i].received, &from), 0);
        if (clock.last != cases[i].expect)
            fail_msg("case %zu: got %llx, want %llx", i, (unsigned long long)clock.last,
                     (unsigned long long)cases[i].expect);
    }
}

static void hlc_merge_orders_after_local_and_received_for_random_clocks(void **state)
{
    rs_uuid from;
    (void)state;
    rs_uuid_random(&from);
    for (int i = 0; i < 50000; i++) {
        uint64_t base = 1000000;
        fake_clock fc = {base + next_rand() % 8};
        rs_hlc local = RS_HLC_MAKE(base + next_rand() % 8, next_rand() % 4);
        rs_hlc received = RS_HLC_MAKE(base + next_rand() % 8, next_rand() % 4);
        uint64_t top_ms =
            RS_HLC_MS(local) > RS_HLC_MS(received) ? RS_HLC_MS(local) : RS_HLC_MS(received);
        rs_hlc_clock clock;
        clock_with_fake(&clock, &fc, local);
        assert_int_equal(rs_hlc_recv(&clock, received, &from), 0);
        assert_true(clock.last > local);
        assert_true(clock.last > received);
        if (fc.now > top_ms) {
            assert_int_equal(clock.last, RS_HLC_MAKE(fc.now, 0));
        } else {
            /* Neither the millisecond nor the counter jumps further than needed. */
            assert_int_equal(RS_HLC_MS(clock.last), top_ms);
            assert_int_equal(clock.last, (local > received ? local : received) + 1);
        }
    }
}

static void hlc_recv_counter_overflow_is_eclock_and_leaves_clock_unchanged(void **state)
{
    fake_clock fc = {4000};
    rs_hlc_clock clock;
    rs_uuid from;
    char host[RS_UUID_STRLEN + 1];
    rs_hlc last = RS_HLC_MAKE(3000, 1);
    (void)state;

    rs_uuid_random(&from);
    rs_uuid_format(host, &from);
    clock_with_fake(&clock, &fc, last);
    rs_error_clear();
    assert_int_equal(rs_hlc_recv(&clock, RS_HLC_MAKE(4000, 0xffff), &from), RS_ECLOCK);
    assert_int_equal(clock.last, last);
    assert_true(strstr(rs_error_last(), "overflow") != NULL);
    assert_true(strstr(rs_error_last(), host) != NULL);
    /* The local clock itself full: overflow too, unchanged. */
    clock.last = RS_HLC_MAKE(4000, 0xffff);
    assert_int_equal(rs_hlc_recv(&clock, RS_HLC_MAKE(3990, 0), &from), RS_ECLOCK);
    assert_int_equal(clock.last, RS_HLC_MAKE(4000, 0xffff));
}

static void hlc_cmp_orders_by_clock_then_host(void **state)
{
    rs_uuid a, b;
    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.bytes[15] = 1;
    b.bytes[15] = 2;
    assert_int_equal(rs_hlc_cmp(5, &b, 6, &a), -1);
    assert_int_equal(rs_hlc_cmp(6, &a, 5, &b), 1);
    assert_int_equal(rs_hlc_cmp(5, &a, 5, &b), -1);
    assert_int_equal(rs_hlc_cmp(5, &b, 5, &a), 1);
    assert_int_equal(rs_hlc_cmp(5, &a, 5, &a), 0);
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return (a > b) - (a < b);
}

static int cmp_text(const void *x, const void *y)
{
    return strcmp((const char *)x, (const char *)y);
}

static int sign(int v)
{
    return (v > 0) - (v < 0);
}

static void hlc_text_sorts_as_the_clock_orders(void **state)
{
    enum { N = 20000 };
    static uint64_t values[N];
    static char texts[N][RS_HLC_STRLEN + 1];
    (void)state;

    for (size_t i = 0; i < N; i++) {
        /* Mix magnitudes so leading zero digits vary. */
        uint64_t v = next_rand();
        values[i] = v >> (next_rand() % 64);
    }
    values[0] = 0;
    values[1] = UINT64_MAX;
    values[2] = RS_HLC_MAKE(1, 0);
    values[3] = RS_HLC_MAKE(0, 0xffff);
    for (size_t i = 0; i + 1 < N; i++) {
        char a[RS_HLC_STRLEN + 1], b[RS_HLC_STRLEN + 1];
        rs_hlc_format(a, values[i]);
        rs_hlc_format(b, values[i + 1]);
        assert_int_equal(strlen(a), RS_HLC_STRLEN);
        assert_int_equal(sign(strcmp(a, b)), cmp_u64(&values[i], &values[i + 1]));
    }
    /* Sorting the texts gives the texts of the sorted clocks. */
    for (size_t i = 0; i < N; i++)
        rs_hlc_format(texts[i], values[i]);
    qsort(values, N, sizeof(values[0]), cmp_u64);
    qsort(texts, N, sizeof(texts[0]), cmp_text);
    for (size_t i = 0; i < N; i++) {
        char want[RS_HLC_STRLEN + 1];
        rs_hlc_format(want, values[i]);
        assert_string_equal(texts[i], want);
    }
}

static void hlc_text_round_trips(void **state)
{
    (void)state;
    for (int i = 0; i < 10000; i++) {
        rs_hlc h = next_rand() >> (i % 64), back = 0;
        char text[RS_HLC_STRLEN + 1];
        rs_hlc_format(text, h);
        assert_int_equal(rs_hlc_parse(&back, text), 0);
        assert_int_equal(back, h);
    }
}

static void hlc_parse_rejects_malformed_text(void **state)
{
    static const char *const bad[] = {
        "",
        "0",
        "000000000000000",   /* 15 digits */
        "00000000000000000", /* 17 digits */
        "000000000000000g",
        "00000000 0000000",
        " 000000000000000",
        "000000000000000 ",
        "0x00000000000000",
        "-000000000000001",
        "+000000000000001",
        "00000000000000AB", /* uppercase would not sort with lowercase */
        "0123456789ABCDEF",
        "zzzzzzzzzzzzzzzz",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rs_hlc h = 42;
        rs_error_clear();
        if (rs_hlc_parse(&h, bad[i]) != RS_EINVAL)
            fail_msg("'%s' was accepted as a clock", bad[i]);
        assert_int_equal(h, 42);
        assert_true(strstr(rs_error_last(), "clock") != NULL);
    }
    {
        rs_hlc h = 42;
        assert_int_equal(rs_hlc_parse(&h, NULL), RS_EINVAL);
        assert_int_equal(h, 42);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hlc_stays_monotonic_when_wall_clock_steps_back),
        cmocka_unit_test(hlc_stays_monotonic_over_a_random_walk_of_the_wall_clock),
        cmocka_unit_test(hlc_counter_bumps_within_one_millisecond),
        cmocka_unit_test(hlc_takes_the_wall_clock_and_resets_the_counter_when_it_advances),
        cmocka_unit_test(hlc_tick_counter_overflow_is_eclock_and_leaves_clock_unchanged),
        cmocka_unit_test(hlc_default_drift_bound_is_five_minutes),
        cmocka_unit_test(hlc_refuses_a_received_clock_beyond_the_drift_bound_naming_the_device),
        cmocka_unit_test(hlc_accepts_a_received_clock_within_the_drift_bound),
        cmocka_unit_test(hlc_merge_takes_the_max_of_local_received_and_now),
        cmocka_unit_test(hlc_merge_orders_after_local_and_received_for_random_clocks),
        cmocka_unit_test(hlc_recv_counter_overflow_is_eclock_and_leaves_clock_unchanged),
        cmocka_unit_test(hlc_cmp_orders_by_clock_then_host),
        cmocka_unit_test(hlc_text_sorts_as_the_clock_orders),
        cmocka_unit_test(hlc_text_round_trips),
        cmocka_unit_test(hlc_parse_rejects_malformed_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
