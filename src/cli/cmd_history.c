/*
 * history: shell history on records of tag "history".
 */
#define _XOPEN_SOURCE 700 /* strptime */
#define _DEFAULT_SOURCE
#include "cli.h"

#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char history_usage[] =
    "usage: recsync [--dir DIR] history add [--cwd D] [--exit N] [--duration MS]\n"
    "                                       [--session S] [--time MS] -- COMMAND...\n"
    "       recsync [--dir DIR] history list [FILTERS] [--limit N] [--json] [--all]\n"
    "       recsync [--dir DIR] history search [FILTERS] [--limit N] [--json] TEXT\n"
    "       recsync [--dir DIR] history delete ID\n"
    "       recsync [--dir DIR] history import [--multiline] bash|zsh|fish|atuin FILE|-\n"
    "add records a command (cwd defaults to the current directory, session to\n"
    "$RECSYNC_SESSION; exit and duration to -1, unknown) and prints its id.\n"
    "list and search print newest first: ID<TAB>TIME<TAB>EXIT<TAB>DURATION_MS<TAB>COMMAND\n"
    "(newlines and tabs in commands shown as \\n and \\t); --json prints one object\n"
    "per entry; --commands prints the command only, --print0 each ended by a NUL\n"
    "instead of a newline and not escaped; --all (with --json) lists every entry by\n"
    "id, deleted ones included.\n"
    "FILTERS: --cwd DIR (. for the current one), --session S, --host NAME, --exit N,\n"
    "--since WHEN, --until WHEN, --unique (the newest entry of each command only).\n"
    "WHEN: YYYY-MM-DD [HH:MM[:SS]] local time (--until a date alone: to its end),\n"
    "@UNIX_SECONDS, or N followed by s, m, h, d or w: that long ago.\n"
    "search matches TEXT anywhere in the command, ignoring case.\n"
    "delete removes an entry on every device once synced.\n"
    "import reads a bash, zsh or fish history file (- for standard input) or Atuin's\n"
    "history.db; entries imported before are skipped. bash: one entry per line, a\n"
    "#<time> line dating the next; --multiline: the lines up to the next #<time>\n"
    "make one entry (bash's lithist).\n"
    "The shell hooks (recsync init) run history start, end and session.\n";

typedef struct print_opts {
    bool json;
    bool commands; /* the command only */
    bool print0;   /* ended by NUL, unescaped */
} print_opts;

static int print_entry(const rs_history_entry *e, void *payload)
{
    print_opts *po = payload;
    char id[RS_UUID_STRLEN + 1], host[RS_UUID_STRLEN + 1], hlc[RS_HLC_STRLEN + 1], when[64];
    time_t secs = (time_t)(e->time_ms / 1000);
    struct tm tm;

    if (po->commands) {
        if (po->print0)
            fwrite(e->command, 1, strlen(e->command) + 1, stdout);
        else {
            cli_print_escaped(e->command);
            putchar('\n');
        }
        return 0;
    }
    rs_uuid_format(id, &e->id);
    if (po->json) {
        rs_uuid_format(host, &e->host);
        rs_hlc_format(hlc, e->hlc);
        printf("{\"id\": \"%s\", \"deleted\": %s, \"hlc\": \"%s\", \"host\": \"%s\"", id,
               e->deleted ? "true" : "false", hlc, host);
        if (!e->deleted) {
            printf(", \"time\": %lld, \"command\": ", (long long)e->time_ms);
            cli_json_string(stdout, e->command);
            fputs(", \"cwd\": ", stdout);
            cli_json_string(stdout, e->cwd);
            printf(", \"exit\": %lld, \"duration\": %lld, \"session\": ", (long long)e->exit_code,
                   (long long)e->duration_ms);
            cli_json_string(stdout, e->session);
            fputs(", \"hostname\": ", stdout);
            cli_json_string(stdout, e->hostname);
        }
        fputs("}\n", stdout);
        return 0;
    }
    if (localtime_r(&secs, &tm) == NULL ||
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(when, sizeof(when), "%lld", (long long)e->time_ms);
    printf("%s\t%s\t%lld\t%lld\t", id, when, (long long)e->exit_code, (long long)e->duration_ms);
    if (po->print0) {
        fwrite(e->command, 1, strlen(e->command) + 1, stdout);
        return 0;
    }
    cli_print_escaped(e->command);
    putchar('\n');
    return 0;
}

static int history_add(cli *c, int argc, char **argv)
{
    static const struct option opts[] = {{"cwd", required_argument, NULL, 'c'},
                                         {"exit", required_argument, NULL, 'e'},
                                         {"duration", required_argument, NULL, 'd'},
                                         {"session", required_argument, NULL, 's'},
                                         {"time", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    rs_history_entry e;
    rs_store *store = NULL;
    rs_uuid id;
    char cwd[PATH_MAX], text[RS_UUID_STRLEN + 1], *command = NULL;
    size_t len = 0;
    long long v;
    int opt, err, rc = EXIT_OK;

    memset(&e, 0, sizeof(e));
    e.exit_code = -1;
    e.duration_ms = -1;
    e.session = getenv("RECSYNC_SESSION") ? getenv("RECSYNC_SESSION") : "";
    optind = 1;
    /* "+": options end at the command's first word, so "add ls -la" works without "--". */
    while ((opt = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            e.cwd = optarg;
            break;
        case 'e':
            if (!cli_parse_ll(&v, optarg, INT_MIN, INT_MAX))
                return cli_usage(history_usage, "--exit needs a whole number, not '%s'", optarg);
            e.exit_code = v;
            break;
        case 'd':
            if (!cli_parse_ll(&v, optarg, -1, LLONG_MAX))
                return cli_usage(history_usage, "--duration needs milliseconds, not '%s'", optarg);
            e.duration_ms = v;
            break;
        case 's':
            e.session = optarg;
            break;
        case 't':
            if (!cli_parse_ll(&v, optarg, 1, LLONG_MAX))
                return cli_usage(history_usage, "--time needs Unix milliseconds, not '%s'", optarg);
            e.time_ms = v;
            break;
        default:
            return cli_other_option(opt, history_usage, "history add: bad option");
        }
    }
    if (optind >= argc)
        return cli_usage(history_usage, "history add needs a COMMAND");
    if (e.cwd == NULL)
        e.cwd = getcwd(cwd, sizeof(cwd)) ? cwd : "";
    for (int i = optind; i < argc; i++)
        len += strlen(argv[i]) + 1;
    if ((command = malloc(len)) == NULL) {
        fprintf(stderr, "recsync: history add: out of memory\n");
        return EXIT_FAIL;
    }
    command[0] = '\0';
    for (int i = optind; i < argc; i++) {
        if (i > optind)
            strcat(command, " ");
        strcat(command, argv[i]);
    }
    e.command = command;
    if (cli_open(&store, c) != 0) {
        free(command);
        return EXIT_FAIL;
    }
    if ((err = rs_history_add(&id, store, &e)) < 0) {
        rc = cli_fail("history add", err);
    } else {
        rs_uuid_format(text, &id);
        puts(text);
    }
    free(command);
    rs_store_free(store);
    return rc;
}

/*
 * A --since/--until value as Unix ms: "YYYY-MM-DD[ HH:MM[:SS]]" (or with a
 * "T") in local time, "@SECONDS", or "N[smhdw]" that long before now. A date
 * alone given to --until (`end`) means the end of that day. -1 if none.
 */
static int64_t parse_when(const char *text, bool end)
{
    struct tm tm;
    const char *rest;
    char *num_end;
    long long n;
    time_t t;

    if (text[0] == '@') {
        if (!cli_parse_ll(&n, text + 1, 0, 253402300799LL))
            return -1;
        return n * 1000;
    }
    n = strtoll(text, &num_end, 10);
    if (num_end != text && n >= 0 && num_end[0] != '\0' && num_end[1] == '\0' &&
        strchr("smhdw", num_end[0])) {
        static const long long unit[] = {1, 60, 3600, 86400, 604800};
        long long secs = n * unit[strchr("smhdw", num_end[0]) - "smhdw"];
        int64_t now = (int64_t)rs_now_ms();
        return secs > now / 1000 ? 1 : now - secs * 1000;
    }
    memset(&tm, 0, sizeof(tm));
    if ((rest = strptime(text, "%Y-%m-%d", &tm)) == NULL)
        return -1;
    if (*rest == '\0' && end) {
        tm.tm_hour = 23;
        tm.tm_min = 59;
        tm.tm_sec = 59;
    } else if (*rest != '\0') {
        if ((*rest != ' ' && *rest != 'T') ||
            ((num_end = strptime(rest + 1, "%H:%M:%S", &tm)) == NULL &&
             (num_end = strptime(rest + 1, "%H:%M", &tm)) == NULL) ||
            *num_end != '\0')
            return -1;
    }
    tm.tm_isdst = -1;
    if ((t = mktime(&tm)) == (time_t)-1 || t < 0)
        return -1;
    return (int64_t)t * 1000 + (end && *rest == '\0' ? 999 : 0);
}

/* list and search share their options: the filters, --limit, --json, and list's --all. */
static int history_query(cli *c, int argc, char **argv, bool search)
{
    static const struct option opts[] = {
        {"limit", required_argument, NULL, 'l'},   {"json", no_argument, NULL, 'j'},
        {"all", no_argument, NULL, 'a'},           {"cwd", required_argument, NULL, 'c'},
        {"session", required_argument, NULL, 's'}, {"host", required_argument, NULL, 'H'},
        {"exit", required_argument, NULL, 'e'},    {"since", required_argument, NULL, 'S'},
        {"until", required_argument, NULL, 'U'},   {"unique", no_argument, NULL, 'u'},
        {"commands", no_argument, NULL, 'C'},      {"print0", no_argument, NULL, '0'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    print_opts po = {false, false, false};
    rs_history_filter f;
    rs_store *store = NULL;
    bool all = false, filtered = false;
    char cwd[PATH_MAX];
    long long v;
    int opt, err;

    memset(&f, 0, sizeof(f));
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (!cli_parse_ll(&v, optarg, 1, LLONG_MAX))
                return cli_usage(history_usage, "--limit needs a positive number, not '%s'",
                                 optarg);
            f.limit = (size_t)v;
            break;
        case 'j':
            po.json = true;
            break;
        case 'a':
            all = true;
            break;
        case 'c':
            f.cwd = strcmp(optarg, ".") == 0 ? getcwd(cwd, sizeof(cwd)) : optarg;
            if (f.cwd == NULL)
                return cli_usage(history_usage, "--cwd .: the current directory is unknown");
            filtered = true;
            break;
        case 's':
            f.session = optarg;
            filtered = true;
            break;
        case 'H':
            f.hostname = optarg;
            filtered = true;
            break;
        case 'e':
            if (!cli_parse_ll(&v, optarg, INT_MIN, INT_MAX))
                return cli_usage(history_usage, "--exit needs a whole number, not '%s'", optarg);
            f.has_exit = 1;
            f.exit_code = v;
            filtered = true;
            break;
        case 'S':
        case 'U':
            if ((*(opt == 'S' ? &f.since_ms : &f.until_ms) = parse_when(optarg, opt == 'U')) < 0)
                return cli_usage(history_usage,
                                 "--%s needs YYYY-MM-DD [HH:MM[:SS]], @SECONDS or N[smhdw], "
                                 "not '%s'",
                                 opt == 'S' ? "since" : "until", optarg);
            filtered = true;
            break;
        case 'u':
            f.unique = 1;
            filtered = true;
            break;
        case 'C':
            po.commands = true;
            break;
        case '0':
            po.print0 = true;
            break;
        default:
            return cli_other_option(opt, history_usage, "history %s: bad option", argv[0]);
        }
    }
    if (search && argc - optind != 1)
        return cli_usage(history_usage, "history search needs one TEXT");
    if (!search && optind != argc)
        return cli_usage(history_usage, "history list takes no arguments");
    if (search && argv[optind][0] == '\0')
        return cli_usage(history_usage, "history search: the TEXT is empty");
    if (all && (search || !po.json || f.limit || filtered || po.commands || po.print0))
        return cli_usage(history_usage, "--all goes with 'history list --json' only");
    if (po.json && (po.commands || po.print0))
        return cli_usage(history_usage, "--json goes without --commands and --print0");
    if (f.since_ms && f.until_ms && f.since_ms > f.until_ms)
        return cli_usage(history_usage, "--since is after --until");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    f.text = search ? argv[optind] : NULL;
    if (all)
        err = rs_history_foreach(store, print_entry, &po);
    else
        err = rs_history_find(store, &f, print_entry, &po);
    rs_store_free(store);
    if (err == 0 && fflush(stdout) != 0)
        err = RS_EIO;
    return err < 0 ? cli_fail(search ? "history search" : "history list", err) : EXIT_OK;
}

static int history_delete(cli *c, int argc, char **argv)
{
    rs_store *store = NULL;
    rs_uuid id;
    int err, rc = EXIT_OK;

    if (argc != 2)
        return cli_usage(history_usage, "history delete needs one ID");
    if (rs_uuid_parse(&id, argv[1]) < 0)
        return cli_usage(history_usage, "history delete: '%s' is not an entry id", argv[1]);
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_history_delete(store, &id)) < 0)
        rc = cli_fail("history delete", err);
    rs_store_free(store);
    return rc;
}

static int history_import(cli *c, int argc, char **argv)
{
    static const struct option opts[] = {{"multiline", no_argument, NULL, 'm'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    static const char *const names[] = {"bash", "zsh", "fish", "atuin"};
    static const rs_history_format formats[] = {RS_HISTORY_BASH, RS_HISTORY_ZSH, RS_HISTORY_FISH,
                                                RS_HISTORY_ATUIN};
    rs_history_import_stats stats;
    rs_history_format format = RS_HISTORY_BASH;
    rs_store *store = NULL;
    unsigned flags = 0;
    const char *path;
    bool known = false;
    int opt, err, rc = EXIT_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'm')
            flags |= RS_HISTORY_IMPORT_MULTILINE;
        else
            return cli_other_option(opt, history_usage, "history import: bad option");
    }
    if (argc - optind != 2)
        return cli_usage(history_usage, "history import needs bash|zsh|fish|atuin and a FILE");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(argv[optind], names[i]) == 0) {
            format = formats[i];
            known = true;
        }
    }
    if (!known)
        return cli_usage(history_usage,
                         "history import: unknown format '%s' (bash, zsh, fish or atuin)",
                         argv[optind]);
    if ((flags & RS_HISTORY_IMPORT_MULTILINE) && format != RS_HISTORY_BASH)
        return cli_usage(history_usage, "history import: --multiline is for bash files");
    path = argv[optind + 1];
    if (format == RS_HISTORY_ATUIN && strcmp(path, "-") == 0)
        return cli_usage(history_usage,
                         "history import atuin reads a history.db file, not standard input");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_history_import_flags(&stats, store, format, path, flags)) < 0)
        rc = cli_fail("history import", err);
    else
        printf("imported %zu entries from %s (%zu read, %zu already present)\n", stats.imported,
               strcmp(path, "-") == 0 ? "standard input" : path, stats.entries, stats.skipped);
    rs_store_free(store);
    return rc;
}

int cmd_history(cli *c, int argc, char **argv)
{
    const char *sub;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        if (argc < 2)
            return cli_usage(history_usage, "history needs add, list, search, delete or import");
        fputs(history_usage, stdout);
        return EXIT_OK;
    }
    sub = argv[1];
    if (strcmp(sub, "add") == 0)
        return history_add(c, argc - 1, argv + 1);
    if (strcmp(sub, "list") == 0)
        return history_query(c, argc - 1, argv + 1, false);
    if (strcmp(sub, "search") == 0)
        return history_query(c, argc - 1, argv + 1, true);
    if (strcmp(sub, "delete") == 0)
        return history_delete(c, argc - 1, argv + 1);
    if (strcmp(sub, "import") == 0)
        return history_import(c, argc - 1, argv + 1);
    if (strcmp(sub, "start") == 0 || strcmp(sub, "end") == 0)
        return cli_history_hook(c, argc - 1, argv + 1);
    if (strcmp(sub, "session") == 0)
        return cli_history_session(c, argc - 1, argv + 1);
    if (strcmp(sub, "agent") == 0)
        return cli_history_agent(c, argc - 1, argv + 1);
    return cli_usage(history_usage, "unknown history command '%s'", sub);
}
