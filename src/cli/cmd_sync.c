/*
 * Commands that talk to a server: register, login, sync, status.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PASSWORD_MAX 1024

int cli_read_line(char *buf, size_t size)
{
    size_t n;
    if (fgets(buf, (int)size, stdin) == NULL)
        return -1;
    n = strlen(buf);
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    else if (n == size - 1)
        return -1; /* longer than a password may be */
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    return 0;
}

int cli_prompt_hidden(char *buf, size_t size, const char *prompt)
{
    struct termios old, quiet;
    int rc, restore = tcgetattr(STDIN_FILENO, &old) == 0;
    fputs(prompt, stderr);
    fflush(stderr);
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    rc = cli_read_line(buf, size);
    if (restore)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    return rc;
}

/*
 * The password: $RECSYNC_PASSWORD, else a prompt without echo when stdin is
 * a terminal (asked twice for a new account), else one line of stdin.
 */
int cli_get_password(char *buf, size_t size, const char *user, const char *url, bool confirm)
{
    const char *env = getenv("RECSYNC_PASSWORD");
    char prompt[512], again[PASSWORD_MAX + 2];
    if (env && *env) {
        if (strlen(env) >= size)
            return -1;
        strcpy(buf, env);
        return 0;
    }
    if (!isatty(STDIN_FILENO))
        return cli_read_line(buf, size) == 0 && *buf ? 0 : -1;
    snprintf(prompt, sizeof(prompt), "password for %s at %s: ", user, url);
    if (cli_prompt_hidden(buf, size, prompt) != 0 || *buf == '\0')
        return -1;
    if (!confirm)
        return 0;
    if (cli_prompt_hidden(again, sizeof(again), "again: ") != 0 || strcmp(again, buf) != 0) {
        memset(again, 0, sizeof(again));
        fprintf(stderr, "recsync: the passwords differ\n");
        return -1;
    }
    memset(again, 0, sizeof(again));
    return 0;
}

static int account_cmd(cli *c, int argc, char **argv, bool create)
{
    const char *name = create ? "register" : "login";
    char usage[1200];
    static const struct option opts[] = {{"server", required_argument, NULL, 's'},
                                         {"user", required_argument, NULL, 'u'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *server = NULL, *user = NULL, *devname = NULL;
    char password[PASSWORD_MAX + 2], host[RS_UUID_STRLEN + 1];
    rs_store *store = NULL;
    rs_uuid id;
    int opt, err, rc = EXIT_OK;

    snprintf(usage, sizeof(usage),
             "usage: recsync [--dir DIR] %s --server URL --user NAME [--name DEVICE]\n"
             "%s, binding this device's host id to the account; keeps the server,\n"
             "user and this device's token in the store. The password comes from\n"
             "$RECSYNC_PASSWORD, else a prompt (without echo), else a line of stdin.\n"
             "--name names this device in 'recsync devices' (default: the hostname).\n%s",
             name, create ? "Creates an account on the server" : "Logs in to an existing account",
             create ? ""
                    : "Before keeping the token, one of the server's records must open under\n"
                      "this store's key; else nothing is written (exit 1, both key ids named).\n"
                      "A retired device may log in again to rejoin: it is active again, loads\n"
                      "a snapshot if the server pruned past it, and uploads what it wrote.\n");
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            server = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'n':
            devname = optarg;
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "%s takes no arguments besides its options", name);
    if (server == NULL || user == NULL)
        return cli_usage(usage, "%s needs --server URL and --user NAME", name);
    if (strncmp(server, "http://", 7) != 0 && strncmp(server, "https://", 8) != 0)
        return cli_usage(usage, "--server '%s' is not an http:// or https:// URL", server);
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if (cli_get_password(password, sizeof(password), user, server, create) != 0) {
        fprintf(stderr, "recsync: %s: no password (set $RECSYNC_PASSWORD or type one)\n", name);
        rs_store_free(store);
        return EXIT_FAIL;
    }
    rs_login_opts lopts = {.device_name = devname};
    err = create ? rs_register_ex(store, server, user, password, &lopts)
                 : rs_login_ex(store, server, user, password, &lopts);
    memset(password, 0, sizeof(password));
    if (err < 0) {
        rc = cli_fail(name, err);
    } else {
        rs_store_host(&id, store);
        rs_uuid_format(host, &id);
        printf("%s %s at %s; this device (host %s) is logged in\n",
               create ? "registered" : "logged in as", user, server, host);
    }
    rs_store_free(store);
    return rc;
}

int cmd_register(cli *c, int argc, char **argv)
{
    return account_cmd(c, argc, argv, true);
}

int cmd_login(cli *c, int argc, char **argv)
{
    return account_cmd(c, argc, argv, false);
}

/* ---- sync ---- */

typedef struct bar {
    bool on;
    bool drawn;
    struct timespec last;
} bar;

static double since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

/* A progress bar on stderr, redrawn at most ten times a second. */
static void draw_progress(uint64_t done, uint64_t total, void *payload)
{
    bar *b = payload;
    char cells[41];
    size_t width = sizeof(cells) - 1, full;
    if (!b->on || total < 1000)
        return;
    if (b->drawn && done < total && since(&b->last) < 0.1)
        return;
    clock_gettime(CLOCK_MONOTONIC, &b->last);
    full = (size_t)(done * width / total);
    memset(cells, '#', full);
    memset(cells + full, ' ', width - full);
    cells[width] = '\0';
    fprintf(stderr, "\rsync [%s] %3u%% %llu/%llu records", cells, (unsigned)(done * 100 / total),
            (unsigned long long)done, (unsigned long long)total);
    fflush(stderr);
    b->drawn = true;
}

/* The wire-style name of why a shard was held back, for scripts. */
static const char *held_name(int code)
{
    switch (code) {
    case RS_ECRYPTO:
        return "damaged";
    case RS_EKEY:
        return "wrong_key";
    case RS_ECLOCK:
        return "clock";
    case RS_EHOLE:
        return "hole";
    case RS_ETOOBIG:
        return "too_big";
    case RS_EVERSION:
        return "version";
    case RS_EQUOTA:
        return "quota_exceeded";
    case RS_EGONE:
        return "snapshot_required";
    case RS_ENOTFOUND:
        return "not_found";
    default:
        return "server";
    }
}

static void print_report_json(const rs_sync_report *r)
{
    char host[RS_UUID_STRLEN + 1];
    printf("{\"outcome\": \"%s\", \"uploaded\": %llu, \"downloaded\": %llu, \"shards\": [",
           rs_sync_outcome_name(r->outcome), (unsigned long long)r->uploaded,
           (unsigned long long)r->downloaded);
    for (size_t i = 0; i < r->count; i++) {
        const rs_sync_shard *s = &r->shards[i];
        rs_uuid_format(host, &s->host);
        printf("%s{\"host\": \"%s\", \"tag\": \"%s\", \"uploaded\": %llu, \"downloaded\": %llu}",
               i ? ", " : "", host, s->tag, (unsigned long long)s->uploaded,
               (unsigned long long)s->downloaded);
    }
    printf("], \"seq\": %llu, \"elapsed_ms\": %llu, \"partial\": %s, \"held\": [",
           (unsigned long long)r->seq, (unsigned long long)r->elapsed_ms,
           r->held_count ? "true" : "false");
    for (size_t i = 0; i < r->held_count; i++) {
        const rs_sync_held *h = &r->held[i];
        rs_uuid_format(host, &h->host);
        printf("%s{\"host\": \"%s\", \"tag\": \"%s\", \"direction\": \"%s\", \"idx\": %llu, "
               "\"error\": \"%s\", \"message\": ",
               i ? ", " : "", host, h->tag, h->upload ? "upload" : "download",
               (unsigned long long)h->idx, held_name(h->code));
        cli_json_string(stdout, h->reason);
        printf("}");
    }
    printf("], \"snapshots\": [");
    for (size_t i = 0; i < r->snapshot_count; i++) {
        const rs_snapshot_info *sn = &r->snapshots[i];
        rs_uuid_format(host, &sn->id);
        printf("%s{\"tag\": \"%s\", \"id\": \"%s\", \"action\": \"%s\", \"covered\": %llu, "
               "\"chunks\": %llu, \"bytes\": %llu, \"ms\": %llu}",
               i ? ", " : "", sn->tag, host, sn->loaded ? "loaded" : "written",
               (unsigned long long)sn->covered, (unsigned long long)sn->chunks,
               (unsigned long long)sn->bytes, (unsigned long long)sn->elapsed_ms);
    }
    printf("], \"compacted\": %llu}\n", (unsigned long long)r->compacted);
}

/* The shards held back, on stderr: the sync was partial. */
static void print_held(const rs_sync_report *r)
{
    char host[RS_UUID_STRLEN + 1];
    for (size_t i = 0; i < r->held_count; i++) {
        const rs_sync_held *h = &r->held[i];
        rs_uuid_format(host, &h->host);
        fprintf(stderr, "recsync: sync: held back %s of shard %s/%s from idx %llu (%s): %s\n",
                h->upload ? "the upload" : "the download", host, h->tag, (unsigned long long)h->idx,
                held_name(h->code), h->reason);
    }
    if (r->held_count)
        fprintf(stderr,
                "recsync: sync: partial: %zu shard%s held back, every other shard synced; the "
                "next sync tries %s again\n",
                r->held_count, r->held_count == 1 ? "" : "s", r->held_count == 1 ? "it" : "them");
}

static void print_report(const rs_sync_report *r, const rs_uuid *self)
{
    char host[RS_UUID_STRLEN + 1];
    printf("%s%s: uploaded %llu, downloaded %llu records in %llu ms (server seq %llu)\n",
           rs_sync_outcome_name(r->outcome), r->held_count ? " (partial)" : "",
           (unsigned long long)r->uploaded, (unsigned long long)r->downloaded,
           (unsigned long long)r->elapsed_ms, (unsigned long long)r->seq);
    for (size_t i = 0; i < r->count; i++) {
        const rs_sync_shard *s = &r->shards[i];
        rs_uuid_format(host, &s->host);
        if (s->uploaded)
            printf("  up   %8llu  %s/%s%s\n", (unsigned long long)s->uploaded, host, s->tag,
                   rs_uuid_cmp(&s->host, self) == 0 ? " (this device)" : "");
        if (s->downloaded)
            printf("  down %8llu  %s/%s\n", (unsigned long long)s->downloaded, host, s->tag);
    }
    for (size_t i = 0; i < r->snapshot_count; i++) {
        const rs_snapshot_info *sn = &r->snapshots[i];
        printf("  snapshot of %s %s: %llu records covered, %llu bytes in %llu ms\n", sn->tag,
               sn->loaded ? "loaded" : "written", (unsigned long long)sn->covered,
               (unsigned long long)sn->bytes, (unsigned long long)sn->elapsed_ms);
    }
    if (r->compacted)
        printf("  dropped %llu local records below the server's pruned start\n",
               (unsigned long long)r->compacted);
}

int cmd_sync(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] sync [--json] [--page-records N] [--replay] [--checkpoint]\n"
        "Uploads this device's new records and downloads the others', in pages of N\n"
        "records (default 2000), and prints the outcome: noop, pull, push or merge,\n"
        "with counts per shard. --json prints one object for scripts.\n"
        "A shard that cannot be synced (a damaged record, a clock too far ahead, a\n"
        "page the server got wrong) is held back and named on stderr, and \"held\"\n"
        "in --json; every other shard syncs, and the exit status is 3 (partial).\n"
        "A new device starts each store from the server's newest snapshot and pulls\n"
        "only the records above it; --replay pulls every record instead.\n"
        "Every 10 minutes a sync writes a checkpoint of the hash chain heads this\n"
        "device has seen, so others can tell a server that shows them different\n"
        "histories; --checkpoint writes one now.\n";
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},   {"page-records", required_argument, NULL, 'p'},
        {"replay", no_argument, NULL, 'r'}, {"checkpoint", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},   {NULL, 0, NULL, 0}};
    rs_sync_opts sopts;
    rs_store *store = NULL;
    rs_sync_report *report = NULL;
    bar b = {false, false, {0, 0}};
    bool json = false;
    unsigned long page;
    rs_uuid self;
    int opt, err, rc = EXIT_OK;

    memset(&sopts, 0, sizeof(sopts));
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            json = true;
            break;
        case 'r':
            sopts.replay = 1;
            break;
        case 'c':
            sopts.checkpoint_ms = 1;
            break;
        case 'p':
            if (!cli_parse_ul(&page, optarg, 1, 1000000))
                return cli_usage(usage, "--page-records needs a number from 1 to 1000000, not '%s'",
                                 optarg);
            sopts.page_records = page;
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "sync takes no arguments besides its options");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    b.on = isatty(STDERR_FILENO);
    sopts.progress = draw_progress;
    sopts.progress_payload = &b;
    err = rs_sync(&report, store, &sopts);
    if (b.drawn)
        fputs("\r\033[K", stderr);
    if (err < 0) {
        rc = cli_fail("sync", err);
    } else {
        if (json) {
            print_report_json(report);
        } else {
            rs_store_host(&self, store);
            print_report(report, &self);
        }
        fflush(stdout);
        print_held(report);
        if (report->held_count)
            rc = EXIT_PARTIAL;
    }
    rs_sync_report_free(report);
    rs_store_free(store);
    return rc;
}

/* ---- snapshot ---- */

int cmd_snapshot(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] snapshot [TAG]\n"
        "Writes an end-to-end encrypted snapshot of TAG's state (default: kv and history)\n"
        "and uploads it, so the server can prune the records below it and new devices\n"
        "start from it. A sync also writes one past a number of new records.\n";
    const char *all[] = {RS_KV_TAG, RS_HISTORY_TAG};
    rs_store *store = NULL;
    rs_snapshot_info info;
    uint64_t pushed = 0;
    int err = 0, rc = EXIT_OK;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc > 2)
        return cli_usage(usage, "snapshot takes at most one TAG");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    for (size_t i = 0; i < (argc == 2 ? 1u : 2u) && err == 0; i++) {
        const char *tag = argc == 2 ? argv[1] : all[i];
        if ((err = rs_snapshot_write(&info, store, tag)) < 0)
            break;
        printf("snapshot of %s written: %llu records covered, %llu items, %llu bytes in %llu ms\n",
               tag, (unsigned long long)info.covered, (unsigned long long)info.items,
               (unsigned long long)info.bytes, (unsigned long long)info.elapsed_ms);
    }
    if (err == 0 && (err = rs_snapshot_push(&pushed, store)) == 0)
        printf("uploaded %llu snapshot%s\n", (unsigned long long)pushed, pushed == 1 ? "" : "s");
    if (err < 0)
        rc = cli_fail("snapshot", err);
    rs_store_free(store);
    return rc;
}

/* ---- repair ---- */

static void print_step(int code, const char *message, void *payload)
{
    (void)payload;
    fprintf(code < 0 ? stderr : stdout, "%s%s\n", code < 0 ? "recsync: repair: " : "  ", message);
}

int cmd_repair(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] repair\n"
        "Repairs records damaged in the store (those 'verify' names as not opening):\n"
        "another device's are downloaded again by the next sync; this device's are\n"
        "restored from the server's copy, or, if the server never received one, it is\n"
        "dropped (its content is lost) and the shard's later records are sealed again\n"
        "one position lower. Needs the server when this device's records are damaged.\n";
    rs_store *store = NULL;
    rs_repair_report r;
    int err, rc = EXIT_OK;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 1)
        return cli_usage(usage, "repair takes no arguments");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    err = rs_repair(&r, store, print_step, NULL);
    if (err < 0)
        rc = cli_fail("repair", err);
    else if (r.damaged == 0)
        printf("ok: %llu records open; nothing to repair\n", (unsigned long long)r.records);
    else
        printf("repaired %llu damaged records: %llu restored from the server, %llu shards cut "
               "back to download again, %llu lost and dropped, %llu sealed again\n",
               (unsigned long long)r.damaged, (unsigned long long)r.restored,
               (unsigned long long)r.cut, (unsigned long long)r.dropped,
               (unsigned long long)r.resealed);
    rs_store_free(store);
    return rc;
}

/* ---- status ---- */

typedef struct row {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    const rs_shard *local;
    const rs_shard *remote;
} row;

static int row_cmp(const void *a, const void *b)
{
    const row *x = a, *y = b;
    int c = rs_uuid_cmp(&x->host, &y->host);
    return c ? c : strcmp(x->tag, y->tag);
}

/* Every shard of either index, local and remote side by side, by host and tag. */
static row *join_indexes(size_t *count, const rs_index *local, const rs_index *remote)
{
    size_t nl = local ? local->count : 0, nr = remote ? remote->count : 0, n = 0;
    row *rows = calloc(nl + nr + 1, sizeof(*rows));
    if (rows == NULL)
        return NULL;
    for (size_t i = 0; i < nl; i++) {
        rows[n].host = local->shards[i].host;
        strcpy(rows[n].tag, local->shards[i].tag);
        rows[n++].local = &local->shards[i];
    }
    for (size_t j = 0; j < nr; j++) {
        const rs_shard *s = &remote->shards[j];
        size_t i = 0;
        for (; i < nl; i++)
            if (rs_uuid_cmp(&rows[i].host, &s->host) == 0 && strcmp(rows[i].tag, s->tag) == 0)
                break;
        if (i < nl) {
            rows[i].remote = s;
            continue;
        }
        rows[n].host = s->host;
        strcpy(rows[n].tag, s->tag);
        rows[n++].remote = s;
    }
    qsort(rows, n, sizeof(*rows), row_cmp);
    *count = n;
    return rows;
}

static void format_time(char *out, size_t size, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

typedef struct status_info {
    rs_store *store;
    char *server;
    char *user;
    rs_index *local;
    rs_index *live;
    rs_sync_last *last;
    const rs_index *remote; /* live, else the last sync's, else NULL */
    char error[1100];
    int error_code; /* why the live index could not be had */
    row *rows;
    size_t count;
} status_info;

static void print_opt_u64(bool known, uint64_t v)
{
    if (known)
        printf("%llu", (unsigned long long)v);
    else
        fputs("null", stdout);
}

static void print_status_json(const status_info *si)
{
    char host[RS_UUID_STRLEN + 1], key[RS_KEY_ID_STRLEN + 1];
    rs_uuid self;
    rs_store_host(&self, si->store);
    rs_uuid_format(host, &self);
    rs_store_key_id(key, si->store);
    printf("{\"store\": ");
    cli_json_string(stdout, rs_store_dir(si->store));
    printf(", \"host\": \"%s\", \"key\": \"%s\", \"server\": ", host, key);
    cli_json_string(stdout, si->server);
    fputs(", \"user\": ", stdout);
    cli_json_string(stdout, si->user);
    printf(", \"online\": %s, \"error\": ", si->live ? "true" : "false");
    cli_json_string(stdout, si->error[0] ? si->error : NULL);
    printf(", \"remote_source\": \"%s\", \"seq\": ", si->live     ? "live"
                                                     : si->remote ? "last_sync"
                                                                  : "none");
    print_opt_u64(si->remote != NULL, si->remote ? si->remote->seq : 0);
    fputs(", \"last_sync\": ", stdout);
    if (si->last)
        printf("{\"time_ms\": %llu, \"outcome\": \"%s\", \"uploaded\": %llu, \"downloaded\": "
               "%llu, \"seq\": %llu}",
               (unsigned long long)si->last->time_ms, rs_sync_outcome_name(si->last->outcome),
               (unsigned long long)si->last->uploaded, (unsigned long long)si->last->downloaded,
               (unsigned long long)si->last->seq);
    else
        fputs("null", stdout);
    char *alarm = NULL;
    if (rs_chain_alarm(&alarm, si->store) < 0)
        alarm = NULL;
    fputs(", \"alarm\": ", stdout);
    cli_json_string(stdout, alarm);
    rs_free(alarm);
    fputs(", \"shards\": [", stdout);
    for (size_t i = 0; i < si->count; i++) {
        const row *r = &si->rows[i];
        bool own = rs_uuid_cmp(&r->host, &self) == 0, known = si->remote != NULL;
        uint64_t le = r->local ? r->local->end : 0, re = r->remote ? r->remote->end : 0;
        rs_uuid_format(host, &r->host);
        printf("%s{\"host\": \"%s\", \"tag\": \"%s\", \"own\": %s, \"local_start\": %llu, "
               "\"local_end\": %llu, \"remote_start\": ",
               i ? ", " : "", host, r->tag, own ? "true" : "false",
               (unsigned long long)(r->local ? r->local->start : 0), (unsigned long long)le);
        print_opt_u64(known, r->remote ? r->remote->start : 0);
        fputs(", \"remote_end\": ", stdout);
        print_opt_u64(known, re);
        fputs(", \"to_upload\": ", stdout);
        print_opt_u64(known, own && le > re ? le - re : 0);
        fputs(", \"to_download\": ", stdout);
        print_opt_u64(known, !own && re > le ? re - le : 0);
        fputs("}", stdout);
    }
    fputs("]}\n", stdout);
}

static void print_status(const status_info *si)
{
    char host[RS_UUID_STRLEN + 1], key[RS_KEY_ID_STRLEN + 1], when[40];
    rs_uuid self;
    rs_store_host(&self, si->store);
    rs_uuid_format(host, &self);
    rs_store_key_id(key, si->store);
    printf("store      %s\nhost       %s\nkey        %s\n", rs_store_dir(si->store), host, key);
    if (si->server == NULL)
        printf("server     none: not logged in ('recsync register' or 'recsync login')\n");
    else if (si->live)
        printf("server     %s as %s: reachable, seq %llu\n", si->server, si->user ? si->user : "?",
               (unsigned long long)si->live->seq);
    else
        printf("server     %s as %s: %s: %s\n", si->server, si->user ? si->user : "?",
               si->error_code == RS_ENET ? "UNREACHABLE" : "ERROR", si->error);
    if (si->last) {
        format_time(when, sizeof(when), si->last->time_ms);
        printf("last sync  %s: %s, uploaded %llu, downloaded %llu (seq %llu)\n", when,
               rs_sync_outcome_name(si->last->outcome), (unsigned long long)si->last->uploaded,
               (unsigned long long)si->last->downloaded, (unsigned long long)si->last->seq);
    } else {
        printf("last sync  never\n");
    }
    if (si->server && !si->live)
        printf("remote     %s\n", si->remote ? "as of the last sync" : "unknown");
    char *alarm = NULL;
    if (rs_chain_alarm(&alarm, si->store) == 0) {
        printf("ALARM      THE SERVER TAMPERED WITH THE LOG: %s\n"
               "           sync refuses to continue with this server\n",
               alarm);
        fprintf(stderr, "recsync: status: the server tampered with the log: %s\n", alarm);
        rs_free(alarm);
    }
    printf("shards     %zu (local start..end / remote start..end)\n", si->count);
    for (size_t i = 0; i < si->count; i++) {
        const row *r = &si->rows[i];
        bool own = rs_uuid_cmp(&r->host, &self) == 0;
        uint64_t le = r->local ? r->local->end : 0, re = r->remote ? r->remote->end : 0;
        char remote[64], note[64] = "";
        rs_uuid_format(host, &r->host);
        if (si->remote)
            snprintf(remote, sizeof(remote), "%llu..%llu",
                     (unsigned long long)(r->remote ? r->remote->start : 0),
                     (unsigned long long)re);
        else
            snprintf(remote, sizeof(remote), "?");
        if (si->remote && own && le > re)
            snprintf(note, sizeof(note), "  %llu to upload", (unsigned long long)(le - re));
        else if (si->remote && own && re > le)
            snprintf(note, sizeof(note), "  server is AHEAD by %llu",
                     (unsigned long long)(re - le));
        else if (si->remote && !own && re > le)
            snprintf(note, sizeof(note), "  %llu to download", (unsigned long long)(re - le));
        printf("  %s/%s%s  local %llu..%llu  remote %s%s\n", host, r->tag,
               own ? " (this device)" : "", (unsigned long long)(r->local ? r->local->start : 0),
               (unsigned long long)le, remote, note);
    }
}

int cmd_status(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] status [--json] [--timeout-ms MS]\n"
        "Shows each shard, local against remote: the server's index as of now (waiting at\n"
        "most MS, default 2000), or when it cannot be reached, as of the last sync.\n";
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"timeout-ms", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    status_info si;
    bool json = false;
    long long timeout_ms = 2000;
    int opt, err, rc = EXIT_OK;

    memset(&si, 0, sizeof(si));
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            json = true;
            break;
        case 't':
            if (!cli_parse_ll(&timeout_ms, optarg, 1, 600000))
                return cli_usage(usage, "--timeout-ms needs a number from 1 to 600000, not '%s'",
                                 optarg);
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "status takes no arguments besides its options");
    if (cli_open(&si.store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_store_index(&si.local, si.store)) < 0) {
        rc = cli_fail("status", err);
        goto done;
    }
    if (rs_store_meta_get(&si.server, si.store, RS_META_SERVER) < 0)
        si.server = NULL;
    if (rs_store_meta_get(&si.user, si.store, RS_META_USER) < 0)
        si.user = NULL;
    err = rs_sync_last_get(&si.last, si.store);
    if (err < 0 && err != RS_ENOTFOUND) {
        rc = cli_fail("status", err);
        goto done;
    }
    if (si.server) {
        if ((err = rs_remote_index_timeout(&si.live, si.store, (long)timeout_ms)) < 0) {
            snprintf(si.error, sizeof(si.error), "%s", rs_error_last());
            si.error_code = err;
            si.live = NULL;
        }
    }
    si.remote = si.live ? si.live : si.last ? si.last->remote : NULL;
    if ((si.rows = join_indexes(&si.count, si.local, si.remote)) == NULL) {
        fprintf(stderr, "recsync: status: out of memory\n");
        rc = EXIT_FAIL;
        goto done;
    }
    if (json)
        print_status_json(&si);
    else
        print_status(&si);
    cli_shell_status(c, json);
done:
    free(si.rows);
    rs_index_free(si.local);
    rs_index_free(si.live);
    rs_sync_last_free(si.last);
    rs_free(si.server);
    rs_free(si.user);
    rs_store_free(si.store);
    return rc;
}
