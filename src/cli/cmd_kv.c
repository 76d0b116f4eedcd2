/*
 * kv: the key-value store on records of tag "kv".
 */
#include "cli.h"

#include <getopt.h>
#include <string.h>

static const char kv_usage[] =
    "usage: recsync [--dir DIR] kv set NS KEY VALUE\n"
    "       recsync [--dir DIR] kv get NS KEY\n"
    "       recsync [--dir DIR] kv del NS KEY\n"
    "       recsync [--dir DIR] kv list [--json] [--all] [NS]\n"
    "get prints the value; a missing or deleted key exits 1 and prints nothing.\n"
    "list prints KEY<TAB>VALUE for one namespace, NS<TAB>KEY<TAB>VALUE for all;\n"
    "--json prints one object per key with the winning write's hlc and host,\n"
    "--all adds deleted keys (tombstones) to --json.\n";

typedef struct list_opts {
    bool json;
    bool one_ns;
} list_opts;

static int print_entry(const rs_kv_entry *e, void *payload)
{
    list_opts *lo = payload;
    char hlc[RS_HLC_STRLEN + 1], host[RS_UUID_STRLEN + 1];

    if (lo->json) {
        rs_hlc_format(hlc, e->hlc);
        rs_uuid_format(host, &e->host);
        fputs("{\"ns\": ", stdout);
        cli_json_string(stdout, e->ns);
        fputs(", \"key\": ", stdout);
        cli_json_string(stdout, e->key);
        fputs(", \"value\": ", stdout);
        cli_json_string(stdout, e->value);
        printf(", \"deleted\": %s, \"hlc\": \"%s\", \"host\": \"%s\"}\n",
               e->value ? "false" : "true", hlc, host);
        return 0;
    }
    if (e->value == NULL)
        return 0;
    if (!lo->one_ns) {
        cli_print_escaped(e->ns);
        putchar('\t');
    }
    cli_print_escaped(e->key);
    putchar('\t');
    cli_print_escaped(e->value);
    putchar('\n');
    return 0;
}

static int live_only(const rs_kv_entry *e, void *payload)
{
    return e->value ? print_entry(e, payload) : 0;
}

static int kv_list(rs_store *store, int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"all", no_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    list_opts lo = {false, false};
    bool all = false;
    const char *ns = NULL;
    int opt, err;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            lo.json = true;
            break;
        case 'a':
            all = true;
            break;
        default:
            return cli_other_option(opt, kv_usage, "kv list: bad option");
        }
    }
    if (argc - optind > 1)
        return cli_usage(kv_usage, "kv list takes at most one namespace");
    if (optind < argc)
        ns = argv[optind];
    lo.one_ns = ns != NULL;
    if (all && !lo.json)
        return cli_usage(kv_usage, "kv list: --all needs --json");
    err = rs_kv_foreach(store, ns, all ? print_entry : live_only, &lo);
    if (fflush(stdout) != 0 && err == 0)
        return cli_fail("kv list", RS_EIO);
    return err < 0 ? cli_fail("kv list", err) : EXIT_OK;
}

int cmd_kv(cli *c, int argc, char **argv)
{
    rs_store *store = NULL;
    const char *sub;
    char *value = NULL;
    int err, rc = EXIT_OK;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        if (argc < 2)
            return cli_usage(kv_usage, "kv needs set, get, del or list");
        fputs(kv_usage, stdout);
        return EXIT_OK;
    }
    sub = argv[1];
    if (strcmp(sub, "set") == 0) {
        if (argc != 5)
            return cli_usage(kv_usage, "kv set needs NS KEY VALUE");
    } else if (strcmp(sub, "get") == 0 || strcmp(sub, "del") == 0) {
        if (argc != 4)
            return cli_usage(kv_usage, "kv %s needs NS KEY", sub);
    } else if (strcmp(sub, "list") != 0) {
        return cli_usage(kv_usage, "unknown kv command '%s'", sub);
    }
    if (strcmp(sub, "list") != 0 && (argv[2][0] == '\0' || argv[3][0] == '\0'))
        return cli_usage(kv_usage, "kv %s: the namespace and the key must not be empty", sub);
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if (strcmp(sub, "set") == 0) {
        if ((err = rs_kv_set(store, argv[2], argv[3], argv[4])) < 0)
            rc = cli_fail("kv set", err);
    } else if (strcmp(sub, "get") == 0) {
        if ((err = rs_kv_get(&value, store, argv[2], argv[3])) < 0)
            rc = cli_fail("kv get", err);
        else if (printf("%s\n", value) < 0 || fflush(stdout) != 0)
            rc = cli_fail("kv get", RS_EIO);
        rs_free(value);
    } else if (strcmp(sub, "del") == 0) {
        if ((err = rs_kv_del(store, argv[2], argv[3])) < 0)
            rc = cli_fail("kv del", err);
    } else {
        rc = kv_list(store, argc - 1, argv + 1);
    }
    rs_store_free(store);
    return rc;
}
