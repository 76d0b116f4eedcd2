/*
 * Identifiers, tags, hex, and the names errors give to shards and records.
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char hexdigits[] = "0123456789abcdef";

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void rs__hex(char *out, const uint8_t *bytes, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hexdigits[bytes[i] >> 4];
        out[2 * i + 1] = hexdigits[bytes[i] & 0xf];
    }
    out[2 * len] = '\0';
}

int rs__unhex(uint8_t *out, size_t len, const char *text)
{
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(text[2 * i]);
        int lo = hi < 0 ? -1 : hexval(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return RS_EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return text[2 * len] == '\0' ? 0 : RS_EINVAL;
}

int rs_uuid_parse(rs_uuid *out, const char *text)
{
    size_t j = 0;
    if (text == NULL || strlen(text) != RS_UUID_STRLEN)
        goto bad;
    for (size_t i = 0; i < RS_UUID_STRLEN;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                goto bad;
            i++;
            continue;
        }
        int hi = hexval(text[i]), lo = hexval(text[i + 1]);
        if (hi < 0 || lo < 0)
            goto bad;
        out->bytes[j++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return 0;
bad:
    return rs__error(RS_EINVAL, "'%.64s' is not a UUID (expected 8-4-4-4-12 hex digits)",
                     text ? text : "(null)");
}

void rs_uuid_format(char *out, const rs_uuid *id)
{
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hexdigits[id->bytes[i] >> 4];
        *p++ = hexdigits[id->bytes[i] & 0xf];
    }
    *p = '\0';
}

void rs_uuid_random(rs_uuid *out)
{
    randombytes_buf(out->bytes, sizeof(out->bytes));
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x40);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
}

/*
 * UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, version 7, then random
 * bits, so ids of one device sort roughly by creation time and insert near
 * the end of an index.
 */
void rs_uuid_v7(rs_uuid *out, uint64_t unix_ms)
{
    rs__random(out->bytes + 6, 10);
    for (int i = 0; i < 6; i++)
        out->bytes[i] = (uint8_t)(unix_ms >> (40 - 8 * i));
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x70);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
}

int rs_uuid_cmp(const rs_uuid *a, const rs_uuid *b)
{
    return memcmp(a->bytes, b->bytes, sizeof(a->bytes));
}

int rs_uuid_is_nil(const rs_uuid *id)
{
    static const rs_uuid nil;
    return memcmp(id->bytes, nil.bytes, sizeof(nil.bytes)) == 0;
}

uint64_t rs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int rs_tag_valid(const char *tag)
{
    size_t n = 0;
    if (tag == NULL)
        return 0;
    for (; tag[n]; n++) {
        char c = tag[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
        if (n >= RS_TAG_MAX)
            return 0;
    }
    return n >= 1;
}

void rs__shard_name(char *out, size_t size, const rs_uuid *host, const char *tag)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    snprintf(out, size, "%s/%s", h, tag);
}

void rs__record_name(char *out, size_t size, const rs_record *rec)
{
    char id[RS_UUID_STRLEN + 1], shard[RS_UUID_STRLEN + RS_TAG_MAX + 2];
    rs_uuid_format(id, &rec->id);
    rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
    snprintf(out, size, "record %s (shard %s idx %llu)", id, shard, (unsigned long long)rec->idx);
}
