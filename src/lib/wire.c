/*
 * The JSON wire codec (wire.h): hand-written encoders for fixed-shape
 * documents, jansson for parsing, and one validation routine per shape.
 */
#include "wire.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- rs_buf ---- */

int rs_buf_reserve(rs_buf *buf, size_t extra)
{
    if (extra > SIZE_MAX / 2 - buf->len)
        return rs__error(RS_ENOMEM, "buffer of %zu bytes cannot grow by %zu", buf->len, extra);
    size_t need = buf->len + extra + 1;
    if (need <= buf->cap)
        return 0;
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = rs__realloc(buf->ptr, cap);
    if (p == NULL)
        return rs__error(RS_ENOMEM, "out of memory growing a buffer to %zu bytes", cap);
    buf->ptr = p;
    buf->cap = cap;
    return 0;
}

int rs_buf_put(rs_buf *buf, const void *data, size_t len)
{
    int err = rs_buf_reserve(buf, len);
    if (err < 0)
        return err;
    memcpy(buf->ptr + buf->len, data, len);
    buf->len += len;
    buf->ptr[buf->len] = '\0';
    return 0;
}

int rs_buf_puts(rs_buf *buf, const char *text)
{
    return rs_buf_put(buf, text, strlen(text));
}

int rs_buf_printf(rs_buf *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return rs__error(RS_EINVAL, "cannot format '%s'", fmt);
    int err = rs_buf_reserve(buf, (size_t)n);
    if (err < 0)
        return err;
    va_start(ap, fmt);
    vsnprintf(buf->ptr + buf->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf->len += (size_t)n;
    return 0;
}

/* Length of the valid UTF-8 sequence at s (at most `avail` bytes), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

/*
 * Appends `text` as a JSON string. Control characters are escaped and bytes
 * that are not valid UTF-8 become U+FFFD, so whatever a message quotes
 * (a query parameter, say) the output stays valid JSON.
 */
int rs_buf_put_json_string(rs_buf *buf, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;
    size_t len = strlen(text);
    int err = rs_buf_reserve(buf, len + 2);
    if (err < 0)
        return err;
    buf->ptr[buf->len++] = '"';
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        char esc[8];
        size_t elen = 0;
        size_t n = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            elen = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            elen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            elen = 6;
        } else if (c >= 0x80) {
            n = utf8_seq(s + i, len - i);
            if (n == 0) {
                memcpy(esc, "\\ufffd", 6);
                elen = 6;
                n = 1;
            }
        }
        if (elen) {
            if ((err = rs_buf_reserve(buf, elen + len - i)) < 0)
                return err;
            memcpy(buf->ptr + buf->len, esc, elen);
            buf->len += elen;
        } else {
            if ((err = rs_buf_reserve(buf, n + len - i)) < 0)
                return err;
            memcpy(buf->ptr + buf->len, s + i, n);
            buf->len += n;
        }
        i += n;
    }
    if ((err = rs_buf_reserve(buf, 1)) < 0)
        return err;
    buf->ptr[buf->len++] = '"';
    buf->ptr[buf->len] = '\0';
    return 0;
}

void rs_buf_clear(rs_buf *buf)
{
    buf->len = 0;
    if (buf->ptr)
        buf->ptr[0] = '\0';
}

void rs_buf_free(rs_buf *buf)
{
    rs_free(buf->ptr);
    buf->ptr = NULL;
    buf->len = buf->cap = 0;
}

char *rs_buf_detach(rs_buf *buf)
{
    if (buf->ptr == NULL && rs_buf_reserve(buf, 0) < 0)
        return NULL;
    char *p = buf->ptr;
    p[buf->len] = '\0';
    buf->ptr = NULL;
    buf->len = buf->cap = 0;
    return p;
}

/* ---- base64 ---- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Byte -> 0-63 for the alphabet, 64 for '=', 255 for anything else. */
/* clang-format off */
static const uint8_t b64_table[256] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,  62, 255, 255, 255,  63,
     52,  53,  54,  55,  56,  57,  58,  59,  60,  61, 255, 255, 255,  64, 255, 255,
    255,   0,   1,   2,   3,   4,   5,   6,   7,   8,   9,  10,  11,  12,  13,  14,
     15,  16,  17,  18,  19,  20,  21,  22,  23,  24,  25, 255, 255, 255, 255, 255,
    255,  26,  27,  28,  29,  30,  31,  32,  33,  34,  35,  36,  37,  38,  39,  40,
     41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
};
/* clang-format on */

/*
 * The two characters of every 12-bit value: three bytes encode as two
 * lookups instead of four (a record's envelope is most of an upload's
 * bytes). Filled once, by whichever thread encodes first.
 */
static char b64_pairs[4096][2];
static pthread_once_t b64_pairs_once = PTHREAD_ONCE_INIT;

static void b64_pairs_fill(void)
{
    for (unsigned v = 0; v < 4096; v++) {
        b64_pairs[v][0] = b64_chars[v >> 6];
        b64_pairs[v][1] = b64_chars[v & 63];
    }
}

size_t rs_base64_encode(char *out, const uint8_t *in, size_t len)
{
    char *p = out;
    size_t i = 0;
    pthread_once(&b64_pairs_once, b64_pairs_fill);
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        memcpy(p, b64_pairs[v >> 12], 2);
        memcpy(p + 2, b64_pairs[v & 4095], 2);
        p += 4;
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        p[0] = b64_chars[v >> 18];
        p[1] = b64_chars[(v >> 12) & 63];
        p[2] = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
        p[3] = '=';
        p += 4;
    }
    return (size_t)(p - out);
}

/*
 * Decoding tables: the value of character c placed where quantum position
 * k puts it (b64_dec[k][c] = value << (18 - 6k)), or B64_BAD (bit 24) for
 * anything not in the alphabet, '=' included. A quantum is four lookups
 * OR-ed together and one test; computed by the compiler, not at run time.
 */
#define B64_BAD 0x1000000u
#define B64_VAL(c)                                                                                 \
    ((c) >= 'A' && (c) <= 'Z'   ? (uint32_t)((c) - 'A')                                            \
     : (c) >= 'a' && (c) <= 'z' ? (uint32_t)((c) - 'a' + 26)                                       \
     : (c) >= '0' && (c) <= '9' ? (uint32_t)((c) - '0' + 52)                                       \
     : (c) == '+'               ? 62u                                                              \
     : (c) == '/'               ? 63u                                                              \
                                : 64u)
#define B64_DEC(k, c) (B64_VAL(c) < 64 ? B64_VAL(c) << (18 - 6 * (k)) : B64_BAD)
#define B64_D4(k, c) B64_DEC(k, c), B64_DEC(k, c + 1), B64_DEC(k, c + 2), B64_DEC(k, c + 3)
#define B64_D16(k, c) B64_D4(k, c), B64_D4(k, c + 4), B64_D4(k, c + 8), B64_D4(k, c + 12)
#define B64_D64(k, c) B64_D16(k, c), B64_D16(k, c + 16), B64_D16(k, c + 32), B64_D16(k, c + 48)
#define B64_D256(k) B64_D64(k, 0), B64_D64(k, 64), B64_D64(k, 128), B64_D64(k, 192)

static const uint32_t b64_dec[4][256] = {
    {B64_D256(0)}, {B64_D256(1)}, {B64_D256(2)}, {B64_D256(3)}};

int rs_base64_decode(uint8_t *out, size_t *out_len, const char *in, size_t len)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0, i = 0;
    if (len % 4 != 0)
        return RS_EINVAL;
    if (len == 0) {
        *out_len = 0;
        return 0;
    }
    for (; i + 4 < len; i += 4) { /* every quantum but the last: no padding */
        uint32_t v =
            b64_dec[0][s[i]] | b64_dec[1][s[i + 1]] | b64_dec[2][s[i + 2]] | b64_dec[3][s[i + 3]];
        if (v & B64_BAD)
            return RS_EINVAL;
        out[o] = (uint8_t)(v >> 16);
        out[o + 1] = (uint8_t)(v >> 8);
        out[o + 2] = (uint8_t)v;
        o += 3;
    }
    uint32_t a = b64_table[s[i]], b = b64_table[s[i + 1]], c = b64_table[s[i + 2]],
             d = b64_table[s[i + 3]];
    if ((a | b | c | d) < 64) {
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        out[o] = (uint8_t)(v >> 16);
        out[o + 1] = (uint8_t)(v >> 8);
        out[o + 2] = (uint8_t)v;
        o += 3;
    } else if (a >= 64 || b >= 64 || d != 64) {
        /* Padding: only in the last quantum, as "xx==" or "xxx=", with unused bits zero. */
        return RS_EINVAL;
    } else if (c == 64) {
        if (b & 15)
            return RS_EINVAL;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
    } else if (c < 64) {
        if (c & 3)
            return RS_EINVAL;
        out[o] = (uint8_t)(a << 2 | b >> 4);
        out[o + 1] = (uint8_t)((b & 15) << 4 | c >> 2);
        o += 2;
    } else {
        return RS_EINVAL;
    }
    *out_len = o;
    return 0;
}

/* ---- encoding helpers (the caller has reserved room) ---- */

/* Writes the decimal digits of v at p; returns the count. */
static size_t put_u64_raw(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static size_t digits_u64(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static void raw(rs_buf *b, const char *s, size_t n)
{
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
}

#define RAW(b, lit) raw((b), (lit), sizeof(lit) - 1)

static void raw_u64(rs_buf *b, uint64_t v)
{
    b->len += put_u64_raw(b->ptr + b->len, v);
}

static void raw_uuid(rs_buf *b, const rs_uuid *id)
{
    b->ptr[b->len++] = '"';
    rs_uuid_format(b->ptr + b->len, id);
    b->len += RS_UUID_STRLEN;
    b->ptr[b->len++] = '"';
}

static void raw_tag(rs_buf *b, const char *tag, size_t len)
{
    b->ptr[b->len++] = '"';
    raw(b, tag, len);
    b->ptr[b->len++] = '"';
}

/* Bound on the fixed text of one encoded shard or event, beyond the tag. */
#define SHARD_FIXED 160

/* ---- records ---- */

static size_t b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/*
 * Keys and punctuation of one record: {"id":"","host":"","tag":"",
 * "idx":,"hlc":"","version":,"data":""} plus the two UUIDs and the hlc.
 */
#define RECORD_FIXED                                                                               \
    (sizeof("{\"id\":\"\",\"host\":\"\",\"tag\":\"\",\"idx\":,\"hlc\":\"\",\"version\":,"          \
            "\"data\":\"\"}") -                                                                    \
     1 + 2 * RS_UUID_STRLEN + RS_HLC_STRLEN)

size_t rs_wire_record_size(const rs_record *rec)
{
    return RECORD_FIXED + strlen(rec->tag) + digits_u64(rec->idx) + digits_u64(rec->version) +
           b64_len(rec->data_len);
}

int rs_wire_records_begin(rs_buf *out)
{
    return rs_buf_puts(out, "{\"records\":[");
}

int rs_wire_records_add(rs_buf *out, const rs_record *rec)
{
    size_t taglen = strnlen(rec->tag, sizeof(rec->tag));
    if (taglen == sizeof(rec->tag) || !rs_tag_valid(rec->tag))
        return rs__error(RS_EINVAL, "record at idx %llu has an invalid tag",
                         (unsigned long long)rec->idx);
    if (rec->data_len > 0 && rec->data == NULL)
        return rs__error(RS_EINVAL, "record at idx %llu has no data", (unsigned long long)rec->idx);
    size_t b64 = b64_len(rec->data_len);
    /* +1 comma, +1 for sodium's NUL */
    int err = rs_buf_reserve(out, RECORD_FIXED + taglen + 40 + b64 + 2);
    if (err < 0)
        return err;
    if (out->len > 0 && out->ptr[out->len - 1] == '}')
        out->ptr[out->len++] = ',';
    RAW(out, "{\"id\":");
    raw_uuid(out, &rec->id);
    RAW(out, ",\"host\":");
    raw_uuid(out, &rec->host);
    RAW(out, ",\"tag\":");
    raw_tag(out, rec->tag, taglen);
    RAW(out, ",\"idx\":");
    raw_u64(out, rec->idx);
    RAW(out, ",\"hlc\":\"");
    rs_hlc_format(out->ptr + out->len, rec->hlc);
    out->len += RS_HLC_STRLEN;
    RAW(out, "\",\"version\":");
    raw_u64(out, rec->version);
    RAW(out, ",\"data\":\"");
    rs_base64_encode(out->ptr + out->len, rec->data, rec->data_len);
    out->len += b64;
    RAW(out, "\"}");
    out->ptr[out->len] = '\0';
    return 0;
}

int rs_wire_upload_end(rs_buf *out)
{
    return rs_buf_puts(out, "]}");
}

int rs_wire_page_end(rs_buf *out, int has_next, uint64_t next)
{
    if (!has_next)
        return rs_buf_puts(out, "],\"next\":null}");
    int err = rs_buf_reserve(out, 32);
    if (err < 0)
        return err;
    RAW(out, "],\"next\":");
    raw_u64(out, next);
    out->ptr[out->len++] = '}';
    out->ptr[out->len] = '\0';
    return 0;
}

/* ---- decoding helpers ---- */

/* Parses `len` bytes as a JSON object; RS_EINVAL naming the position on failure. */
static int parse_object(json_t **out, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (root == NULL)
        return rs__error(RS_EINVAL, "body: invalid JSON at line %d column %d: %s", jerr.line,
                         jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return rs__error(RS_EINVAL, "body: not a JSON object");
    }
    *out = root;
    return 0;
}

/*
 * The `where` prefix of a message: "records[3].idx", "shards[0].tag",
 * "index.shards[2].end".
 */
static int field_error(int code, const char *where, size_t i, const char *field, const char *what)
{
    if (i == (size_t)-1)
        return rs__error(code, "%s%s%s: %s", where, *where ? "." : "", field, what);
    return rs__error(code, "%s[%zu].%s: %s", where, i, field, what);
}

static int get_u64(uint64_t *out, const json_t *obj, const char *where, size_t i, const char *field)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL)
        return field_error(RS_EINVAL, where, i, field, "missing");
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return field_error(RS_EINVAL, where, i, field, "not a non-negative integer");
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_uuid(rs_uuid *out, const json_t *obj, const char *where, size_t i, const char *field)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL)
        return field_error(RS_EINVAL, where, i, field, "missing");
    if (!json_is_string(v) || json_string_length(v) != RS_UUID_STRLEN ||
        rs_uuid_parse(out, json_string_value(v)) < 0)
        return field_error(RS_EINVAL, where, i, field, "not a UUID");
    return 0;
}

static int get_tag(char *out, const json_t *obj, const char *where, size_t i)
{
    const json_t *v = json_object_get(obj, "tag");
    if (v == NULL)
        return field_error(RS_EINVAL, where, i, "tag", "missing");
    if (!json_is_string(v) || json_string_length(v) > RS_TAG_MAX ||
        !rs_tag_valid(json_string_value(v)))
        return field_error(RS_EINVAL, where, i, "tag", "not a tag (1-64 of [a-z0-9._-])");
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

/* Checks that no (host, tag) appears twice in `index`, naming the second. */
static int shard_cmp(const void *a, const void *b)
{
    const rs_shard *x = *(const rs_shard *const *)a, *y = *(const rs_shard *const *)b;
    int c = rs_uuid_cmp(&x->host, &y->host);
    return c ? c : strcmp(x->tag, y->tag);
}

static int check_unique(const rs_index *index, const char *where)
{
    if (index->count < 2)
        return 0;
    int err = 0;
    const rs_shard **sorted = rs__malloc(index->count * sizeof(*sorted));
    if (sorted == NULL)
        return rs__error(RS_ENOMEM, "out of memory checking %zu shards", index->count);
    for (size_t i = 0; i < index->count; i++)
        sorted[i] = &index->shards[i];
    qsort(sorted, index->count, sizeof(*sorted), shard_cmp);
    for (size_t i = 1; i < index->count; i++) {
        if (shard_cmp(&sorted[i - 1], &sorted[i]) == 0) {
            char name[RS_UUID_STRLEN + RS_TAG_MAX + 2];
            rs__shard_name(name, sizeof(name), &sorted[i]->host, sorted[i]->tag);
            err = rs__error(RS_EINVAL, "%s: shard %s listed twice", where, name);
            break;
        }
    }
    rs_free(sorted);
    return err;
}

/* ---- record batches ---- */

static int decode_record(rs_record *rec, uint8_t *dst, const json_t *obj, size_t i, size_t max_data)
{
    const char *where = "records";
    int err;
    if (!json_is_object(obj))
        return rs__error(RS_EINVAL, "records[%zu]: not an object", i);
    if ((err = get_uuid(&rec->id, obj, where, i, "id")) < 0 ||
        (err = get_uuid(&rec->host, obj, where, i, "host")) < 0 ||
        (err = get_tag(rec->tag, obj, where, i)) < 0 ||
        (err = get_u64(&rec->idx, obj, where, i, "idx")) < 0)
        return err;
    if (rec->idx > (uint64_t)INT64_MAX)
        return field_error(RS_EINVAL, where, i, "idx", "out of range");

    const json_t *v = json_object_get(obj, "hlc");
    if (v == NULL)
        return field_error(RS_EINVAL, where, i, "hlc", "missing");
    if (!json_is_string(v) || json_string_length(v) != RS_HLC_STRLEN ||
        rs_hlc_parse(&rec->hlc, json_string_value(v)) < 0)
        return field_error(RS_EINVAL, where, i, "hlc", "not a clock (16 hex digits)");

    uint64_t version;
    if ((err = get_u64(&version, obj, where, i, "version")) < 0)
        return err;
    if (version > UINT32_MAX)
        return field_error(RS_EINVAL, where, i, "version", "out of range (32 bits)");
    rec->version = (uint32_t)version;

    v = json_object_get(obj, "data");
    if (v == NULL)
        return field_error(RS_EINVAL, where, i, "data", "missing");
    if (!json_is_string(v))
        return field_error(RS_EINVAL, where, i, "data", "not a base64 string");
    const char *b64 = json_string_value(v);
    size_t b64len = json_string_length(v);
    size_t len = 0;
    if (rs_base64_decode(dst, &len, b64, b64len) < 0)
        return field_error(RS_EINVAL, where, i, "data", "not standard base64");
    if (len > max_data)
        return rs__error(RS_ETOOBIG,
                         "records[%zu].data: envelope of %zu bytes exceeds the bound of %zu", i,
                         len, max_data);
    if (len < RS_ENVELOPE_OVERHEAD ||
        (memcmp(dst, RS_ENVELOPE_MAGIC, 4) != 0 && memcmp(dst, RS_ENVELOPE_MAGIC_CHAINED, 4) != 0))
        return field_error(RS_EINVAL, where, i, "data", "not a sealed envelope");
    rec->data = dst;
    rec->data_len = len;
    return 0;
}

/*
 * The fast path: a scanner for exactly the shape recsync itself writes
 * (records with the seven known fields, each once, strings without
 * escapes, plain integers), decoding in one pass with no allocation per
 * record. Anything else -- an unknown or repeated key, an escape, a
 * number with a sign, fraction or exponent, any invalid field -- makes it
 * give up (FAST_GIVE_UP) and the jansson path decodes the text instead,
 * with the exact error messages. So the fast path only ever accepts input
 * that the jansson path accepts with the same result.
 */
#define FAST_GIVE_UP 1

typedef struct scanner {
    const char *p;
    const char *end;
} scanner;

static void skip_ws(scanner *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int take(scanner *s, char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* A string of printable ASCII without escapes; *out points into the text. */
static int plain_string(scanner *s, const char **out, size_t *len)
{
    if (!take(s, '"'))
        return 0;
    const char *start = s->p;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            *out = start;
            *len = (size_t)(s->p - start);
            s->p++;
            return 1;
        }
        if (c == '\\' || c < 0x20 || c >= 0x80)
            return 0;
        s->p++;
    }
    return 0;
}

/*
 * A string whose content the caller validates itself (base64: any quote,
 * backslash or control byte in it fails that check), found with memchr.
 */
static int quick_string(scanner *s, const char **out, size_t *len)
{
    if (!take(s, '"'))
        return 0;
    const char *q = memchr(s->p, '"', (size_t)(s->end - s->p));
    if (q == NULL)
        return 0;
    *out = s->p;
    *len = (size_t)(q - s->p);
    s->p = q + 1;
    return 1;
}

/* An integer of digits only (no sign, no leading zero, no fraction), at most `max`. */
static int plain_u64(scanner *s, uint64_t *out, uint64_t max)
{
    skip_ws(s);
    const char *start = s->p;
    uint64_t v = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        unsigned d = (unsigned)(*s->p - '0');
        if (v > (max - d) / 10)
            return 0;
        v = v * 10 + d;
        s->p++;
    }
    size_t n = (size_t)(s->p - start);
    if (n == 0 || (n > 1 && *start == '0'))
        return 0;
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return 0;
    *out = v;
    return 1;
}

static int fixed_text(char *buf, size_t size, const char *text, size_t len)
{
    if (len >= size)
        return 0;
    memcpy(buf, text, len);
    buf[len] = '\0';
    return 1;
}

enum { F_ID = 1, F_HOST = 2, F_TAG = 4, F_IDX = 8, F_HLC = 16, F_VERSION = 32, F_DATA = 64 };

/* One record object into rec, its envelope at dst. 0 or FAST_GIVE_UP. */
static int fast_record(scanner *s, rs_record *rec, uint8_t *dst, size_t max_data)
{
    unsigned seen = 0;
    char buf[RS_UUID_STRLEN + 1 > RS_TAG_MAX + 1 ? RS_UUID_STRLEN + 1 : RS_TAG_MAX + 1];
    if (!take(s, '{'))
        return FAST_GIVE_UP;
    do {
        const char *key, *v;
        size_t klen, vlen;
        uint64_t n;
        unsigned f;
        if (!plain_string(s, &key, &klen) || !take(s, ':'))
            return FAST_GIVE_UP;
#define KEY(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)
        if (KEY("id") || KEY("host")) {
            f = KEY("id") ? F_ID : F_HOST;
            if (!plain_string(s, &v, &vlen) || vlen != RS_UUID_STRLEN ||
                !fixed_text(buf, sizeof(buf), v, vlen) ||
                rs_uuid_parse(f == F_ID ? &rec->id : &rec->host, buf) < 0)
                return FAST_GIVE_UP;
        } else if (KEY("tag")) {
            f = F_TAG;
            if (!plain_string(s, &v, &vlen) || vlen > RS_TAG_MAX ||
                !fixed_text(rec->tag, sizeof(rec->tag), v, vlen) || !rs_tag_valid(rec->tag))
                return FAST_GIVE_UP;
        } else if (KEY("idx")) {
            f = F_IDX;
            if (!plain_u64(s, &rec->idx, (uint64_t)INT64_MAX))
                return FAST_GIVE_UP;
        } else if (KEY("hlc")) {
            f = F_HLC;
            if (!plain_string(s, &v, &vlen) || vlen != RS_HLC_STRLEN ||
                !fixed_text(buf, sizeof(buf), v, vlen) || rs_hlc_parse(&rec->hlc, buf) < 0)
                return FAST_GIVE_UP;
        } else if (KEY("version")) {
            f = F_VERSION;
            if (!plain_u64(s, &n, UINT32_MAX))
                return FAST_GIVE_UP;
            rec->version = (uint32_t)n;
        } else if (KEY("data")) {
            f = F_DATA;
            size_t dlen = 0;
            if (!quick_string(s, &v, &vlen) || vlen / 4 * 3 > max_data + 3 ||
                rs_base64_decode(dst, &dlen, v, vlen) < 0 || dlen > max_data ||
                dlen < RS_ENVELOPE_OVERHEAD ||
                (memcmp(dst, RS_ENVELOPE_MAGIC, 4) != 0 &&
                 memcmp(dst, RS_ENVELOPE_MAGIC_CHAINED, 4) != 0))
                return FAST_GIVE_UP;
            rec->data = dst;
            rec->data_len = dlen;
        } else {
            return FAST_GIVE_UP;
        }
#undef KEY
        if (seen & f)
            return FAST_GIVE_UP;
        seen |= f;
    } while (take(s, ','));
    if (!take(s, '}') || seen != (F_ID | F_HOST | F_TAG | F_IDX | F_HLC | F_VERSION | F_DATA))
        return FAST_GIVE_UP;
    return 0;
}

/* Makes room for `n` records in `out`. */
static int batch_reserve(rs_wire_batch *out, size_t n)
{
    if (n <= out->records_cap)
        return 0;
    size_t cap = out->records_cap ? out->records_cap : 64;
    while (cap < n)
        cap *= 2;
    rs_record *r = rs__realloc(out->records, cap * sizeof(*r));
    if (r == NULL)
        return rs__error(RS_ENOMEM, "out of memory for %zu records", cap);
    out->records = r;
    out->records_cap = cap;
    return 0;
}

/*
 * Decodes the whole document on the fast path: 0, FAST_GIVE_UP, or a
 * negative code (out of memory). The arena is sized once from the text
 * length (base64 is longer than what it encodes), so record pointers into
 * it stay valid.
 */
static int fast_decode(rs_wire_batch *out, const char *text, size_t len, rs_wire_kind kind,
                       size_t max_data)
{
    scanner s = {text, text + len};
    int err, have_records = 0, have_next = 0;
    size_t arena = len / 4 * 3 + 3, used = 0;
    if (arena > out->arena_cap) {
        uint8_t *a = rs__realloc(out->arena, arena);
        if (a == NULL)
            return rs__error(RS_ENOMEM, "out of memory for %zu bytes of records", arena);
        out->arena = a;
        out->arena_cap = arena;
    }
    if (!take(&s, '{'))
        return FAST_GIVE_UP;
    do {
        const char *key;
        size_t klen;
        if (!plain_string(&s, &key, &klen) || !take(&s, ':'))
            return FAST_GIVE_UP;
        if (klen == 7 && memcmp(key, "records", 7) == 0 && !have_records) {
            have_records = 1;
            if (!take(&s, '['))
                return FAST_GIVE_UP;
            if (take(&s, ']'))
                continue;
            do {
                if ((err = batch_reserve(out, out->count + 1)) < 0)
                    return err;
                rs_record *rec = &out->records[out->count];
                if (fast_record(&s, rec, out->arena + used, max_data) != 0)
                    return FAST_GIVE_UP;
                used += rec->data_len;
                out->count++;
            } while (take(&s, ','));
            if (!take(&s, ']'))
                return FAST_GIVE_UP;
        } else if (kind == RS_WIRE_PAGE && klen == 4 && memcmp(key, "next", 4) == 0 && !have_next) {
            have_next = 1;
            skip_ws(&s);
            if ((size_t)(s.end - s.p) >= 4 && memcmp(s.p, "null", 4) == 0) {
                s.p += 4;
            } else if (plain_u64(&s, &out->next, (uint64_t)INT64_MAX)) {
                out->has_next = 1;
            } else {
                return FAST_GIVE_UP;
            }
        } else {
            return FAST_GIVE_UP;
        }
    } while (take(&s, ','));
    if (!take(&s, '}') || !have_records || (kind == RS_WIRE_PAGE && !have_next))
        return FAST_GIVE_UP;
    skip_ws(&s);
    return s.p == s.end ? 0 : FAST_GIVE_UP;
}

int rs_wire_decode_records(rs_wire_batch *out, const char *text, size_t len, rs_wire_kind kind,
                           size_t max_data)
{
    json_t *root = NULL;
    int err;
    if (max_data == 0)
        max_data = RS_WIRE_DEFAULT_MAX_DATA;
    out->count = 0;
    out->has_next = 0;
    out->next = 0;
    err = fast_decode(out, text, len, kind, max_data);
    if (err <= 0) {
        if (err < 0) {
            out->count = 0;
            out->has_next = 0;
        }
        return err;
    }
    out->count = 0;
    out->has_next = 0;
    out->next = 0;
    if ((err = parse_object(&root, text, len)) < 0)
        return err;

    const json_t *arr = json_object_get(root, "records");
    if (arr == NULL) {
        err = rs__error(RS_EINVAL, "records: missing");
        goto done;
    }
    if (!json_is_array(arr)) {
        err = rs__error(RS_EINVAL, "records: not an array");
        goto done;
    }
    if (kind == RS_WIRE_PAGE) {
        const json_t *next = json_object_get(root, "next");
        if (next == NULL) {
            err = rs__error(RS_EINVAL, "next: missing");
            goto done;
        }
        if (json_is_integer(next) && json_integer_value(next) >= 0) {
            out->has_next = 1;
            out->next = (uint64_t)json_integer_value(next);
        } else if (!json_is_null(next)) {
            err = rs__error(RS_EINVAL, "next: not a non-negative integer or null");
            goto done;
        }
    }

    /* Size the arena from the base64 lengths: one allocation for all envelopes. */
    size_t n = json_array_size(arr);
    size_t arena = 0;
    size_t b64max = b64_len(max_data);
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_object_get(json_array_get(arr, i), "data");
        if (d == NULL || !json_is_string(d))
            continue; /* decode_record names it */
        size_t l = json_string_length(d);
        if (l > b64max) {
            err =
                rs__error(RS_ETOOBIG,
                          "records[%zu].data: envelope of about %zu bytes exceeds the bound of %zu",
                          i, l / 4 * 3, max_data);
            goto done;
        }
        arena += l / 4 * 3 + 3;
    }
    if (n > out->records_cap) {
        rs_record *r = rs__realloc(out->records, n * sizeof(*r));
        if (r == NULL) {
            err = rs__error(RS_ENOMEM, "out of memory for %zu records", n);
            goto done;
        }
        out->records = r;
        out->records_cap = n;
    }
    if (arena > out->arena_cap) {
        uint8_t *a = rs__realloc(out->arena, arena);
        if (a == NULL) {
            err = rs__error(RS_ENOMEM, "out of memory for %zu bytes of records", arena);
            goto done;
        }
        out->arena = a;
        out->arena_cap = arena;
    }
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        rs_record *rec = &out->records[i];
        if ((err = decode_record(rec, out->arena + used, json_array_get(arr, i), i, max_data)) < 0)
            goto done;
        used += rec->data_len;
    }
    out->count = n;
    err = 0;
done:
    if (err < 0) {
        out->count = 0;
        out->has_next = 0;
    }
    json_decref(root);
    return err;
}

void rs_wire_batch_free(rs_wire_batch *batch)
{
    if (batch == NULL)
        return;
    rs_free(batch->records);
    rs_free(batch->arena);
    memset(batch, 0, sizeof(*batch));
}

/* ---- index ---- */

static int shards_encode(rs_buf *out, const rs_index *index, int frontier)
{
    int err;
    for (size_t i = 0; i < index->count; i++) {
        const rs_shard *s = &index->shards[i];
        size_t taglen = strnlen(s->tag, sizeof(s->tag));
        if (taglen == sizeof(s->tag) || !rs_tag_valid(s->tag))
            return rs__error(RS_EINVAL, "shard %zu of the index has an invalid tag", i);
        if ((err = rs_buf_reserve(out, SHARD_FIXED + taglen)) < 0)
            return err;
        if (i > 0)
            out->ptr[out->len++] = ',';
        RAW(out, "{\"host\":");
        raw_uuid(out, &s->host);
        RAW(out, ",\"tag\":");
        raw_tag(out, s->tag, taglen);
        if (!frontier) {
            RAW(out, ",\"start\":");
            raw_u64(out, s->start);
        }
        RAW(out, ",\"end\":");
        raw_u64(out, s->end);
        out->ptr[out->len++] = '}';
        out->ptr[out->len] = '\0';
    }
    return 0;
}

int rs_wire_index_encode(rs_buf *out, const rs_index *index)
{
    int err;
    if ((err = rs_buf_puts(out, "{\"shards\":[")) < 0 || (err = shards_encode(out, index, 0)) < 0 ||
        (err = rs_buf_reserve(out, 32)) < 0)
        return err;
    RAW(out, "],\"seq\":");
    raw_u64(out, index->seq);
    out->ptr[out->len++] = '}';
    out->ptr[out->len] = '\0';
    return 0;
}

static int new_index(rs_index **out)
{
    rs_index *index = rs__calloc(1, sizeof(*index));
    if (index == NULL)
        return rs__error(RS_ENOMEM, "out of memory for an index");
    *out = index;
    return 0;
}

/*
 * Decodes the array `arr` of shards (`where` names it) into a new index.
 * With `frontier`, entries carry only an end and start is left 0.
 */
static int shards_decode(rs_index **out, const json_t *arr, const char *where, int frontier)
{
    rs_index *index = NULL;
    int err;
    if (!json_is_array(arr))
        return rs__error(RS_EINVAL, "%s: not an array", where);
    if ((err = new_index(&index)) < 0)
        return err;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *obj = json_array_get(arr, i);
        rs_uuid host;
        char tag[RS_TAG_MAX + 1];
        uint64_t start = 0, end = 0;
        if (!json_is_object(obj)) {
            err = rs__error(RS_EINVAL, "%s[%zu]: not an object", where, i);
            goto done;
        }
        if ((err = get_uuid(&host, obj, where, i, "host")) < 0 ||
            (err = get_tag(tag, obj, where, i)) < 0 ||
            (!frontier && (err = get_u64(&start, obj, where, i, "start")) < 0) ||
            (err = get_u64(&end, obj, where, i, "end")) < 0)
            goto done;
        if (start > end) {
            err = field_error(RS_EINVAL, where, i, "start", "greater than end");
            goto done;
        }
        if ((err = rs_index_add(index, &host, tag, start, end)) < 0)
            goto done;
    }
    err = check_unique(index, where);
done:
    if (err < 0)
        rs_index_free(index);
    else
        *out = index;
    return err;
}

int rs_wire_index_from_json(rs_index **out, const json_t *obj, const char *where)
{
    char path[64];
    uint64_t seq;
    int err;
    if (!json_is_object(obj))
        return rs__error(RS_EINVAL, "%s: not an object", *where ? where : "body");
    snprintf(path, sizeof(path), "%s%sshards", where, *where ? "." : "");
    const json_t *arr = json_object_get(obj, "shards");
    if (arr == NULL)
        return rs__error(RS_EINVAL, "%s: missing", path);
    if ((err = get_u64(&seq, obj, where, (size_t)-1, "seq")) < 0)
        return err;
    if ((err = shards_decode(out, arr, path, 0)) < 0)
        return err;
    (*out)->seq = seq;
    return 0;
}

int rs_wire_index_decode(rs_index **out, const char *text, size_t len)
{
    json_t *root = NULL;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    err = rs_wire_index_from_json(out, root, "");
    json_decref(root);
    return err;
}

/* ---- boot ---- */

int rs_wire_boot_encode(rs_buf *out, const char *user, const rs_index *index, uint64_t resume_point)
{
    int err;
    if ((err = rs_buf_puts(out, "{\"user\":")) < 0 ||
        (err = rs_buf_put_json_string(out, user)) < 0 ||
        (err = rs_buf_puts(out, ",\"index\":")) < 0 || (err = rs_wire_index_encode(out, index)) < 0)
        return err;
    return rs_buf_printf(out, ",\"resume_point\":%llu}", (unsigned long long)resume_point);
}

int rs_wire_boot_decode(rs_wire_boot *out, const char *text, size_t len)
{
    json_t *root = NULL;
    int err;
    memset(out, 0, sizeof(*out));
    if ((err = parse_object(&root, text, len)) < 0)
        return err;
    const json_t *user = json_object_get(root, "user");
    if (user == NULL || !json_is_string(user)) {
        err = rs__error(RS_EINVAL, "user: %s", user ? "not a string" : "missing");
        goto done;
    }
    const json_t *index = json_object_get(root, "index");
    if (index == NULL) {
        err = rs__error(RS_EINVAL, "index: missing");
        goto done;
    }
    if ((err = get_u64(&out->resume_point, root, "", (size_t)-1, "resume_point")) < 0 ||
        (err = rs_wire_index_from_json(&out->index, index, "index")) < 0)
        goto done;
    if ((out->user = rs__strdup(json_string_value(user))) == NULL)
        err = rs__error(RS_ENOMEM, "out of memory for a user name");
done:
    if (err < 0)
        rs_wire_boot_clear(out);
    json_decref(root);
    return err;
}

void rs_wire_boot_clear(rs_wire_boot *boot)
{
    rs_free(boot->user);
    rs_index_free(boot->index);
    memset(boot, 0, sizeof(*boot));
}

/* ---- events ---- */

int rs_wire_event_encode(rs_buf *out, const rs_wire_event *ev)
{
    size_t taglen = strnlen(ev->tag, sizeof(ev->tag));
    int err;
    if (taglen == sizeof(ev->tag) || !rs_tag_valid(ev->tag))
        return rs__error(RS_EINVAL, "event at seq %llu has an invalid tag",
                         (unsigned long long)ev->seq);
    if ((err = rs_buf_reserve(out, SHARD_FIXED + taglen)) < 0)
        return err;
    RAW(out, "{\"host\":");
    raw_uuid(out, &ev->host);
    RAW(out, ",\"tag\":");
    raw_tag(out, ev->tag, taglen);
    RAW(out, ",\"start\":");
    raw_u64(out, ev->start);
    RAW(out, ",\"end\":");
    raw_u64(out, ev->end);
    RAW(out, ",\"seq\":");
    raw_u64(out, ev->seq);
    out->ptr[out->len++] = '}';
    out->ptr[out->len] = '\0';
    return 0;
}

int rs_wire_event_decode(rs_wire_event *out, const char *text, size_t len)
{
    json_t *root = NULL;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    if ((err = get_uuid(&out->host, root, "", (size_t)-1, "host")) < 0 ||
        (err = get_tag(out->tag, root, "", (size_t)-1)) < 0 ||
        (err = get_u64(&out->start, root, "", (size_t)-1, "start")) < 0 ||
        (err = get_u64(&out->end, root, "", (size_t)-1, "end")) < 0 ||
        (err = get_u64(&out->seq, root, "", (size_t)-1, "seq")) < 0)
        goto done;
    if (out->start > out->end)
        err = rs__error(RS_EINVAL, "start: greater than end");
done:
    json_decref(root);
    return err;
}

/* ---- frontier ---- */

int rs_wire_frontier_encode(rs_buf *out, const rs_index *frontier)
{
    int err;
    if ((err = rs_buf_puts(out, "{\"frontier\":[")) < 0 ||
        (err = shards_encode(out, frontier, 1)) < 0)
        return err;
    return rs_buf_puts(out, "]}");
}

int rs_wire_frontier_decode(rs_index **out, const char *text, size_t len)
{
    json_t *root = NULL;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    const json_t *arr = json_object_get(root, "frontier");
    if (arr == NULL)
        err = rs__error(RS_EINVAL, "frontier: missing");
    else
        err = shards_decode(out, arr, "frontier", 1);
    json_decref(root);
    return err;
}

/* ---- credentials and tokens ---- */

int rs_wire_username_valid(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= RS_WIRE_USERNAME_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '@' || c == '+' || c == '-'))
            return 0;
    }
    return n >= 1;
}

int rs_wire_device_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > RS_WIRE_DEVICE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return 0;
    return 1;
}

int rs_wire_credentials_encode_named(rs_buf *out, const char *username, const char *password,
                                     const rs_uuid *host, const char *name)
{
    char h[RS_UUID_STRLEN + 1];
    int err;
    rs_uuid_format(h, host);
    if ((err = rs_buf_puts(out, "{\"username\":")) < 0 ||
        (err = rs_buf_put_json_string(out, username)) < 0 ||
        (err = rs_buf_puts(out, ",\"password\":")) < 0 ||
        (err = rs_buf_put_json_string(out, password)) < 0)
        return err;
    if (name && *name &&
        ((err = rs_buf_puts(out, ",\"name\":")) < 0 ||
         (err = rs_buf_put_json_string(out, name)) < 0))
        return err;
    return rs_buf_printf(out, ",\"host\":\"%s\"}", h);
}

int rs_wire_credentials_encode(rs_buf *out, const char *username, const char *password,
                               const rs_uuid *host)
{
    return rs_wire_credentials_encode_named(out, username, password, host, NULL);
}

int rs_wire_credentials_decode(rs_wire_credentials *out, const char *text, size_t len)
{
    json_t *root = NULL;
    memset(out, 0, sizeof(*out));
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    const json_t *u = json_object_get(root, "username");
    const json_t *p = json_object_get(root, "password");
    if (u == NULL || !json_is_string(u) || !rs_wire_username_valid(json_string_value(u))) {
        err = rs__error(RS_EINVAL, "username: %s",
                        u == NULL ? "missing" : "not a user name (1-64 of [A-Za-z0-9._@+-])");
        goto done;
    }
    if (p == NULL || !json_is_string(p) || json_string_length(p) == 0 ||
        json_string_length(p) > RS_WIRE_PASSWORD_MAX) {
        err = rs__error(RS_EINVAL, "password: %s",
                        p == NULL ? "missing" : "not a string of 1-1024 bytes");
        goto done;
    }
    if ((err = get_uuid(&out->host, root, "", (size_t)-1, "host")) < 0)
        goto done;
    if (rs_uuid_is_nil(&out->host)) {
        err = rs__error(RS_EINVAL, "host: the nil UUID is not a host id");
        goto done;
    }
    const json_t *nm = json_object_get(root, "name");
    if (nm != NULL && !json_is_null(nm)) {
        if (!json_is_string(nm) || strlen(json_string_value(nm)) != json_string_length(nm) ||
            !rs_wire_device_name_valid(json_string_value(nm))) {
            err = rs__error(RS_EINVAL, "name: not a device name (1-64 bytes, no control "
                                       "characters)");
            goto done;
        }
        strcpy(out->name, json_string_value(nm));
    }
    strcpy(out->username, json_string_value(u));
    if ((out->password = rs__malloc(json_string_length(p) + 1)) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory for a password");
        goto done;
    }
    memcpy(out->password, json_string_value(p), json_string_length(p) + 1);
done:
    json_decref(root);
    return err;
}

void rs_wire_credentials_clear(rs_wire_credentials *creds)
{
    if (creds->password) {
        sodium_memzero(creds->password, strlen(creds->password));
        rs_free(creds->password);
    }
    memset(creds, 0, sizeof(*creds));
}

int rs_wire_token_encode(rs_buf *out, const char *token, const char *username)
{
    int err;
    if ((err = rs_buf_puts(out, "{\"token\":")) < 0 ||
        (err = rs_buf_put_json_string(out, token)) < 0 ||
        (err = rs_buf_puts(out, ",\"username\":")) < 0 ||
        (err = rs_buf_put_json_string(out, username)) < 0)
        return err;
    return rs_buf_puts(out, "}");
}

/* Copies the string member `field` of `obj` into *out (rs_free). */
static int dup_string(char **out, const json_t *obj, const char *field)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL || !json_is_string(v) || json_string_length(v) == 0)
        return rs__error(RS_EINVAL, "%s: %s", field,
                         v == NULL ? "missing" : "not a non-empty string");
    if ((*out = rs__strdup(json_string_value(v))) == NULL)
        return rs__error(RS_ENOMEM, "out of memory for %s", field);
    return 0;
}

int rs_wire_token_decode(char **token, char **username, const char *text, size_t len)
{
    json_t *root = NULL;
    char *t = NULL, *u = NULL;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    if ((err = dup_string(&t, root, "token")) < 0 || (err = dup_string(&u, root, "username")) < 0)
        goto done;
    *token = t;
    *username = u;
    t = u = NULL;
done:
    rs_free(t);
    rs_free(u);
    json_decref(root);
    return err;
}

/* ---- upload result and errors ---- */

int rs_wire_upload_result_encode(rs_buf *out, uint64_t accepted, uint64_t inserted, uint64_t seq)
{
    return rs_buf_printf(out, "{\"accepted\":%llu,\"inserted\":%llu,\"seq\":%llu}",
                         (unsigned long long)accepted, (unsigned long long)inserted,
                         (unsigned long long)seq);
}

int rs_wire_upload_result_decode(uint64_t *accepted, uint64_t *inserted, uint64_t *seq,
                                 const char *text, size_t len)
{
    json_t *root = NULL;
    uint64_t a = 0, s = 0, n = 0;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    if ((err = get_u64(&a, root, "", (size_t)-1, "accepted")) < 0 ||
        (err = get_u64(&s, root, "", (size_t)-1, "seq")) < 0)
        goto done;
    if (json_object_get(root, "inserted") &&
        (err = get_u64(&n, root, "", (size_t)-1, "inserted")) < 0)
        goto done;
    *accepted = a;
    *seq = s;
    if (inserted)
        *inserted = n;
done:
    json_decref(root);
    return err;
}

int rs_wire_error_encode(rs_buf *out, const char *code, const char *message)
{
    int err;
    if ((err = rs_buf_puts(out, "{\"error\":")) < 0 ||
        (err = rs_buf_put_json_string(out, code)) < 0 ||
        (err = rs_buf_puts(out, ",\"message\":")) < 0 ||
        (err = rs_buf_put_json_string(out, message)) < 0)
        return err;
    return rs_buf_puts(out, "}");
}

int rs_wire_error_decode(char *code, size_t code_size, char *message, size_t message_size,
                         const char *text, size_t len)
{
    json_t *root = NULL;
    int err = parse_object(&root, text, len);
    if (err < 0)
        return err;
    const json_t *c = json_object_get(root, "error");
    const json_t *m = json_object_get(root, "message");
    if (c == NULL || !json_is_string(c)) {
        err = rs__error(RS_EINVAL, "error: %s", c ? "not a string" : "missing");
        goto done;
    }
    if (code_size)
        snprintf(code, code_size, "%s", json_string_value(c));
    if (message_size)
        snprintf(message, message_size, "%s", m && json_is_string(m) ? json_string_value(m) : "");
done:
    json_decref(root);
    return err;
}
