/*
 * recsyncd's POST /acks body, a frontier: what decodes re-encodes to the
 * same shards and ends, and no shard is listed twice.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_index *frontier = NULL, *again = NULL;
    rs_buf buf = {0};
    int err = rs_wire_frontier_decode(&frontier, (const char *)data, size);

    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0)
        return 0;
    for (size_t i = 0; i < frontier->count; i++) {
        CHECK(rs_tag_valid(frontier->shards[i].tag));
        CHECK(frontier->shards[i].start == 0);
        for (size_t j = 0; j < i; j++)
            CHECK(rs_uuid_cmp(&frontier->shards[i].host, &frontier->shards[j].host) != 0 ||
                  strcmp(frontier->shards[i].tag, frontier->shards[j].tag) != 0);
    }
    CHECK(rs_wire_frontier_encode(&buf, frontier) == 0);
    CHECK(rs_wire_frontier_decode(&again, buf.ptr, buf.len) == 0);
    CHECK(fuzz_index_equal(frontier, again, 0));
    rs_index_free(frontier);
    rs_index_free(again);
    rs_buf_free(&buf);
    return 0;
}
