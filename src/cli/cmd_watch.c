/*
 * recsync watch: live sync until SIGINT or SIGTERM.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int stop_pipe[2] = {-1, -1};

/* Async-signal-safe: wakes rs_watch through its stop descriptor. */
static void on_stop_signal(int sig)
{
    int saved = errno;
    char c = (char)sig;
    if (write(stop_pipe[1], &c, 1) < 0) {
        /* The pipe is full: a wake-up is already pending. */
    }
    errno = saved;
}

typedef struct printer {
    bool json;
} printer;

/*
 * Prints each applied batch on stdout (one JSON object a line with
 * --json) and the stream's state changes on stderr; flushes every line
 * so a reader sees it at once.
 */
static void on_batch(const rs_watch_batch *b, void *payload)
{
    printer *p = payload;
    char host[RS_UUID_STRLEN + 1];

    switch (b->kind) {
    case RS_WATCH_DOWNLOADED:
    case RS_WATCH_UPLOADED: {
        const char *what = b->kind == RS_WATCH_DOWNLOADED ? "downloaded" : "uploaded";
        rs_uuid_format(host, &b->host);
        if (p->json) {
            printf("{\"host\":\"%s\",\"tag\":", host);
            cli_json_string(stdout, b->tag);
            printf(",\"start\":%llu,\"end\":%llu,\"seq\":%llu,\"%s\":%llu}\n",
                   (unsigned long long)b->start, (unsigned long long)b->end,
                   (unsigned long long)b->seq, what, (unsigned long long)b->count);
        } else {
            printf("%s %llu record%s of %s/%s [%llu, %llu) seq %llu\n", what,
                   (unsigned long long)b->count, b->count == 1 ? "" : "s", host, b->tag,
                   (unsigned long long)b->start, (unsigned long long)b->end,
                   (unsigned long long)b->seq);
        }
        fflush(stdout);
        break;
    }
    case RS_WATCH_CONNECTED:
        fprintf(stderr, "recsync: watching, after seq %llu\n", (unsigned long long)b->seq);
        break;
    case RS_WATCH_RESYNCED:
        fprintf(stderr, "recsync: synced %llu records; resuming after seq %llu\n",
                (unsigned long long)b->count, (unsigned long long)b->seq);
        break;
    case RS_WATCH_DISCONNECTED:
        fprintf(stderr, "recsync: %s; retrying in %ld ms\n", b->error ? b->error : "disconnected",
                b->retry_ms);
        break;
    }
}

int cmd_watch(cli *c, int argc, char **argv)
{
    static const char usage[] =
        "usage: recsync [--dir DIR] watch [--json]\n"
        "Syncs, then follows the server's event stream: pulls the other devices'\n"
        "records as they are stored and pushes this device's as they are written\n"
        "(by any process), reconnecting as needed, until SIGINT or SIGTERM.\n"
        "Prints one line per applied batch; --json prints each as an object\n"
        "{\"host\",\"tag\",\"start\",\"end\",\"seq\",\"downloaded\"|\"uploaded\"}.\n";
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    rs_watch_opts wopts;
    rs_store *store = NULL;
    printer p = {false};
    struct sigaction sa;
    int opt, err, rc = EXIT_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            p.json = true;
            break;
        default:
            return cli_other_option(opt, usage, "bad option");
        }
    }
    if (optind != argc)
        return cli_usage(usage, "watch takes no arguments besides its options");
    if (pipe(stop_pipe) != 0) {
        fprintf(stderr, "recsync: watch: cannot make a pipe: %s\n", strerror(errno));
        return EXIT_FAIL;
    }
    fcntl(stop_pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(stop_pipe[1], F_SETFD, FD_CLOEXEC);
    fcntl(stop_pipe[1], F_SETFL, O_NONBLOCK);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cli_open(&store, c) != 0) {
        rc = EXIT_FAIL;
        goto done;
    }
    memset(&wopts, 0, sizeof(wopts));
    wopts.stop_fd = stop_pipe[0];
    wopts.on_batch = on_batch;
    wopts.payload = &p;
    if ((err = rs_watch(store, &wopts)) < 0)
        rc = cli_fail("watch", err);
done:
    rs_store_free(store);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    return rc;
}
