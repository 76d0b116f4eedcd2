/*
 * recsync: the command-line client. Global options, then a command.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: recsync [--dir DIR] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  init                        create a store, host id and master key in DIR\n"
    "  init zsh|bash|fish          the shell hook: eval \"$(recsync init zsh)\"\n"
    "  key export | key import     the master key as text on stdout / from stdin\n"
    "  key rotate [--retire HOST]... [--yes]\n"
    "                              a new master key for the remaining devices\n"
    "  key list [--json]           the keyring and this device's key fingerprint\n"
    "  register|login --server URL --user NAME [--name DEVICE]\n"
    "                              password from $RECSYNC_PASSWORD or a prompt\n"
    "  logout                      revoke this device's token and forget it\n"
    "  devices [--json]            the account's devices; devices rename|retire ...\n"
    "  account password|delete     change the password; delete the account\n"
    "  reidentify                  a copied store gets its own host id, then syncs\n"
    "  append TAG [--lines]        a record from stdin; prints its id\n"
    "  log [--tag T] [--json]      records' metadata\n"
    "  cat ID                      a record's decrypted payload\n"
    "  kv set|get|del|list ...     the key-value store\n"
    "  history add|list|search|delete|import ...\n"
    "  sync [--json]               sync with the server\n"
    "  status [--json]             shards, local against remote\n"
    "  verify                      open every record, check every shard\n"
    "  repair                      repair records damaged in the store\n"
    "  snapshot [TAG]              write and upload a snapshot of a store's state\n"
    "  rebuild [TAG]               rebuild materialized state from records\n"
    "  watch [--json]              live sync until interrupted\n"
    "\n"
    "DIR defaults to $RECSYNC_DIR, else $XDG_DATA_HOME/recsync (~/.local/share/recsync).\n"
    "Exit status: 0 success, 1 failure, 2 usage error, 3 partial sync.\n";

typedef struct command {
    const char *name;
    cli_cmd_fn fn;
} command;

static const command commands[] = {
    {"init", cmd_init},       {"key", cmd_key},
    {"append", cmd_append},   {"log", cmd_log},
    {"cat", cmd_cat},         {"verify", cmd_verify},
    {"rebuild", cmd_rebuild}, {"register", cmd_register},
    {"login", cmd_login},     {"sync", cmd_sync},
    {"status", cmd_status},   {"kv", cmd_kv},
    {"history", cmd_history}, {"watch", cmd_watch},
    {"repair", cmd_repair},   {"snapshot", cmd_snapshot},
    {"devices", cmd_devices}, {"logout", cmd_logout},
    {"account", cmd_account}, {"reidentify", cmd_reidentify},
};

int cli_fail(const char *what, int err)
{
    const char *msg = rs_error_last();
    fprintf(stderr, "recsync: %s: %s\n", what, *msg ? msg : rs_strerror(err));
    if (err == RS_ERETIRED)
        fprintf(stderr,
                "recsync: this device was retired from the account (recsync devices retire, on "
                "another device): the server refuses its token. To rejoin, log in again\n"
                "  (recsync login --server URL --user NAME): the device is then active again, "
                "loads a snapshot if the server pruned past it, and uploads what it wrote "
                "meanwhile.\n"
                "  Or start afresh: a new store (--dir NEW), 'recsync key import' there, then "
                "'recsync login'.\n");
    return EXIT_FAIL;
}

static int vusage(const char *usage, const char *fmt, va_list ap)
{
    fputs("recsync: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    if (usage)
        fputs(usage, stderr);
    return EXIT_USAGE;
}

int cli_usage(const char *usage, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = vusage(usage, fmt, ap);
    va_end(ap);
    return rc;
}

bool cli_help(const char *usage, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return true;
        }
    }
    return false;
}

int cli_other_option(int opt, const char *usage, const char *fmt, ...)
{
    va_list ap;
    int rc;
    if (opt == 'h') {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    va_start(ap, fmt);
    rc = vusage(usage, fmt, ap);
    va_end(ap);
    return rc;
}

bool cli_parse_ll(long long *out, const char *text, long long min, long long max)
{
    char *end;
    long long v;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool cli_parse_ul(unsigned long *out, const char *text, unsigned long min, unsigned long max)
{
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int cli_open(rs_store **out, cli *c)
{
    int err = rs_store_open(out, c->dir, NULL);
    if (err < 0)
        return cli_fail("cannot open the store", err);
    return 0;
}

int cli_read_all(char **out, size_t *out_len, FILE *f)
{
    size_t cap = 65536, len = 0, n;
    char *buf = malloc(cap + 1), *grown;
    if (buf == NULL)
        return -1;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            if ((grown = realloc(buf, cap + 1)) == NULL) {
                free(buf);
                return -1;
            }
            buf = grown;
        }
    }
    if (ferror(f)) {
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

void cli_json_string(FILE *out, const char *s)
{
    if (s == NULL) {
        fputs("null", out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\r':
            fputs("\\r", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        default:
            if (*p < 0x20)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

void cli_print_escaped(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            fputs("\\n", stdout);
        else if (*s == '\t')
            fputs("\\t", stdout);
        else
            putchar(*s);
    }
}

/* $RECSYNC_DIR, else $XDG_DATA_HOME/recsync, else $HOME/.local/share/recsync. */
static const char *default_dir(char *buf, size_t size)
{
    const char *env = getenv("RECSYNC_DIR");
    if (env && *env)
        return env;
    env = getenv("XDG_DATA_HOME");
    if (env && *env) {
        snprintf(buf, size, "%s/recsync", env);
        return buf;
    }
    env = getenv("HOME");
    snprintf(buf, size, "%s/.local/share/recsync", env && *env ? env : ".");
    return buf;
}

int main(int argc, char **argv)
{
    cli c = {NULL, "recsync"};
    char dirbuf[4096];
    int i = 1;

    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--dir") == 0) {
            if (i + 1 >= argc)
                return cli_usage(usage_text, "--dir needs a directory");
            c.dir = argv[++i];
        } else if (strncmp(argv[i], "--dir=", 6) == 0) {
            c.dir = argv[i] + 6;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return EXIT_OK;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("recsync %s\n", RS_VERSION);
            return EXIT_OK;
        } else {
            return cli_usage(usage_text, "unknown option %s", argv[i]);
        }
    }
    if (i >= argc)
        return cli_usage(usage_text, "no command given");
    if (c.dir == NULL)
        c.dir = default_dir(dirbuf, sizeof(dirbuf));
    for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
        if (strcmp(argv[i], commands[k].name) == 0)
            return commands[k].fn(&c, argc - i, argv + i);
    return cli_usage(usage_text, "unknown command '%s'", argv[i]);
}
