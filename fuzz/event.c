/*
 * The data line of a live `records` event (GET /events, read by the
 * client): what decodes re-encodes to the same event.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_wire_event ev, again;
    rs_buf buf = {0};
    int err;

    memset(&ev, 0, sizeof(ev));
    memset(&again, 0, sizeof(again));
    err = rs_wire_event_decode(&ev, (const char *)data, size);
    CHECK(err == 0 || err == RS_EINVAL);
    if (err < 0)
        return 0;
    CHECK(rs_tag_valid(ev.tag) && ev.start <= ev.end);
    CHECK(rs_wire_event_encode(&buf, &ev) == 0);
    CHECK(rs_wire_event_decode(&again, buf.ptr, buf.len) == 0);
    CHECK(rs_uuid_cmp(&ev.host, &again.host) == 0 && strcmp(ev.tag, again.tag) == 0);
    CHECK(ev.start == again.start && ev.end == again.end && ev.seq == again.seq);
    rs_buf_free(&buf);
    return 0;
}
