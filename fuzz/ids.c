/*
 * UUID and clock text (record and shard fields, URL path segments):
 * rs_uuid_parse and rs_hlc_parse on the same NUL-terminated text. What a
 * parser accepts formats back to the same text (case aside for UUIDs).
 */
#include "fuzz.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), out[RS_UUID_STRLEN + 1];
    rs_uuid id;
    rs_hlc hlc;

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
    free(text);
    return 0;
}
