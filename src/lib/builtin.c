/*
 * The stores every recsync store registers at open: kv and history. Each
 * keeps its state materialized in the store's database, changed by its
 * apply function inside the transaction that stores the record.
 */
#include "builtin.h"

#include <string.h>

uint32_t rs__kv_version = RS_KV_VERSION;
uint32_t rs__history_version = RS_HISTORY_VERSION;

int rs__register_builtin_tags(rs_store *store)
{
    int err;
    if ((err = rs__kv_register(store)) < 0 || (err = rs__history_register(store)) < 0)
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
