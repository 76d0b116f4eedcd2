/*
 * Shared by the libFuzzer targets in this directory: the entry points
 * libFuzzer calls (declared here for -Wmissing-prototypes) and CHECK, which
 * aborts with a message when a property of a parser does not hold, so the
 * fuzzer records the input as a crash.
 */
#ifndef RS_FUZZ_H
#define RS_FUZZ_H

#include "internal.h"
#include "wire.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s (last error: %s)\n", __FILE__, __LINE__,   \
                    #cond, rs_error_last());                                                       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Two indexes list the same shards in the same order. */
static inline int fuzz_index_equal(const rs_index *a, const rs_index *b, int with_start)
{
    if (a->count != b->count)
        return 0;
    for (size_t i = 0; i < a->count; i++) {
        const rs_shard *x = &a->shards[i], *y = &b->shards[i];
        if (rs_uuid_cmp(&x->host, &y->host) != 0 || strcmp(x->tag, y->tag) != 0 ||
            x->end != y->end || (with_start && x->start != y->start))
            return 0;
    }
    return 1;
}

#endif
