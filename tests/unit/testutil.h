/*
 * Helpers shared by the unit tests (header only: each test is one program).
 * Temporary directories live under $TMPDIR (else /tmp) and are removed by
 * the test's teardown, pass or fail.
 */
#ifndef RS_TESTUTIL_H
#define RS_TESTUTIL_H

#include <dirent.h>
#include <sys/stat.h>
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

/* rm -rf `path` (does not follow symbolic links). */
static inline void test_rmtree(const char *path)
{
    struct stat st;
    DIR *dir;
    struct dirent *ent;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode) && (dir = opendir(path)) != NULL) {
        while ((ent = readdir(dir)) != NULL) {
            char child[TEST_PATH_MAX * 2];
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
                continue;
            if ((size_t)snprintf(child, sizeof(child), "%s/%s", path, ent->d_name) >= sizeof(child))
                continue;
            test_rmtree(child);
        }
        closedir(dir);
    }
    remove(path);
}

/* Whether `haystack` contains `needle` (for checking what a message names). */
static inline int test_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

#endif
