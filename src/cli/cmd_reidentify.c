/*
 * reidentify: a copied store gets its own host id, then syncs.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECRET_MAX 1026 /* a password of 1024 bytes, its newline and the NUL */

static const char usage[] =
    "usage: recsync [--dir DIR] reidentify [--name DEVICE] [--no-sync] [--json]\n"
    "Gives this store a new host id. For a store directory copied to a second\n"
    "machine (cp -a, a restored backup) and written to on both: the two share one\n"
    "host id, and 'recsync sync' refuses the one that syncs second (\"holds a\n"
    "different record at idx N\", \"ends at idx N but the local store ends at M\").\n"
    "Run it on the machine whose sync is refused; the other keeps the old id and\n"
    "needs nothing. It logs in to the store's account as a new device (the\n"
    "password from $RECSYNC_PASSWORD, else a prompt without echo, else a line of\n"
    "stdin; --name names the device, default the hostname), asks the server which\n"
    "of the store's records it holds, and in one transaction seals every record of\n"
    "the old id the server does not hold again under the new id (same ids, clocks\n"
    "and contents) and rebuilds the state; the records the server holds stay, and\n"
    "the sync that follows (--no-sync: none) uploads the moved records and\n"
    "downloads what the other machine wrote. Nothing written on either is lost.\n"
    "Running it again gives yet another id. A store that is not logged in is\n"
    "refused and left as it is. Restart a 'recsync watch' running on this store\n"
    "afterwards (it keeps the old id); other processes' writes follow the new id.\n"
    "--json prints {\"old_host\",\"new_host\",\"kept\",\"resealed\",\"shards\":[{\"tag\",\n"
    "\"kept\",\"resealed\"}],\"sync\":{\"outcome\",\"uploaded\",\"downloaded\"}|null}.\n";

static void print_json(const rs_reidentify_report *r, const rs_sync_report *s)
{
    char old[RS_UUID_STRLEN + 1], now[RS_UUID_STRLEN + 1];
    rs_uuid_format(old, &r->old_host);
    rs_uuid_format(now, &r->new_host);
    printf("{\"old_host\":\"%s\",\"new_host\":\"%s\",\"kept\":%llu,\"resealed\":%llu,\"shards\":[",
           old, now, (unsigned long long)r->kept, (unsigned long long)r->resealed);
    for (size_t i = 0; i < r->count; i++)
        printf("%s{\"tag\":\"%s\",\"kept\":%llu,\"resealed\":%llu}", i ? "," : "", r->shards[i].tag,
               (unsigned long long)r->shards[i].kept, (unsigned long long)r->shards[i].resealed);
    if (s)
        printf("],\"sync\":{\"outcome\":\"%s\",\"uploaded\":%llu,\"downloaded\":%llu}}\n",
               rs_sync_outcome_name(s->outcome), (unsigned long long)s->uploaded,
               (unsigned long long)s->downloaded);
    else
        printf("],\"sync\":null}\n");
}

static void print_text(const rs_reidentify_report *r)
{
    char old[RS_UUID_STRLEN + 1], now[RS_UUID_STRLEN + 1];
    rs_uuid_format(old, &r->old_host);
    rs_uuid_format(now, &r->new_host);
    printf("this store's host id is now %s (was %s)\n", now, old);
    for (size_t i = 0; i < r->count; i++)
        printf("  %-20s %llu record(s) sealed again under the new id; the old shard ends at "
               "idx %llu\n",
               r->shards[i].tag, (unsigned long long)r->shards[i].resealed,
               (unsigned long long)r->shards[i].kept);
    printf("the old host id %s stays with the store this one was copied from; if no store "
           "uses it any more, 'recsync devices retire %s'\n",
           old, old);
}

int cmd_reidentify(cli *c, int argc, char **argv)
{
    static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
                                         {"no-sync", no_argument, NULL, 's'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *devname = NULL;
    bool sync = true, json = false;
    char password[SECRET_MAX];
    char *url = NULL, *user = NULL, *token = NULL;
    rs_store *store = NULL;
    rs_reidentify_report *rep = NULL;
    rs_sync_report *sr = NULL;
    int opt, err, rc = EXIT_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            devname = optarg;
            break;
        case 's':
            sync = false;
            break;
        case 'j':
            json = true;
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "reidentify takes no arguments besides its options");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if (rs_store_meta_get(&url, store, RS_META_SERVER) < 0 ||
        rs_store_meta_get(&user, store, RS_META_USER) < 0 ||
        rs_store_meta_get(&token, store, RS_META_TOKEN) < 0) {
        fprintf(stderr,
                "recsync: reidentify: store %s is not logged in to a server: reidentify joins "
                "the account this store syncs with as a new device. Log in first ('recsync "
                "login --server URL --user NAME'; on a copy that takes over the token of the "
                "store it was copied from, which then logs in again), then run 'recsync "
                "reidentify'. Nothing was changed\n",
                c->dir);
        rc = EXIT_FAIL;
        goto done;
    }
    if (cli_get_password(password, sizeof(password), user, url, false) != 0) {
        fprintf(stderr, "recsync: reidentify: no password (set $RECSYNC_PASSWORD or type it); "
                        "nothing was changed\n");
        rc = EXIT_FAIL;
        goto done;
    }
    rs_login_opts lopts = {.device_name = devname};
    err = rs_reidentify(&rep, store, password, &lopts);
    memset(password, 0, sizeof(password));
    if (err < 0) {
        rc = cli_fail("reidentify", err);
        goto done;
    }
    if (!json)
        print_text(rep);
    if (sync) {
        if ((err = rs_sync(&sr, store, NULL)) < 0) {
            rc = cli_fail("reidentify: the store has its new host id, but the sync after failed "
                          "('recsync sync' tries again)",
                          err);
        } else if (!json) {
            printf("sync: %s: uploaded %llu, downloaded %llu records%s\n",
                   rs_sync_outcome_name(sr->outcome), (unsigned long long)sr->uploaded,
                   (unsigned long long)sr->downloaded,
                   sr->held_count ? " (partial: 'recsync sync' names what was held back)" : "");
            if (sr->held_count)
                rc = EXIT_PARTIAL;
        } else if (sr->held_count) {
            rc = EXIT_PARTIAL;
        }
    }
    if (json)
        print_json(rep, sr);
done:
    rs_sync_report_free(sr);
    rs_reidentify_report_free(rep);
    if (token) {
        memset(token, 0, strlen(token));
        rs_free(token);
    }
    rs_free(url);
    rs_free(user);
    rs_store_free(store);
    return rc;
}
