/*
 * rs_tryopen: what someone holding one key learns from a copy of a
 * server's records (tests/integration/test_key_rotation.py). Reads the key
 * text ("rsk1:...") from argv[1], then one record a line on stdin:
 *
 *   HOST_HEX TAG IDX ID_HEX HLC VERSION DATA_HEX
 *
 * and prints one line for each: "open KEYID PLAIN_HEX" when it opens under
 * the key, else "no KEYID". The envelope's key id is replaced by the key's
 * own before opening, so every record is really decrypted with the key
 * (XChaCha20-Poly1305 of the CEK wrap and the payload), whatever key it
 * names: a holder of the key could do the same.
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unhex_alloc(uint8_t **out, size_t *len, const char *hex)
{
    size_t n = strlen(hex);
    if (n % 2 || (*out = malloc(n / 2 + 1)) == NULL)
        return -1;
    *len = n / 2;
    return n ? rs__unhex(*out, *len, hex) : 0;
}

int main(int argc, char **argv)
{
    rs_key *key = NULL;
    char *line = NULL;
    size_t cap = 0;
    if (sodium_init() < 0)
        return 2;
    if (argc != 2 || rs__key_from_text(&key, argv[1]) < 0) {
        fprintf(stderr, "usage: rs_tryopen KEYTEXT < records\n");
        return 2;
    }
    while (getline(&line, &cap, stdin) > 0) {
        char host[64], tag[80], id[64], *data = malloc(strlen(line) + 1);
        unsigned long long idx, hlc;
        unsigned version;
        rs_record rec;
        uint8_t *env = NULL, *plain = NULL;
        size_t len = 0, plen = 0;
        char kid[2 * RS_KEY_ID_BYTES + 1] = "?";
        memset(&rec, 0, sizeof(rec));
        if (data == NULL ||
            sscanf(line, "%63s %79s %llu %63s %llu %u %s", host, tag, &idx, id, &hlc, &version,
                   data) != 7 ||
            unhex_alloc(&env, &len, data) < 0 || rs__unhex(rec.host.bytes, 16, host) < 0 ||
            rs__unhex(rec.id.bytes, 16, id) < 0 || strlen(tag) > RS_TAG_MAX) {
            fprintf(stderr, "rs_tryopen: bad line: %s", line);
            return 2;
        }
        strcpy(rec.tag, tag);
        rec.idx = idx;
        rec.hlc = hlc;
        rec.version = version;
        if (len >= 4 + RS_KEY_ID_BYTES) {
            rs__key_id_hex(kid, env + 4);
            memcpy(env + 4, key->id, RS_KEY_ID_BYTES);
        }
        rec.data = env;
        rec.data_len = len;
        plain = malloc(len + 1);
        if (plain && len >= RS_ENVELOPE_OVERHEAD && rs__open(plain, &plen, key, &rec) == 0) {
            char *hex = malloc(2 * plen + 1);
            rs__hex(hex, plain, plen);
            printf("open %s %s\n", kid, hex);
            free(hex);
        } else {
            printf("no %s\n", kid);
        }
        free(plain);
        free(env);
        free(data);
    }
    free(line);
    rs__key_free(key);
    return 0;
}
