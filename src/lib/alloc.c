/*
 * The one place librecsync allocates, so tests can fail the Nth allocation
 * (as SQLite's faultsim and curl's torture mode do).
 */
#include "internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_ulong fail_countdown;

void rs__alloc_fail_at(unsigned long n)
{
    atomic_store(&fail_countdown, n);
}

/* True when this allocation is the one a test asked to fail. */
static bool should_fail(void)
{
    unsigned long n = atomic_load(&fail_countdown);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1))
            return n == 1;
    }
    return false;
}

void *rs__malloc(size_t size)
{
    if (should_fail())
        return NULL;
    return malloc(size ? size : 1);
}

void *rs__calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *rs__realloc(void *ptr, size_t size)
{
    if (should_fail())
        return NULL;
    return realloc(ptr, size ? size : 1);
}

char *rs__strdup(const char *s)
{
    return rs__strndup(s, strlen(s));
}

char *rs__strndup(const char *s, size_t n)
{
    char *copy = rs__malloc(n + 1);
    if (copy) {
        memcpy(copy, s, n);
        copy[n] = '\0';
    }
    return copy;
}

void rs_free(void *ptr)
{
    free(ptr);
}
