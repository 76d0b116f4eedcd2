/*
 * The index (GET /index, decoded by the client) and the boot document
 * (GET /boot), which nests one: what decodes must re-encode to the same
 * shards, seq, user and resume point. Built as fuzz_index, and as
 * fuzz_boot with FUZZ_BOOT.
 */
#include "fuzz.h"

static void check_index(const rs_index *index)
{
    for (size_t i = 0; i < index->count; i++) {
        CHECK(rs_tag_valid(index->shards[i].tag));
        CHECK(index->shards[i].start <= index->shards[i].end);
    }
}

#ifdef FUZZ_BOOT
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_wire_boot boot, again;
    rs_buf buf = {0};
    int err = rs_wire_boot_decode(&boot, (const char *)data, size);

    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0) {
        CHECK(boot.user == NULL && boot.index == NULL);
        return 0;
    }
    check_index(boot.index);
    CHECK(rs_wire_boot_encode(&buf, boot.user, boot.index, boot.resume_point) == 0);
    CHECK(rs_wire_boot_decode(&again, buf.ptr, buf.len) == 0);
    CHECK(strcmp(boot.user, again.user) == 0);
    CHECK(boot.resume_point == again.resume_point);
    CHECK(boot.index->seq == again.index->seq);
    CHECK(fuzz_index_equal(boot.index, again.index, 1));
    rs_wire_boot_clear(&boot);
    rs_wire_boot_clear(&again);
    rs_buf_free(&buf);
    return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_index *index = NULL, *again = NULL;
    rs_buf buf = {0};
    int err = rs_wire_index_decode(&index, (const char *)data, size);

    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0)
        return 0;
    check_index(index);
    CHECK(rs_wire_index_encode(&buf, index) == 0);
    CHECK(rs_wire_index_decode(&again, buf.ptr, buf.len) == 0);
    CHECK(index->seq == again->seq);
    CHECK(fuzz_index_equal(index, again, 1));
    rs_index_free(index);
    rs_index_free(again);
    rs_buf_free(&buf);
    return 0;
}
#endif
