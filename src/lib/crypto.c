/*
 * The master key and the record envelope (see internal.h for the layout).
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define KEY_TEXT_PREFIX "rsk1:"
#define KEY_CHECKSUM_BYTES 4
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define AD_MAX (16 + 16 + 1 + RS_TAG_MAX + 8 + 8 + 4 + 4 + RS_KEY_ID_BYTES)

#define OFF_KEY_ID 4
#define OFF_WRAP_NONCE (OFF_KEY_ID + RS_KEY_ID_BYTES)
#define OFF_WRAPPED (OFF_WRAP_NONCE + NONCE_BYTES)
#define OFF_NONCE (OFF_WRAPPED + RS_KEY_BYTES + TAG_BYTES)
#define OFF_CIPHERTEXT (OFF_NONCE + NONCE_BYTES)

_Static_assert(OFF_CIPHERTEXT + TAG_BYTES == RS_ENVELOPE_OVERHEAD, "envelope layout");

static const char key_id_context[] = "recsync key id v1";
static const char chain_context[] = "recsync chain key v1";
static const char check_context[] = "recsync check key v1";

static void compute_key_id(uint8_t *out, const uint8_t *key)
{
    crypto_generichash(out, RS_KEY_ID_BYTES, key, RS_KEY_BYTES, (const uint8_t *)key_id_context,
                       sizeof(key_id_context) - 1);
}

/* A key of `len` bytes derived from `master` for `context`, in sodium_malloc memory; NULL when
 * there is none. */
static uint8_t *derive(const uint8_t *master, size_t len, const char *context)
{
    uint8_t *k = sodium_malloc(len);
    if (k != NULL)
        crypto_generichash(k, len, (const uint8_t *)context, strlen(context), master, RS_KEY_BYTES);
    return k;
}

int rs__key_from_bytes(rs_key **out, const uint8_t *bytes)
{
    rs_key *key = rs__calloc(1, sizeof(*key));
    if (key == NULL)
        return rs__error(RS_ENOMEM, "out of memory allocating a key");
    key->bytes = sodium_malloc(RS_KEY_BYTES);
    if (key->bytes == NULL) {
        rs_free(key);
        return rs__error(RS_ENOMEM, "out of secure memory for the master key");
    }
    memcpy(key->bytes, bytes, RS_KEY_BYTES);
    compute_key_id(key->id, key->bytes);
    if ((key->chain = derive(key->bytes, RS_CHAIN_BYTES, chain_context)) == NULL ||
        (key->check = derive(key->bytes, crypto_shorthash_KEYBYTES, check_context)) == NULL) {
        rs__key_free(key);
        return rs__error(RS_ENOMEM, "out of secure memory for the keys derived from a master key");
    }
    *out = key;
    return 0;
}

int rs__key_new(rs_key **out)
{
    uint8_t bytes[RS_KEY_BYTES];
    crypto_aead_xchacha20poly1305_ietf_keygen(bytes);
    int err = rs__key_from_bytes(out, bytes);
    sodium_memzero(bytes, sizeof(bytes));
    return err;
}

void rs__key_free(rs_key *key)
{
    while (key != NULL) {
        rs_key *next = key->next;
        sodium_free(key->bytes);
        if (key->chain)
            sodium_free(key->chain);
        if (key->check)
            sodium_free(key->check);
        rs_free(key);
        key = next;
    }
}

void rs__key_id_hex(char *out, const uint8_t *id)
{
    rs__hex(out, id, RS_KEY_ID_BYTES);
}

void rs_store_key_id(char *out, const rs_store *store)
{
    rs__key_id_hex(out, store->key->id);
}

/*
 * Text form: "rsk1:" then URL-safe base64 (no padding) of the key followed
 * by a 4-byte BLAKE2b checksum, so a mistyped or truncated key is caught at
 * import instead of producing a store whose records nobody can open.
 */
int rs__key_to_text(char **out, const rs_key *key)
{
    uint8_t raw[RS_KEY_BYTES + KEY_CHECKSUM_BYTES];
    size_t b64len =
        sodium_base64_encoded_len(sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *text = rs__malloc(sizeof(KEY_TEXT_PREFIX) - 1 + b64len);
    if (text == NULL)
        return rs__error(RS_ENOMEM, "out of memory exporting the key");
    memcpy(raw, key->bytes, RS_KEY_BYTES);
    crypto_generichash(raw + RS_KEY_BYTES, KEY_CHECKSUM_BYTES, key->bytes, RS_KEY_BYTES, NULL, 0);
    memcpy(text, KEY_TEXT_PREFIX, sizeof(KEY_TEXT_PREFIX) - 1);
    sodium_bin2base64(text + sizeof(KEY_TEXT_PREFIX) - 1, b64len, raw, sizeof(raw),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    *out = text;
    return 0;
}

int rs__key_from_text(rs_key **out, const char *text)
{
    uint8_t raw[RS_KEY_BYTES + KEY_CHECKSUM_BYTES], check[KEY_CHECKSUM_BYTES];
    size_t len = 0;
    const char *end = NULL;
    int err;

    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    if (strncmp(text, KEY_TEXT_PREFIX, sizeof(KEY_TEXT_PREFIX) - 1) != 0)
        return rs__error(RS_EINVAL, "key text does not start with '%s': not a recsync key",
                         KEY_TEXT_PREFIX);
    text += sizeof(KEY_TEXT_PREFIX) - 1;
    if (sodium_base642bin(raw, sizeof(raw), text, strlen(text), " \t\r\n", &len, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        len != sizeof(raw) || (end && *end != '\0'))
        return rs__error(RS_EINVAL, "key text is malformed: expected %zu bytes of base64url",
                         sizeof(raw));
    crypto_generichash(check, sizeof(check), raw, RS_KEY_BYTES, NULL, 0);
    if (sodium_memcmp(check, raw + RS_KEY_BYTES, sizeof(check)) != 0) {
        sodium_memzero(raw, sizeof(raw));
        return rs__error(RS_EINVAL, "key text checksum does not match: the key was mistyped "
                                    "or truncated");
    }
    err = rs__key_from_bytes(out, raw);
    sodium_memzero(raw, sizeof(raw));
    return err;
}

/*
 * The associated data: the record header, the envelope magic and the key
 * id. A server that moves a record to another shard or idx, or edits any
 * header field, makes both AEADs fail.
 */
static size_t build_ad(uint8_t *ad, const rs_record *rec, const uint8_t *key_id, const char *magic)
{
    size_t n = 0, taglen = strlen(rec->tag);
    memcpy(ad + n, rec->id.bytes, 16);
    n += 16;
    memcpy(ad + n, rec->host.bytes, 16);
    n += 16;
    ad[n++] = (uint8_t)taglen;
    memcpy(ad + n, rec->tag, taglen);
    n += taglen;
    for (int i = 7; i >= 0; i--)
        ad[n++] = (uint8_t)(rec->idx >> (8 * i));
    for (int i = 7; i >= 0; i--)
        ad[n++] = (uint8_t)(rec->hlc >> (8 * i));
    for (int i = 3; i >= 0; i--)
        ad[n++] = (uint8_t)(rec->version >> (8 * i));
    memcpy(ad + n, magic, 4);
    n += 4;
    memcpy(ad + n, key_id, RS_KEY_ID_BYTES);
    n += RS_KEY_ID_BYTES;
    return n;
}

static int seal(uint8_t *out, const rs_key *key, const rs_record *rec, const char *magic,
                const uint8_t *prefix, size_t prefix_len, const uint8_t *plain, size_t len);

int rs__seal(uint8_t *out, const rs_key *key, const rs_record *rec, const uint8_t *plain,
             size_t len)
{
    return seal(out, key, rec, RS_ENVELOPE_MAGIC, NULL, 0, plain, len);
}

int rs__seal_chained(uint8_t *out, const rs_key *key, const rs_record *rec, const uint8_t *prev,
                     const uint8_t *plain, size_t len)
{
    return seal(out, key, rec, RS_ENVELOPE_MAGIC_CHAINED, prev, RS_CHAIN_BYTES, plain, len);
}

/*
 * Seals prefix || plain (the prefix: a chained record's predecessor) under
 * a fresh CEK wrapped by the master key, header and magic as AD.
 */
static int seal(uint8_t *out, const rs_key *key, const rs_record *rec, const char *magic,
                const uint8_t *prefix, size_t prefix_len, const uint8_t *plain, size_t len)
{
    /* Both nonces and the CEK from one draw of the random pool (random.c). */
    uint8_t ad[AD_MAX], fresh[2 * NONCE_BYTES + RS_KEY_BYTES];
    const uint8_t *cek = fresh + 2 * NONCE_BYTES;
    size_t adlen;

    if (strlen(rec->tag) > RS_TAG_MAX)
        return rs__error(RS_EINVAL, "tag '%.70s' is longer than %d characters", rec->tag,
                         RS_TAG_MAX);
    adlen = build_ad(ad, rec, key->id, magic);
    rs__random(fresh, sizeof(fresh));
    memcpy(out, magic, 4);
    memcpy(out + OFF_KEY_ID, key->id, RS_KEY_ID_BYTES);
    memcpy(out + OFF_WRAP_NONCE, fresh, NONCE_BYTES);
    memcpy(out + OFF_NONCE, fresh + NONCE_BYTES, NONCE_BYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + OFF_WRAPPED, NULL, cek, RS_KEY_BYTES, ad,
                                               adlen, NULL, out + OFF_WRAP_NONCE, key->bytes);
    if (prefix_len == 0) {
        crypto_aead_xchacha20poly1305_ietf_encrypt(out + OFF_CIPHERTEXT, NULL, plain, len, ad,
                                                   adlen, NULL, out + OFF_NONCE, cek);
    } else {
        /* Encrypted in place: prefix and payload laid out where the ciphertext goes. */
        memcpy(out + OFF_CIPHERTEXT, prefix, prefix_len);
        if (len)
            memcpy(out + OFF_CIPHERTEXT + prefix_len, plain, len);
        crypto_aead_xchacha20poly1305_ietf_encrypt(out + OFF_CIPHERTEXT, NULL, out + OFF_CIPHERTEXT,
                                                   prefix_len + len, ad, adlen, NULL,
                                                   out + OFF_NONCE, cek);
    }
    sodium_memzero(fresh, sizeof(fresh));
    return 0;
}

/* Whether `data` starts with a magic this build opens: 1 format 1, 2 format 2, else 0. */
static int envelope_format(const uint8_t *data, size_t len)
{
    if (len < RS_ENVELOPE_OVERHEAD)
        return 0;
    if (memcmp(data, RS_ENVELOPE_MAGIC, 4) == 0)
        return 1;
    if (memcmp(data, RS_ENVELOPE_MAGIC_CHAINED, 4) == 0 &&
        len >= RS_ENVELOPE_OVERHEAD + RS_CHAIN_BYTES)
        return 2;
    return 0;
}

int rs__envelope_key_id(uint8_t *out, const uint8_t *data, size_t len)
{
    if (envelope_format(data, len) == 0)
        return rs__error(RS_ECRYPTO, "not a recsync envelope (%zu bytes, bad magic or too short)",
                         len);
    memcpy(out, data + OFF_KEY_ID, RS_KEY_ID_BYTES);
    return 0;
}

int rs__open(uint8_t *out, size_t *out_len, const rs_key *key, const rs_record *rec)
{
    return rs__open_chained(out, out_len, NULL, NULL, key, rec);
}

int rs__open_chained(uint8_t *out, size_t *out_len, uint8_t *prev, int *chained, const rs_key *key,
                     const rs_record *rec)
{
    uint8_t ad[AD_MAX], cek[RS_KEY_BYTES], *scratch = NULL;
    char name[200];
    size_t adlen, plain_len;
    unsigned long long cek_len = 0;
    int err = 0, format = envelope_format(rec->data, rec->data_len);

    if (chained)
        *chained = format == 2;
    if (prev)
        memset(prev, 0, RS_CHAIN_BYTES);
    if (format == 0) {
        rs__record_name(name, sizeof(name), rec);
        return rs__error(RS_ECRYPTO, "%s is not a recsync envelope (%zu bytes)", name,
                         rec->data_len);
    }
    if (memcmp(rec->data + OFF_KEY_ID, key->id, RS_KEY_ID_BYTES) != 0 && key->next)
        key = rs__key_for(key, rec->data, rec->data_len); /* an older key of the ring */
    if (memcmp(rec->data + OFF_KEY_ID, key->id, RS_KEY_ID_BYTES) != 0) {
        char theirs[2 * RS_KEY_ID_BYTES + 1], ours[2 * RS_KEY_ID_BYTES + 1];
        rs__record_name(name, sizeof(name), rec);
        rs__key_id_hex(theirs, rec->data + OFF_KEY_ID);
        rs__key_id_hex(ours, key->id);
        return rs__error(RS_EKEY, "%s is sealed under key %s, but this store's key is %s", name,
                         theirs, ours);
    }
    if (strlen(rec->tag) > RS_TAG_MAX)
        return rs__error(RS_EINVAL, "tag '%.70s' is longer than %d characters", rec->tag,
                         RS_TAG_MAX);
    adlen = build_ad(ad, rec, key->id, format == 2 ? RS_ENVELOPE_MAGIC_CHAINED : RS_ENVELOPE_MAGIC);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(cek, &cek_len, NULL, rec->data + OFF_WRAPPED,
                                                   RS_KEY_BYTES + TAG_BYTES, ad, adlen,
                                                   rec->data + OFF_WRAP_NONCE, key->bytes) != 0 ||
        cek_len != RS_KEY_BYTES) {
        rs__record_name(name, sizeof(name), rec);
        return rs__error(RS_ECRYPTO, "%s does not open: its header or key wrap was altered", name);
    }
    plain_len = rec->data_len - RS_ENVELOPE_OVERHEAD;
    if (out == NULL) {
        out = scratch = rs__malloc(plain_len ? plain_len : 1);
        if (scratch == NULL) {
            err = rs__error(RS_ENOMEM, "out of memory opening a record");
            goto done;
        }
    }
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, rec->data + OFF_CIPHERTEXT,
                                                   plain_len + TAG_BYTES, ad, adlen,
                                                   rec->data + OFF_NONCE, cek) != 0) {
        rs__record_name(name, sizeof(name), rec);
        err = rs__error(RS_ECRYPTO, "%s does not open: its ciphertext was altered", name);
        goto done;
    }
    if (format == 2) {
        if (prev)
            memcpy(prev, out, RS_CHAIN_BYTES);
        plain_len -= RS_CHAIN_BYTES;
        memmove(out, out + RS_CHAIN_BYTES, plain_len);
    }
    if (out_len)
        *out_len = plain_len;
done:
    sodium_memzero(cek, sizeof(cek));
    if (scratch) {
        sodium_memzero(scratch, rec->data_len - RS_ENVELOPE_OVERHEAD);
        rs_free(scratch);
    }
    return err;
}
