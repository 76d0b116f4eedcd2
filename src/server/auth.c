/*
 * Accounts and devices: argon2id password hashes, device tokens, and the
 * brake on password guessing.
 *
 * A token is 96 hex digits: a 16-byte public id (the lookup key) followed by
 * a 32-byte random secret. The server stores the id and a BLAKE2b hash of
 * the secret, never the secret, and compares hashes in constant time. (A
 * 256-bit random secret needs no slow hash; passwords get argon2id.)
 *
 * The brake on guessing cannot be turned against an account's owner: there
 * is no global lock on an account. Failed logins are counted per (client
 * address, user name), per client address, and per user name; past a few
 * free failures each further attempt must wait base * 2^(failures - free),
 * capped, or gets 429 with Retry-After, checked before any argon2 work. The
 * (address, name) and address counters refuse only the address that has
 * been failing; the user's own counter (guessing from many addresses) is
 * applied only to an address that has itself failed for that user. So a
 * correct password from an address that has not been failing is never
 * refused, and a login that carries a valid token of the same user (a
 * device of the account) is never refused at all. A success clears the
 * (address, name) and user counters; an address's counter only fades
 * (forgotten after 15 minutes), so succeeding on an account of one's own
 * does not buy more guesses elsewhere. IPv6 clients are counted by /64.
 *
 * Registrations take a token from their address's bucket (--register-rate)
 * before argon2 runs. argon2id computations run at most one per core at
 * once; a request that finds every slot taken gets 503 with Retry-After
 * rather than holding an HTTP thread in a queue.
 *
 * Tables are fixed-size (an attacker cannot grow them) and entries are
 * keyed by a keyed hash of the name or address.
 */
#include "server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <time.h>

#define THROTTLE_SLOTS 4096
#define THROTTLE_PROBE 8
#define PAIR_FREE_FAILURES 3  /* per (address, user name) */
#define USER_FREE_FAILURES 3  /* per user name, from addresses failing for it */
#define ADDR_FREE_FAILURES 10 /* per address, over every name */
#define THROTTLE_CAP_MS 30000u
#define THROTTLE_FORGET_MS (15u * 60u * 1000u)
#define HASHING_BUSY_RETRY_S 1
#define ADDR_KEY_MAX 17 /* an address's counting key: family + IPv4, or + an IPv6 /64 */

typedef struct throttle_entry {
    uint64_t key; /* 0: free */
    uint32_t failures;
    uint64_t last_ms;
} throttle_entry;

typedef struct throttle_table {
    throttle_entry slots[THROTTLE_SLOTS];
} throttle_table;

/* A registration bucket: `tokens` in thousandths, refilled as time passes. */
typedef struct bucket_entry {
    uint64_t key; /* 0: free */
    uint64_t tokens_milli;
    uint64_t last_ms;
} bucket_entry;

static struct {
    pthread_mutex_t lock;
    throttle_table pairs;
    throttle_table users;
    throttle_table addrs;
    bucket_entry buckets[THROTTLE_SLOTS];
    uint8_t hash_key[crypto_shorthash_KEYBYTES];
    char dummy_hash[crypto_pwhash_STRBYTES];
    unsigned long long opslimit;
    size_t memlimit;
    atomic_int hashing;
    int hashing_slots; /* argon2id runs at once: one per core, each takes its memory limit */
} auth = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

/*
 * Tokens that authenticated recently, so a request does not go to the
 * database to authenticate (on PostgreSQL that is a round trip per request,
 * half of an index read). Direct-mapped by the token id, which is random;
 * only tokens that passed the hash check are kept, and each hit compares the
 * presented secret's hash again, in constant time. An entry lives
 * cfg.token_cache_ms; a new login, a logout or a retirement of a device
 * (and a deleted user) drops its entries at once in this process. Another
 * recsyncd process on the same database keeps accepting the replaced or
 * revoked token until its entry expires (docs/deploy.md); its open event
 * streams ask again at each heartbeat (rs_auth_recheck).
 */
#define TOKEN_CACHE_SLOTS 4096 /* a power of two */

typedef struct token_slot {
    uint8_t id[RS_TOKEN_ID_BYTES];
    rs_device dev;
    uint64_t expires_ms; /* 0: empty */
} token_slot;

static struct {
    pthread_mutex_t lock;
    token_slot *slots;
    uint64_t epoch; /* bumped by every forget: a lookup begun before one is not cached */
} tokens = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Cache times follow the monotonic clock: a wall clock stepped back must not extend them. */
static uint64_t cache_now_ms(void)
{
    return rs_monotonic_ns() / 1000000u;
}

static uint64_t token_cache_epoch(void)
{
    pthread_mutex_lock(&tokens.lock);
    uint64_t e = tokens.epoch;
    pthread_mutex_unlock(&tokens.lock);
    return e;
}

static token_slot *token_slot_for(const uint8_t *id)
{
    uint32_t h;
    memcpy(&h, id, sizeof(h));
    return &tokens.slots[h & (TOKEN_CACHE_SLOTS - 1)];
}

static int token_cache_get(rs_device *out, const uint8_t *id)
{
    int hit = 0;
    if (tokens.slots == NULL)
        return 0;
    uint64_t now = cache_now_ms();
    pthread_mutex_lock(&tokens.lock);
    token_slot *s = token_slot_for(id);
    if (s->expires_ms > now && memcmp(s->id, id, RS_TOKEN_ID_BYTES) == 0) {
        *out = s->dev;
        hit = 1;
    }
    pthread_mutex_unlock(&tokens.lock);
    return hit;
}

/*
 * Caches what a lookup begun at `epoch` found, unless a login forgot
 * tokens since: the row read may be the token that login just replaced.
 */
static void token_cache_put(const uint8_t *id, const rs_device *dev, uint64_t epoch)
{
    if (tokens.slots == NULL)
        return;
    pthread_mutex_lock(&tokens.lock);
    if (tokens.epoch == epoch) {
        token_slot *s = token_slot_for(id);
        memcpy(s->id, id, RS_TOKEN_ID_BYTES);
        s->dev = *dev;
        s->expires_ms = cache_now_ms() + rs_srv.cfg.token_cache_ms;
    }
    pthread_mutex_unlock(&tokens.lock);
}

void rs_auth_forget_device(const rs_uuid *host)
{
    if (tokens.slots == NULL)
        return;
    pthread_mutex_lock(&tokens.lock);
    tokens.epoch++;
    for (size_t i = 0; i < TOKEN_CACHE_SLOTS; i++)
        if (tokens.slots[i].expires_ms && rs_uuid_cmp(&tokens.slots[i].dev.host, host) == 0) {
            sodium_memzero(&tokens.slots[i], sizeof(tokens.slots[i]));
        }
    pthread_mutex_unlock(&tokens.lock);
}

void rs_auth_forget_user(int64_t user)
{
    if (tokens.slots == NULL)
        return;
    pthread_mutex_lock(&tokens.lock);
    tokens.epoch++;
    for (size_t i = 0; i < TOKEN_CACHE_SLOTS; i++)
        if (tokens.slots[i].expires_ms && tokens.slots[i].dev.user == user)
            sodium_memzero(&tokens.slots[i], sizeof(tokens.slots[i]));
    pthread_mutex_unlock(&tokens.lock);
}

/*
 * Takes one of the argon2id slots, or fails at once with RS_EBUSY (503,
 * Retry-After) when all are taken: a flood must not park HTTP threads in
 * a queue behind the hashes (health checks and syncs need them).
 */
static int hashing_enter(unsigned *retry_after_s)
{
    int n = atomic_load(&auth.hashing);
    do {
        if (n >= auth.hashing_slots) {
            atomic_fetch_add(&rs_stats.hashing_busy, 1);
            if (retry_after_s)
                *retry_after_s = HASHING_BUSY_RETRY_S;
            return rs__error(RS_EBUSY,
                             "the server is busy checking other passwords (%d at once): retry in "
                             "%d s",
                             auth.hashing_slots, HASHING_BUSY_RETRY_S);
        }
    } while (!atomic_compare_exchange_weak(&auth.hashing, &n, n + 1));
    return 0;
}

static void hashing_leave(void)
{
    atomic_fetch_sub(&auth.hashing, 1);
}

/* Chooses argon2id limits, makes the throttle key and the unknown-user hash. */
int rs_auth_init(void)
{
    if (rs_srv.cfg.argon2_fast) {
        auth.opslimit = crypto_pwhash_OPSLIMIT_MIN;
        auth.memlimit = crypto_pwhash_MEMLIMIT_MIN;
    } else {
        auth.opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
        auth.memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    auth.hashing_slots = cpus > 1 ? (int)cpus : 1;
    crypto_shorthash_keygen(auth.hash_key);
    if (rs_srv.cfg.token_cache_ms > 0 &&
        (tokens.slots = rs__calloc(TOKEN_CACHE_SLOTS, sizeof(token_slot))) == NULL)
        return rs__error(RS_ENOMEM, "out of memory for the token cache");
    /* A hash to verify against for unknown users, so they cost the same time. */
    uint8_t pw[16];
    randombytes_buf(pw, sizeof(pw));
    if (crypto_pwhash_str(auth.dummy_hash, (const char *)pw, sizeof(pw), auth.opslimit,
                          auth.memlimit) != 0)
        return rs__error(RS_ENOMEM, "cannot compute a password hash (out of memory?)");
    return 0;
}

void rs_auth_shutdown(void)
{
    sodium_memzero(auth.hash_key, sizeof(auth.hash_key));
    if (tokens.slots) {
        sodium_memzero(tokens.slots, TOKEN_CACHE_SLOTS * sizeof(token_slot));
        rs_free(tokens.slots);
        tokens.slots = NULL;
    }
}

int rs_auth_hash_password(char *out, const char *password, unsigned *retry_after_s)
{
    int err = hashing_enter(retry_after_s);
    if (err < 0)
        return err;
    int rc = crypto_pwhash_str(out, password, strlen(password), auth.opslimit, auth.memlimit);
    hashing_leave();
    if (rc != 0)
        return rs__error(RS_ENOMEM, "cannot hash the password (out of memory)");
    return 0;
}

void rs_auth_new_token(char *text, rs_token *token)
{
    uint8_t secret[32];
    randombytes_buf(token->id, sizeof(token->id));
    randombytes_buf(secret, sizeof(secret));
    crypto_generichash(token->hash, sizeof(token->hash), secret, sizeof(secret), NULL, 0);
    rs__hex(text, token->id, sizeof(token->id));
    rs__hex(text + 2 * sizeof(token->id), secret, sizeof(secret));
    sodium_memzero(secret, sizeof(secret));
}

/* The refusal of a retired device's token, naming the device and when. */
static int retired_error(const rs_device *dev)
{
    char h[RS_UUID_STRLEN + 1], when[32] = "?";
    time_t t = (time_t)(dev->retired_ms / 1000);
    struct tm tm;
    rs_uuid_format(h, &dev->host);
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return rs__error(RS_ERETIRED,
                     "device %s of user %s was retired at %s (recsync devices retire): its token "
                     "no longer works",
                     h, dev->username, when);
}

/*
 * The device of token `id` whose secret hashes to `hash`, from the cache
 * or the database (then cached); the token id is copied into out. The same
 * RS_EAUTH "unknown token" for every failure; RS_ERETIRED for a retired
 * device's token.
 */
static int authenticate(rs_device *out, const uint8_t *id, const uint8_t *hash)
{
    if (token_cache_get(out, id)) {
        if (sodium_memcmp(hash, out->token_hash, RS_TOKEN_HASH_BYTES) != 0)
            return rs__error(RS_EAUTH, "unknown token");
    } else {
        uint64_t epoch = token_cache_epoch();
        int err = rs_srv.backend->ops->token_lookup(rs_srv.backend, out, id);
        if (err == RS_ENOTFOUND)
            return rs__error(RS_EAUTH, "unknown token");
        if (err < 0)
            return err;
        if (sodium_memcmp(hash, out->token_hash, RS_TOKEN_HASH_BYTES) != 0)
            return rs__error(RS_EAUTH, "unknown token");
        token_cache_put(id, out, epoch);
    }
    memcpy(out->token_id, id, RS_TOKEN_ID_BYTES);
    return out->retired_ms ? retired_error(out) : 0;
}

/*
 * Parses "Token <id hex><secret hex>", looks the id up and compares the
 * hash of the secret in constant time. Every failure is the same RS_EAUTH
 * "unknown token", so nothing tells a guesser which part was wrong.
 */
int rs_auth_device(rs_device *out, struct MHD_Connection *conn)
{
    const char *h =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    uint8_t id[RS_TOKEN_ID_BYTES], secret[32], hash[RS_TOKEN_HASH_BYTES];
    char idhex[2 * RS_TOKEN_ID_BYTES + 1];
    if (h == NULL)
        return rs__error(RS_EAUTH, "missing Authorization: Token header");
    if (strncmp(h, "Token ", 6) != 0)
        return rs__error(RS_EAUTH, "the Authorization header is not 'Token <token>'");
    const char *t = h + 6;
    while (*t == ' ')
        t++;
    if (strlen(t) != RS_TOKEN_TEXT_LEN)
        return rs__error(RS_EAUTH, "unknown token");
    memcpy(idhex, t, sizeof(idhex) - 1);
    idhex[sizeof(idhex) - 1] = '\0';
    if (rs__unhex(id, sizeof(id), idhex) < 0 ||
        rs__unhex(secret, sizeof(secret), t + 2 * RS_TOKEN_ID_BYTES) < 0)
        return rs__error(RS_EAUTH, "unknown token");
    crypto_generichash(hash, sizeof(hash), secret, sizeof(secret), NULL, 0);
    sodium_memzero(secret, sizeof(secret));
    return authenticate(out, id, hash);
}

int rs_auth_recheck(const rs_device *dev)
{
    rs_device again;
    return authenticate(&again, dev->token_id, dev->token_hash);
}

/* ---- throttling ---- */

static uint64_t throttle_key(const void *data, size_t len, char kind)
{
    uint8_t buf[256 + 1], out[crypto_shorthash_BYTES];
    uint64_t k;
    buf[0] = (uint8_t)kind;
    if (len > 256)
        len = 256;
    memcpy(buf + 1, data, len);
    crypto_shorthash(out, buf, len + 1, auth.hash_key);
    memcpy(&k, out, sizeof(k));
    return k ? k : 1;
}

/* The entry for `key`, or NULL; with `create`, a free, forgotten or oldest slot. */
static throttle_entry *throttle_find(throttle_table *t, uint64_t key, uint64_t now, int create)
{
    throttle_entry *victim = NULL;
    size_t base = (size_t)(key % THROTTLE_SLOTS);
    for (size_t i = 0; i < THROTTLE_PROBE; i++) {
        throttle_entry *e = &t->slots[(base + i) % THROTTLE_SLOTS];
        if (e->key == key) {
            if (now - e->last_ms > THROTTLE_FORGET_MS)
                e->failures = 0;
            return e;
        }
        if (victim == NULL || e->key == 0 || e->last_ms < victim->last_ms)
            victim = e;
    }
    if (!create)
        return NULL;
    victim->key = key;
    victim->failures = 0;
    victim->last_ms = now;
    return victim;
}

/* How long (ms) an entry with this many failures must wait after the last one. */
static uint64_t throttle_delay(uint32_t failures, uint32_t free_failures)
{
    if (failures < free_failures)
        return 0;
    uint32_t shift = failures - free_failures;
    uint64_t d = (uint64_t)rs_srv.cfg.login_delay_ms << (shift > 16 ? 16 : shift);
    return d > THROTTLE_CAP_MS ? THROTTLE_CAP_MS : d;
}

/* Failures counted for `key` (0 when none are remembered). Lock held. */
static uint32_t throttle_failures(throttle_table *t, uint64_t key, uint64_t now)
{
    throttle_entry *e = throttle_find(t, key, now, 0);
    return e ? e->failures : 0;
}

/* Milliseconds the holder of `key` must still wait (0: may try now). Lock held. */
static uint64_t throttle_wait(throttle_table *t, uint64_t key, uint32_t free_failures, uint64_t now)
{
    throttle_entry *e = throttle_find(t, key, now, 0);
    if (e == NULL)
        return 0;
    uint64_t until = e->last_ms + throttle_delay(e->failures, free_failures);
    return until > now ? until - now : 0;
}

static void throttle_fail(throttle_table *t, uint64_t key, uint64_t now)
{
    throttle_entry *e = throttle_find(t, key, now, 1);
    if (e->failures < UINT32_MAX)
        e->failures++;
    e->last_ms = now;
}

static void throttle_clear(throttle_table *t, uint64_t key, uint64_t now)
{
    throttle_entry *e = throttle_find(t, key, now, 0);
    if (e)
        memset(e, 0, sizeof(*e));
}

/* The counting key of an IPv4 or IPv6 address (see client_address); its length. */
static size_t address_key(uint8_t *key, int family, const void *addr)
{
    const uint8_t *a = addr;
    if (family == AF_INET6 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
        family = AF_INET;
        a += 12;
    }
    if (family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, a, 4);
        return 5;
    }
    key[0] = 6;
    memcpy(key + 1, a, 8);
    return 9;
}

/*
 * The address --real-ip-header names, when the connection comes from a
 * loopback address (the reverse proxy); X-Forwarded-For style lists give
 * their last entry (the one the proxy added). 0 when there is none to believe.
 */
static size_t forwarded_address(char *text, size_t size, uint8_t *key, struct MHD_Connection *conn,
                                const struct sockaddr *peer)
{
    const char *name = rs_srv.cfg.real_ip_header;
    uint8_t bin[16];
    char buf[INET6_ADDRSTRLEN + 1];
    if (name == NULL)
        return 0;
    if (!(peer->sa_family == AF_INET &&
          (ntohl(((const struct sockaddr_in *)(const void *)peer)->sin_addr.s_addr) >> 24) ==
              127) &&
        !(peer->sa_family == AF_INET6 &&
          IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr)))
        return 0;
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    if (v == NULL)
        return 0;
    const char *last = strrchr(v, ',');
    last = last ? last + 1 : v;
    while (*last == ' ')
        last++;
    size_t n = strcspn(last, " ");
    if (n == 0 || n >= sizeof(buf))
        return 0;
    memcpy(buf, last, n);
    buf[n] = '\0';
    int family = strchr(buf, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(family, buf, bin) != 1)
        return 0;
    snprintf(text, size, "%s", buf);
    return address_key(key, family, bin);
}

/*
 * The client's address as text (for messages) and as the key it is counted
 * under: the IPv4 address, or an IPv6 address's /64 (one host usually holds
 * a whole /64, so counting single IPv6 addresses would count nothing).
 * IPv4-mapped IPv6 addresses count as their IPv4 address. Behind a reverse
 * proxy, the address in --real-ip-header. Returns the key's length.
 */
static size_t client_address(char *text, size_t size, uint8_t *key, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(text, size, "?");
    key[0] = 0;
    if (info == NULL || info->client_addr == NULL)
        return 1;
    const struct sockaddr *sa = info->client_addr;
    size_t len = forwarded_address(text, size, key, conn, sa);
    if (len > 0)
        return len;
    if (sa->sa_family == AF_INET) {
        const struct in_addr *a = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        inet_ntop(AF_INET, a, text, (socklen_t)size);
        return address_key(key, AF_INET, a);
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        inet_ntop(AF_INET6, a, text, (socklen_t)size);
        return address_key(key, AF_INET6, a);
    }
    return 1;
}

/*
 * The login brake (see the top of this file). Every check is made before
 * argon2 runs, so a refused guess costs a table lookup.
 */
int rs_auth_login(const rs_account *account, const char *username, const char *password,
                  struct MHD_Connection *conn, int known_device, unsigned *retry_after_s)
{
    char addr[INET6_ADDRSTRLEN + 1], name[RS_WIRE_USERNAME_MAX + 1];
    uint8_t akeybuf[ADDR_KEY_MAX], pkeybuf[ADDR_KEY_MAX + RS_WIRE_USERNAME_MAX + 1];
    size_t alen = client_address(addr, sizeof(addr), akeybuf, conn);
    rs_backend_name_key(name, username);
    size_t nlen = strlen(name);
    memcpy(pkeybuf, akeybuf, alen);
    pkeybuf[alen] = '/';
    memcpy(pkeybuf + alen + 1, name, nlen);
    uint64_t pkey = throttle_key(pkeybuf, alen + 1 + nlen, 'p');
    uint64_t ukey = throttle_key(name, nlen, 'u');
    uint64_t akey = throttle_key(akeybuf, alen, 'a');
    uint64_t now = rs_now_ms();
    int err;

    if (!known_device) {
        pthread_mutex_lock(&auth.lock);
        uint64_t pwait = throttle_wait(&auth.pairs, pkey, PAIR_FREE_FAILURES, now);
        uint64_t await = throttle_wait(&auth.addrs, akey, ADDR_FREE_FAILURES, now);
        /* The user's own count binds only an address that has failed for this user. */
        uint64_t uwait = throttle_failures(&auth.pairs, pkey, now) > 0
                             ? throttle_wait(&auth.users, ukey, USER_FREE_FAILURES, now)
                             : 0;
        pthread_mutex_unlock(&auth.lock);
        uint64_t wait = pwait > await ? pwait : await;
        if (uwait > wait)
            wait = uwait;
        if (wait > 0) {
            atomic_fetch_add(&rs_stats.login_throttled, 1);
            *retry_after_s = (unsigned)((wait + 999) / 1000);
            if (wait == await)
                return rs__error(RS_ETHROTTLED, "too many failed logins from %s: retry in %llu ms",
                                 addr, (unsigned long long)wait);
            return rs__error(RS_ETHROTTLED,
                             "too many failed logins for user %s from %s%s: retry in %llu ms",
                             username, addr, wait == uwait ? " (and other addresses)" : "",
                             (unsigned long long)wait);
        }
    }

    if ((err = hashing_enter(retry_after_s)) < 0)
        return err;
    int ok = crypto_pwhash_str_verify(account ? account->pwhash : auth.dummy_hash, password,
                                      strlen(password)) == 0;
    hashing_leave();
    ok = ok && account != NULL;

    now = rs_now_ms();
    pthread_mutex_lock(&auth.lock);
    if (ok) {
        throttle_clear(&auth.pairs, pkey, now);
        throttle_clear(&auth.users, ukey, now);
    } else {
        throttle_fail(&auth.pairs, pkey, now);
        throttle_fail(&auth.users, ukey, now);
        throttle_fail(&auth.addrs, akey, now);
    }
    pthread_mutex_unlock(&auth.lock);
    if (!ok) {
        atomic_fetch_add(&rs_stats.login_failures, 1);
        return rs__error(RS_EAUTH, "wrong user name or password for %s", username);
    }
    return 0;
}

/* ---- registration ---- */

/*
 * A token bucket per client address: register_burst tokens, refilled at
 * register_burst per register_period_ms. An address seen for the first
 * time (or evicted: the table is fixed-size) starts full.
 */
int rs_auth_register_admit(struct MHD_Connection *conn, unsigned *retry_after_s)
{
    const rs_config *cfg = &rs_srv.cfg;
    char addr[INET6_ADDRSTRLEN + 1];
    uint8_t akeybuf[ADDR_KEY_MAX];
    if (cfg->register_burst == 0)
        return 0;
    size_t alen = client_address(addr, sizeof(addr), akeybuf, conn);
    uint64_t key = throttle_key(akeybuf, alen, 'r');
    uint64_t now = rs_now_ms(), full = (uint64_t)cfg->register_burst * 1000u;
    /* Thousandths of a token gained per millisecond, as a fraction. */
    uint64_t per_ms_num = full, per_ms_den = cfg->register_period_ms ? cfg->register_period_ms : 1;
    uint64_t wait_ms = 0;

    pthread_mutex_lock(&auth.lock);
    bucket_entry *e = NULL, *victim = NULL;
    size_t base = (size_t)(key % THROTTLE_SLOTS);
    for (size_t i = 0; i < THROTTLE_PROBE && e == NULL; i++) {
        bucket_entry *b = &auth.buckets[(base + i) % THROTTLE_SLOTS];
        if (b->key == key)
            e = b;
        else if (victim == NULL || b->key == 0 || b->last_ms < victim->last_ms)
            victim = b;
    }
    if (e == NULL) {
        e = victim;
        e->key = key;
        e->tokens_milli = full;
        e->last_ms = now;
    }
    uint64_t elapsed = now > e->last_ms ? now - e->last_ms : 0;
    uint64_t gained = elapsed >= per_ms_den ? full : elapsed * per_ms_num / per_ms_den;
    if (gained > 0) {
        e->tokens_milli = e->tokens_milli + gained > full ? full : e->tokens_milli + gained;
        e->last_ms = now;
    }
    if (e->tokens_milli >= 1000)
        e->tokens_milli -= 1000;
    else
        wait_ms = ((1000 - e->tokens_milli) * per_ms_den + per_ms_num - 1) / per_ms_num;
    pthread_mutex_unlock(&auth.lock);

    if (wait_ms == 0)
        return 0;
    atomic_fetch_add(&rs_stats.register_throttled, 1);
    *retry_after_s = (unsigned)((wait_ms + 999) / 1000);
    return rs__error(
        RS_ETHROTTLED, "too many registrations from %s (at most %u per %llu s): retry in %llu ms",
        addr, cfg->register_burst, (unsigned long long)(cfg->register_period_ms / 1000),
        (unsigned long long)wait_ms);
}

int rs_auth_parse_register_rate(rs_config *cfg, const char *text)
{
    char *end;
    if (strcmp(text, "off") == 0 || strcmp(text, "0") == 0) {
        cfg->register_burst = 0;
        cfg->register_period_ms = 0;
        return 0;
    }
    unsigned long n = strtoul(text, &end, 10);
    if (end == text || text[0] == '-' || *end != '/' || n == 0 || n > 1000000)
        return rs__error(RS_EINVAL, "'%s' is not N/PERIOD (20/h, 5/m, 2/30s) or 'off'", text);
    const char *p = end + 1;
    unsigned long count = 1;
    if (*p >= '0' && *p <= '9') {
        count = strtoul(p, &end, 10);
        p = end;
    }
    uint64_t unit = strcmp(p, "s") == 0   ? 1000u
                    : strcmp(p, "m") == 0 ? 60000u
                    : strcmp(p, "h") == 0 ? 3600000u
                    : strcmp(p, "d") == 0 ? 86400000u
                                          : 0;
    if (unit == 0 || count == 0 || count > 100000)
        return rs__error(RS_EINVAL, "'%s': the period is s, m, h or d, optionally after a count",
                         text);
    cfg->register_burst = (unsigned)n;
    cfg->register_period_ms = (uint64_t)count * unit;
    return 0;
}

/* ---- invites ---- */

void rs_auth_invite_hash(uint8_t *out, const char *code)
{
    crypto_generichash(out, RS_INVITE_HASH_BYTES, (const uint8_t *)code, strlen(code), NULL, 0);
}

int rs_auth_make_invite(const char *username)
{
    uint8_t secret[16], hash[RS_INVITE_HASH_BYTES];
    char code[2 * sizeof(secret) + 1];
    const char *name = username && *username ? username : NULL;
    if (name && !rs_wire_username_valid(name))
        return rs__error(RS_EINVAL,
                         "--make-invite: '%.70s' is not a user name (1-64 of "
                         "[A-Za-z0-9._@+-])",
                         name);
    randombytes_buf(secret, sizeof(secret));
    rs__hex(code, secret, sizeof(secret));
    rs_auth_invite_hash(hash, code);
    int err = rs_srv.backend->ops->invite_create(rs_srv.backend, hash, name);
    if (err == 0) {
        printf("%s\n", code);
        fflush(stdout);
    }
    sodium_memzero(secret, sizeof(secret));
    sodium_memzero(code, sizeof(code));
    return err;
}
