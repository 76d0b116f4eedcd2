/*
 * The recsync command line. Each command lives in a cmd_*.c file and is
 * listed in main.c's table. Commands use only the public API.
 */
#ifndef RS_CLI_H
#define RS_CLI_H

#include "recsync.h"

#include <stdbool.h>
#include <stdio.h>

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_PARTIAL 3 /* sync: some shards were held back, the others synced */

typedef struct cli {
    const char *dir; /* store directory: --dir, $RECSYNC_DIR, or the XDG data dir */
    const char *prog;
} cli;

typedef int (*cli_cmd_fn)(cli *c, int argc, char **argv);

/* Prints "recsync: <what>: <rs_error_last()>" and returns EXIT_FAIL. */
int cli_fail(const char *what, int err);
/* Prints a usage error and returns EXIT_USAGE. */
int cli_usage(const char *usage, const char *fmt, ...);
/* When argv holds -h or --help before any "--": prints `usage` on stdout, returns true. */
bool cli_help(const char *usage, int argc, char **argv);
/*
 * The default case of a getopt_long loop whose --help returns 'h': for 'h',
 * prints `usage` on stdout and returns EXIT_OK; for anything else, prints
 * the usage error `fmt` and returns EXIT_USAGE.
 */
int cli_other_option(int opt, const char *usage, const char *fmt, ...);

/* A whole number in [min, max] from all of `text` (strtoll), else false. */
bool cli_parse_ll(long long *out, const char *text, long long min, long long max);
/* A whole number in [min, max] from all of `text` (strtoul), else false. */
bool cli_parse_ul(unsigned long *out, const char *text, unsigned long min, unsigned long max);

/* Opens the store at c->dir, printing the error on failure. */
int cli_open(rs_store **out, cli *c);

/* Reads one line of stdin into buf (without its newline); -1 at EOF or on error. */
int cli_read_line(char *buf, size_t size);
/* Prompts on stderr and reads a line from the terminal on stdin without echo. */
int cli_prompt_hidden(char *buf, size_t size, const char *prompt);
/*
 * The account password: $RECSYNC_PASSWORD, else a prompt without echo when
 * stdin is a terminal (asked twice when `confirm`), else one line of stdin.
 */
int cli_get_password(char *buf, size_t size, const char *user, const char *url, bool confirm);

/* Reads all of `f` into a NUL-terminated buffer (free with free()). */
int cli_read_all(char **out, size_t *out_len, FILE *f);

/* Prints a JSON string literal (with quotes) for `s` to `out`; null for NULL. */
void cli_json_string(FILE *out, const char *s);
/* Prints `s` on stdout with newlines and tabs shown as \n and \t. */
void cli_print_escaped(const char *s);

int cmd_init(cli *c, int argc, char **argv);
int cmd_key(cli *c, int argc, char **argv);
/* key rotate | key list (cmd_key.c) */
int cmd_key_more(cli *c, int argc, char **argv);
int cmd_append(cli *c, int argc, char **argv);
int cmd_log(cli *c, int argc, char **argv);
int cmd_cat(cli *c, int argc, char **argv);
int cmd_verify(cli *c, int argc, char **argv);
int cmd_rebuild(cli *c, int argc, char **argv);
int cmd_kv(cli *c, int argc, char **argv);
int cmd_history(cli *c, int argc, char **argv);
int cmd_register(cli *c, int argc, char **argv);
int cmd_login(cli *c, int argc, char **argv);
int cmd_sync(cli *c, int argc, char **argv);
int cmd_status(cli *c, int argc, char **argv);
int cmd_watch(cli *c, int argc, char **argv);
int cmd_repair(cli *c, int argc, char **argv);
int cmd_snapshot(cli *c, int argc, char **argv);
int cmd_devices(cli *c, int argc, char **argv);
int cmd_logout(cli *c, int argc, char **argv);
int cmd_account(cli *c, int argc, char **argv);
int cmd_reidentify(cli *c, int argc, char **argv);

/* Shell integration (cmd_shell.c): `init SHELL`, the hooks' history start/end/session. */
int cmd_init_shell(cli *c, int argc, char **argv);
int cli_history_hook(cli *c, int argc, char **argv);
int cli_history_session(cli *c, int argc, char **argv);
int cli_history_agent(cli *c, int argc, char **argv);
/* For `recsync status`: the shell hooks' background sync and its failures (text only). */
void cli_shell_status(cli *c, bool json);

#endif
