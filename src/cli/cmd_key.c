/*
 * `recsync key rotate` and `recsync key list` (export and import are in
 * cmd_store.c, which hands these two over).
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char rotate_usage[] =
    "usage: recsync [--dir DIR] key rotate [--retire HOST]... [--yes]\n"
    "Makes a new master key (a new key id). Syncs first, then shows the devices\n"
    "that will receive it (name, host, key fingerprint) and asks for confirmation.\n"
    "The new key is sealed to each device's own public key, never under the old\n"
    "key. This device seals new records under it at once; the others pick it up\n"
    "at their next sync. Every key stays in each store's keyring, so records\n"
    "under older keys still open. A snapshot of every store under the new key\n"
    "lets the server prune what older keys sealed once every device has acked.\n"
    "  --retire HOST  retire this device (host id or name) in the same step: its\n"
    "                 tokens are refused and it never gets the new key (repeatable)\n"
    "  --yes          do not ask (scripts)\n"
    "Each device publishes its public key in its checkpoints (every 10 minutes of\n"
    "syncing; 'recsync sync --checkpoint' writes one now); the rotation names the\n"
    "active devices that have published none and does nothing until they have or\n"
    "are retired.\n"
    "A device joining later imports the current key ('recsync key export' here,\n"
    "'recsync key import' there); its first sync reads the older keys from the\n"
    "keyring record sealed under the current one.\n";

static const char list_usage[] =
    "usage: recsync [--dir DIR] key list [--json]\n"
    "The keyring: every key id this store holds, the current one first, with the\n"
    "rotation that made it and how many of the store's records each seals; and\n"
    "this device's public key fingerprint.\n";

/* A host id, or the name of exactly one of `devs`. */
static int resolve_host(rs_uuid *out, const char *text, const rs_device_info *devs, size_t n)
{
    int found = 0;
    if (rs_uuid_parse(out, text) == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(devs[i].name, text) == 0 && devs[i].retired_ms == 0) {
            *out = devs[i].host;
            found++;
        }
    if (found == 1)
        return 0;
    fprintf(stderr, "recsync: key rotate: --retire %s: %s\n", text,
            found ? "several active devices have this name; give the host id"
                  : "no active device has this host id or name ('recsync devices' lists them)");
    return -1;
}

static bool confirmed(void)
{
    char line[64];
    fprintf(stderr, "Rotate the key? Type 'yes' to go on: ");
    fflush(stderr);
    if (cli_read_line(line, sizeof(line)) < 0)
        return false;
    return strcmp(line, "yes") == 0 || strcmp(line, "y") == 0;
}

static int key_rotate(cli *c, int argc, char **argv)
{
    static const struct option opts[] = {{"retire", required_argument, NULL, 'r'},
                                         {"yes", no_argument, NULL, 'y'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    rs_store *store = NULL;
    rs_device_info *devs = NULL;
    rs_key_device *plan = NULL;
    rs_uuid *retire = NULL;
    const char **names = NULL;
    size_t nretire = 0, ndevs = 0, nplan = 0, missing = 0;
    bool yes = false;
    int opt, err, rc = EXIT_FAIL;

    if ((names = calloc((size_t)argc, sizeof(*names))) == NULL)
        return EXIT_FAIL;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'r')
            names[nretire++] = optarg;
        else if (opt == 'y')
            yes = true;
        else {
            free(names);
            return cli_other_option(opt, rotate_usage, "unknown option");
        }
    }
    if (optind != argc) {
        free(names);
        return cli_usage(rotate_usage, "key rotate takes no arguments, only options");
    }
    if (cli_open(&store, c) != 0) {
        free(names);
        return EXIT_FAIL;
    }
    if ((retire = calloc(nretire ? nretire : 1, sizeof(*retire))) == NULL)
        goto done;
    if (nretire > 0) {
        if ((err = rs_devices_list(&devs, &ndevs, store)) < 0) {
            rc = cli_fail("key rotate", err);
            goto done;
        }
        for (size_t i = 0; i < nretire; i++)
            if (resolve_host(&retire[i], names[i], devs, ndevs) < 0)
                goto done;
    }
    if ((err = rs_key_rotate_plan(&plan, &nplan, store, retire, nretire)) < 0) {
        rc = cli_fail("key rotate", err);
        goto done;
    }
    {
        char id[RS_KEY_ID_STRLEN + 1];
        rs_store_key_id(id, store);
        printf("current key %s; the new key will be sealed to:\n", id);
    }
    for (size_t i = 0; i < nplan; i++) {
        char h[RS_UUID_STRLEN + 1];
        rs_uuid_format(h, &plan[i].host);
        if (plan[i].retire)
            continue;
        printf("  %-20s %s  key %s%s\n", plan[i].name, h,
               plan[i].fingerprint[0] ? plan[i].fingerprint : "(none published)",
               plan[i].current ? "  (this device)" : "");
        missing += plan[i].fingerprint[0] == '\0';
    }
    for (size_t i = 0; i < nplan; i++) {
        char h[RS_UUID_STRLEN + 1];
        rs_uuid_format(h, &plan[i].host);
        if (plan[i].retire)
            printf("retired in the same step (never gets the new key):\n  %-20s %s\n", plan[i].name,
                   h);
    }
    fflush(stdout);
    if (missing > 0) {
        fprintf(stderr,
                "recsync: key rotate: %zu device(s) have published no key yet: sync each once "
                "(it publishes its key at its next sync), or retire it with --retire. Nothing "
                "was done\n",
                missing);
        goto done;
    }
    if (!yes && !confirmed()) {
        fprintf(stderr, "recsync: key rotate: not confirmed; nothing was done\n");
        goto done;
    }
    rs_key_rotation r;
    if ((err = rs_key_rotate(&r, store, plan, nplan)) < 0) {
        rc = cli_fail("key rotate", err);
        goto done;
    }
    printf("rotated key %s -> %s: sealed to %zu device(s), %zu retired, %llu snapshot(s) under "
           "the new key (%llu ms)\n",
           r.old_id, r.new_id, r.recipients, r.retired, (unsigned long long)r.snapshots,
           (unsigned long long)r.elapsed_ms);
    rc = EXIT_OK;
done:
    rs_free(plan);
    rs_free(devs);
    free(retire);
    free(names);
    rs_store_free(store);
    return rc;
}

static int key_list(cli *c, int argc, char **argv)
{
    rs_store *store = NULL;
    rs_keyring_entry *list = NULL;
    size_t n = 0;
    char fp[RS_KEY_FP_STRLEN + 1] = "";
    bool json = false;
    int err;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            return cli_usage(list_usage, "unknown argument '%s'", argv[i]);
    }
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_keyring_list(&list, &n, store)) < 0 ||
        (err = rs_device_key_fingerprint(fp, store)) < 0) {
        rs_store_free(store);
        return cli_fail("key list", err);
    }
    if (json) {
        printf("{\"device_key\":\"%s\",\"keys\":[", fp);
        for (size_t i = 0; i < n; i++) {
            char by[RS_UUID_STRLEN + 1];
            rs_uuid_format(by, &list[i].rotated_by);
            printf("%s{\"id\":\"%s\",\"current\":%s,\"rotated_hlc\":%llu,\"rotated_by\":%s%s%s,"
                   "\"records\":%llu}",
                   i ? "," : "", list[i].id, list[i].current ? "true" : "false",
                   (unsigned long long)list[i].rotated_hlc, list[i].rotated_hlc ? "\"" : "",
                   list[i].rotated_hlc ? by : "null", list[i].rotated_hlc ? "\"" : "",
                   (unsigned long long)list[i].records);
        }
        printf("]}\n");
    } else {
        printf("device key %s\n", fp);
        for (size_t i = 0; i < n; i++) {
            char by[RS_UUID_STRLEN + 1];
            rs_uuid_format(by, &list[i].rotated_by);
            printf("%s %s  %llu records  %s%s\n", list[i].id,
                   list[i].current ? "current" : "older  ", (unsigned long long)list[i].records,
                   list[i].rotated_hlc ? "rotated by " : "the account's first key",
                   list[i].rotated_hlc ? by : "");
        }
    }
    rs_free(list);
    rs_store_free(store);
    return EXIT_OK;
}

int cmd_key_more(cli *c, int argc, char **argv)
{
    if (strcmp(argv[1], "rotate") == 0) {
        if (cli_help(rotate_usage, argc - 1, argv + 1))
            return EXIT_OK;
        return key_rotate(c, argc - 1, argv + 1);
    }
    if (cli_help(list_usage, argc - 1, argv + 1))
        return EXIT_OK;
    return key_list(c, argc - 1, argv + 1);
}
