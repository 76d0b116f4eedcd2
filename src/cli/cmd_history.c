/*
 * history: shell history on records of tag "history".
 */
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
    "       recsync [--dir DIR] history list [--limit N] [--json] [--all]\n"
    "       recsync [--dir DIR] history search [--limit N] [--json] TEXT\n"
    "       recsync [--dir DIR] history delete ID\n"
    "       recsync [--dir DIR] history import bash|zsh FILE\n"
    "add records a command (cwd defaults to the current directory, session to\n"
    "$RECSYNC_SESSION; exit and duration to -1, unknown) and prints its id.\n"
    "list and search print newest first: ID<TAB>TIME<TAB>EXIT<TAB>DURATION_MS<TAB>COMMAND\n"
    "(newlines and tabs in commands shown as \\n and \\t); --json prints one object\n"
    "per entry; --all (with --json) lists every entry by id, deleted ones included.\n"
    "search matches TEXT anywhere in the command, ignoring case.\n"
    "delete removes an entry on every device once synced.\n"
    "import reads a bash or zsh history file; entries imported before are skipped.\n";

typedef struct print_opts {
    bool json;
} print_opts;

static int print_entry(const rs_history_entry *e, void *payload)
{
    print_opts *po = payload;
    char id[RS_UUID_STRLEN + 1], host[RS_UUID_STRLEN + 1], hlc[RS_HLC_STRLEN + 1], when[64];
    time_t secs = (time_t)(e->time_ms / 1000);
    struct tm tm;

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

/* list and search share their options: --limit, --json, and list's --all. */
static int history_query(cli *c, int argc, char **argv, bool search)
{
    static const struct option opts[] = {{"limit", required_argument, NULL, 'l'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"all", no_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    print_opts po = {false};
    rs_store *store = NULL;
    size_t limit = 0;
    bool all = false;
    long long v;
    int opt, err;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (!cli_parse_ll(&v, optarg, 1, LLONG_MAX))
                return cli_usage(history_usage, "--limit needs a positive number, not '%s'",
                                 optarg);
            limit = (size_t)v;
            break;
        case 'j':
            po.json = true;
            break;
        case 'a':
            all = true;
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
    if (all && (search || !po.json || limit))
        return cli_usage(history_usage, "--all goes with 'history list --json' only");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if (search)
        err = rs_history_search(store, argv[optind], limit, print_entry, &po);
    else if (all)
        err = rs_history_foreach(store, print_entry, &po);
    else
        err = rs_history_list(store, limit, print_entry, &po);
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
    rs_history_import_stats stats;
    rs_history_format format;
    rs_store *store = NULL;
    int err, rc = EXIT_OK;

    if (argc != 3)
        return cli_usage(history_usage, "history import needs bash|zsh and a FILE");
    if (strcmp(argv[1], "bash") == 0)
        format = RS_HISTORY_BASH;
    else if (strcmp(argv[1], "zsh") == 0)
        format = RS_HISTORY_ZSH;
    else
        return cli_usage(history_usage, "history import: unknown format '%s' (bash or zsh)",
                         argv[1]);
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_history_import(&stats, store, format, argv[2])) < 0)
        rc = cli_fail("history import", err);
    else
        printf("imported %zu entries from %s (%zu read, %zu already present)\n", stats.imported,
               argv[2], stats.entries, stats.skipped);
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
    return cli_usage(history_usage, "unknown history command '%s'", sub);
}
