/*
 * bench_kv: the kv store's write rate and the apply rate of pulled pages.
 *
 *   bench_kv [N]      (default 100000)
 *
 * 1. kv set, one transaction per set (what `recsync kv set` does).
 * 2. kv set, N sets in one transaction (rs_store_begin / commit).
 * 3. Pulled pages: another device of the user inserts the N kv records in
 *    pages of RS_SYNC_DEFAULT_PAGE_RECORDS with rs_store_insert (what sync
 *    does with each downloaded page: open, check, store, apply, one
 *    transaction per page), against the same records of a tag no store
 *    applies, to show what applying costs.
 * Stores live in a temporary directory under $TMPDIR (else /tmp), removed
 * at the end.
 */
#define _GNU_SOURCE /* nftw */
#define BENCH_NAME "bench_kv"
#include "benchutil.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    char root[512], a_dir[600], b_dir[600], c_dir[600], d_dir[600], key[64], value[128];
    rs_store *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    recs kv = {NULL, 0, 0}, raw = {NULL, 0, 0};
    char *key_text = NULL;
    double t, one, batch, apply, plain;
    long single = n < 5000 ? n : 5000;
    int err;

    if (n <= 0) {
        fprintf(stderr, "usage: bench_kv [N]\n");
        return 2;
    }
    make_root(root, sizeof(root), "bench-kv");
    snprintf(a_dir, sizeof(a_dir), "%s/a", root);
    snprintf(b_dir, sizeof(b_dir), "%s/b", root);
    snprintf(c_dir, sizeof(c_dir), "%s/c", root);
    snprintf(d_dir, sizeof(d_dir), "%s/d", root);
    if ((err = rs_store_init(&a, a_dir, NULL)) < 0 ||
        (err = rs_store_key_export(&key_text, a)) < 0 ||
        (err = rs_store_init_with_key(&b, b_dir, key_text, NULL)) < 0 ||
        (err = rs_store_init_with_key(&c, c_dir, key_text, NULL)) < 0 ||
        (err = rs_store_init_with_key(&d, d_dir, key_text, NULL)) < 0)
        die("making the stores", err);

    /* 1. One transaction per set, on its own store (a few thousand: each commits). */
    t = now_s();
    for (long i = 0; i < single; i++) {
        snprintf(key, sizeof(key), "key-%ld", i);
        snprintf(value, sizeof(value), "value %ld of the benchmark, about sixty bytes long....", i);
        if ((err = rs_kv_set(d, "bench", key, value)) < 0)
            die("kv set", err);
    }
    one = now_s() - t;

    /* 2. N sets in one transaction. */
    t = now_s();
    if ((err = rs_store_begin(a)) < 0)
        die("begin", err);
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key-%ld", i % 50000);
        snprintf(value, sizeof(value), "value %ld of the benchmark, about sixty bytes long....", i);
        if ((err = rs_kv_set(a, "bench", key, value)) < 0)
            die("kv set", err);
    }
    if ((err = rs_store_commit(a)) < 0)
        die("commit", err);
    batch = now_s() - t;

    /* 3. The same records pulled by b (applied) and, relabelled, by c (stored only). */
    if ((err = rs_store_foreach(a, RS_KV_TAG, collect, &kv)) < 0)
        die("reading records", err);
    apply = insert_pages(b, &kv);
    memset(value, 'x', sizeof(value));
    if ((err = rs_store_begin(d)) < 0)
        die("begin", err);
    for (long i = 0; i < n; i++) {
        /* As long as a kv record's payload (about 100 bytes of JSON). */
        if ((err = rs_append(NULL, d, "bench.raw", 1, value,
                             kv.v[i].data_len - RS_ENVELOPE_OVERHEAD)) < 0)
            die("append", err);
    }
    if ((err = rs_store_commit(d)) < 0)
        die("commit", err);
    if ((err = rs_store_foreach(d, "bench.raw", collect, &raw)) < 0)
        die("reading records", err);
    plain = insert_pages(c, &raw);
    {
        char *v = NULL;
        snprintf(key, sizeof(key), "key-%ld", (n - 1) % 50000);
        if ((err = rs_kv_get(&v, b, "bench", key)) < 0)
            die("kv get on the pulling device", err);
        rs_free(v);
    }

    printf("kv set, one transaction each:  %7ld in %6.2f s = %8.0f sets/s\n", single, one,
           (double)single / one);
    printf("kv set, one transaction:       %7ld in %6.2f s = %8.0f sets/s\n", n, batch,
           (double)n / batch);
    printf("pulled pages of %d, kv applied: %7zu in %6.2f s = %8.0f records/s\n",
           RS_SYNC_DEFAULT_PAGE_RECORDS, kv.n, apply, (double)kv.n / apply);
    printf("pulled pages, no store applies: %7zu in %6.2f s = %8.0f records/s\n", raw.n, plain,
           (double)raw.n / plain);

    recs_free(&kv);
    recs_free(&raw);
    rs_free(key_text);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
    rs_store_free(d);
    remove_root(root);
    return 0;
}
