/*
 * `key import`: rs__key_from_text on arbitrary text. A key that imports
 * exports to text that imports to the same key.
 */
#include "fuzz.h"

#include <sodium.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (sodium_init() < 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_key *key = NULL, *again = NULL;
    char *text = malloc(size + 1), *out = NULL;
    int err;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    err = rs__key_from_text(&key, text);
    CHECK(err == 0 || err == RS_EINVAL);
    if (err == 0) {
        CHECK(rs__key_to_text(&out, key) == 0);
        CHECK(rs__key_from_text(&again, out) == 0);
        CHECK(memcmp(key->bytes, again->bytes, RS_KEY_BYTES) == 0);
        CHECK(memcmp(key->id, again->id, RS_KEY_ID_BYTES) == 0);
    }
    rs__key_free(key);
    rs__key_free(again);
    rs_free(out);
    free(text);
    return 0;
}
