/*
 * Helpers shared by the unit tests (header only: each test is one program).
 * Temporary directories live under $TMPDIR (else /tmp) and are removed by
 * the test's teardown, pass or fail.
 */
#ifndef RS_TESTUTIL_H
#define RS_TESTUTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_PATH_MAX 512

/* Makes a fresh empty directory; its path goes into out[TEST_PATH_MAX]. */
static inline int test_tempdir(char *out)
{
    const char *base = getenv("TMPDIR");
    snprintf(out, TEST_PATH_MAX, "%s/rs-unit-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(out) ? 0 : -1;
}

static inline int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf `path`. */
static inline void test_rmtree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Whether `haystack` contains `needle` (for checking what a message names). */
static inline int test_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

#endif
