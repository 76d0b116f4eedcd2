/*
 * Shell integration: `recsync init zsh|bash|fish` prints the hook script
 * (src/cli/shell/recsync.*, compiled in), `history start|end|session` are
 * what the hooks run, and the background sync they start after commands,
 * whose failures `recsync status` shows.
 *
 * The hooks run `history start` when a command starts and `history end`
 * when it ends, each as a background process the shell does not wait for:
 * the prompt's cost is one fork. Both name the entry by the shell's session
 * id and the command's number in it (rs_history_hook_id), so the end's
 * record completes the start's; a command still running when its shell is
 * killed keeps the start's record.
 *
 * The background sync: after writing, `history end` syncs when the last
 * sync it started is older than $RECSYNC_SYNC_INTERVAL seconds (default
 * 300; 0: after every command) and the store has a server. An flock on
 * DIR/shell-sync.lock taken without waiting keeps it to one at a time;
 * DIR/shell-sync.last's mtime is when the last one started; a failure is
 * kept in DIR/shell-sync.error until a sync succeeds, never printed into
 * the terminal; DIR/shell-sync.pending asks a running sync for one more
 * round (maybe_sync).
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern const char rs_shell_zsh[], rs_shell_bash[], rs_shell_fish[];

#define DEFAULT_SYNC_INTERVAL_S 300
#define SYNC_ROUNDS 4

/* Prints `s` as one single-quoted word for sh-like shells or fish. */
static void print_quoted(const char *s, bool fish)
{
    putchar('\'');
    for (; *s; s++) {
        if (*s == '\'' && !fish)
            fputs("'\\''", stdout);
        else if ((*s == '\'' || *s == '\\') && fish)
            printf("\\%c", *s);
        else
            putchar(*s);
    }
    putchar('\'');
}

int cmd_init_shell(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] init zsh|bash|fish [--no-ctrl-r]\n"
        "Prints the shell hook that records each command in the history store, syncs in\n"
        "the background, and binds Ctrl-R to a search of the synced history through fzf.\n"
        "  zsh:  eval \"$(recsync init zsh)\"     in ~/.zshrc\n"
        "  bash: eval \"$(recsync init bash)\"    in ~/.bashrc (after bash-preexec, if used)\n"
        "  fish: recsync init fish | source     in ~/.config/fish/config.fish\n"
        "The hook uses the store that recsync uses without --dir ($RECSYNC_DIR, or the\n"
        "default). Environment: RECSYNC_SYNC_INTERVAL seconds between background syncs\n"
        "(default 300, 0: after every command); RECSYNC_HISTIGNORE patterns, separated\n"
        "by ':', of commands not to record (commands starting with a space are not).\n";
    const char *script;
    char exe[PATH_MAX];
    ssize_t n;
    bool fish = false, no_ctrl_r = false;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--no-ctrl-r") == 0)
            no_ctrl_r = true;
        else
            return cli_usage(usage, "init %s: unknown argument '%s'", argv[1], argv[i]);
    }
    if (strcmp(argv[1], "zsh") == 0)
        script = rs_shell_zsh;
    else if (strcmp(argv[1], "bash") == 0)
        script = rs_shell_bash;
    else if (strcmp(argv[1], "fish") == 0)
        script = rs_shell_fish, fish = true;
    else
        return cli_usage(usage, "init: unknown shell '%s' (zsh, bash or fish)", argv[1]);
    (void)c;
    /* This binary, so the hook runs the recsync that printed it, whatever PATH the rc has. */
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        snprintf(exe, sizeof(exe), "recsync");
    else
        exe[n] = '\0';
    fputs(fish ? "set -g __recsync_bin " : "__recsync_bin=", stdout);
    print_quoted(exe, fish);
    putchar('\n');
    if (no_ctrl_r)
        puts(fish ? "set -g RECSYNC_NO_CTRL_R 1" : "RECSYNC_NO_CTRL_R=1");
    fputs(script, stdout);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
}

/* ---- what the hooks run ---- */

/*
 * Whether `command` is kept out of the history: empty or blank, starting
 * with a space (as HISTCONTROL=ignorespace), or matching a pattern of
 * $RECSYNC_HISTIGNORE: fnmatch patterns separated by ':' ("\:" for a
 * colon), each matched against the whole command, as bash's HISTIGNORE.
 */
static bool ignored(const char *command)
{
    const char *list = getenv("RECSYNC_HISTIGNORE"), *p;
    char pattern[1024];
    size_t n = 0;

    if (command[0] == ' ' || command[strspn(command, " \t\n")] == '\0')
        return true;
    if (list == NULL)
        return false;
    for (p = list;; p++) {
        if (*p == '\\' && p[1] == ':') {
            p++;
        } else if (*p == ':' || *p == '\0') {
            pattern[n] = '\0';
            if (n > 0 && fnmatch(pattern, command, 0) == 0)
                return true;
            n = 0;
            if (*p == '\0')
                return false;
            continue;
        }
        if (n < sizeof(pattern) - 1)
            pattern[n++] = *p;
    }
}

/* A shell's $EPOCHREALTIME ("SECS.MICROS", "," in some locales) as Unix ms; -1 if not one. */
static int64_t parse_realtime(const char *s)
{
    char *end;
    long long secs, frac = 0;
    int digits = 0;
    errno = 0;
    secs = strtoll(s, &end, 10);
    if (end == s || errno != 0 || secs < 0 || secs > 253402300799LL)
        return -1;
    if (*end == '.' || *end == ',') {
        for (end++; *end >= '0' && *end <= '9'; end++, digits++)
            if (digits < 3)
                frac = frac * 10 + (*end - '0');
        while (digits++ < 3)
            frac *= 10;
    }
    return *end == '\0' ? secs * 1000 + frac : -1;
}

typedef struct hook_args {
    const char *session;
    const char *cwd;
    const char *command;
    unsigned long long seq;
    long long exit_code;
    int64_t start_ms, end_ms, duration_ms;
} hook_args;

static const char hook_usage[] =
    "usage: recsync history start|end --session S --seq N [--cwd D] [--start T]\n"
    "                                 [--end T] [--exit N] [--duration-ms MS] -- COMMAND\n"
    "What the shell hooks (recsync init) run when a command starts and ends: T is a\n"
    "shell's $EPOCHREALTIME. The entry's id derives from the session and N.\n";

static int parse_hook_args(hook_args *a, int argc, char **argv)
{
    static const struct option opts[] = {{"session", required_argument, NULL, 's'},
                                         {"seq", required_argument, NULL, 'n'},
                                         {"cwd", required_argument, NULL, 'c'},
                                         {"start", required_argument, NULL, 'a'},
                                         {"end", required_argument, NULL, 'b'},
                                         {"exit", required_argument, NULL, 'e'},
                                         {"duration-ms", required_argument, NULL, 'd'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    long long v;
    int opt;

    memset(a, 0, sizeof(*a));
    a->exit_code = -1;
    a->start_ms = a->end_ms = a->duration_ms = -1;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            a->session = optarg;
            break;
        case 'n':
            if (!cli_parse_ll(&v, optarg, 1, LLONG_MAX))
                return cli_usage(hook_usage, "--seq needs a positive number, not '%s'", optarg);
            a->seq = (unsigned long long)v;
            break;
        case 'c':
            a->cwd = optarg;
            break;
        case 'a':
        case 'b':
            /* A malformed time is dropped, not refused: the entry matters more. */
            *(opt == 'a' ? &a->start_ms : &a->end_ms) = parse_realtime(optarg);
            break;
        case 'e':
            if (!cli_parse_ll(&v, optarg, INT_MIN, INT_MAX))
                return cli_usage(hook_usage, "--exit needs a whole number, not '%s'", optarg);
            a->exit_code = v;
            break;
        case 'd':
            if (cli_parse_ll(&v, optarg, 0, LLONG_MAX))
                a->duration_ms = v;
            break;
        default:
            return cli_other_option(opt, hook_usage, "history %s: bad option", argv[0]);
        }
    }
    if (a->session == NULL || *a->session == '\0' || a->seq == 0)
        return cli_usage(hook_usage, "history %s needs --session and --seq", argv[0]);
    if (argc - optind != 1)
        return cli_usage(hook_usage, "history %s needs one COMMAND after its options", argv[0]);
    a->command = argv[optind];
    return EXIT_OK;
}

/* Finds the entry of one id among a session's newest: its time and cwd. */
typedef struct found_entry {
    rs_uuid id;
    bool found;
    int64_t time_ms;
} found_entry;

static int match_id(const rs_history_entry *e, void *payload)
{
    found_entry *f = payload;
    if (rs_uuid_cmp(&e->id, &f->id) != 0)
        return 0;
    f->found = true;
    f->time_ms = e->time_ms;
    return 1;
}

/* Writes DIR/NAME with `text`, atomically (a temporary file renamed over it). */
static void write_state(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX], tmp[PATH_MAX + 32];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s.%ld", path, (long)getpid());
    if ((f = fopen(tmp, "w")) == NULL)
        return;
    fputs(text, f);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        unlink(tmp);
}

/* Reads DIR/shell-sync.error: since when it fails, how often, and the last message. */
typedef struct sync_failure {
    long long since_ms, last_ms, attempts;
    char message[1024];
} sync_failure;

static bool read_failure(sync_failure *out, const char *dir)
{
    char path[PATH_MAX], line[1200];
    FILE *f;
    bool ok = false;
    memset(out, 0, sizeof(*out));
    snprintf(path, sizeof(path), "%s/shell-sync.error", dir);
    if ((f = fopen(path, "r")) == NULL)
        return false;
    if (fscanf(f, "since %lld\nlast %lld\nattempts %lld\n", &out->since_ms, &out->last_ms,
               &out->attempts) == 3 &&
        fgets(line, sizeof(line), f) != NULL && strncmp(line, "message ", 8) == 0) {
        size_t n = strcspn(line + 8, "\n");
        if (n >= sizeof(out->message))
            n = sizeof(out->message) - 1;
        memcpy(out->message, line + 8, n);
        out->message[n] = '\0';
        ok = true;
    }
    fclose(f);
    return ok;
}

/* One sync; a failure kept in DIR/shell-sync.error (counted), a success removes it. */
static void sync_once(cli *c, rs_store *store)
{
    char path[PATH_MAX], text[1400], message[1024];
    rs_sync_report *report = NULL;
    sync_failure prev;
    int err;

    write_state(c->dir, "shell-sync.last", "");
    err = rs_sync(&report, store, NULL);
    rs_sync_report_free(report);
    if (err == 0) {
        snprintf(path, sizeof(path), "%s/shell-sync.error", c->dir);
        unlink(path);
        return;
    }
    if (!read_failure(&prev, c->dir))
        prev.since_ms = (long long)rs_now_ms();
    snprintf(message, sizeof(message), "%s", *rs_error_last() ? rs_error_last() : rs_strerror(err));
    for (char *p = message; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    snprintf(text, sizeof(text), "since %lld\nlast %lld\nattempts %lld\nmessage %s\n",
             prev.since_ms, (long long)rs_now_ms(), prev.attempts + 1, message);
    write_state(c->dir, "shell-sync.error", text);
}

static bool state_exists(const char *dir, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/*
 * The background sync after a command (see the top of the file). Runs in
 * the hook's own background process; waits for nothing but the sync. A
 * hook that finds a sync running leaves DIR/shell-sync.pending, asking it
 * for one more round (its record may have come after that sync's upload);
 * the holder syncs again while that file appears, also just after it lets
 * go of the lock, SYNC_ROUNDS times at most.
 */
static void maybe_sync(cli *c, rs_store *store)
{
    const char *env = getenv("RECSYNC_SYNC_INTERVAL");
    long long interval = DEFAULT_SYNC_INTERVAL_S;
    char path[PATH_MAX], pending[PATH_MAX], *server = NULL;
    struct stat st;
    int fd, rounds = 0;

    if (env && *env && !cli_parse_ll(&interval, env, 0, 365LL * 86400))
        interval = DEFAULT_SYNC_INTERVAL_S;
    if (rs_store_meta_get(&server, store, RS_META_SERVER) < 0 || server == NULL)
        return;
    rs_free(server);
    snprintf(path, sizeof(path), "%s/shell-sync.last", c->dir);
    if (interval > 0 && stat(path, &st) == 0 && time(NULL) - st.st_mtime < interval)
        return;
    snprintf(pending, sizeof(pending), "%s/shell-sync.pending", c->dir);
    snprintf(path, sizeof(path), "%s/shell-sync.lock", c->dir);
    if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
        return;
    while (rounds < SYNC_ROUNDS) {
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (rounds == 0)
                write_state(c->dir, "shell-sync.pending", "");
            break;
        }
        /* Another may have finished between the check and the lock. */
        snprintf(path, sizeof(path), "%s/shell-sync.last", c->dir);
        if (rounds == 0 && interval > 0 && stat(path, &st) == 0 &&
            time(NULL) - st.st_mtime < interval && !state_exists(c->dir, "shell-sync.pending")) {
            flock(fd, LOCK_UN);
            break;
        }
        while (rounds < SYNC_ROUNDS) {
            unlink(pending);
            sync_once(c, store);
            rounds++;
            if (!state_exists(c->dir, "shell-sync.pending"))
                break;
        }
        flock(fd, LOCK_UN);
        if (!state_exists(c->dir, "shell-sync.pending"))
            break;
    }
    close(fd);
}

/*
 * history start / history end: record the entry the hook names. Nothing is
 * printed; the exit status says whether it was written. A command the
 * ignore rules keep out writes nothing (end still syncs).
 */
int cli_history_hook(cli *c, int argc, char **argv)
{
    bool end = strcmp(argv[0], "end") == 0;
    rs_history_entry e;
    rs_history_filter filter;
    found_entry found;
    hook_args a;
    rs_store *store = NULL;
    char cwd[PATH_MAX];
    int rc, err;

    if ((rc = parse_hook_args(&a, argc, argv)) != EXIT_OK)
        return rc;
    /* The shell's terminal may go away while this runs; detach from it. */
    signal(SIGHUP, SIG_IGN);
    setsid();
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    memset(&e, 0, sizeof(e));
    rs_history_hook_id(&e.id, a.session, a.seq);
    e.command = a.command;
    e.cwd = a.cwd ? a.cwd : getcwd(cwd, sizeof(cwd)) ? cwd : "";
    e.session = a.session;
    e.exit_code = end ? a.exit_code : -1;
    e.duration_ms = -1;
    if (end && a.duration_ms >= 0)
        e.duration_ms = a.duration_ms;
    else if (end && a.start_ms >= 0 && a.end_ms >= a.start_ms)
        e.duration_ms = a.end_ms - a.start_ms;
    e.time_ms = a.start_ms > 0 ? a.start_ms : 0;
    if (end && e.time_ms == 0) {
        /* fish gives no start time: the start's entry has it. */
        memset(&filter, 0, sizeof(filter));
        memset(&found, 0, sizeof(found));
        found.id = e.id;
        filter.session = a.session;
        filter.limit = 16;
        if (rs_history_find(store, &filter, match_id, &found) >= 0 && found.found)
            e.time_ms = found.time_ms;
        else if (e.duration_ms >= 0 && (int64_t)rs_now_ms() > e.duration_ms)
            e.time_ms = (int64_t)rs_now_ms() - e.duration_ms;
    }
    rc = EXIT_OK;
    if (!ignored(a.command) && (err = rs_history_add(NULL, store, &e)) < 0)
        rc = cli_fail(end ? "history end" : "history start", err);
    if (end)
        maybe_sync(c, store);
    rs_store_free(store);
    return rc;
}

/* history session: a new id for a shell session (a UUIDv7). */
int cli_history_session(cli *c, int argc, char **argv)
{
    rs_uuid id;
    char text[RS_UUID_STRLEN + 1];
    (void)c;
    if (argc != 1)
        return cli_usage(hook_usage, "history session takes no arguments");
    (void)argv;
    rs_uuid_v7(&id, rs_now_ms());
    rs_uuid_format(text, &id);
    puts(text);
    return EXIT_OK;
}

static void format_ms(char *out, size_t size, long long ms)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (localtime_r(&secs, &tm) == NULL || strftime(out, size, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(out, size, "%lld", ms);
}

/*
 * For `recsync status` (text only): the shell hooks' background sync, when
 * one ever ran: failing since when, how often, and why; or when it last ran.
 */
void cli_shell_status(cli *c, bool json)
{
    char path[PATH_MAX], since[64], last[64];
    sync_failure f;
    struct stat st;

    if (json)
        return;
    if (read_failure(&f, c->dir)) {
        format_ms(since, sizeof(since), f.since_ms);
        format_ms(last, sizeof(last), f.last_ms);
        printf("background sync (shell hook): FAILING since %s, %lld attempt%s, last at %s: %s\n",
               since, f.attempts, f.attempts == 1 ? "" : "s", last, f.message);
        return;
    }
    snprintf(path, sizeof(path), "%s/shell-sync.last", c->dir);
    if (stat(path, &st) == 0) {
        format_ms(last, sizeof(last), (long long)st.st_mtime * 1000);
        printf("background sync (shell hook): last started %s, no failure\n", last);
    }
}
