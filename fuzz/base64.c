/*
 * The record data decoder: rs_base64_decode must accept exactly what
 * libsodium's sodium_base642bin (original variant, padding, no ignored
 * characters) accepts, decode to the same bytes, and re-encode to the
 * input. Except bytes of 0x80 and up: libsodium 1.0.18 (Debian 12) takes
 * them for base64 digits ("AAAA\xeaAAA" decodes to 6 bytes; found by this
 * target), rs_base64_decode rightly refuses any text holding one.
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
    size_t room = size / 4 * 3 + 1, ours_len = 0, theirs_len = 0;
    uint8_t *ours = malloc(room), *theirs = malloc(room);
    char *text = malloc(size + 1), *again = malloc(RS_BASE64_LEN(room) + 1);
    const char *end = NULL;
    int ours_ok, theirs_ok, ascii = 1;

    CHECK(ours && theirs && text && again);
    memcpy(text, data, size);
    text[size] = '\0';
    ours_ok = rs_base64_decode(ours, &ours_len, text, size) == 0;
    theirs_ok = sodium_base642bin(theirs, room, text, size, NULL, &theirs_len, &end,
                                  sodium_base64_VARIANT_ORIGINAL) == 0 &&
                end == text + size;
    for (size_t i = 0; i < size; i++)
        ascii &= data[i] < 0x80;
    CHECK(ascii || !ours_ok);
    CHECK(!ascii || ours_ok == theirs_ok);
    if (ours_ok) {
        CHECK(ours_len == theirs_len && memcmp(ours, theirs, ours_len) == 0);
        CHECK(rs_base64_encode(again, ours, ours_len) == size);
        CHECK(memcmp(again, text, size) == 0);
    }
    free(ours);
    free(theirs);
    free(text);
    free(again);
    return 0;
}
