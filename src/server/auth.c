/*
 * Accounts and devices: argon2id password hashes, device tokens, and the
 * brake on password guessing.
 *
 * A token is 96 hex digits: a 16-byte public id (the lookup key) followed by
 * a 32-byte random secret. The server stores the id and a BLAKE2b hash of
 * the secret, never the secret, and compares hashes in constant time. (A
 * 256-bit random secret needs no slow hash; passwords get argon2id.)
 *
 * Failed logins are counted per user name and per client address in two
 * small tables; past a few free failures each further attempt must wait
 * base * 2^(failures - free), capped, or gets 429 with Retry-After. A
 * success clears both counters. Tables are fixed-size (an attacker cannot
 * grow them) and entries are keyed by a keyed hash of the name or address.
 */
#include "server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define THROTTLE_SLOTS 4096
#define THROTTLE_PROBE 8
#define USER_FREE_FAILURES 3
#define ADDR_FREE_FAILURES 10
#define THROTTLE_CAP_MS 30000u
#define THROTTLE_FORGET_MS (15u * 60u * 1000u)
#define HASHING_SLOTS 2 /* argon2id runs at once: each takes its memory limit */

typedef struct throttle_entry {
    uint64_t key; /* 0: free */
    uint32_t failures;
    uint64_t last_ms;
} throttle_entry;

typedef struct throttle_table {
    throttle_entry slots[THROTTLE_SLOTS];
} throttle_table;

static struct {
    pthread_mutex_t lock;
    throttle_table users;
    throttle_table addrs;
    uint8_t hash_key[crypto_shorthash_KEYBYTES];
    char dummy_hash[crypto_pwhash_STRBYTES];
    unsigned long long opslimit;
    size_t memlimit;
    pthread_mutex_t hashing_lock;
    pthread_cond_t hashing_cond;
    int hashing;
} auth = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .hashing_lock = PTHREAD_MUTEX_INITIALIZER,
    .hashing_cond = PTHREAD_COND_INITIALIZER,
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

/* Bounds concurrent argon2id computations (each holds its memory limit). */
static void hashing_enter(void)
{
    pthread_mutex_lock(&auth.hashing_lock);
    while (auth.hashing >= HASHING_SLOTS)
        pthread_cond_wait(&auth.hashing_cond, &auth.hashing_lock);
    auth.hashing++;
    pthread_mutex_unlock(&auth.hashing_lock);
}

static void hashing_leave(void)
{
    pthread_mutex_lock(&auth.hashing_lock);
    auth.hashing--;
    pthread_cond_signal(&auth.hashing_cond);
    pthread_mutex_unlock(&auth.hashing_lock);
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

int rs_auth_hash_password(char *out, const char *password)
{
    hashing_enter();
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

/* The client's address as text, for the per-address counter. */
static void client_address(char *out, size_t size, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, size, "?");
    if (info == NULL || info->client_addr == NULL)
        return;
    const struct sockaddr *sa = info->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)size);
}

int rs_auth_login(const rs_account *account, const char *username, const char *password,
                  struct MHD_Connection *conn, unsigned *retry_after_s)
{
    char addr[INET6_ADDRSTRLEN + 1];
    client_address(addr, sizeof(addr), conn);
    uint64_t ukey = throttle_key(username, strlen(username), 'u');
    uint64_t akey = throttle_key(addr, strlen(addr), 'a');
    uint64_t now = rs_now_ms();

    pthread_mutex_lock(&auth.lock);
    uint64_t wait = throttle_wait(&auth.users, ukey, USER_FREE_FAILURES, now);
    uint64_t await = throttle_wait(&auth.addrs, akey, ADDR_FREE_FAILURES, now);
    pthread_mutex_unlock(&auth.lock);
    if (await > wait)
        wait = await;
    if (wait > 0) {
        atomic_fetch_add(&rs_stats.login_throttled, 1);
        *retry_after_s = (unsigned)((wait + 999) / 1000);
        return rs__error(RS_ETHROTTLED,
                         "too many failed logins for user %s or from %s: retry in %llu ms",
                         username, addr, (unsigned long long)wait);
    }

    hashing_enter();
    int ok = crypto_pwhash_str_verify(account ? account->pwhash : auth.dummy_hash, password,
                                      strlen(password)) == 0;
    hashing_leave();
    ok = ok && account != NULL;

    now = rs_now_ms();
    pthread_mutex_lock(&auth.lock);
    if (ok) {
        throttle_clear(&auth.users, ukey, now);
        throttle_clear(&auth.addrs, akey, now);
    } else {
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
