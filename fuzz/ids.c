/*
 * UUID, clock and tag text (record and shard fields, query arguments) and
 * the hex of an Authorization token: rs_uuid_parse, rs_hlc_parse,
 * rs_tag_valid and rs__unhex on the same NUL-terminated text. What a
 * parser accepts formats back to the same text (case aside for hex).
 */
#include "fuzz.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), out[RS_UUID_STRLEN + 1];
    rs_uuid id;
    rs_hlc hlc;
    uint8_t bytes[16];
    size_t n;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (rs_uuid_parse(&id, text) == 0) {
        rs_uuid_format(out, &id);
        CHECK(strlen(text) == RS_UUID_STRLEN && strcasecmp(out, text) == 0);
    }
    if (rs_hlc_parse(&hlc, text) == 0) {
        rs_hlc_format(out, hlc);
        CHECK(strcmp(out, text) == 0);
    }
    if (rs_tag_valid(text)) {
        n = strlen(text);
        CHECK(n >= 1 && n <= RS_TAG_MAX &&
              strspn(text, "abcdefghijklmnopqrstuvwxyz0123456789._-") == n);
    }
    if (rs__unhex(bytes, sizeof(bytes), text) == 0) {
        rs__hex(out, bytes, sizeof(bytes));
        CHECK(strcasecmp(out, text) == 0);
    }
    free(text);
    return 0;
}
