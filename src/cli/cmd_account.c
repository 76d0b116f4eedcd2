/*
 * The account: its devices (list, rename, retire), logout, the password
 * and deleting the account.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SECRET_MAX 1026 /* a password of 1024 bytes, its newline and the NUL */

/* Unix milliseconds as "2025-01-31T12:00:00Z" (UTC), or "-" for 0. */
static void format_ms(char *out, size_t size, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms == 0 || gmtime_r(&t, &tm) == NULL)
        snprintf(out, size, "-");
    else
        strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/*
 * A secret or answer: $`env`, else a prompt on the terminal (hidden when
 * `hidden`), else one line of stdin. -1 when there is none.
 */
static int ask(char *buf, size_t size, const char *env, const char *prompt, bool hidden)
{
    const char *v = getenv(env);
    if (v && *v) {
        if (strlen(v) >= size)
            return -1;
        strcpy(buf, v);
        return 0;
    }
    if (isatty(STDIN_FILENO) && hidden)
        return cli_prompt_hidden(buf, size, prompt) == 0 && *buf ? 0 : -1;
    if (isatty(STDIN_FILENO)) {
        fputs(prompt, stderr);
        fflush(stderr);
    }
    return cli_read_line(buf, size) == 0 && *buf ? 0 : -1;
}

static void print_devices_json(const rs_device_info *list, size_t n)
{
    printf("{\"devices\":[");
    for (size_t i = 0; i < n; i++) {
        char host[RS_UUID_STRLEN + 1];
        rs_uuid_format(host, &list[i].host);
        printf("%s{\"host\":\"%s\",\"name\":", i ? "," : "", host);
        cli_json_string(stdout, list[i].name);
        printf(",\"created_ms\":%llu,\"last_seen_ms\":%llu,\"retired_ms\":",
               (unsigned long long)list[i].created_ms, (unsigned long long)list[i].last_seen_ms);
        if (list[i].retired_ms)
            printf("%llu", (unsigned long long)list[i].retired_ms);
        else
            printf("null");
        printf(",\"behind\":%llu,\"current\":%s}", (unsigned long long)list[i].behind,
               list[i].current ? "true" : "false");
    }
    printf("]}\n");
}

static void print_devices(const rs_device_info *list, size_t n)
{
    printf("%-36s  %-20s  %-20s  %-20s  %8s  %s\n", "HOST", "NAME", "CREATED", "LAST SEEN",
           "BEHIND", "STATE");
    for (size_t i = 0; i < n; i++) {
        char host[RS_UUID_STRLEN + 1], created[32], seen[32], retired[32];
        rs_uuid_format(host, &list[i].host);
        format_ms(created, sizeof(created), list[i].created_ms);
        format_ms(seen, sizeof(seen), list[i].last_seen_ms);
        format_ms(retired, sizeof(retired), list[i].retired_ms);
        printf("%-36s  %-20s  %-20s  %-20s  %8llu  %s%s%s\n", host, list[i].name, created, seen,
               (unsigned long long)list[i].behind, list[i].retired_ms ? "retired " : "active",
               list[i].retired_ms ? retired : "", list[i].current ? " (this device)" : "");
    }
}

static const char devices_usage[] =
    "usage: recsync [--dir DIR] devices [--json]\n"
    "       recsync [--dir DIR] devices rename [HOST] NAME\n"
    "       recsync [--dir DIR] devices retire HOST\n"
    "Lists the account's devices: host id, name, when registered, when last seen\n"
    "(login or ack), how far behind its acks are (records of the other devices'\n"
    "shards above what it acked) and whether it is retired. --json prints\n"
    "{\"devices\":[{\"host\",\"name\",\"created_ms\",\"last_seen_ms\",\"retired_ms\",\n"
    "\"behind\",\"current\"}]}.\n"
    "rename: names device HOST (default: this one).\n"
    "retire: revokes every token of device HOST at once (a lost or stolen laptop):\n"
    "its requests are refused (device_retired) and it no longer holds back the\n"
    "server's pruning. It may log in again to rejoin; retire a device and change\n"
    "the password (recsync account password) to keep it out.\n";

int cmd_devices(cli *c, int argc, char **argv)
{
    rs_store *store = NULL;
    rs_device_info *list = NULL;
    rs_uuid host;
    size_t n = 0;
    int err, rc = EXIT_OK;
    bool json = false;

    if (cli_help(devices_usage, argc, argv))
        return EXIT_OK;
    if (argc >= 2 && strcmp(argv[1], "rename") == 0) {
        if (argc != 3 && argc != 4)
            return cli_usage(devices_usage, "devices rename needs [HOST] NAME");
        if (argc == 4 && rs_uuid_parse(&host, argv[2]) < 0)
            return cli_usage(devices_usage, "'%s' is not a host id", argv[2]);
        if (cli_open(&store, c) != 0)
            return EXIT_FAIL;
        if ((err = rs_device_rename(store, argc == 4 ? &host : NULL, argv[argc - 1])) < 0)
            rc = cli_fail("devices rename", err);
        else
            printf("renamed %s to %s\n", argc == 4 ? argv[2] : "this device", argv[argc - 1]);
        rs_store_free(store);
        return rc;
    }
    if (argc >= 2 && strcmp(argv[1], "retire") == 0) {
        uint64_t when = 0;
        char at[32];
        if (argc != 3)
            return cli_usage(devices_usage, "devices retire needs one HOST");
        if (rs_uuid_parse(&host, argv[2]) < 0)
            return cli_usage(devices_usage, "'%s' is not a host id", argv[2]);
        if (cli_open(&store, c) != 0)
            return EXIT_FAIL;
        if ((err = rs_device_retire(&when, store, &host)) < 0) {
            rc = cli_fail("devices retire", err);
        } else {
            format_ms(at, sizeof(at), when);
            printf("retired device %s (at %s): its tokens no longer work\n", argv[2], at);
        }
        rs_store_free(store);
        return rc;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            return cli_usage(devices_usage, "unknown devices argument '%s'", argv[i]);
    }
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_devices_list(&list, &n, store)) < 0)
        rc = cli_fail("devices", err);
    else if (json)
        print_devices_json(list, n);
    else
        print_devices(list, n);
    rs_free(list);
    rs_store_free(store);
    return rc;
}

int cmd_logout(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] logout\n"
        "Revokes this device's token on the server and forgets it in the store (the\n"
        "server and user name stay for a later 'recsync login'). The device stays\n"
        "registered: 'recsync devices retire' removes it from the account's devices\n"
        "that hold back pruning. A token the server already refuses is forgotten too.\n";
    rs_store *store = NULL;
    int revoked = 0, err, rc = EXIT_OK;
    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 1)
        return cli_usage(usage, "logout takes no arguments");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_logout(&revoked, store)) < 0)
        rc = cli_fail("logout", err);
    else
        printf("logged out%s\n",
               revoked ? "" : " (the server already refused this device's token)");
    rs_store_free(store);
    return rc;
}

static const char account_usage[] =
    "usage: recsync [--dir DIR] account password\n"
    "       recsync [--dir DIR] account delete\n"
    "password: changes the account's password. The old one comes from\n"
    "  $RECSYNC_PASSWORD, the new one from $RECSYNC_NEW_PASSWORD, else prompts\n"
    "  (without echo), else two lines of stdin (old, then new). Every device\n"
    "  stays logged in.\n"
    "delete: deletes the account on the server with every record, device, token\n"
    "  and snapshot of it (this store keeps its records). Asks for the password\n"
    "  ($RECSYNC_PASSWORD, a prompt, or a line of stdin) and for the user name\n"
    "  typed as confirmation ($RECSYNC_CONFIRM, a prompt, or the next line).\n";

static int account_password(rs_store *store)
{
    char old_pw[SECRET_MAX], new_pw[SECRET_MAX], again[SECRET_MAX];
    int err, rc = EXIT_OK;
    if (ask(old_pw, sizeof(old_pw), "RECSYNC_PASSWORD", "current password: ", true) != 0) {
        fprintf(stderr, "recsync: account password: no current password (set $RECSYNC_PASSWORD "
                        "or type it)\n");
        return EXIT_FAIL;
    }
    if (ask(new_pw, sizeof(new_pw), "RECSYNC_NEW_PASSWORD", "new password: ", true) != 0) {
        memset(old_pw, 0, sizeof(old_pw));
        fprintf(stderr, "recsync: account password: no new password (set "
                        "$RECSYNC_NEW_PASSWORD or type it)\n");
        return EXIT_FAIL;
    }
    if (isatty(STDIN_FILENO) && getenv("RECSYNC_NEW_PASSWORD") == NULL &&
        (cli_prompt_hidden(again, sizeof(again), "again: ") != 0 || strcmp(again, new_pw) != 0)) {
        fprintf(stderr, "recsync: account password: the new passwords differ; nothing changed\n");
        rc = EXIT_FAIL;
    } else if ((err = rs_account_password(store, old_pw, new_pw)) < 0) {
        rc = cli_fail("account password", err);
    } else {
        printf("password changed; every device stays logged in\n");
    }
    memset(old_pw, 0, sizeof(old_pw));
    memset(new_pw, 0, sizeof(new_pw));
    memset(again, 0, sizeof(again));
    return rc;
}

static int account_delete(rs_store *store)
{
    char pw[SECRET_MAX], confirm[256], prompt[200];
    char *user = NULL;
    int err, rc = EXIT_OK;
    if ((err = rs_store_meta_get(&user, store, RS_META_USER)) < 0) {
        fprintf(stderr, "recsync: account delete: this store is not logged in to a server\n");
        return EXIT_FAIL;
    }
    if (ask(pw, sizeof(pw), "RECSYNC_PASSWORD", "password: ", true) != 0) {
        fprintf(stderr, "recsync: account delete: no password (set $RECSYNC_PASSWORD or type "
                        "it); nothing deleted\n");
        rs_free(user);
        return EXIT_FAIL;
    }
    snprintf(prompt, sizeof(prompt),
             "this deletes account %s and everything it stored on the server.\n"
             "type the user name to confirm: ",
             user);
    if (ask(confirm, sizeof(confirm), "RECSYNC_CONFIRM", prompt, false) != 0 ||
        strcmp(confirm, user) != 0) {
        fprintf(stderr,
                "recsync: account delete: the confirmation is not the user name %s; "
                "nothing deleted\n",
                user);
        rc = EXIT_FAIL;
    } else if ((err = rs_account_delete(store, pw)) < 0) {
        rc = cli_fail("account delete", err);
    } else {
        printf("deleted account %s on the server; this store keeps its records and is logged "
               "out\n",
               user);
    }
    memset(pw, 0, sizeof(pw));
    rs_free(user);
    return rc;
}

int cmd_account(cli *c, int argc, char **argv)
{
    rs_store *store = NULL;
    int rc;
    if (cli_help(account_usage, argc, argv))
        return EXIT_OK;
    if (argc != 2 || (strcmp(argv[1], "password") != 0 && strcmp(argv[1], "delete") != 0))
        return cli_usage(account_usage, "account needs 'password' or 'delete'");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    rc = strcmp(argv[1], "password") == 0 ? account_password(store) : account_delete(store);
    rs_store_free(store);
    return rc;
}
