/*
 * The stores every recsync store registers at open: kv and history. Each
 * keeps its state materialized in the store's database, changed by its
 * apply function inside the transaction that stores the record.
 */
#include "builtin.h"
#include "keyring.h"

#include <string.h>

uint32_t rs__kv_version = RS_KV_VERSION;
uint32_t rs__history_version = RS_HISTORY_VERSION;

int rs__register_builtin_tags(rs_store *store)
{
    int err;
    if ((err = rs__kv_register(store)) < 0 || (err = rs__history_register(store)) < 0 ||
        (err = rs__checkpoint_register(store)) < 0 || (err = rs__keyring_register(store)) < 0)
        return err;
    return 0;
}

int rs__keep_unapplied(rs_store *store, const rs_record *rec, const char *why)
{
    sqlite3_stmt *st = NULL;
    char name[200];
    int rc;

    rc = sqlite3_prepare_v2(store->db,
                            "INSERT OR IGNORE INTO unapplied(host, tag, idx) VALUES (?1, ?2, ?3)",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rs__sqlite_error(store->db, rc, "noting an unapplied record");
    sqlite3_bind_blob(st, 1, rec->host.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, rec->tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->idx);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return rs__sqlite_error(store->db, rc, "noting an unapplied record");
    rs__record_name(name, sizeof(name), rec);
    rs__warn(store, "%s: %s: kept, not applied", name, why);
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s (at most `left` bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (left < n)
        return 0;
    /* The second byte's range excludes overlongs, surrogates and > U+10FFFF. */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

bool rs__utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0 || p[i] == 0)
            return false;
        i += n;
    }
    return true;
}

size_t rs__utf8_repair(char *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (p[i] == 0) {
            i++;
        } else if (n == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    return o;
}

int rs__prepare_kept(sqlite3 *db, sqlite3_stmt **out, const char *sql, const char *what)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    return rc == SQLITE_OK ? 0 : rs__sqlite_error(db, rc, what);
}

void rs__bind_writer(sqlite3_stmt *st, int col_hlc, int col_host, const rs_record *rec)
{
    sqlite3_bind_int64(st, col_hlc, (sqlite3_int64)rec->hlc);
    sqlite3_bind_blob(st, col_host, rec->host.bytes, 16, SQLITE_STATIC);
}

/* ---- snapshot rows ---- */

enum { COL_NULL, COL_INT, COL_REAL, COL_TEXT, COL_BLOB };

static void pack_u(uint8_t *p, uint64_t v, int bytes)
{
    for (int b = 0; b < bytes; b++)
        p[b] = (uint8_t)(v >> (8 * (bytes - 1 - b)));
}

static uint64_t unpack_u(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int b = 0; b < bytes; b++)
        v = v << 8 | p[b];
    return v;
}

int rs__snap_emit_rows(sqlite3 *db, const char *sql,
                       int (*emit)(void *ctx, const void *item, size_t len), void *ctx)
{
    sqlite3_stmt *st = NULL;
    uint8_t *item = NULL;
    size_t cap = 0;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL), err = 0;
    if (rc != SQLITE_OK)
        return rs__sqlite_error(db, rc, "reading state for a snapshot");
    while (err == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int cols = sqlite3_column_count(st);
        size_t len = 0, need = 0;
        for (int c = 0; c < cols; c++)
            need += 9 + (size_t)sqlite3_column_bytes(st, c);
        if (need > cap) {
            uint8_t *grown = rs__realloc(item, need);
            if (grown == NULL) {
                err = rs__error(RS_ENOMEM, "out of memory writing a snapshot");
                break;
            }
            item = grown;
            cap = need;
        }
        for (int c = 0; c < cols; c++) {
            int type = sqlite3_column_type(st, c);
            if (type == SQLITE_INTEGER || type == SQLITE_FLOAT) {
                uint64_t v;
                if (type == SQLITE_INTEGER) {
                    v = (uint64_t)sqlite3_column_int64(st, c);
                } else {
                    double d = sqlite3_column_double(st, c);
                    memcpy(&v, &d, 8);
                }
                item[len++] = type == SQLITE_INTEGER ? COL_INT : COL_REAL;
                pack_u(item + len, v, 8);
                len += 8;
            } else if (type == SQLITE_TEXT || type == SQLITE_BLOB) {
                const void *p = type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, c)
                                                    : sqlite3_column_blob(st, c);
                size_t n = (size_t)sqlite3_column_bytes(st, c);
                item[len++] = type == SQLITE_TEXT ? COL_TEXT : COL_BLOB;
                pack_u(item + len, n, 4);
                len += 4;
                if (n)
                    memcpy(item + len, p, n);
                len += n;
            } else {
                item[len++] = COL_NULL;
            }
        }
        err = emit(ctx, item, len);
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = rs__sqlite_error(db, rc, "reading state for a snapshot");
    sqlite3_finalize(st);
    rs_free(item);
    return err;
}

int rs__snap_bind_row(sqlite3_stmt *st, const uint8_t *item, size_t len)
{
    int want = sqlite3_bind_parameter_count(st), col = 0;
    size_t off = 0;
    while (off < len) {
        int type = item[off++];
        if (++col > want)
            break;
        if (type == COL_INT || type == COL_REAL) {
            if (len - off < 8)
                break;
            uint64_t v = unpack_u(item + off, 8);
            off += 8;
            if (type == COL_INT) {
                sqlite3_bind_int64(st, col, (sqlite3_int64)v);
            } else {
                double d;
                memcpy(&d, &v, 8);
                sqlite3_bind_double(st, col, d);
            }
        } else if (type == COL_TEXT || type == COL_BLOB) {
            if (len - off < 4)
                break;
            size_t n = (size_t)unpack_u(item + off, 4);
            off += 4;
            if (n > len - off)
                break;
            if (type == COL_TEXT)
                sqlite3_bind_text(st, col, (const char *)item + off, (int)n, SQLITE_STATIC);
            else
                sqlite3_bind_blob(st, col, item + off, (int)n, SQLITE_STATIC);
            off += n;
        } else if (type == COL_NULL) {
            sqlite3_bind_null(st, col);
        } else {
            break;
        }
    }
    if (off != len || col != want)
        return rs__error(RS_EINVAL, "a snapshot item of %zu bytes is not a row of %d columns", len,
                         want);
    return 0;
}
