/*
 * The random pool (random.c): output that is not constant, not repeated,
 * spread over every byte value; different in two threads; and different in
 * parent and child after fork (the fork generation), and in a child made
 * without fork's handlers (the pool's MADV_WIPEONFORK page).
 */
#define _GNU_SOURCE /* _Fork */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int setup(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

static void draws_differ_and_cover_every_byte_value(void **state)
{
    enum { DRAWS = 20000, LEN = 40 };
    static uint8_t out[DRAWS][LEN];
    unsigned counts[256] = {0};
    (void)state;
    for (int i = 0; i < DRAWS; i++)
        rs__random(out[i], LEN);
    for (int i = 1; i < DRAWS; i++)
        assert_memory_not_equal(out[i], out[i - 1], LEN);
    for (int i = 0; i < DRAWS; i++)
        for (int k = 0; k < LEN; k++)
            counts[out[i][k]]++;
    /* 800,000 bytes: 3125 expected per value; 5 sigma is about 280. */
    for (int v = 0; v < 256; v++)
        if (counts[v] < 2800 || counts[v] > 3450)
            fail_msg("byte value %d appeared %u times in 800000 bytes", v, counts[v]);
}

static void sizes_from_one_byte_to_past_the_block(void **state)
{
    uint8_t big[2048], zero[2048] = {0};
    (void)state;
    for (size_t len = 1; len <= sizeof(big); len = len * 2 + 1) {
        memset(big, 0, sizeof(big));
        rs__random(big, len);
        /* A draw of 16+ bytes that is all zero has odds of 2^-128. */
        if (len >= 16)
            assert_memory_not_equal(big, zero, len);
        assert_memory_equal(big + len, zero, sizeof(big) - len); /* nothing past len */
    }
}

static void *draw_in_thread(void *arg)
{
    rs__random(arg, 32);
    return NULL;
}

static void threads_draw_different_bytes(void **state)
{
    uint8_t a[32], b[32];
    pthread_t t1, t2;
    (void)state;
    assert_int_equal(pthread_create(&t1, NULL, draw_in_thread, a), 0);
    assert_int_equal(pthread_create(&t2, NULL, draw_in_thread, b), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_memory_not_equal(a, b, sizeof(a));
}

/* Draws 32 bytes in a child made by `make_child` and in the parent after it; they must differ. */
static void expect_child_and_parent_differ(pid_t (*make_child)(void))
{
    uint8_t mine[32], theirs[32];
    int fds[2];
    rs__random(mine, 8); /* the pool is seeded and holds unused bytes */
    assert_int_equal(pipe(fds), 0);
    pid_t pid = make_child();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint8_t b[32];
        rs__random(b, sizeof(b));
        _exit(write(fds[1], b, sizeof(b)) == (ssize_t)sizeof(b) ? 0 : 1);
    }
    rs__random(mine, sizeof(mine));
    close(fds[1]);
    assert_int_equal(read(fds[0], theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_memory_not_equal(mine, theirs, sizeof(mine));
}

static void parent_and_child_differ_after_fork(void **state)
{
    (void)state;
    expect_child_and_parent_differ(fork);
}

/*
 * _Fork makes a child without running pthread_atfork handlers, as a raw
 * clone does: only the pool's MADV_WIPEONFORK page tells the child to
 * reseed.
 */
static void a_child_made_without_atfork_handlers_differs_too(void **state)
{
    (void)state;
    expect_child_and_parent_differ(_Fork);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(draws_differ_and_cover_every_byte_value),
        cmocka_unit_test(sizes_from_one_byte_to_past_the_block),
        cmocka_unit_test(threads_draw_different_bytes),
        cmocka_unit_test(parent_and_child_differ_after_fork),
        cmocka_unit_test(a_child_made_without_atfork_handlers_differs_too),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
