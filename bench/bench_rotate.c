/*
 * bench_rotate: what a key rotation costs a store (issue 14, item 3),
 * against re-wrapping every record's content key as Atuin's rekey does.
 * In-process with the library, no server: the rotation's network part is a
 * sync of two small records and the snapshots' upload, the same for both.
 *
 *   bench_rotate DIR N [KEYS]
 *       A store in DIR (made; must not exist) with N kv writes over KEYS
 *       keys (default 10000; values of about 100 B, 10,000 writes a
 *       transaction), and a second device's store (same key) as a
 *       recipient. Then, each timed:
 *       - snapshot: one snapshot of the kv state (what a sync writes every
 *         RS_SNAPSHOT_DEFAULT_EVERY records anyway);
 *       - rotate: the whole local rotation: a new key sealed to both
 *         devices' public keys, the rotation and keyring records, the key
 *         file, and a snapshot of every tag under the new key;
 *       - rewrap: in a copy of the store made before the rotation, every
 *         record's content key opened with the old key and sealed under
 *         the new one (XChaCha20-Poly1305, the record header and new key id
 *         as associated data), written back, one transaction: Atuin's
 *         rekey (which then also re-uploads every record). Checked: every
 *         re-wrapped key opens under the new key to the same content key.
 *
 * Every figure is one JSON line on stdout:
 *   {"bench":"recsync","workload":"rotate","what":"rotate_ms","n":1000000,"value":812.3,"unit":"ms"}
 * Progress goes to stderr.
 */
#define _GNU_SOURCE /* nftw, in benchutil.h */
#define BENCH_NAME "bench_rotate"
#include "benchutil.h"

#include "keyring.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#define NONCE 24
#define TAGB 16
#define OFF_ID 4
#define OFF_WNONCE (OFF_ID + RS_KEY_ID_BYTES)
#define OFF_WRAPPED (OFF_WNONCE + NONCE)

static void emit(const char *what, long n, double value, const char *unit)
{
    printf("{\"bench\":\"recsync\",\"workload\":\"rotate\",\"what\":\"%s\",\"n\":%ld,"
           "\"value\":%.3f,\"unit\":\"%s\"}\n",
           what, n, value, unit);
    fflush(stdout);
}

/* The envelope's associated data (docs/protocol.md "Envelope"), with key id `kid`. */
static size_t build_ad(uint8_t *ad, const uint8_t *id, const uint8_t *host, const char *tag,
                       uint64_t idx, uint64_t hlc, uint32_t version, const uint8_t *magic,
                       const uint8_t *kid)
{
    size_t n = 0, tl = strlen(tag);
    memcpy(ad + n, id, 16);
    n += 16;
    memcpy(ad + n, host, 16);
    n += 16;
    ad[n++] = (uint8_t)tl;
    memcpy(ad + n, tag, tl);
    n += tl;
    for (int i = 7; i >= 0; i--)
        ad[n++] = (uint8_t)(idx >> (8 * i));
    for (int i = 7; i >= 0; i--)
        ad[n++] = (uint8_t)(hlc >> (8 * i));
    for (int i = 3; i >= 0; i--)
        ad[n++] = (uint8_t)(version >> (8 * i));
    memcpy(ad + n, magic, 4);
    n += 4;
    memcpy(ad + n, kid, RS_KEY_ID_BYTES);
    return n + RS_KEY_ID_BYTES;
}

/*
 * Atuin-style rekey of every record of `store`: opens each record's wrapped
 * content key with `old` and seals it under `fresh`, writing the envelope
 * back. Returns the records re-wrapped; exits on any failure.
 */
static long rewrap_all(rs_store *store, const rs_key *old, const rs_key *fresh)
{
    sqlite3 *db = rs_store_db(store);
    sqlite3_stmt *sel = NULL, *upd = NULL;
    long n = 0, checked = 0;
    if (sqlite3_prepare_v2(db, "SELECT host, tag, idx, id, hlc, version, data FROM records", -1,
                           &sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "UPDATE records SET data = ?4 WHERE host = ?1 AND tag = ?2 AND idx = ?3",
                           -1, &upd, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_rotate: rewrap: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    while (sqlite3_step(sel) == SQLITE_ROW) {
        const char *tag = (const char *)sqlite3_column_text(sel, 1);
        uint64_t idx = (uint64_t)sqlite3_column_int64(sel, 2),
                 hlc = (uint64_t)sqlite3_column_int64(sel, 4);
        uint32_t version = (uint32_t)sqlite3_column_int64(sel, 5);
        size_t len = (size_t)sqlite3_column_bytes(sel, 6);
        uint8_t *env = malloc(len), ad[128], cek[RS_KEY_BYTES];
        unsigned long long cek_len = 0;
        memcpy(env, sqlite3_column_blob(sel, 6), len);
        size_t adlen = build_ad(ad, sqlite3_column_blob(sel, 3), sqlite3_column_blob(sel, 0), tag,
                                idx, hlc, version, env, old->id);
        if (memcmp(env + OFF_ID, old->id, RS_KEY_ID_BYTES) != 0 ||
            crypto_aead_xchacha20poly1305_ietf_decrypt(cek, &cek_len, NULL, env + OFF_WRAPPED,
                                                       RS_KEY_BYTES + TAGB, ad, adlen,
                                                       env + OFF_WNONCE, old->bytes) != 0) {
            fprintf(stderr, "bench_rotate: rewrap: record %s idx %llu does not open\n", tag,
                    (unsigned long long)idx);
            exit(1);
        }
        adlen = build_ad(ad, sqlite3_column_blob(sel, 3), sqlite3_column_blob(sel, 0), tag, idx,
                         hlc, version, env, fresh->id);
        memcpy(env + OFF_ID, fresh->id, RS_KEY_ID_BYTES);
        randombytes_buf(env + OFF_WNONCE, NONCE);
        crypto_aead_xchacha20poly1305_ietf_encrypt(env + OFF_WRAPPED, NULL, cek, RS_KEY_BYTES, ad,
                                                   adlen, NULL, env + OFF_WNONCE, fresh->bytes);
        if (n % 997 == 0) { /* the new wrap really opens under the new key to the same CEK */
            uint8_t back[RS_KEY_BYTES];
            if (crypto_aead_xchacha20poly1305_ietf_decrypt(back, NULL, NULL, env + OFF_WRAPPED,
                                                           RS_KEY_BYTES + TAGB, ad, adlen,
                                                           env + OFF_WNONCE, fresh->bytes) != 0 ||
                memcmp(back, cek, RS_KEY_BYTES) != 0) {
                fprintf(stderr, "bench_rotate: rewrap check failed\n");
                exit(1);
            }
            checked++;
        }
        sodium_memzero(cek, sizeof(cek));
        sqlite3_bind_value(upd, 1, sqlite3_column_value(sel, 0));
        sqlite3_bind_value(upd, 2, sqlite3_column_value(sel, 1));
        sqlite3_bind_int64(upd, 3, (sqlite3_int64)idx);
        sqlite3_bind_blob(upd, 4, env, (int)len, SQLITE_TRANSIENT);
        if (sqlite3_step(upd) != SQLITE_DONE) {
            fprintf(stderr, "bench_rotate: rewrap: %s\n", sqlite3_errmsg(db));
            exit(1);
        }
        sqlite3_reset(upd);
        free(env);
        n++;
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_rotate: rewrap commit: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    fprintf(stderr,
            "bench_rotate: re-wrapped %ld records (%ld checked to open under the new key)\n", n,
            checked);
    return n;
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[1 << 16];
    size_t k;
    if (in == NULL || out == NULL) {
        fprintf(stderr, "bench_rotate: cannot copy %s to %s\n", from, to);
        exit(1);
    }
    while ((k = fread(buf, 1, sizeof(buf), in)) > 0)
        fwrite(buf, 1, k, out);
    fclose(in);
    fclose(out);
}

int main(int argc, char **argv)
{
    char a_dir[4096], b_dir[4096], c_dir[4096], path[4200], path2[4200], key[32], val[128];
    rs_store *a = NULL, *b = NULL, *c = NULL;
    rs_key *old = NULL, *fresh = NULL;
    rs_snapshot_info info;
    long n, keys = 10000;
    int err;

    if (argc < 3 || argc > 4 || (n = atol(argv[2])) <= 0 ||
        (argc == 4 && (keys = atol(argv[3])) <= 0)) {
        fprintf(stderr, "usage: bench_rotate DIR N [KEYS]\n");
        return 2;
    }
    if (sodium_init() < 0 || mkdir(argv[1], 0700) != 0) {
        fprintf(stderr, "bench_rotate: cannot make %s\n", argv[1]);
        return 1;
    }
    snprintf(a_dir, sizeof(a_dir), "%s/a", argv[1]);
    snprintf(b_dir, sizeof(b_dir), "%s/b", argv[1]);
    snprintf(c_dir, sizeof(c_dir), "%s/rewrap", argv[1]);
    if ((err = rs_store_init(&a, a_dir, NULL)) < 0)
        die("init", err);
    {
        char *text = NULL;
        if ((err = rs_store_key_export(&text, a)) < 0 ||
            (err = rs_store_init_with_key(&b, b_dir, text, NULL)) < 0)
            die("second device", err);
        rs_free(text);
    }
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        if (i % 10000 == 0 && (err = rs_store_begin(a)) < 0)
            die("begin", err);
        snprintf(key, sizeof(key), "k%ld", i % keys);
        snprintf(val, sizeof(val),
                 "value %ld of a benchmark key: some ninety bytes of text to "
                 "stand in for a setting",
                 i);
        if ((err = rs_kv_set(a, "bench", key, val)) < 0)
            die("kv set", err);
        if ((i % 10000 == 9999 || i == n - 1) && (err = rs_store_commit(a)) < 0)
            die("commit", err);
    }
    fprintf(stderr, "bench_rotate: %ld writes in %.1f s\n", n, now_s() - t0);

    /* The re-wrap runs on a copy of the store as it is before the rotation. */
    rs_store_free(a);
    mkdir(c_dir, 0700);
    snprintf(path, sizeof(path), "%s/store.db", a_dir);
    snprintf(path2, sizeof(path2), "%s/store.db", c_dir);
    copy_file(path, path2);
    snprintf(path, sizeof(path), "%s/key", a_dir);
    snprintf(path2, sizeof(path2), "%s/key", c_dir);
    copy_file(path, path2);
    chmod(path2, 0600);
    if ((err = rs_store_open(&a, a_dir, NULL)) < 0)
        die("reopen", err);

    t0 = now_s();
    double c0 = cpu_s();
    if ((err = rs_snapshot_write(&info, a, "kv")) < 0)
        die("snapshot", err);
    emit("snapshot_ms", n, (now_s() - t0) * 1000, "ms");
    emit("snapshot_cpu_ms", n, (cpu_s() - c0) * 1000, "ms");

    {
        uint8_t pks[2][RS_DEVICE_PK_BYTES];
        rs_uuid hosts[2];
        uint64_t snaps = 0;
        rs_store_host(&hosts[0], a);
        rs_store_host(&hosts[1], b);
        if ((err = rs__device_pk(pks[0], a)) < 0 || (err = rs__device_pk(pks[1], b)) < 0)
            die("device keys", err);
        t0 = now_s();
        c0 = cpu_s();
        if ((err = rs__key_rotate_local(a, (const uint8_t(*)[RS_DEVICE_PK_BYTES])pks, hosts, 2,
                                        NULL, 0, NULL)) < 0)
            die("rotate", err);
        double t1 = now_s();
        if ((err = rs__key_rotate_snapshots(&snaps, a)) < 0)
            die("rotate", err);
        double t2 = now_s();
        emit("rotate_ms", n, (t2 - t0) * 1000, "ms");
        emit("rotate_cpu_ms", n, (cpu_s() - c0) * 1000, "ms");
        emit("rotate_key_ms", n, (t1 - t0) * 1000, "ms");
        emit("rotate_snapshots_ms", n, (t2 - t1) * 1000, "ms");
        emit("rotate_snapshots", n, (double)snaps, "snapshots");
        fresh = NULL;
    }
    /* The same new key for the re-wrap: the rotated store's current key. */
    {
        char *text = NULL;
        if ((err = rs_store_key_export(&text, a)) < 0 ||
            (err = rs__key_from_text(&fresh, text)) < 0)
            die("new key", err);
        rs_free(text);
    }
    if ((err = rs_store_open(&c, c_dir, NULL)) < 0)
        die("open the copy", err);
    {
        char *text = NULL;
        if ((err = rs_store_key_export(&text, c)) < 0 || (err = rs__key_from_text(&old, text)) < 0)
            die("old key", err);
        rs_free(text);
    }
    t0 = now_s();
    c0 = cpu_s();
    long wrapped = rewrap_all(c, old, fresh);
    emit("rewrap_ms", wrapped, (now_s() - t0) * 1000, "ms");
    emit("rewrap_cpu_ms", wrapped, (cpu_s() - c0) * 1000, "ms");

    rs__key_free(old);
    rs__key_free(fresh);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
    return 0;
}
