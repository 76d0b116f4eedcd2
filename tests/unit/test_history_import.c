/*
 * History importers as the shells read their files (issue 16's cases and
 * Atuin's importer tests, with what recsync expects): bash timestamps that
 * date one line, out-of-range times ignored, zsh durations and times that
 * overflow, metafied bytes, fish_history escapes, Atuin's history.db, FIFOs;
 * undated entries in file order. And the filters of rs_history_find and the
 * shell hook's two records of one entry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin.h"
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

typedef test_fixture fixture;

/* Entries as "command|time|exit|duration;" (or with cwd, session and host), newest first. */
typedef struct text_out {
    char s[16384];
    int count;
    bool more; /* cwd, session and hostname too */
} text_out;

static int append_entry(const rs_history_entry *e, void *payload)
{
    text_out *t = payload;
    size_t n = strlen(t->s);
    t->count++;
    snprintf(t->s + n, sizeof(t->s) - n, "%s|%lld|%lld|%lld", e->command, (long long)e->time_ms,
             (long long)e->exit_code, (long long)e->duration_ms);
    n = strlen(t->s);
    if (t->more)
        snprintf(t->s + n, sizeof(t->s) - n, "|%s|%s|%s", e->cwd, e->session, e->hostname);
    n = strlen(t->s);
    snprintf(t->s + n, sizeof(t->s) - n, ";");
    return 0;
}

static text_out entries(rs_store *store, bool more)
{
    text_out t;
    memset(&t, 0, sizeof(t));
    t.more = more;
    OK(rs_history_list(store, 0, append_entry, &t));
    return t;
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

/* Imports `text` as a file of `format` dated `mtime` (seconds); returns the entries read. */
static size_t import_text(rs_store *store, fixture *f, rs_history_format format, const char *text,
                          size_t len, int64_t mtime)
{
    rs_history_import_stats st;
    write_file(f->file, text, len);
    set_mtime(f->file, mtime);
    OK(rs_history_import(&st, store, format, f->file));
    assert_int_equal(st.imported + st.skipped, st.entries);
    return st.entries;
}

#define IMPORT(store, format, lit, mtime) import_text(store, f, format, lit, sizeof(lit) - 1, mtime)

/* Atuin's partial_timestamps: "#<time>" dates "git clean -dxf" only; "cd ../" is a command. */
static void bash_timestamp_dates_the_next_line_only(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    assert_int_equal(
        IMPORT(a, RS_HISTORY_BASH, "git reset\n#1672919006\ngit clean -dxf\ncd ../\n", 1800000000),
        3);
    assert_string_equal(entries(a, false).s, "cd ../|1672919006001|-1|-1;"
                                             "git clean -dxf|1672919006000|-1|-1;"
                                             "git reset|1672919005999|-1|-1;");
    rs_store_free(a);
}

/* Atuin's parse_with_timestamps: each line dated by the timestamp before it. */
static void bash_timestamps_before_every_line(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    assert_int_equal(IMPORT(a, RS_HISTORY_BASH,
                            "#1672918999\ngit reset\n#1672919006\ngit clean -dxf\n#1672919020\n"
                            "cd ../\n",
                            1800000000),
                     3);
    assert_string_equal(entries(a, false).s, "cd ../|1672919020000|-1|-1;"
                                             "git clean -dxf|1672919006000|-1|-1;"
                                             "git reset|1672918999000|-1|-1;");
    rs_store_free(a);
}

/*
 * A timestamp before 1970 (Atuin's year -9999 case) or past 9999 is no
 * command and dates nothing: its entry takes a time in file order, not
 * year 31 million.
 */
static void bash_out_of_range_timestamps_are_ignored(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    assert_int_equal(IMPORT(a, RS_HISTORY_BASH,
                            "cargo install atuin\n#-377705116800\ncargo update\n", 1800000000),
                     2);
    assert_string_equal(entries(a, false).s, "cargo update|1799999999999|-1|-1;"
                                             "cargo install atuin|1799999999998|-1|-1;");
    assert_int_equal(IMPORT(b, RS_HISTORY_BASH,
                            "#1700000000\nfirst\n#999999999999999\nsecond\n"
                            "#99999999999999999999999\nthird\n",
                            1600000000),
                     3);
    assert_string_equal(entries(b, false).s, "third|1700000000002|-1|-1;"
                                             "second|1700000000001|-1|-1;"
                                             "first|1700000000000|-1|-1;");
    rs_store_free(a);
    rs_store_free(b);
}

/* Atuin's range-end case: undated lines after 9999-12-31 23:59:59 stop at its last ms. */
static void bash_undated_lines_after_the_last_time_saturate(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    char text[20000];
    size_t n = (size_t)snprintf(text, sizeof(text), "#253402300799\n");
    rs_history_filter q;
    text_out t;
    for (int i = 0; i < 1003; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "cmd-%d\n", i);
    assert_int_equal(import_text(a, f, RS_HISTORY_BASH, text, n, 1800000000), 1003);
    /* cmd-0 at .000 up to cmd-999 at .999; cmd-1000 to cmd-1002 stay there. */
    memset(&q, 0, sizeof(q));
    memset(&t, 0, sizeof(t));
    q.since_ms = INT64_C(253402300799999);
    OK(rs_history_find(a, &q, append_entry, &t));
    assert_int_equal(t.count, 4);
    memset(&t, 0, sizeof(t));
    OK(rs_history_list(a, 1, append_entry, &t));
    assert_true(test_contains(t.s, "|253402300799999|"));
    q.since_ms = 0;
    q.until_ms = INT64_C(253402300799000);
    memset(&t, 0, sizeof(t));
    OK(rs_history_find(a, &q, append_entry, &t));
    assert_string_equal(t.s, "cmd-0|253402300799000|-1|-1;");
    rs_store_free(a);
}

/*
 * zsh: a 19-digit duration saturates (the line stays a command), a start
 * past 9999 is undated, one that fits as milliseconds is read as them, a
 * negative start is undated; ": " without the full shape is a command.
 */
static void zsh_out_of_range_values(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    assert_int_equal(IMPORT(a, RS_HISTORY_ZSH,
                            ": 1613322469:9223372036854775807;echo big\n"
                            ": 1613322470:10;cargo install atuin;cargo update\n"
                            ": 999999999999999:0;echo hello\n"
                            ": 1700000000123:5;echo ms\n"
                            ": -377705116800:0;cargo update\n"
                            ": not-extended\n"
                            ": 1613322469:0\n",
                            1600000000),
                     7);
    assert_string_equal(entries(a, false).s,
                        ": 1613322469:0|1700000000126|-1|-1;"
                        ": not-extended|1700000000125|-1|-1;"
                        "cargo update|1700000000124|-1|0;"
                        "echo ms|1700000000123|-1|5000;"
                        "echo hello|1613322470001|-1|0;"
                        "cargo install atuin;cargo update|1613322470000|-1|10000;"
                        "echo big|1613322469000|-1|9223372036854775807;");
    rs_store_free(a);
}

/*
 * Atuin's test_parse_metafied and test_parse_file: metafied CJK restored;
 * a continued line is one command (zsh drops the escaping backslash).
 */
static void zsh_metafied_bytes_and_continuation_lines(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    assert_int_equal(
        IMPORT(a, RS_HISTORY_ZSH,
               "echo \xe4\xbd\x83\x80\xe5\xa5\xbd\nls ~/\xe9\x83\xbf\xb3\xe4\xb9\x83\xb0\n",
               1800000000),
        2);
    assert_string_equal(entries(a, false).s, "ls ~/\xe9\x9f\xb3\xe4\xb9\x90|1799999999999|-1|-1;"
                                             "echo \xe4\xbd\xa0\xe5\xa5\xbd|1799999999998|-1|-1;");
    assert_int_equal(IMPORT(b, RS_HISTORY_ZSH,
                            ": 1613322469:0;cargo install atuin\n"
                            ": 1613322470:10;cargo install atuin; \\\ncargo update\n"
                            ": 1613322471:10;cargo :b\xcc\xb7i\xcc\xb6t\n",
                            1800000000),
                     3);
    assert_string_equal(entries(b, false).s,
                        "cargo :b\xcc\xb7i\xcc\xb6t|1613322471000|-1|10000;"
                        "cargo install atuin; \ncargo update|1613322470000|-1|10000;"
                        "cargo install atuin|1613322469000|-1|0;");
    rs_store_free(a);
    rs_store_free(b);
}

/*
 * Undated lines take times after the dated line before them, whatever the
 * file's mtime (here years older): they no longer sort before it.
 */
static void undated_lines_keep_file_order(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    assert_int_equal(
        IMPORT(a, RS_HISTORY_ZSH, ": 1700000000:0;first\nundated\nalso undated\n", 1000000000), 3);
    assert_string_equal(entries(a, false).s, "also undated|1700000000002|-1|-1;"
                                             "undated|1700000000001|-1|-1;"
                                             "first|1700000000000|-1|0;");
    rs_store_free(a);
}

/* Atuin's fish parse_complex and parse_out_of_range_timestamp. */
static void fish_history_entries_escapes_and_bad_times(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    assert_int_equal(IMPORT(a, RS_HISTORY_FISH,
                            "- cmd: history --help\n"
                            "  when: 1639162832\n"
                            "- cmd: cat ~/.bash_history\n"
                            "  when: 1639162851\n"
                            "  paths:\n"
                            "    - ~/.bash_history\n"
                            "ERROR\n"
                            "- CORRUPTED: ENTRY\n"
                            "  CONTINUE:\n"
                            "    - AS\n"
                            "    - NORMAL\n"
                            "- cmd: echo \"foo\" \\\\\\n'bar' baz\n"
                            "  when: 1639162933\n"
                            "- cmd: echo \"\\\\\"\" \\\\\\\\ \"\\\\\\\\\"\n"
                            "  when: 1639163063\n",
                            1800000000),
                     4);
    assert_string_equal(entries(a, false).s, "echo \"\\\"\" \\\\ \"\\\\\"|1639163063000|-1|-1;"
                                             "echo \"foo\" \\\n'bar' baz|1639162933000|-1|-1;"
                                             "cat ~/.bash_history|1639162851000|-1|-1;"
                                             "history --help|1639162832000|-1|-1;");
    assert_int_equal(IMPORT(b, RS_HISTORY_FISH,
                            "- cmd: echo before\n  when: 1639162832\n"
                            "- cmd: echo corrupt\n  when: 999999999999999\n"
                            "- cmd: echo after\n  when: 1639162851\n",
                            1800000000),
                     3);
    assert_string_equal(entries(b, false).s, "echo after|1639162851000|-1|-1;"
                                             "echo corrupt|1639162832001|-1|-1;"
                                             "echo before|1639162832000|-1|-1;");
    rs_store_free(a);
    rs_store_free(b);
}

/* Makes an Atuin-shaped history.db at `path` (Atuin's migrations; `deleted` adds deleted_at). */
static void make_atuin_db(const char *path, bool deleted_at)
{
    sqlite3 *db;
    char *msg = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "create table history (id text primary key,"
                                  " timestamp integer not null, duration integer not null,"
                                  " exit integer not null, command text not null,"
                                  " cwd text not null, session text not null,"
                                  " hostname text not null, unique(timestamp, cwd, command));"
                                  "create index idx_history_timestamp on history(timestamp);",
                                  NULL, NULL, &msg),
                     SQLITE_OK);
    if (deleted_at)
        assert_int_equal(sqlite3_exec(db,
                                      "alter table history add column deleted_at integer;"
                                      "alter table history add column author text;"
                                      "alter table history add column intent text;"
                                      "alter table history add column shell text;",
                                      NULL, NULL, &msg),
                         SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "insert into history(id, timestamp, duration, exit, command, cwd, session,"
                     " hostname) values"
                     " ('0190a1b2c3d4e5f60718293a4b5c6d7e', 1700000000123456789, 2500000000, 0,"
                     "  'cargo build', '/home/u/src', 'sess-1', 'laptop:u'),"
                     " ('0190a1b2c3d4e5f60718293a4b5c6d7f', 1700000005000000000, -1, 127,"
                     "  'ech o', '/tmp', 'sess-1', 'laptop:u'),"
                     " ('0190a1b2c3d4e5f60718293a4b5c6d80', 1700000009000000000, 1000000, 1,"
                     "  'echo \xe4\xbd\xa0', '/', 'sess-2', 'server:root');",
                     NULL, NULL, &msg),
        SQLITE_OK);
    if (deleted_at)
        assert_int_equal(
            sqlite3_exec(db,
                         "insert into history values ('0190a1b2c3d4e5f60718293a4b5c6d81',"
                         " 1700000010000000000, 5, 0, 'deleted one', '/', 's', 'h:u',"
                         " 1700000011000000000, NULL, NULL, 'zsh');",
                         NULL, NULL, &msg),
            SQLITE_OK);
    sqlite3_close(db);
}

/* Atuin's history.db: sessions, exit codes, durations, cwd and host move over; deleted stay. */
static void atuin_history_db_moves_over_and_twice_adds_nothing(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_store(f->b, NULL);
    static const char want[] = "echo \xe4\xbd\xa0|1700000009000|1|1|/|sess-2|server;"
                               "ech o|1700000005000|127|-1|/tmp|sess-1|laptop;"
                               "cargo build|1700000000123|0|2500|/home/u/src|sess-1|laptop;";
    rs_history_import_stats st;

    make_atuin_db(f->file, true);
    OK(rs_history_import(&st, a, RS_HISTORY_ATUIN, f->file));
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.imported, 3);
    assert_string_equal(entries(a, true).s, want);
    OK(rs_history_import(&st, a, RS_HISTORY_ATUIN, f->file));
    assert_int_equal(st.imported, 0);
    assert_int_equal(st.skipped, 3);
    assert_int_equal(test_count_records(a, RS_HISTORY_TAG), 3);

    /* A database from before deleted_at. */
    unlink(f->file);
    make_atuin_db(f->file, false);
    OK(rs_history_import(&st, b, RS_HISTORY_ATUIN, f->file));
    assert_int_equal(st.imported, 3);
    assert_string_equal(entries(b, true).s, want);

    /* Not a database, or none: named, and nothing changes. */
    write_file(f->file, "not sqlite", 10);
    assert_int_equal(rs_history_import(&st, b, RS_HISTORY_ATUIN, f->file), RS_EIO);
    assert_true(test_contains(rs_error_last(), f->file));
    unlink(f->file);
    assert_int_equal(rs_history_import(&st, b, RS_HISTORY_ATUIN, f->file), RS_ENOTFOUND);
    assert_int_equal(test_count_records(b, RS_HISTORY_TAG), 3);
    rs_store_free(a);
    rs_store_free(b);
}

/* A FIFO whose writer comes later is read to its end; entries of a pipe are dated now. */
static void a_fifo_is_read_when_its_writer_comes(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    static const char text[] = ": 1700000000:0;from a fifo\nundated\n";
    rs_history_import_stats st;
    pid_t pid;
    int status;

    assert_int_equal(mkfifo(f->file, 0600), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* A writer of its own (exec: no copy of this process's heap to leak under valgrind). */
        execl("/bin/sh", "sh", "-c", "sleep 0.2; printf '%s' \"$1\" > \"$2\"", "sh", text, f->file,
              (char *)NULL);
        _exit(127);
    }
    OK(rs_history_import(&st, a, RS_HISTORY_ZSH, f->file));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(st.imported, 2);
    assert_string_equal(entries(a, false).s,
                        "undated|1700000000001|-1|-1;from a fifo|1700000000000|-1|0;");
    rs_store_free(a);
}

static rs_uuid add_entry(rs_store *store, const char *command, int64_t time_ms, const char *cwd,
                         const char *session, const char *host, int64_t exit_code)
{
    rs_history_entry e;
    rs_uuid id;
    memset(&e, 0, sizeof(e));
    e.command = command;
    e.time_ms = time_ms;
    e.cwd = cwd;
    e.session = session;
    e.hostname = host;
    e.exit_code = exit_code;
    e.duration_ms = 1;
    OK(rs_history_add(&id, store, &e));
    return id;
}

static text_out find(rs_store *store, const rs_history_filter *filter)
{
    text_out t;
    memset(&t, 0, sizeof(t));
    OK(rs_history_find(store, filter, append_entry, &t));
    return t;
}

/* Each filter alone and together; --unique keeps the newest of each command. */
static void find_filters_by_every_field(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL);
    rs_history_filter q;
    text_out t;

    add_entry(a, "make", 1000000, "/src", "s1", "laptop", 0);
    add_entry(a, "make test", 2000000, "/src", "s1", "laptop", 2);
    add_entry(a, "ls", 3000000, "/tmp", "s2", "laptop", 0);
    add_entry(a, "make", 4000000, "/src", "s2", "server", 1);
    add_entry(a, "ls", 5000000, "/", "s3", "server", 0);

#define FIND(...)                                                                                  \
    do {                                                                                           \
        memset(&q, 0, sizeof(q));                                                                  \
        __VA_ARGS__;                                                                               \
        t = find(a, &q);                                                                           \
    } while (0)
    FIND(q.cwd = "/src");
    assert_string_equal(t.s, "make|4000000|1|1;make test|2000000|2|1;make|1000000|0|1;");
    FIND(q.session = "s2");
    assert_string_equal(t.s, "make|4000000|1|1;ls|3000000|0|1;");
    FIND(q.hostname = "server");
    assert_string_equal(t.s, "ls|5000000|0|1;make|4000000|1|1;");
    FIND(q.has_exit = 1; q.exit_code = 0);
    assert_string_equal(t.s, "ls|5000000|0|1;ls|3000000|0|1;make|1000000|0|1;");
    FIND(q.since_ms = 2000000; q.until_ms = 4000000);
    assert_string_equal(t.s, "make|4000000|1|1;ls|3000000|0|1;make test|2000000|2|1;");
    FIND(q.until_ms = 1999999);
    assert_string_equal(t.s, "make|1000000|0|1;");
    FIND(q.unique = 1);
    assert_string_equal(t.s, "ls|5000000|0|1;make|4000000|1|1;make test|2000000|2|1;");
    FIND(q.unique = 1; q.limit = 2);
    assert_string_equal(t.s, "ls|5000000|0|1;make|4000000|1|1;");
    FIND(q.text = "make"; q.has_exit = 1; q.exit_code = 0);
    assert_string_equal(t.s, "make|1000000|0|1;");
    FIND(q.text = "ak"; q.cwd = "/src"; q.unique = 1);
    assert_string_equal(t.s, "make|4000000|1|1;make test|2000000|2|1;");
    FIND(q.text = "make"; q.session = "nope");
    assert_int_equal(t.count, 0);
#undef FIND
    rs_store_free(a);
}

/*
 * A hook writes an entry unfinished when its command starts and finished
 * when it ends; the finished one wins in either order, on every device.
 */
static void hook_end_wins_over_start_in_any_order(void **state)
{
    fixture *f = *state;
    rs_store *a = test_init_store(f->a, NULL), *b = test_init_sibling(f->b, a, NULL);
    rs_history_entry start, end;
    rs_uuid id, other;

    rs_history_hook_id(&id, "session-x", 7);
    rs_history_hook_id(&other, "session-x", 8);
    assert_int_not_equal(rs_uuid_cmp(&id, &other), 0);
    rs_history_hook_id(&other, "session-x", 7);
    assert_int_equal(rs_uuid_cmp(&id, &other), 0);

    memset(&start, 0, sizeof(start));
    start.id = id;
    start.command = "sleep 5";
    start.session = "session-x";
    start.time_ms = 1700000000000;
    start.exit_code = -1;
    start.duration_ms = -1;
    end = start;
    end.exit_code = 0;
    end.duration_ms = 5000;
    /* a: start then end. b: end then start (a background race). */
    OK(rs_history_add(NULL, a, &start));
    assert_string_equal(entries(a, false).s, "sleep 5|1700000000000|-1|-1;");
    OK(rs_history_add(NULL, a, &end));
    OK(rs_history_add(NULL, b, &end));
    OK(rs_history_add(NULL, b, &start));
    assert_string_equal(entries(a, false).s, "sleep 5|1700000000000|0|5000;");
    assert_string_equal(entries(b, false).s, "sleep 5|1700000000000|0|5000;");
    test_transfer(a, b);
    test_transfer(b, a);
    assert_string_equal(entries(a, false).s, "sleep 5|1700000000000|0|5000;");
    assert_string_equal(entries(b, false).s, "sleep 5|1700000000000|0|5000;");
    rs_store_free(a);
    rs_store_free(b);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, test_setup, test_teardown)
    const struct CMUnitTest tests[] = {
        T(bash_timestamp_dates_the_next_line_only),
        T(bash_timestamps_before_every_line),
        T(bash_out_of_range_timestamps_are_ignored),
        T(bash_undated_lines_after_the_last_time_saturate),
        T(zsh_out_of_range_values),
        T(zsh_metafied_bytes_and_continuation_lines),
        T(undated_lines_keep_file_order),
        T(fish_history_entries_escapes_and_bad_times),
        T(atuin_history_db_moves_over_and_twice_adds_nothing),
        T(a_fifo_is_read_when_its_writer_comes),
        T(find_filters_by_every_field),
        T(hook_end_wins_over_start_in_any_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
