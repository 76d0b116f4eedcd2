/*
 * The record wire format: an upload body (recsyncd's POST /records, built
 * as fuzz_upload) or a page (the client's GET /records answer, built as
 * fuzz_page with FUZZ_PAGE). Whatever decodes must re-encode, and the
 * encoding must decode to the same records; the decode is repeated with a
 * small envelope bound so the size check runs too. And the decoder's two
 * paths must agree: the same text with an unknown member put first
 * ({"\u0078":0, ...), which the fast scanner gives up on, decodes on the
 * jansson path to the same outcome and the same records.
 */
#include "fuzz.h"

#ifdef FUZZ_PAGE
#define KIND RS_WIRE_PAGE
#else
#define KIND RS_WIRE_UPLOAD
#endif

static int same_record(const rs_record *a, const rs_record *b)
{
    return rs_uuid_cmp(&a->id, &b->id) == 0 && rs_uuid_cmp(&a->host, &b->host) == 0 &&
           strcmp(a->tag, b->tag) == 0 && a->idx == b->idx && a->hlc == b->hlc &&
           a->version == b->version && a->data_len == b->data_len &&
           (a->data_len == 0 || memcmp(a->data, b->data, a->data_len) == 0);
}

/* Decodes `text` with an unknown first member; checks it matches `batch` and `err`. */
static void check_slow_path(const rs_wire_batch *batch, int err, const char *text, size_t size)
{
    static const char prefix[] = "{\"\\u0078\":0,";
    rs_wire_batch slow = {0};
    size_t skip = 0, len;
    char *alt;
    int slow_err;

    while (skip < size &&
           (text[skip] == ' ' || text[skip] == '\t' || text[skip] == '\n' || text[skip] == '\r'))
        skip++;
    if (skip == size || text[skip] != '{')
        return;
    len = sizeof(prefix) - 1 + size - skip - 1;
    alt = malloc(len + 1);
    CHECK(alt != NULL);
    memcpy(alt, prefix, sizeof(prefix) - 1);
    memcpy(alt + sizeof(prefix) - 1, text + skip + 1, size - skip - 1);
    alt[len] = '\0';
    slow_err = rs_wire_decode_records(&slow, alt, len, KIND, 0);
    if (err == 0) {
        CHECK(slow_err == 0);
        CHECK(slow.count == batch->count);
        for (size_t i = 0; i < batch->count; i++)
            CHECK(same_record(&batch->records[i], &slow.records[i]));
        CHECK(slow.has_next == batch->has_next && slow.next == batch->next);
    } else {
        CHECK(slow_err == err);
    }
    rs_wire_batch_free(&slow);
    free(alt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_wire_batch batch = {0}, again = {0};
    rs_buf buf = {0};
    int err = rs_wire_decode_records(&batch, (const char *)data, size, KIND, 0), first = err;

    CHECK(err == 0 || err == RS_EINVAL || err == RS_ETOOBIG);
    check_slow_path(&batch, err, (const char *)data, size);
    if (err < 0) {
        CHECK(batch.count == 0);
        goto small;
    }
    CHECK(rs_wire_records_begin(&buf) == 0);
    for (size_t i = 0; i < batch.count; i++) {
        const rs_record *rec = &batch.records[i];
        CHECK(rec->data_len >= RS_ENVELOPE_OVERHEAD && rec->data_len <= RS_WIRE_DEFAULT_MAX_DATA);
        CHECK(memcmp(rec->data, RS_ENVELOPE_MAGIC, 4) == 0 ||
              memcmp(rec->data, RS_ENVELOPE_MAGIC_CHAINED, 4) == 0);
        CHECK(rec->idx <= (uint64_t)INT64_MAX);
        CHECK(rs_wire_records_add(&buf, rec) == 0);
    }
    if (KIND == RS_WIRE_PAGE)
        CHECK(rs_wire_page_end(&buf, batch.has_next, batch.next) == 0);
    else
        CHECK(rs_wire_upload_end(&buf) == 0);
    CHECK(rs_wire_decode_records(&again, buf.ptr, buf.len, KIND, 0) == 0);
    CHECK(again.count == batch.count);
    for (size_t i = 0; i < batch.count; i++) {
        CHECK(same_record(&batch.records[i], &again.records[i]));
        CHECK(rs_wire_record_size(&batch.records[i]) > 0);
    }
    if (KIND == RS_WIRE_PAGE)
        CHECK(again.has_next == batch.has_next && (!batch.has_next || again.next == batch.next));
small:
    err = rs_wire_decode_records(&again, (const char *)data, size, KIND, RS_ENVELOPE_OVERHEAD + 8);
    CHECK(err == 0 || err == RS_EINVAL || err == RS_ETOOBIG);
    CHECK(first == 0 || err < 0);
    CHECK(err == 0 || again.count == 0);
    for (size_t i = 0; err == 0 && i < again.count; i++)
        CHECK(again.records[i].data_len <= RS_ENVELOPE_OVERHEAD + 8);
    rs_buf_free(&buf);
    rs_wire_batch_free(&batch);
    rs_wire_batch_free(&again);
    return 0;
}
