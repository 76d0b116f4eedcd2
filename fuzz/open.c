/*
 * Envelope open: rs__open under one fixed key on arbitrary bytes as a
 * record's data, which either open (the seeds are envelopes sealed under
 * that key for the header below) to a payload of the right length or are
 * refused (RS_ECRYPTO, RS_EKEY), never reading outside them. Then the same bytes as a payload:
 * sealed and opened again they come back unchanged, and a flipped byte of the envelope is refused.
 */
#include "fuzz.h"

#include <sodium.h>

static rs_key *key;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint8_t bytes[RS_KEY_BYTES];
    if (sodium_init() < 0)
        abort();
    for (size_t i = 0; i < sizeof(bytes); i++)
        bytes[i] = (uint8_t)(i * 7 + 1);
    if (rs__key_from_bytes(&key, bytes) < 0)
        abort();
    return 0;
}

static void header(rs_record *rec)
{
    memset(rec, 0, sizeof(*rec));
    for (size_t i = 0; i < sizeof(rec->id.bytes); i++) {
        rec->id.bytes[i] = (uint8_t)i;
        rec->host.bytes[i] = (uint8_t)(0xa0 + i);
    }
    strcpy(rec->tag, "kv");
    rec->idx = 3;
    rec->hlc = 0x0190000000000001ULL;
    rec->version = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_record rec;
    uint8_t *plain = NULL, *sealed = NULL, id[RS_KEY_ID_BYTES];
    size_t plain_len = 0;
    int err;

    header(&rec);
    rec.data = data;
    rec.data_len = size;
    err = rs__open(NULL, &plain_len, key, &rec);
    CHECK(err == 0 || err == RS_ECRYPTO || err == RS_EKEY);
    CHECK(err < 0 || plain_len == size - RS_ENVELOPE_OVERHEAD);
    err = rs__envelope_key_id(id, data, size);
    CHECK(err == 0 || err == RS_ECRYPTO);
    if (size >= RS_ENVELOPE_OVERHEAD) {
        plain = malloc(size - RS_ENVELOPE_OVERHEAD + 1);
        CHECK(plain != NULL);
        err = rs__open(plain, &plain_len, key, &rec);
        CHECK(err == 0 || err == RS_ECRYPTO || err == RS_EKEY);
        free(plain);
    }

    sealed = malloc(rs__envelope_len(size));
    plain = malloc(size + 1);
    CHECK(sealed != NULL && plain != NULL);
    CHECK(rs__seal(sealed, key, &rec, data, size) == 0);
    rec.data = sealed;
    rec.data_len = rs__envelope_len(size);
    CHECK(rs__open(plain, &plain_len, key, &rec) == 0);
    CHECK(plain_len == size && (size == 0 || memcmp(plain, data, size) == 0));
    sealed[size % rec.data_len] ^= 0x01;
    CHECK(rs__open(plain, &plain_len, key, &rec) < 0);
    free(sealed);
    free(plain);
    return 0;
}
