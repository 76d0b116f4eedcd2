/*
 * Commands on the local store: init, key, append, log, cat, verify, rebuild.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int cmd_init(cli *c, int argc, char **argv)
{
    static const char usage[] = "usage: recsync [--dir DIR] init\n"
                                "Creates a store, a random host id and a master key in DIR.\n";
    rs_store *store = NULL;
    rs_uuid host;
    char text[RS_UUID_STRLEN + 1], key_id[RS_KEY_ID_STRLEN + 1];
    int err;

    if (argc >= 2 && argv[1][0] != '-')
        return cmd_init_shell(c, argc, argv);
    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 1)
        return cli_usage(usage, "init takes no arguments");
    if ((err = rs_store_init(&store, c->dir, NULL)) < 0)
        return cli_fail("init", err);
    rs_store_host(&host, store);
    rs_uuid_format(text, &host);
    rs_store_key_id(key_id, store);
    printf("initialized store in %s\nhost %s\nkey %s (in %s/key; 'recsync key export' to copy "
           "it to your other devices)\n",
           c->dir, text, key_id, c->dir);
    rs_store_free(store);
    return EXIT_OK;
}

int cmd_key(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] key export | key import | key rotate | key list\n"
        "export: prints the master key as text.\n"
        "import: reads a key from stdin; creates the store with it if DIR has none,\n"
        "        else replaces the key of a store that holds no records it cannot open;\n"
        "        a store logged in to a server first checks one of the server's records\n"
        "        opens under the new key (else nothing is written; both key ids named)\n"
        "        and keeps the key it replaces in its keyring.\n"
        "rotate: a new master key for the devices that remain ('key rotate --help').\n"
        "list:   the keyring and this device's public key fingerprint.\n";
    rs_store *store = NULL;
    char *text = NULL;
    size_t len;
    int err, rc = EXIT_OK;

    if (argc >= 2 && (strcmp(argv[1], "rotate") == 0 || strcmp(argv[1], "list") == 0))
        return cmd_key_more(c, argc, argv);
    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 2)
        return cli_usage(usage, "key needs 'export' or 'import'");
    if (strcmp(argv[1], "export") == 0) {
        if (cli_open(&store, c) != 0)
            return EXIT_FAIL;
        if ((err = rs_store_key_export(&text, store)) < 0)
            rc = cli_fail("key export", err);
        else
            printf("%s\n", text);
        if (text) {
            memset(text, 0, strlen(text));
            rs_free(text);
        }
        rs_store_free(store);
        return rc;
    }
    if (strcmp(argv[1], "import") != 0)
        return cli_usage(usage, "unknown key command '%s'", argv[1]);
    if (cli_read_all(&text, &len, stdin) != 0) {
        fprintf(stderr, "recsync: key import: cannot read stdin\n");
        return EXIT_FAIL;
    }
    err = rs_store_open(&store, c->dir, NULL);
    if (err == RS_ENOTFOUND) {
        if ((err = rs_store_init_with_key(&store, c->dir, text, NULL)) < 0)
            rc = cli_fail("key import", err);
        else
            printf("initialized store in %s with the imported key\n", c->dir);
    } else if (err < 0) {
        rc = cli_fail("key import", err);
    } else if ((err = rs_key_import_checked(store, text)) < 0) {
        rc = cli_fail("key import", err);
    } else {
        char key_id[RS_KEY_ID_STRLEN + 1];
        rs_store_key_id(key_id, store);
        printf("imported key %s\n", key_id);
    }
    memset(text, 0, len);
    free(text);
    rs_store_free(store);
    return rc;
}

static void print_id(const rs_record *rec)
{
    char id[RS_UUID_STRLEN + 1];
    rs_uuid_format(id, &rec->id);
    puts(id);
}

/*
 * One record per line of `buf` (a trailing newline adds no empty record),
 * all in one transaction. The ids are printed once the transaction has
 * committed, so stdout never names a record that was rolled back.
 */
static int append_lines(rs_store *store, const char *tag, uint32_t version, char *buf, size_t len)
{
    rs_record rec;
    rs_uuid *ids = NULL, *grown;
    size_t count = 0, cap = 0;
    char text[RS_UUID_STRLEN + 1];
    int err, rc = EXIT_OK;

    if ((err = rs_store_begin(store)) < 0)
        return cli_fail("append", err);
    for (size_t pos = 0; pos < len;) {
        char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        if (count == cap) {
            cap = cap ? cap * 2 : 1024;
            if ((grown = realloc(ids, cap * sizeof(*ids))) == NULL) {
                rs_store_rollback(store);
                fprintf(stderr,
                        "recsync: append: out of memory at line %zu (nothing was "
                        "appended)\n",
                        count + 1);
                rc = EXIT_FAIL;
                goto done;
            }
            ids = grown;
        }
        if ((err = rs_append(&rec, store, tag, version, buf + pos, end - pos)) < 0) {
            rs_store_rollback(store);
            fprintf(stderr, "recsync: append: line %zu: %s (nothing was appended)\n", count + 1,
                    rs_error_last());
            rc = EXIT_FAIL;
            goto done;
        }
        ids[count++] = rec.id;
        pos = end + 1;
    }
    if ((err = rs_store_commit(store)) < 0) {
        rc = cli_fail("append (nothing was appended)", err);
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        rs_uuid_format(text, &ids[i]);
        puts(text);
    }
    fprintf(stderr, "appended %zu records to %s\n", count, tag);
done:
    free(ids);
    return rc;
}

int cmd_append(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] append TAG [--lines] [--version N]\n"
        "Appends stdin as one record of TAG and prints its id; with --lines, one\n"
        "record per line, all in one transaction.\n";
    static const struct option opts[] = {{"lines", no_argument, NULL, 'l'},
                                         {"version", required_argument, NULL, 'v'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    rs_store *store = NULL;
    rs_record rec;
    bool lines = false;
    unsigned long version = 1;
    char *buf = NULL;
    size_t len;
    int opt, err, rc = EXIT_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            lines = true;
            break;
        case 'v':
            if (!cli_parse_ul(&version, optarg, 0, UINT32_MAX))
                return cli_usage(usage, "--version needs a whole number, not '%s'", optarg);
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc - 1)
        return cli_usage(usage, "append needs exactly one TAG");
    if (!rs_tag_valid(argv[optind]))
        return cli_usage(usage, "tag '%s' is not valid: 1-64 characters of [a-z0-9._-]",
                         argv[optind]);
    if (cli_read_all(&buf, &len, stdin) != 0) {
        fprintf(stderr, "recsync: append: cannot read stdin\n");
        return EXIT_FAIL;
    }
    if (cli_open(&store, c) != 0) {
        free(buf);
        return EXIT_FAIL;
    }
    if (lines) {
        rc = append_lines(store, argv[optind], (uint32_t)version, buf, len);
    } else if ((err = rs_append(&rec, store, argv[optind], (uint32_t)version, buf, len)) < 0) {
        rc = cli_fail("append", err);
    } else {
        print_id(&rec);
    }
    free(buf);
    rs_store_free(store);
    return rc;
}

typedef struct log_state {
    bool json;
} log_state;

static int print_record(const rs_record *rec, void *payload)
{
    log_state *ls = payload;
    char id[RS_UUID_STRLEN + 1], host[RS_UUID_STRLEN + 1], hlc[RS_HLC_STRLEN + 1];
    size_t size = rs_record_payload_size(rec);
    rs_uuid_format(id, &rec->id);
    rs_uuid_format(host, &rec->host);
    rs_hlc_format(hlc, rec->hlc);
    if (ls->json)
        printf("{\"id\": \"%s\", \"host\": \"%s\", \"tag\": \"%s\", \"idx\": %llu, \"hlc\": "
               "\"%s\", \"version\": %u, \"size\": %zu}\n",
               id, host, rec->tag, (unsigned long long)rec->idx, hlc, rec->version, size);
    else
        printf("%s %s %s %llu %s %zu\n", id, host, rec->tag, (unsigned long long)rec->idx, hlc,
               size);
    return 0;
}

int cmd_log(cli *c, int argc, char **argv)
{
    static const char usage[] = "usage: recsync [--dir DIR] log [--tag T] [--json]\n"
                                "Prints records' metadata, one per line: id host tag idx hlc size\n"
                                "(size is the payload's length in bytes).\n";
    static const struct option opts[] = {{"tag", required_argument, NULL, 't'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    rs_store *store = NULL;
    log_state ls = {false};
    const char *tag = NULL;
    int opt, err, rc = EXIT_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 't':
            tag = optarg;
            break;
        case 'j':
            ls.json = true;
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "log takes no arguments besides its options");
    if (tag && !rs_tag_valid(tag))
        return cli_usage(usage, "tag '%s' is not valid", tag);
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_store_foreach(store, tag, print_record, &ls)) < 0)
        rc = cli_fail("log", err);
    rs_store_free(store);
    return rc;
}

int cmd_cat(cli *c, int argc, char **argv)
{
    static const char usage[] = "usage: recsync [--dir DIR] cat ID\n"
                                "Prints a record's decrypted payload.\n";
    rs_store *store = NULL;
    rs_record *rec = NULL;
    rs_uuid id;
    uint8_t *plain = NULL;
    size_t len = 0;
    int err, rc = EXIT_OK;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 2)
        return cli_usage(usage, "cat needs exactly one record ID");
    if (rs_uuid_parse(&id, argv[1]) < 0)
        return cli_usage(usage, "%s", rs_error_last());
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if ((err = rs_store_get(&rec, store, &id)) < 0 ||
        (err = rs_record_open(&plain, &len, store, rec)) < 0)
        rc = cli_fail("cat", err);
    else if (fwrite(plain, 1, len, stdout) != len)
        rc = EXIT_FAIL;
    rs_free(plain);
    rs_record_free(rec);
    rs_store_free(store);
    return rc;
}

static void print_problem(int code, const char *message, void *payload)
{
    (void)code;
    (void)payload;
    fprintf(stderr, "recsync: verify: %s\n", message);
}

int cmd_verify(cli *c, int argc, char **argv)
{
    static const char usage[] = "usage: recsync [--dir DIR] verify\n"
                                "Opens every record and checks every shard is contiguous.\n";
    rs_store *store = NULL;
    rs_verify_report report;
    int err, rc = EXIT_OK;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc != 1)
        return cli_usage(usage, "verify takes no arguments");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    err = rs_store_verify(&report, store, print_problem, NULL);
    if (err < 0) {
        fprintf(stderr, "recsync: verify: %llu problems in %llu records of %llu shards\n",
                (unsigned long long)report.problems, (unsigned long long)report.records,
                (unsigned long long)report.shards);
        rc = EXIT_FAIL;
    } else {
        printf("ok: %llu records in %llu shards open and are contiguous\n",
               (unsigned long long)report.records, (unsigned long long)report.shards);
    }
    rs_store_free(store);
    return rc;
}

int cmd_rebuild(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] rebuild [TAG]\n"
        "Rebuilds the materialized state of TAG (default: kv and history) from its records,\n"
        "applying records that an older build kept but could not apply.\n";
    rs_store *store = NULL;
    int err, rc = EXIT_OK;

    if (cli_help(usage, argc, argv))
        return EXIT_OK;
    if (argc > 2)
        return cli_usage(usage, "rebuild takes at most one TAG");
    if (cli_open(&store, c) != 0)
        return EXIT_FAIL;
    if (argc == 2) {
        if ((err = rs_store_rebuild(store, argv[1])) < 0)
            rc = cli_fail("rebuild", err);
    } else {
        const char *tags[] = {RS_KV_TAG, RS_HISTORY_TAG};
        for (size_t i = 0; i < 2 && rc == EXIT_OK; i++)
            if ((err = rs_store_rebuild(store, tags[i])) < 0 && err != RS_ENOTFOUND)
                rc = cli_fail("rebuild", err);
    }
    rs_store_free(store);
    return rc;
}
