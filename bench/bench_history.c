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
 *
 *   bench_history import [LINES...]   (default 100000 1000000)
 *
 * Import speed per format: for each LINES, a bash file (a "#<time>" line
 * before each command), a zsh extended history and a fish_history of LINES
 * entries, each imported into a fresh store, then imported again (nothing
 * new); and an Atuin history.db of 100000 rows (its schema, made here).
 * One JSON line per import:
 *   {"bench":"history_import","format":"zsh","n":100000,"seconds":..,"entries_per_s":..}
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

/* One history file of `format` with `lines` entries (the same commands as the search bench). */
static void write_history(const char *path, const char *format, long lines)
{
    static const char *const verbs[] = {
        "git commit -m",       "docker compose up", "cargo build --release", "ls -la",
        "kubectl get pods -n", "ssh deploy@host",   "vim src/main.c",        "make -j2 test"};
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die("writing the history file", RS_EIO);
    for (long i = 0; i < lines; i++) {
        long t = 1600000000 + i;
        if (strcmp(format, "bash") == 0)
            fprintf(f, "#%ld\n%s item-%ld\n", t, verbs[i % 8], i);
        else if (strcmp(format, "zsh") == 0)
            fprintf(f, ": %ld:%ld;%s item-%ld\n", t, i % 7, verbs[i % 8], i);
        else
            fprintf(f, "- cmd: %s item-%ld\n  when: %ld\n", verbs[i % 8], i, t);
    }
    if (fclose(f) != 0)
        die("writing the history file", RS_EIO);
}

/* An Atuin-shaped history.db (Atuin's schema) with `rows` entries. */
static void write_atuin(const char *path, long rows)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    char id[40], cmd[80];
    if (sqlite3_open(path, &db) != SQLITE_OK ||
        sqlite3_exec(db,
                     "create table history (id text primary key, timestamp integer not null,"
                     " duration integer not null, exit integer not null, command text not null,"
                     " cwd text not null, session text not null, hostname text not null,"
                     " deleted_at integer, unique(timestamp, cwd, command));"
                     "begin;",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "insert into history values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
                           -1, &st, NULL) != SQLITE_OK)
        die("making the Atuin database", RS_EIO);
    for (long i = 0; i < rows; i++) {
        snprintf(id, sizeof(id), "0190a1b2c3d4e5f6%016lx", (unsigned long)i);
        snprintf(cmd, sizeof(cmd), "cargo build --release item-%ld", i);
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, (1600000000 + i) * INT64_C(1000000000));
        sqlite3_bind_int64(st, 3, (i % 7) * INT64_C(1000000000));
        sqlite3_bind_int64(st, 4, i % 3);
        sqlite3_bind_text(st, 5, cmd, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 6, "/home/user/src", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, i % 2 ? "session-a" : "session-b", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, "laptop:user", -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            die("filling the Atuin database", RS_EIO);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (sqlite3_exec(db, "commit", NULL, NULL, NULL) != SQLITE_OK)
        die("filling the Atuin database", RS_EIO);
    sqlite3_close(db);
}

/* Imports `path` into a fresh store under root, twice; prints one JSON line. */
static void time_import(const char *root, const char *name, rs_history_format format,
                        const char *path, long n)
{
    char dir[700];
    rs_history_import_stats st;
    rs_store *store = NULL;
    double t, first, again;
    int err;

    snprintf(dir, sizeof(dir), "%s/%s-%ld", root, name, n);
    if ((err = rs_store_init(&store, dir, NULL)) < 0)
        die("making a store", err);
    t = now_s();
    if ((err = rs_history_import(&st, store, format, path)) < 0)
        die("importing", err);
    first = now_s() - t;
    if ((long)st.imported != n)
        die("importing: wrong entry count", RS_ERROR);
    t = now_s();
    if ((err = rs_history_import(&st, store, format, path)) < 0 || st.imported != 0)
        die("importing again", err);
    again = now_s() - t;
    rs_store_free(store);
    printf("{\"bench\":\"history_import\",\"format\":\"%s\",\"n\":%ld,\"seconds\":%.2f,"
           "\"entries_per_s\":%.0f,\"again_seconds\":%.2f}\n",
           name, n, first, (double)n / first, again);
    fflush(stdout);
    remove_root(dir);
}

static int import_bench(int argc, char **argv)
{
    static const char *const names[] = {"bash", "zsh", "fish"};
    static const rs_history_format formats[] = {RS_HISTORY_BASH, RS_HISTORY_ZSH, RS_HISTORY_FISH};
    long sizes[8] = {100000, 1000000};
    int count = 2;
    char root[512], file[600];

    if (argc > 2) {
        count = 0;
        for (int i = 2; i < argc && count < 8; i++)
            if ((sizes[count++] = atol(argv[i])) <= 0) {
                fprintf(stderr, "usage: bench_history import [LINES...]\n");
                return 2;
            }
    }
    make_root(root, sizeof(root), "bench-history-import");
    for (int k = 0; k < count; k++) {
        for (int f = 0; f < 3; f++) {
            snprintf(file, sizeof(file), "%s/%s_history", root, names[f]);
            write_history(file, names[f], sizes[k]);
            time_import(root, names[f], formats[f], file, sizes[k]);
            remove(file);
        }
    }
    snprintf(file, sizeof(file), "%s/history.db", root);
    write_atuin(file, 100000);
    time_import(root, "atuin", RS_HISTORY_ATUIN, file, 100000);
    remove_root(root);
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const verbs[] = {
        "git commit -m",       "docker compose up", "cargo build --release", "ls -la",
        "kubectl get pods -n", "ssh deploy@host",   "vim src/main.c",        "make -j2 test"};
    long lines;
    char root[512], a_dir[600], b_dir[600], file[600], rare[64], multi[64];
    rs_history_import_stats st;
    rs_store *a = NULL, *b = NULL;
    recs r = {NULL, 0, 0};
    char *key_text = NULL;
    size_t hits;
    double t, import_s, again_s, pull_s;
    FILE *f;
    int err;

    if (argc > 1 && strcmp(argv[1], "import") == 0)
        return import_bench(argc, argv);
    lines = argc > 1 ? atol(argv[1]) : 100000;
    if (lines <= 0) {
        fprintf(stderr, "usage: bench_history [LINES] | import [LINES...]\n");
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
