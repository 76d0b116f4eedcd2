/*
 * The history store: add, list newest first, substring search through the
 * trigram index (and the scan for short texts), deletes that win over
 * their create in any order, bash and zsh imports with deterministic ids,
 * and state that a rebuild reproduces.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin.h"
#include "testutil.h"

#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

typedef test_fixture fixture;

/* Entries as text: "command|time|exit|duration;" per entry, in the order handed out. */
typedef struct text_out {
    char s[8192];
    int count;
    bool with_fields;
} text_out;

static int append_entry(const rs_history_entry *e, void *payload)
{
    text_out *t = payload;
    size_t n = strlen(t->s);
    t->count++;
    if (t->with_fields)
        snprintf(t->s + n, sizeof(t->s) - n, "%s|%lld|%lld|%lld;", e->command,
                 (long long)e->time_ms, (long long)e->exit_code, (long long)e->duration_ms);
    else
        snprintf(t->s + n, sizeof(t->s) - n, "%s;", e->command);
    return 0;
}

static text_out list(rs_store *store, size_t limit)
{
    text_out t;
    memset(&t, 0, sizeof(t));
    OK(rs_history_list(store, limit, append_entry, &t));
    return t;
}

static text_out search(rs_store *store, const char *text)
{
    text_out t;
    memset(&t, 0, sizeof(t));
    OK(rs_history_search(store, text, 0, append_entry, &t));
    return t;
}

static rs_uuid add(rs_store *store, const char *command, int64_t time_ms)
{
    rs_history_entry e;
    rs_uuid id;
    memset(&e, 0, sizeof(e));
    e.command = command;
    e.cwd = "/home/u";
    e.session = "s1";
    e.hostname = "laptop";
    e.exit_code = 0;
    e.duration_ms = 5;
    e.time_ms = time_ms;
    OK(rs_history_add(&id, store, &e));
    return id;
}

typedef struct one_entry {
    rs_uuid id;
    int found;
    int deleted;
    char command[256];
    char hostname[64];
    char cwd[64];
    char session[64];
    rs_hlc hlc;
    int64_t time_ms;
} one_entry;

static int find_entry(const rs_history_entry *e, void *payload)
{
    one_entry *o = payload;
    if (memcmp(e->id.bytes, o->id.bytes, 16) != 0)
        return 0;
    o->found = 1;
    o->deleted = e->deleted;
    o->hlc = e->hlc;
    o->time_ms = e->time_ms;
    snprintf(o->command, sizeof(o->command), "%s", e->command);
    snprintf(o->hostname, sizeof(o->hostname), "%s", e->hostname);
    snprintf(o->cwd, sizeof(o->cwd), "%s", e->cwd);
    snprintf(o->session, sizeof(o->session), "%s", e->session);
    return 1;
}

static one_entry entry_of(rs_store *store, const rs_uuid *id)
{
    one_entry o;
    memset(&o, 0, sizeof(o));
    o.id = *id;
    assert_true(rs_history_foreach(store, find_entry, &o) >= 0);
    return o;
}

static void history_add_lists_newest_first(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    text_out t;

    add(a, "make", 1000);
    add(a, "make test", 3000);
    add(a, "git status", 2000);
    t = list(a, 0);
    assert_string_equal(t.s, "make test;git status;make;");
    t = list(a, 2);
    assert_string_equal(t.s, "make test;git status;");
    t.with_fields = true;
    t.s[0] = '\0';
    OK(rs_history_list(a, 1, append_entry, &t));
    assert_string_equal(t.s, "make test|3000|0|5;");
    rs_store_free(a);
}

static void history_add_fills_defaults_and_repairs_text(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_history_entry e;
    rs_uuid id;
    one_entry o;
    char host[256] = "";
    uint64_t before = rs_now_ms();

    memset(&e, 0, sizeof(e));
    assert_int_equal(rs_history_add(&id, a, &e), RS_EINVAL);
    e.command = "";
    assert_int_equal(rs_history_add(&id, a, &e), RS_EINVAL);
    assert_true(test_contains(rs_error_last(), "command"));
    assert_int_equal(test_count_records(a, NULL), 0);
    e.command = "echo \xff caf\xc3\xa9";
    OK(rs_history_add(&id, a, &e));
    assert_false(rs_uuid_is_nil(&id));
    o = entry_of(a, &id);
    assert_true(o.found);
    assert_string_equal(o.command, "echo \xef\xbf\xbd caf\xc3\xa9");
    assert_string_equal(o.cwd, "");
    assert_string_equal(o.session, "");
    gethostname(host, sizeof(host) - 1);
    assert_string_equal(o.hostname, host);
    assert_true(o.time_ms >= (int64_t)before && o.time_ms <= (int64_t)rs_now_ms());
    rs_store_free(a);
}

static void history_search_finds_substrings_ignoring_case(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid gone;
    text_out t;

    add(a, "docker compose up -d", 1000);
    add(a, "git push --force-with-lease", 2000);
    add(a, "cat /etc/nginx/nginx.conf", 3000);
    add(a, "echo 100% \"quoted\" done_now", 4000);
    gone = add(a, "docker compose down", 5000);
    assert_string_equal(search(a, "ompose").s, "docker compose down;docker compose up -d;");
    assert_string_equal(search(a, "COMPOSE UP").s, "docker compose up -d;");
    assert_string_equal(search(a, "/etc/ng").s, "cat /etc/nginx/nginx.conf;");
    assert_string_equal(search(a, "--force-w").s, "git push --force-with-lease;");
    assert_string_equal(search(a, "\"quoted\"").s, "echo 100% \"quoted\" done_now;");
    /* Short texts scan; LIKE's wildcards in them are literal. */
    assert_string_equal(search(a, "0%").s, "echo 100% \"quoted\" done_now;");
    assert_string_equal(search(a, "e_").s, "echo 100% \"quoted\" done_now;");
    assert_string_equal(search(a, "UP").s, "docker compose up -d;");
    assert_int_equal(search(a, "nothing like this").count, 0);
    OK(rs_history_delete(a, &gone));
    assert_string_equal(search(a, "ompose").s, "docker compose up -d;");
    assert_int_equal(rs_history_search(a, "", 0, append_entry, NULL), RS_EINVAL);
    t = list(a, 0);
    assert_int_equal(t.count, 4);
    rs_store_free(a);
}

static void history_delete_refuses_unknown_and_deleted_entries(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid id = add(a, "ls", 1000), unknown;
    char text[RS_UUID_STRLEN + 1];

    OK(rs_history_delete(a, &id));
    assert_int_equal(rs_history_delete(a, &id), RS_ENOTFOUND);
    rs_uuid_format(text, &id);
    assert_true(test_contains(rs_error_last(), text));
    rs_uuid_random(&unknown);
    assert_int_equal(rs_history_delete(a, &unknown), RS_ENOTFOUND);
    assert_int_equal(test_count_records(a, RS_HISTORY_TAG), 2);
    assert_int_equal(list(a, 0).count, 0);
    rs_store_free(a);
}

/*
 * A delete wins over its create whichever arrives first, and the tombstone
 * keeps no text: not in search, not in the table.
 */
static void history_delete_wins_in_any_order(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL),
             *c = test_init_sibling(f->c, a, NULL);
    rs_uuid id = add(a, "export TOKEN=secret", 1000), hb, ha;
    test_recs ra = {NULL, 0, 0}, rb = {NULL, 0, 0};
    one_entry o;

    add(a, "ls", 2000);
    test_transfer(b, a);
    OK(rs_history_delete(b, &id));
    /* c hears b's delete before a's create. */
    rs_store_host(&hb, b);
    rs_store_host(&ha, a);
    OK(rs_store_range(b, &hb, RS_HISTORY_TAG, 0, 100, test_collect, &rb));
    OK(rs_store_insert(NULL, c, rb.v, rb.n));
    o = entry_of(c, &id);
    assert_true(o.found);
    assert_true(o.deleted);
    OK(rs_store_range(a, &ha, RS_HISTORY_TAG, 0, 100, test_collect, &ra));
    OK(rs_store_insert(NULL, c, ra.v, ra.n));
    test_transfer(a, b);
    for (rs_store *s = a; s; s = s == a ? b : s == b ? c : NULL) {
        o = entry_of(s, &id);
        assert_true(o.found);
        assert_true(o.deleted);
        assert_string_equal(o.command, "");
        assert_string_equal(list(s, 0).s, "ls;");
        assert_int_equal(search(s, "secret").count, 0);
        assert_int_equal(search(s, "TOKEN").count, 0);
    }
    test_recs_free(&ra);
    test_recs_free(&rb);
    rs_store_free(a);
    rs_store_free(b);
    rs_store_free(c);
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    fclose(fp);
}

static void set_mtime(const char *path, int64_t secs)
{
    struct timeval tv[2] = {{(time_t)secs, 0}, {(time_t)secs, 0}};
    assert_int_equal(utimes(path, tv), 0);
}

static rs_history_import_stats import(rs_store *store, rs_history_format format, const char *path)
{
    rs_history_import_stats stats;
    memset(&stats, 0xff, sizeof(stats));
    OK(rs_history_import(&stats, store, format, path));
    return stats;
}

static void history_import_zsh_extended_multiline_and_metafied(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    /* "caf\xc3\xa9": 0xa9 is not metafied; a byte 0x83 is written as 0x83 0xa3. */
    static const char zsh[] = ": 1700000000:3;make\n"
                              ": 1700000005:0;for i in 1 2; do\\\n"
                              "  echo $i\\\n"
                              "done\n"
                              "plain command\n"
                              ": 1700000010:12;echo caf\xc3\xa9 \x83\xa3\n"
                              "\n"
                              ": 1700000020:0;echo trailing\r\n";
    rs_history_import_stats st;
    text_out t;

    write_file(f->file, zsh, sizeof(zsh) - 1);
    st = import(a, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.entries, 5);
    assert_int_equal(st.imported, 5);
    assert_int_equal(st.skipped, 0);
    memset(&t, 0, sizeof(t));
    t.with_fields = true;
    OK(rs_history_list(a, 0, append_entry, &t));
    /* 0x83 0xa3 unmetafies to 0x83, not UTF-8 alone: repaired to U+FFFD. */
    assert_string_equal(t.s, "echo trailing|1700000020000|-1|0;"
                             "echo caf\xc3\xa9 \xef\xbf\xbd|1700000010000|-1|12000;"
                             "plain command|1700000005001|-1|-1;"
                             "for i in 1 2; do\n  echo $i\ndone|1700000005000|-1|0;"
                             "make|1700000000000|-1|3000;");
    assert_int_equal(test_count_records(a, RS_HISTORY_TAG), 5);
    rs_store_free(a);
}

static void history_import_bash_plain_and_dated(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    static const char plain[] = "ls\ncd /tmp\n\nls\n";
    static const char dated[] = "old undated\n"
                                "#1700000100\n"
                                "vim a\n"
                                "#1700000200\n"
                                "for f in *; do\n"
                                "  echo $f\n"
                                "done\n"
                                "#notatime\n"
                                "#1700000300\n"
                                "#1700000400\n"
                                "last\n";
    rs_history_import_stats st;
    text_out t;

    write_file(f->file, plain, sizeof(plain) - 1);
    set_mtime(f->file, 1800000000);
    st = import(a, RS_HISTORY_BASH, f->file);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.imported, 3);
    memset(&t, 0, sizeof(t));
    t.with_fields = true;
    OK(rs_history_list(a, 0, append_entry, &t));
    assert_string_equal(t.s, "ls|1799999999999|-1|-1;cd /tmp|1799999999998|-1|-1;"
                             "ls|1799999999997|-1|-1;");

    write_file(f->file, dated, sizeof(dated) - 1);
    st = import(b, RS_HISTORY_BASH, f->file);
    /* One entry per line; a timestamp dates the next line only, the lines after it follow. */
    assert_int_equal(st.entries, 7);
    memset(&t, 0, sizeof(t));
    t.with_fields = true;
    OK(rs_history_list(b, 0, append_entry, &t));
    assert_string_equal(t.s, "last|1700000400000|-1|-1;"
                             "#notatime|1700000200003|-1|-1;"
                             "done|1700000200002|-1|-1;"
                             "  echo $f|1700000200001|-1|-1;"
                             "for f in *; do|1700000200000|-1|-1;"
                             "vim a|1700000100000|-1|-1;"
                             "old undated|1700000099999|-1|-1;");

    /* --multiline (bash's lithist): the lines after a timestamp make one entry. */
    {
        rs_store *c = test_init_store(f->c, NULL);
        OK(rs_history_import_flags(&st, c, RS_HISTORY_BASH, f->file, RS_HISTORY_IMPORT_MULTILINE));
        assert_int_equal(st.entries, 4);
        memset(&t, 0, sizeof(t));
        t.with_fields = true;
        OK(rs_history_list(c, 0, append_entry, &t));
        assert_string_equal(t.s, "last|1700000400000|-1|-1;"
                                 "for f in *; do\n  echo $f\ndone\n#notatime|1700000200000|-1|-1;"
                                 "vim a|1700000100000|-1|-1;"
                                 "old undated|1700000099999|-1|-1;");
        rs_store_free(c);
    }
    rs_store_free(a);
    rs_store_free(b);
}

/*
 * Importing again adds nothing; a longer file adds only its new entries,
 * duplicates within the file included; the same file imported on another
 * device gives the same ids, so sync adds no duplicates either.
 */
static void history_import_is_idempotent_across_files_and_devices(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    static const char first[] = ": 1700000000:0;ls\n: 1700000000:0;ls\n: 1700000001:0;pwd\n";
    static const char longer[] = ": 1700000000:0;ls\n: 1700000000:0;ls\n: 1700000001:0;pwd\n"
                                 ": 1700000000:0;ls\n: 1700000002:0;date\n";
    rs_history_import_stats st;

    write_file(f->file, first, sizeof(first) - 1);
    st = import(a, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.imported, 3);
    st = import(a, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.imported, 0);
    assert_int_equal(st.skipped, 3);
    assert_int_equal(test_count_records(a, RS_HISTORY_TAG), 3);
    write_file(f->file, longer, sizeof(longer) - 1);
    st = import(a, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.imported, 2);
    assert_int_equal(st.skipped, 3);
    assert_string_equal(list(a, 0).s, "date;pwd;ls;ls;ls;");

    /* b imports the same file, then both exchange: still five entries. */
    st = import(b, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.imported, 5);
    test_transfer(a, b);
    test_transfer(b, a);
    assert_int_equal(list(a, 0).count, 5);
    assert_int_equal(list(b, 0).count, 5);
    assert_int_equal(search(a, "date").count, 1);
    assert_int_equal(search(b, "date").count, 1);
    /* And b now skips what it has from a. */
    st = import(b, RS_HISTORY_ZSH, f->file);
    assert_int_equal(st.imported, 0);
    rs_store_free(a);
    rs_store_free(b);
}

static void history_import_names_a_missing_file(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_history_import_stats st;
    assert_int_equal(rs_history_import(&st, a, RS_HISTORY_BASH, f->file), RS_ENOTFOUND);
    assert_true(test_contains(rs_error_last(), f->file));
    assert_int_equal(rs_history_import(&st, a, RS_HISTORY_BASH, f->root), RS_EIO);
    rs_store_free(a);
}

/* An import inside the caller's transaction is all-or-nothing with it. */
static void history_import_joins_the_callers_transaction(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    static const char zsh[] = ": 1700000000:0;one\n: 1700000001:0;two\n";

    write_file(f->file, zsh, sizeof(zsh) - 1);
    OK(rs_store_begin(a));
    assert_int_equal(import(a, RS_HISTORY_ZSH, f->file).imported, 2);
    rs_store_rollback(a);
    assert_int_equal(list(a, 0).count, 0);
    assert_int_equal(test_count_records(a, NULL), 0);
    OK(rs_store_begin(a));
    import(a, RS_HISTORY_ZSH, f->file);
    OK(rs_store_commit(a));
    assert_int_equal(list(a, 0).count, 2);
    rs_store_free(a);
}

/* Two creates of one id (one file imported on two devices): the higher (HLC, host) is kept. */
static void history_two_creates_of_one_id_converge(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_history_entry e;
    rs_uuid id, ha, hb;
    one_entry oa, ob;
    test_recs r = {NULL, 0, 0};
    bool b_wins;

    memset(&e, 0, sizeof(e));
    rs_uuid_random(&e.id);
    e.command = "same command";
    e.time_ms = 1000;
    e.hostname = "from-a";
    OK(rs_history_add(&id, a, &e));
    e.hostname = "from-b";
    OK(rs_history_add(&id, b, &e));
    test_transfer(a, b);
    test_transfer(b, a);
    oa = entry_of(a, &id);
    ob = entry_of(b, &id);
    assert_string_equal(oa.hostname, ob.hostname);
    assert_int_equal(oa.hlc, ob.hlc);
    rs_store_host(&ha, a);
    rs_store_host(&hb, b);
    OK(rs_store_range(a, &ha, RS_HISTORY_TAG, 0, 1, test_collect, &r));
    OK(rs_store_range(b, &hb, RS_HISTORY_TAG, 0, 1, test_collect, &r));
    assert_int_equal(r.n, 2);
    b_wins = rs_hlc_cmp(r.v[1].hlc, &hb, r.v[0].hlc, &ha) > 0;
    assert_string_equal(oa.hostname, b_wins ? "from-b" : "from-a");
    assert_int_equal(oa.hlc, r.v[b_wins].hlc);
    test_recs_free(&r);
    assert_int_equal(search(a, "same command").count, 1);
    assert_int_equal(search(b, "same command").count, 1);
    rs_store_free(a);
    rs_store_free(b);
}

static int dump_entry(const rs_history_entry *e, void *payload)
{
    text_out *t = payload;
    char id[RS_UUID_STRLEN + 1], hlc[RS_HLC_STRLEN + 1];
    size_t n = strlen(t->s);
    rs_uuid_format(id, &e->id);
    rs_hlc_format(hlc, e->hlc);
    snprintf(t->s + n, sizeof(t->s) - n, "%s %d %s %s %lld;", id, e->deleted, hlc, e->command,
             (long long)e->time_ms);
    return 0;
}

/* A rebuild gives back the same table and a search index that agrees with it. */
static void history_rebuild_reproduces_state_and_index(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_uuid ids[20];
    text_out before, after;
    char cmd[64];

    for (int i = 0; i < 20; i++) {
        snprintf(cmd, sizeof(cmd), "command number %d", i);
        ids[i] = add(a, cmd, 1000 + i);
    }
    for (int i = 0; i < 20; i += 3)
        OK(rs_history_delete(a, &ids[i]));
    memset(&before, 0, sizeof(before));
    memset(&after, 0, sizeof(after));
    OK(rs_history_foreach(a, dump_entry, &before));
    OK(rs_store_rebuild(a, RS_HISTORY_TAG));
    OK(rs_history_foreach(a, dump_entry, &after));
    assert_string_equal(before.s, after.s);
    assert_int_equal(search(a, "number").count, 13);
    assert_int_equal(search(a, "number 3").count, 0);
    assert_int_equal(search(a, "number 1").count, 8); /* 1, 10, 11, 13, 14, 16, 17, 19 */
    rs_store_free(a);
}

/* More deletes than one millisecond's 4096 rowids: each tombstone keeps its entry's place. */
static void history_many_deletes_all_find_a_place(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    static rs_uuid ids[5000];
    text_out t;

    OK(rs_store_begin(a));
    for (int i = 0; i < 5000; i++)
        ids[i] = add(a, "make", 1700000000000 + i);
    for (int i = 0; i < 5000; i++)
        OK(rs_history_delete(a, &ids[i]));
    OK(rs_store_commit(a));
    t = list(a, 0);
    assert_string_equal(t.s, "");
    OK(rs_store_rebuild(a, RS_HISTORY_TAG));
    t = list(a, 0);
    assert_string_equal(t.s, "");
    rs_store_free(a);
}

#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(history_add_lists_newest_first),
        T(history_add_fills_defaults_and_repairs_text),
        T(history_search_finds_substrings_ignoring_case),
        T(history_delete_refuses_unknown_and_deleted_entries),
        T(history_delete_wins_in_any_order),
        T(history_import_zsh_extended_multiline_and_metafied),
        T(history_import_bash_plain_and_dated),
        T(history_import_is_idempotent_across_files_and_devices),
        T(history_import_names_a_missing_file),
        T(history_import_joins_the_callers_transaction),
        T(history_two_creates_of_one_id_converge),
        T(history_rebuild_reproduces_state_and_index),
        T(history_many_deletes_all_find_a_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
