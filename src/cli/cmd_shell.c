/*
 * Shell integration: `recsync init zsh|bash|fish` prints the hook script
 * (src/cli/shell/recsync.*, compiled in); `history agent|start|end|session`
 * are what the hooks run; and the background sync after commands, whose
 * failures `recsync status` shows.
 *
 * A shell that loads the hook starts one `history agent` (cli_history_agent),
 * which prints the shell's session id and a spool file DIR/spool/SESSION
 * and stays in the background until the shell is gone. The hooks append a
 * line to the spool when a command starts and when it ends, with shell
 * builtins: the prompt pays an append, no fork. The agent reads the spool
 * every AGENT_POLL_MS and records each entry. When no agent runs (it could
 * not start, or died), the hooks run `history start` and `history end`
 * instead, each as a background process the shell does not wait for: the
 * prompt pays one fork. Either way the start and the end name the entry by
 * the session id and the command's number in it (rs_history_hook_id), so
 * the end's record completes the start's; a command still running when its
 * shell is killed keeps the start's record.
 *
 * The background sync: after writing an end, the agent (or `history end`)
 * syncs when the last sync a hook started is older than
 * $RECSYNC_SYNC_INTERVAL seconds (default 300; 0: after every command) and
 * the store has a server. An flock on
 * DIR/shell-sync.lock taken without waiting keeps it to one at a time;
 * DIR/shell-sync.last's mtime is when the last one started; a failure is
 * kept in DIR/shell-sync.error until a sync succeeds, never printed into
 * the terminal; DIR/shell-sync.pending asks a running sync for one more
 * round (maybe_sync).
 */
#include "cli.h"

#include <dirent.h>
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
 * Writes the entry a hook's start (end false) or end names, unless the
 * ignore rules keep its command out (0 then too).
 */
static int record_hook(rs_store *store, const hook_args *a, bool end)
{
    rs_history_entry e;
    rs_history_filter filter;
    found_entry found;
    char cwd[PATH_MAX];

    if (ignored(a->command))
        return 0;
    memset(&e, 0, sizeof(e));
    rs_history_hook_id(&e.id, a->session, a->seq);
    e.command = a->command;
    e.cwd = a->cwd ? a->cwd : getcwd(cwd, sizeof(cwd)) ? cwd : "";
    e.session = a->session;
    e.exit_code = end ? a->exit_code : -1;
    e.duration_ms = -1;
    if (end && a->duration_ms >= 0)
        e.duration_ms = a->duration_ms;
    else if (end && a->start_ms >= 0 && a->end_ms >= a->start_ms)
        e.duration_ms = a->end_ms - a->start_ms;
    e.time_ms = a->start_ms > 0 ? a->start_ms : 0;
    if (end && e.time_ms == 0) {
        /* fish gives no start time: the start's entry has it. */
        memset(&filter, 0, sizeof(filter));
        memset(&found, 0, sizeof(found));
        found.id = e.id;
        filter.session = a->session;
        filter.limit = 16;
        if (rs_history_find(store, &filter, match_id, &found) >= 0 && found.found)
            e.time_ms = found.time_ms;
        else if (e.duration_ms >= 0 && (int64_t)rs_now_ms() > e.duration_ms)
            e.time_ms = (int64_t)rs_now_ms() - e.duration_ms;
    }
    return rs_history_add(NULL, store, &e);
}

/*
 * history start / history end: record the entry the hook names (the
 * hooks' way when no agent runs). Nothing is printed; the exit status says
 * whether it was written. A command the ignore rules keep out writes
 * nothing (end still syncs).
 */
int cli_history_hook(cli *c, int argc, char **argv)
{
    bool end = strcmp(argv[0], "end") == 0;
    hook_args a;
    rs_store *store = NULL;
    int rc, err;

    if ((rc = parse_hook_args(&a, argc, argv)) != EXIT_OK)
        return rc;
    /* The shell's terminal may go away while this runs; detach from it. */
    signal(SIGHUP, SIG_IGN);
    setsid();
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = record_hook(store, &a, end)) < 0)
        rc = cli_fail(end ? "history end" : "history start", err);
    if (end)
        maybe_sync(c, store);
    rs_store_free(store);
    return rc;
}

/* ---- the agent: hooks that append to a spool file instead of forking ---- */

#define AGENT_POLL_MS 100

static volatile sig_atomic_t agent_stop;

static void agent_on_term(int sig)
{
    (void)sig;
    agent_stop = 1;
}
#define RECORD_END "\036"

/* Undoes the hooks' escaping in place: "\\" "\n" "\t". */
static void unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && (s[1] == '\\' || s[1] == 'n' || s[1] == 't')) {
            s++;
            *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : '\\';
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

/* Splits `line` at tabs into at most `max` fields; returns how many. */
static int split_tabs(char **fields, int max, char *line)
{
    int n = 0;
    while (n < max) {
        fields[n++] = line;
        if ((line = strchr(line, '\t')) == NULL)
            break;
        *line++ = '\0';
    }
    return n;
}

/* What an agent keeps between a command's start line and its end line. */
typedef struct agent_state {
    cli *c;
    rs_store *store;
    const char *session;
    hook_args start; /* the last start; its texts point into cwd and command */
    char *cwd, *command;
    bool started;
    char *header;       /* bash: the H line, while its "history 1" output is read */
    char *history_text; /* that output so far */
} agent_state;

/* Text of bash's "history 1" output without its "  123  " or "  123* " lead. */
static const char *strip_history_number(const char *s)
{
    const char *p = s + strspn(s, " ");
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || (p[digits] != ' ' && p[digits] != '*') || p[digits + 1] != ' ')
        return s;
    return p + digits + 2;
}

/* A start: f[1] SEQ, f[2] START, f[3] CWD (escaped), `command` plain. */
static void agent_start(agent_state *st, char **f, int n, const char *command)
{
    long long seq;
    free(st->cwd);
    free(st->command);
    memset(&st->start, 0, sizeof(st->start));
    st->cwd = strdup(n > 3 ? f[3] : "");
    st->command = strdup(command);
    st->started = st->cwd && st->command && cli_parse_ll(&seq, f[1], 1, LLONG_MAX);
    if (!st->started)
        return;
    unescape(st->cwd);
    st->start.seq = (unsigned long long)seq;
    st->start.session = st->session;
    st->start.cwd = st->cwd;
    st->start.command = st->command;
    st->start.exit_code = -1;
    st->start.start_ms = n > 2 ? parse_realtime(f[2]) : -1;
    st->start.end_ms = st->start.duration_ms = -1;
    record_hook(st->store, &st->start, false);
}

/* Appends `line` to the "history 1" text being read. */
static void history_text_add(agent_state *st, const char *line)
{
    size_t have = st->history_text ? strlen(st->history_text) : 0, len = strlen(line);
    char *grown = realloc(st->history_text, have + len + 2);
    if (grown == NULL)
        return;
    st->history_text = grown;
    if (have)
        grown[have++] = '\n';
    memcpy(grown + have, line, len + 1);
}

/*
 * One spool line. "S\tSEQ\tSTART\tCWD\tCOMMAND": a command started (texts
 * escaped); "H\tSEQ\tSTART\tCWD" then bash's "history 1" output up to a
 * RECORD_END line: the same, its command read from bash's history;
 * "E\tSEQ\tEXIT\tEND[\tDURATION_MS]": it ended.
 */
static void agent_line(agent_state *st, char *line)
{
    char *f[6];
    int n;
    long long v;
    hook_args a;

    if (st->header) {
        if (strcmp(line, RECORD_END) != 0) {
            history_text_add(st, line);
            return;
        }
        n = split_tabs(f, 4, st->header);
        if (st->history_text)
            agent_start(st, f, n, strip_history_number(st->history_text));
        free(st->header);
        free(st->history_text);
        st->header = st->history_text = NULL;
        return;
    }
    if (line[0] == 'H' && line[1] == '\t') {
        st->header = strdup(line);
        return;
    }
    n = split_tabs(f, 6, line);
    if (strcmp(f[0], "S") == 0 && n >= 5) {
        unescape(f[4]);
        agent_start(st, f, n, f[4]);
    } else if (strcmp(f[0], "E") == 0 && n >= 4 && st->started &&
               cli_parse_ll(&v, f[1], 1, LLONG_MAX) && (unsigned long long)v == st->start.seq) {
        a = st->start;
        if (!cli_parse_ll(&a.exit_code, f[2], INT_MIN, INT_MAX))
            a.exit_code = -1;
        a.end_ms = parse_realtime(f[3]);
        if (n >= 5 && cli_parse_ll(&v, f[4], 0, LLONG_MAX))
            a.duration_ms = v;
        record_hook(st->store, &a, true);
        st->started = false;
        maybe_sync(st->c, st->store);
    }
}

/*
 * Reads the complete lines of `fd` from *offset on, handing each to
 * agent_line; *offset moves past them. An incomplete last line waits.
 */
static void agent_drain(agent_state *st, int fd, off_t *offset)
{
    char buf[65536], *line, *nl;
    static char *carry = NULL;
    static size_t carry_len = 0;
    ssize_t n;

    while ((n = pread(fd, buf, sizeof(buf), *offset)) > 0) {
        char *all = realloc(carry, carry_len + (size_t)n + 1);
        if (all == NULL)
            return;
        memcpy(all + carry_len, buf, (size_t)n);
        carry = all;
        carry_len += (size_t)n;
        carry[carry_len] = '\0';
        *offset += n;
        line = carry;
        while ((nl = memchr(line, '\n', carry_len - (size_t)(line - carry))) != NULL) {
            *nl = '\0';
            agent_line(st, line);
            line = nl + 1;
        }
        carry_len -= (size_t)(line - carry);
        memmove(carry, line, carry_len);
    }
}

/* Ingests a spool whose agent is gone (its lock free) and removes it. */
static void agent_adopt(agent_state *st, const char *spool_dir, const char *own)
{
    char path[PATH_MAX + 300], session[256];
    struct dirent *de;
    DIR *d = opendir(spool_dir);
    off_t offset;
    int fd;

    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, own) == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", spool_dir, de->d_name);
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            agent_state other = *st;
            snprintf(session, sizeof(session), "%s", de->d_name);
            other.session = session;
            other.started = false;
            other.cwd = other.command = other.header = other.history_text = NULL;
            offset = 0;
            agent_drain(&other, fd, &offset);
            free(other.cwd);
            free(other.command);
            free(other.header);
            free(other.history_text);
            unlink(path);
        }
        close(fd);
    }
    closedir(d);
}

/*
 * history agent --pid PID: for the shell hooks, a process per shell that
 * records what the hooks append to a spool file, so a hook costs the shell
 * an append (a builtin, no fork). Prints "SESSION<TAB>AGENT_PID<TAB>SPOOL"
 * and goes to the background; it reads the spool every AGENT_POLL_MS,
 * records each start and end, syncs after an end as `history end` does,
 * and when PID is gone reads the rest, removes the spool and exits. It
 * holds an flock on its spool; at start it ingests spools whose agent died.
 */
int cli_history_agent(cli *c, int argc, char **argv)
{
    char spool_dir[PATH_MAX], spool[PATH_MAX + 64], session[RS_UUID_STRLEN + 1];
    agent_state st;
    rs_uuid id;
    long long pid;
    pid_t child;
    off_t offset = 0;
    int fd, nul;

    if (argc != 3 || strcmp(argv[1], "--pid") != 0 || !cli_parse_ll(&pid, argv[2], 2, INT_MAX))
        return cli_usage(hook_usage, "history agent needs --pid PID (the shell's)");
    memset(&st, 0, sizeof(st));
    /* A store to record into must be there; the agent opens its own after the fork. */
    if (cli_open(&st.store, c) != 0)
        return EXIT_FAIL;
    rs_store_free(st.store);
    st.store = NULL;
    rs_uuid_v7(&id, rs_now_ms());
    rs_uuid_format(session, &id);
    snprintf(spool_dir, sizeof(spool_dir), "%s/spool", c->dir);
    snprintf(spool, sizeof(spool), "%s/%s", spool_dir, session);
    if ((mkdir(spool_dir, 0700) != 0 && errno != EEXIST) ||
        (fd = open(spool, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "recsync: history agent: cannot make %s: %s\n", spool, strerror(errno));
        return EXIT_FAIL;
    }
    flock(fd, LOCK_EX | LOCK_NB);
    if ((child = fork()) < 0) {
        fprintf(stderr, "recsync: history agent: cannot fork: %s\n", strerror(errno));
        unlink(spool);
        return EXIT_FAIL;
    }
    if (child > 0) {
        printf("%s\t%ld\t%s\n", session, (long)child, spool);
        return EXIT_OK;
    }
    setsid();
    signal(SIGHUP, SIG_IGN);
    signal(SIGTERM, agent_on_term);
    signal(SIGINT, agent_on_term);
    if ((nul = open("/dev/null", O_RDWR)) >= 0) {
        dup2(nul, STDIN_FILENO);
        dup2(nul, STDOUT_FILENO);
        dup2(nul, STDERR_FILENO);
        if (nul > STDERR_FILENO)
            close(nul);
    }
    if (rs_store_open(&st.store, c->dir, NULL) < 0) {
        unlink(spool);
        _exit(EXIT_FAIL);
    }
    st.c = c;
    st.session = session;
    agent_adopt(&st, spool_dir, session);
    for (;;) {
        bool alive = !agent_stop && (kill((pid_t)pid, 0) == 0 || errno != ESRCH);
        agent_drain(&st, fd, &offset);
        if (!alive)
            break;
        usleep(AGENT_POLL_MS * 1000);
    }
    unlink(spool);
    close(fd);
    free(st.cwd);
    free(st.command);
    free(st.header);
    free(st.history_text);
    rs_store_free(st.store);
    return EXIT_OK;
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
