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

typedef struct cli {
    const char *dir; /* store directory: --dir, $RECSYNC_DIR, or the XDG data dir */
    const char *prog;
} cli;

typedef int (*cli_cmd_fn)(cli *c, int argc, char **argv);

/* Prints "recsync: <what>: <rs_error_last()>" and returns EXIT_FAIL. */
int cli_fail(const char *what, int err);
/* Prints a usage error and returns EXIT_USAGE. */
int cli_usage(const char *usage, const char *fmt, ...);
/* True when argv holds -h or --help before any "--". */
bool cli_wants_help(int argc, char **argv);

/* Opens the store at c->dir, printing the error on failure. */
int cli_open(rs_store **out, cli *c);

/* Reads all of `f` into a NUL-terminated buffer (free with free()). */
int cli_read_all(char **out, size_t *out_len, FILE *f);

/* Prints a JSON string literal (with quotes) for `s` to `out`. */
void cli_json_string(FILE *out, const char *s);

int cmd_init(cli *c, int argc, char **argv);
int cmd_key(cli *c, int argc, char **argv);
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

#endif
