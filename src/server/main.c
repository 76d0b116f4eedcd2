/*
 * recsyncd: the recsync server. Parses options, opens the backend, binds
 * the listening socket itself (so port 0 can be reported), runs
 * libmicrohttpd's thread pool, and shuts down cleanly on SIGTERM/SIGINT.
 */
#include "server.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

rs_server rs_srv;

static const char usage_text[] =
    "usage: recsyncd --db PATH|postgres://... [--listen HOST:PORT] [options]\n"
    "\n"
    "  --db PATH                 SQLite database file (created if missing), or a\n"
    "                            postgres:// URL when built with PostgreSQL\n"
    "  --listen HOST:PORT        address to serve (default 127.0.0.1:8686; port 0 picks one)\n"
    "  --threads N               HTTP worker threads (default: 2 per CPU, at least 4)\n"
    "  --heartbeat-ms MS         event stream heartbeat interval (default 15000)\n"
    "  --event-retention SPEC    events kept per user: a count (100000), an age\n"
    "                            (3600s, 90m, 24h, 7d), both (100000,7d), or 'forever'\n"
    "                            (default 7d)\n"
    "  --retention-interval-ms MS  how often retention runs (default 60000)\n"
    "  --prune-interval-ms MS    how often records below the prune floors and old\n"
    "                            snapshots are deleted (default 60000; 0: never)\n"
    "  --device-expiry SPEC      a device silent this long (90d, 12h, 30m, 2s) no\n"
    "                            longer holds the prune floor; 'never' (default 90d)\n"
    "  --snapshots-kept N        newest complete snapshots kept per user and tag\n"
    "                            (default 2, at least 1)\n"
    "  --page-default N          records per page when no limit is given (default 1000)\n"
    "  --page-max N              most records per page (default 10000)\n"
    "  --page-bytes BYTES        most encoded bytes per page (default 8388608)\n"
    "  --body-max BYTES          largest request body (default 33554432)\n"
    "  --max-payload BYTES       largest record payload (default 1048576)\n"
    "  --login-delay-ms MS       base delay after repeated failed logins (default 500)\n"
    "  --registration MODE       open (default), closed (403), or invite (an invite code\n"
    "                            from --make-invite is needed)\n"
    "  --register-rate N/PERIOD  registrations per client address: N at once, N more per\n"
    "                            PERIOD (s, m, h, d; e.g. 20/h, the default) or 'off'\n"
    "  --make-invite[=NAME]      store an invite (for NAME only, any case, or any name),\n"
    "                            print its code on stdout and exit\n"
    "  --quota-bytes BYTES       envelope bytes each user may store (default 0: no quota)\n"
    "  --real-ip-header NAME     behind a reverse proxy on loopback: count logins and\n"
    "                            registrations by the address in this header (X-Real-IP)\n"
    "  --token-cache-ms MS       how long an authenticated token is kept in memory\n"
    "                            (default 2000; 0: look every token up in the database)\n"
    "  --timeout-s S             idle connection timeout (default 60)\n"
    "  --request-deadline-s S    a request (headers and body) must arrive whole within S\n"
    "                            seconds of its start, however slowly bytes trickle; an\n"
    "                            announced upload gets 1 s more per 64 KiB (default 30;\n"
    "                            0: no deadline). Event streams are not bound by it\n"
    "  --max-conns-per-ip N      connections one client address may hold open, event\n"
    "                            streams aside (default 64; 0: no bound)\n"
    "  --max-streams-per-ip N    event streams one client address may hold open\n"
    "                            (default 1024; 0: no bound)\n"
    "  --max-connections N       connections open at once, event streams included\n"
    "                            (default: the open-file limit less what the server\n"
    "                            keeps for itself; never more than that)\n"
    "  --body-budget BYTES       request body bytes held at once over all connections;\n"
    "                            past it, 503 with Retry-After (default 268435456)\n"
    "  --sync-full               SQLite synchronous=FULL (durable across power loss)\n"
    "  --argon2-fast             cheapest argon2id parameters: FOR TESTS ONLY\n"
    "  --test-hooks              honour test-only request headers: FOR TESTS ONLY\n"
    "  --help, --version\n";

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "recsyncd: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", usage_text);
    exit(2);
}

static uint64_t parse_num(const char *opt, const char *text, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max)
        die_usage("%s: '%s' is not a number from %llu to %llu", opt, text, (unsigned long long)min,
                  (unsigned long long)max);
    return v;
}

/* "100000", "7d", "100000,24h", "forever" into a retention policy. */
static void parse_retention(rs_retention *out, const char *spec)
{
    char buf[128];
    memset(out, 0, sizeof(*out));
    if (strcmp(spec, "forever") == 0 || strcmp(spec, "0") == 0)
        return;
    snprintf(buf, sizeof(buf), "%s", spec);
    for (char *save = NULL, *part = strtok_r(buf, ",", &save); part;
         part = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(part, &end, 10);
        if (errno || end == part || part[0] == '-' || v == 0)
            die_usage("--event-retention: '%s' is not a count or an age", part);
        uint64_t mult = 0;
        if (*end == '\0')
            mult = 0;
        else if (strcmp(end, "s") == 0)
            mult = 1;
        else if (strcmp(end, "m") == 0)
            mult = 60;
        else if (strcmp(end, "h") == 0)
            mult = 3600;
        else if (strcmp(end, "d") == 0)
            mult = 86400;
        else
            die_usage("--event-retention: '%s' has an unknown unit (s, m, h, d)", part);
        if (mult == 0)
            out->keep_events = v;
        else
            out->keep_seconds = v * mult;
    }
}

/* Binds and listens on "HOST:PORT" ("[::1]:PORT" for IPv6); the port bound in *port. */
static int bind_listen(int *out_fd, unsigned *port, const char *listen_on)
{
    char host[256];
    const char *colon = strrchr(listen_on, ':');
    if (colon == NULL || colon == listen_on || colon[1] == '\0')
        die_usage("--listen: '%s' is not HOST:PORT", listen_on);
    size_t hl = (size_t)(colon - listen_on);
    if (hl >= sizeof(host))
        die_usage("--listen: host too long");
    memcpy(host, listen_on, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    parse_num("--listen port", colon + 1, 0, 65535);

    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0)
        return rs__error(RS_EINVAL, "--listen %s: %s", listen_on, gai_strerror(rc));
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return rs__error(RS_EIO, "cannot listen on %s: %s", listen_on, strerror(err));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                     : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *out_fd = fd;
    return 0;
}

/* libmicrohttpd's messages, one whole line each, under the log's rate limit. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    rs_vlog("http: ", fmt, ap);
}

/* Fills `cfg` from the command line; usage errors exit 2 before anything is opened. */
static void parse_args(rs_config *cfg, int argc, char **argv)
{
    enum {
        OPT_DB = 256,
        OPT_LISTEN,
        OPT_THREADS,
        OPT_HEARTBEAT,
        OPT_RETENTION,
        OPT_RETENTION_INTERVAL,
        OPT_PRUNE_INTERVAL,
        OPT_DEVICE_EXPIRY,
        OPT_SNAPSHOTS_KEPT,
        OPT_PAGE_DEFAULT,
        OPT_PAGE_MAX,
        OPT_PAGE_BYTES,
        OPT_BODY_MAX,
        OPT_MAX_PAYLOAD,
        OPT_LOGIN_DELAY,
        OPT_TOKEN_CACHE,
        OPT_TIMEOUT,
        OPT_REQUEST_DEADLINE,
        OPT_MAX_CONNS_PER_IP,
        OPT_MAX_STREAMS_PER_IP,
        OPT_MAX_CONNECTIONS,
        OPT_BODY_BUDGET,
        OPT_SYNC_FULL,
        OPT_ARGON2_FAST,
        OPT_TEST_HOOKS,
        OPT_REGISTRATION,
        OPT_REGISTER_RATE,
        OPT_MAKE_INVITE,
        OPT_QUOTA_BYTES,
        OPT_REAL_IP_HEADER,
        OPT_HELP,
        OPT_VERSION
    };
    static const struct option opts[] = {
        {"db", required_argument, NULL, OPT_DB},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT},
        {"event-retention", required_argument, NULL, OPT_RETENTION},
        {"retention-interval-ms", required_argument, NULL, OPT_RETENTION_INTERVAL},
        {"prune-interval-ms", required_argument, NULL, OPT_PRUNE_INTERVAL},
        {"device-expiry", required_argument, NULL, OPT_DEVICE_EXPIRY},
        {"snapshots-kept", required_argument, NULL, OPT_SNAPSHOTS_KEPT},
        {"page-default", required_argument, NULL, OPT_PAGE_DEFAULT},
        {"page-max", required_argument, NULL, OPT_PAGE_MAX},
        {"page-bytes", required_argument, NULL, OPT_PAGE_BYTES},
        {"body-max", required_argument, NULL, OPT_BODY_MAX},
        {"max-payload", required_argument, NULL, OPT_MAX_PAYLOAD},
        {"login-delay-ms", required_argument, NULL, OPT_LOGIN_DELAY},
        {"token-cache-ms", required_argument, NULL, OPT_TOKEN_CACHE},
        {"timeout-s", required_argument, NULL, OPT_TIMEOUT},
        {"request-deadline-s", required_argument, NULL, OPT_REQUEST_DEADLINE},
        {"max-conns-per-ip", required_argument, NULL, OPT_MAX_CONNS_PER_IP},
        {"max-streams-per-ip", required_argument, NULL, OPT_MAX_STREAMS_PER_IP},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
        {"body-budget", required_argument, NULL, OPT_BODY_BUDGET},
        {"sync-full", no_argument, NULL, OPT_SYNC_FULL},
        {"argon2-fast", no_argument, NULL, OPT_ARGON2_FAST},
        {"test-hooks", no_argument, NULL, OPT_TEST_HOOKS},
        {"registration", required_argument, NULL, OPT_REGISTRATION},
        {"register-rate", required_argument, NULL, OPT_REGISTER_RATE},
        {"make-invite", optional_argument, NULL, OPT_MAKE_INVITE},
        {"quota-bytes", required_argument, NULL, OPT_QUOTA_BYTES},
        {"real-ip-header", required_argument, NULL, OPT_REAL_IP_HEADER},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->listen = "127.0.0.1:8686";
    cfg->threads = cpus > 2 ? (unsigned)(2 * cpus) : 4;
    cfg->heartbeat_ms = 15000;
    parse_retention(&cfg->retention, "7d");
    cfg->retention_interval_ms = 60000;
    cfg->prune_interval_ms = 60000;
    cfg->prune.device_expiry_ms = 90ull * 86400000ull;
    cfg->prune.snapshots_kept = 2;
    cfg->page_default = 1000;
    cfg->page_max = 10000;
    cfg->page_bytes = 8u << 20;
    cfg->body_max = 32u << 20;
    cfg->max_payload = RS_DEFAULT_MAX_PAYLOAD;
    cfg->login_delay_ms = 500;
    cfg->token_cache_ms = 2000;
    cfg->connection_timeout_s = 60;
    cfg->request_deadline_s = 30;
    cfg->max_conns_per_ip = 64;
    cfg->max_streams_per_ip = 1024;
    cfg->body_budget = 256u << 20;
    rs_auth_parse_register_rate(cfg, "20/h");

    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_DB:
            cfg->db = optarg;
            break;
        case OPT_LISTEN:
            cfg->listen = optarg;
            break;
        case OPT_THREADS:
            cfg->threads = (unsigned)parse_num("--threads", optarg, 1, 256);
            break;
        case OPT_HEARTBEAT:
            cfg->heartbeat_ms = (unsigned)parse_num("--heartbeat-ms", optarg, 10, 3600000);
            break;
        case OPT_RETENTION:
            parse_retention(&cfg->retention, optarg);
            break;
        case OPT_RETENTION_INTERVAL:
            cfg->retention_interval_ms =
                (unsigned)parse_num("--retention-interval-ms", optarg, 10, 86400000);
            break;
        case OPT_PRUNE_INTERVAL:
            cfg->prune_interval_ms =
                (unsigned)parse_num("--prune-interval-ms", optarg, 0, 86400000);
            break;
        case OPT_DEVICE_EXPIRY:
            if (rs_prune_parse_expiry(&cfg->prune.device_expiry_ms, optarg) < 0)
                die_usage("--device-expiry: '%s' is not an age (90d, 12h, 30m, 2s) or 'never'",
                          optarg);
            break;
        case OPT_SNAPSHOTS_KEPT:
            cfg->prune.snapshots_kept = parse_num("--snapshots-kept", optarg, 1, 1000);
            break;
        case OPT_PAGE_DEFAULT:
            cfg->page_default = parse_num("--page-default", optarg, 1, 1000000);
            break;
        case OPT_PAGE_MAX:
            cfg->page_max = parse_num("--page-max", optarg, 1, 1000000);
            break;
        case OPT_PAGE_BYTES:
            cfg->page_bytes = parse_num("--page-bytes", optarg, 1024, 1u << 30);
            break;
        case OPT_BODY_MAX:
            cfg->body_max = parse_num("--body-max", optarg, 1024, 1u << 30);
            break;
        case OPT_MAX_PAYLOAD:
            cfg->max_payload = parse_num("--max-payload", optarg, 1, 256u << 20);
            break;
        case OPT_LOGIN_DELAY:
            cfg->login_delay_ms = (unsigned)parse_num("--login-delay-ms", optarg, 1, 60000);
            break;
        case OPT_TOKEN_CACHE:
            cfg->token_cache_ms = (unsigned)parse_num("--token-cache-ms", optarg, 0, 3600000);
            break;
        case OPT_TIMEOUT:
            cfg->connection_timeout_s = (unsigned)parse_num("--timeout-s", optarg, 1, 86400);
            break;
        case OPT_REQUEST_DEADLINE:
            cfg->request_deadline_s = (unsigned)parse_num("--request-deadline-s", optarg, 0, 86400);
            break;
        case OPT_MAX_CONNS_PER_IP:
            cfg->max_conns_per_ip = (unsigned)parse_num("--max-conns-per-ip", optarg, 0, 1000000);
            break;
        case OPT_MAX_STREAMS_PER_IP:
            cfg->max_streams_per_ip =
                (unsigned)parse_num("--max-streams-per-ip", optarg, 0, 1000000);
            break;
        case OPT_MAX_CONNECTIONS:
            cfg->max_connections = (unsigned)parse_num("--max-connections", optarg, 1, 10000000);
            break;
        case OPT_BODY_BUDGET:
            cfg->body_budget = parse_num("--body-budget", optarg, 1024, (uint64_t)1 << 40);
            break;
        case OPT_SYNC_FULL:
            cfg->sync_full = true;
            break;
        case OPT_ARGON2_FAST:
            cfg->argon2_fast = true;
            break;
        case OPT_TEST_HOOKS:
            cfg->test_hooks = true;
            break;
        case OPT_REGISTRATION:
            if (strcmp(optarg, "open") == 0)
                cfg->registration = RS_REGISTRATION_OPEN;
            else if (strcmp(optarg, "closed") == 0)
                cfg->registration = RS_REGISTRATION_CLOSED;
            else if (strcmp(optarg, "invite") == 0)
                cfg->registration = RS_REGISTRATION_INVITE;
            else
                die_usage("--registration: '%s' is not open, closed or invite", optarg);
            break;
        case OPT_REGISTER_RATE:
            if (rs_auth_parse_register_rate(cfg, optarg) < 0)
                die_usage("--register-rate: %s", rs_error_last());
            break;
        case OPT_MAKE_INVITE:
            cfg->make_invite = optarg ? optarg : "";
            break;
        case OPT_QUOTA_BYTES:
            cfg->quota_bytes = parse_num("--quota-bytes", optarg, 0, (uint64_t)INT64_MAX);
            break;
        case OPT_REAL_IP_HEADER:
            cfg->real_ip_header = optarg;
            break;
        case OPT_HELP:
            fputs(usage_text, stdout);
            exit(0);
        case OPT_VERSION:
            printf("recsyncd %s\n", RS_VERSION);
            exit(0);
        default:
            die_usage("unknown option");
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (cfg->db == NULL)
        die_usage("--db is required");
    const char *colon = strrchr(cfg->listen, ':');
    if (colon == NULL || colon == cfg->listen || colon[1] == '\0')
        die_usage("--listen: '%s' is not HOST:PORT", cfg->listen);
    parse_num("--listen port", colon + 1, 0, 65535);
    if (cfg->page_default > cfg->page_max)
        cfg->page_default = cfg->page_max;
    if (cfg->body_budget <= cfg->body_max)
        die_usage("--body-budget (%zu) must be larger than --body-max (%zu)", cfg->body_budget,
                  cfg->body_max);
    /* A stream must be able to fill its socket between heartbeats without timing out. */
    if (cfg->connection_timeout_s * 1000u < 3u * cfg->heartbeat_ms)
        cfg->connection_timeout_s = (3u * cfg->heartbeat_ms + 999u) / 1000u;
}

/*
 * How many connections MHD may hold: every one is a file descriptor, so
 * what RLIMIT_NOFILE (raised to its hard limit) leaves after the server's
 * own: the listen socket, one epoll descriptor and pipe per worker thread,
 * the database's connections (PostgreSQL) or files (SQLite and its WAL),
 * the log, and room for the prune and retention threads. An asked-for
 * --max-connections above that is lowered, with a line saying so: past
 * the limit accept() fails with EMFILE and MHD spins on the listen socket.
 */
static unsigned connection_limit(const rs_config *cfg)
{
    struct rlimit rl;
    uint64_t reserve = 64 + 4ull * cfg->threads + (cfg->threads + 8), room = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        room = rl.rlim_cur > reserve + 16 ? rl.rlim_cur - reserve : 16;
    else
        room = 1000000;
    if (room > 1000000)
        room = 1000000;
    if (cfg->max_connections == 0)
        return (unsigned)room;
    if (cfg->max_connections > room) {
        fprintf(stderr,
                "recsyncd: --max-connections %u is more than the open-file limit (%llu) allows: "
                "using %llu (raise it with ulimit -n or systemd's LimitNOFILE)\n",
                cfg->max_connections, (unsigned long long)rl.rlim_cur, (unsigned long long)room);
        return (unsigned)room;
    }
    return cfg->max_connections;
}

/*
 * Start-up order: options, backend, auth, listening socket, the connection
 * watchdog, event threads, HTTP daemon, then the port line. Shut-down on SIGTERM/SIGINT: stop
 * accepting, end streams (MHD must not stop with suspended connections),
 * stop the daemon (requests in flight finish), join threads, close the
 * backend.
 */
int main(int argc, char **argv)
{
    rs_config *cfg = &rs_srv.cfg;
    int fd = -1, code = 1;
    unsigned port = 0;
    sigset_t sigs;

    parse_args(cfg, argc, argv);
    /*
     * Request bodies and their decoded records are megabytes each; served
     * from mmap they are faulted in afresh on every upload. Keep them in the
     * heap, and keep freed memory for the next request; the connection
     * watchdog (http.c) hands it back with malloc_trim after a burst.
     */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
    /* Every open event stream is a socket: allow as many as the hard limit does. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rs_srv.max_connections = connection_limit(cfg);
    if (sodium_init() < 0) {
        fprintf(stderr, "recsyncd: libsodium failed to initialize\n");
        return 1;
    }
    /* Every thread started from here on inherits the blocked signals; main waits for them. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    rs_backend_opts bopts = {.sync_full = cfg->sync_full,
                             .notify = rs_events_notify,
                             .max_connections = (int)cfg->threads + 8};
    if (rs_backend_open(&rs_srv.backend, cfg->db, &bopts) < 0) {
        fprintf(stderr, "recsyncd: %s\n", rs_error_last());
        return 1;
    }
    if (cfg->make_invite) {
        code = rs_auth_make_invite(cfg->make_invite) < 0 ? 1 : 0;
        if (code)
            fprintf(stderr, "recsyncd: %s\n", rs_error_last());
        rs_srv.backend->ops->close(rs_srv.backend);
        return code;
    }
    if (rs_auth_init() < 0 || bind_listen(&fd, &port, cfg->listen) < 0 || rs_http_start() < 0 ||
        rs_events_start() < 0 || rs_prune_start() < 0) {
        fprintf(stderr, "recsyncd: %s\n", rs_error_last());
        goto done;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    rs_srv.daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, rs_http_handle, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_THREAD_POOL_SIZE, cfg->threads,
        MHD_OPTION_CONNECTION_TIMEOUT, cfg->connection_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        rs_srv.max_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32u * 1024u),
        MHD_OPTION_NOTIFY_COMPLETED, rs_http_completed, NULL, MHD_OPTION_NOTIFY_CONNECTION,
        rs_http_notify, NULL, MHD_OPTION_END);
    if (rs_srv.daemon == NULL) {
        fprintf(stderr, "recsyncd: cannot start the HTTP server on %s\n", cfg->listen);
        rs_events_stop();
        rs_events_join();
        rs_prune_stop();
        goto done;
    }
    printf("recsyncd listening on %s%.*s:%u\n", "", (int)(strrchr(cfg->listen, ':') - cfg->listen),
           cfg->listen, port);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "recsyncd: signal %d: shutting down\n", sig);
    /*
     * No MHD_quiesce_daemon first: on an epoll daemon with a thread pool it
     * races a worker's own removal of the listen socket from its epoll set,
     * and libmicrohttpd 0.9.75 aborts on the loser ("Failed to remove listen
     * FD from epoll set"; seen once in CI). rs_events_stop bars new event
     * streams from suspending and resumes the open ones, which is all
     * MHD_stop_daemon needs; it closes the listen socket itself.
     */
    rs_events_stop();
    MHD_stop_daemon(rs_srv.daemon);
    fd = -1;
    rs_events_join();
    rs_prune_stop();
    code = 0;
done:
    rs_http_stop();
    if (fd >= 0)
        close(fd);
    rs_auth_shutdown();
    rs_srv.backend->ops->close(rs_srv.backend);
    return code;
}
