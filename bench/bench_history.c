/*
 * bench_history: importing a zsh history and searching it.
 *
 *   bench_history [LINES]     (default 100000)
 *
 * Writes a zsh extended history of LINES entries (one multi-line command
 * in a hundred, the rest from a small vocabulary with a running number),
 * imports it, imports it again (nothing new), then times, in-process and
 * averaged over many runs: a search for a rare text, a common text (the
 * 50 newest of an eighth of the entries, and all of them), a multi-line
 * command, a two-character text (the scan), and the 50 newest entries.
 * Then another device pulls the records in sync-sized pages.
 */
#define _GNU_SOURCE /* nftw */
#define BENCH_NAME "bench_history"
#include "benchutil.h"

static int count_entry(const rs_history_entry *e, void *payload)
{
    (void)e;
    (*(size_t *)payload)++;
    return 0;
}

/* Mean milliseconds of `runs` searches for `text` (NULL: list), and the hits of the last. */
static double timed(size_t *hits, rs_store *store, const char *text, size_t limit, int runs)
{
    double t = now_s();
    int err;
    for (int i = 0; i < runs; i++) {
        *hits = 0;
        if (text)
            err = rs_history_search(store, text, limit, count_entry, hits);
        else
            err = rs_history_list(store, limit, count_entry, hits);
        if (err < 0)
            die("searching", err);
    }
    return (now_s() - t) * 1e3 / runs;
}

int main(int argc, char **argv)
{
    static const char *const verbs[] = {
        "git commit -m",       "docker compose up", "cargo build --release", "ls -la",
        "kubectl get pods -n", "ssh deploy@host",   "vim src/main.c",        "make -j2 test"};
    long lines = argc > 1 ? atol(argv[1]) : 100000;
    char root[512], a_dir[600], b_dir[600], file[600], rare[64], multi[64];
    rs_history_import_stats st;
    rs_store *a = NULL, *b = NULL;
    recs r = {NULL, 0, 0};
    char *key_text = NULL;
    size_t hits;
    double t, import_s, again_s, pull_s;
    FILE *f;
    int err;

    if (lines <= 0) {
        fprintf(stderr, "usage: bench_history [LINES]\n");
        return 2;
    }
    make_root(root, sizeof(root), "bench-history");
    snprintf(a_dir, sizeof(a_dir), "%s/a", root);
    snprintf(b_dir, sizeof(b_dir), "%s/b", root);
    snprintf(file, sizeof(file), "%s/zsh_history", root);
    if ((f = fopen(file, "w")) == NULL)
        die("writing the history file", RS_EIO);
    for (long i = 0; i < lines; i++) {
        if (i % 100 == 99)
            fprintf(f, ": %ld:%ld;for f in *.log; do\\\n  gzip \"$f\" # batch %ld\\\ndone\n",
                    1600000000 + i, i % 7, i);
        else
            fprintf(f, ": %ld:%ld;%s item-%ld\n", 1600000000 + i, i % 7, verbs[i % 8], i);
    }
    fclose(f);
    if ((err = rs_store_init(&a, a_dir, NULL)) < 0 ||
        (err = rs_store_key_export(&key_text, a)) < 0 ||
        (err = rs_store_init_with_key(&b, b_dir, key_text, NULL)) < 0)
        die("making the stores", err);

    t = now_s();
    if ((err = rs_history_import(&st, a, RS_HISTORY_ZSH, file)) < 0)
        die("importing", err);
    import_s = now_s() - t;
    printf("import: %zu entries in %.2f s = %.0f entries/s\n", st.imported, import_s,
           (double)st.imported / import_s);
    t = now_s();
    if ((err = rs_history_import(&st, a, RS_HISTORY_ZSH, file)) < 0)
        die("importing again", err);
    again_s = now_s() - t;
    printf("import again: %zu new of %zu in %.2f s\n", st.imported, st.entries, again_s);

    snprintf(rare, sizeof(rare), "item-%ld", lines * 4 / 5 + 1);
    snprintf(multi, sizeof(multi), "batch %ld", (lines / 200) * 100 + 99);
    printf("search '%s': %.3f ms", rare, timed(&hits, a, rare, 0, 200));
    printf(" (%zu hit)\n", hits);
    printf("search 'compose up', 50 newest: %.3f ms", timed(&hits, a, "compose up", 50, 200));
    printf(" (%zu hits)\n", hits);
    printf("search 'compose up', all: %.3f ms", timed(&hits, a, "compose up", 0, 10));
    printf(" (%zu hits)\n", hits);
    printf("search '%s': %.3f ms", multi, timed(&hits, a, multi, 0, 200));
    printf(" (%zu hit)\n", hits);
    printf("search 'zz' (two characters, a scan): %.3f ms", timed(&hits, a, "zz", 50, 10));
    printf(" (%zu hits)\n", hits);
    printf("list, 50 newest: %.3f ms\n", timed(&hits, a, NULL, 50, 200));

    if ((err = rs_store_foreach(a, RS_HISTORY_TAG, collect, &r)) < 0)
        die("reading records", err);
    pull_s = insert_pages(b, &r);
    printf("pulled pages of %d, history applied: %zu in %.2f s = %.0f records/s\n",
           RS_SYNC_DEFAULT_PAGE_RECORDS, r.n, pull_s, (double)r.n / pull_s);
    printf("search on the pulling device '%s': %.3f ms", rare, timed(&hits, b, rare, 0, 200));
    printf(" (%zu hit)\n", hits);

    recs_free(&r);
    rs_free(key_text);
    rs_store_free(a);
    rs_store_free(b);
    remove_root(root);
    return 0;
}
