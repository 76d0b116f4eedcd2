/*
 * Random bytes for record ids, nonces and content keys, without a system
 * call per record.
 *
 * libsodium's randombytes_buf is one getrandom() per call; in this VM a
 * system call costs enough that the two per append (the UUIDv7 and the
 * envelope's CEK and nonces) took 15% of `recsync append --lines` (perf).
 * This is the construction of OpenBSD's arc4random and Linux's vDSO
 * getrandom: a per-thread ChaCha20 key from getrandom, expanded with
 * libsodium's randombytes_buf_deterministic into a block whose first 32
 * bytes replace the key at once (fast key erasure: what was handed out
 * cannot be recomputed from the state), bytes wiped from the block as they
 * are handed out, and a fresh key from getrandom every RESEED_BYTES.
 *
 * Two processes must never share output. Each thread's pool lives in a
 * page of its own marked MADV_WIPEONFORK, which the kernel hands to a child
 * as zeros whatever made it (fork, clone, _Fork), and a zero pool is an
 * unseeded one. pthread_atfork also bumps a generation every thread
 * compares, which covers kernels without MADV_WIPEONFORK (before 4.14) and
 * the parent. Requests larger than the block go to randombytes_buf directly.
 */
#include "internal.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#define KEY_BYTES 32
#define BLOCK_BYTES 480         /* handed out between two refills */
#define RESEED_BYTES (1u << 20) /* fresh entropy from the kernel this often */

typedef struct pool {
    uint8_t key[KEY_BYTES];
    uint8_t block[BLOCK_BYTES];
    size_t left;         /* unused bytes at the end of block */
    size_t since_seed;   /* bytes handed out under keys derived from the last seed */
    uint64_t generation; /* fork generation the key was seeded in */
    int seeded;          /* 0: never seeded, or wiped by the kernel in a child */
} pool;

static _Thread_local pool *tls;         /* this thread's pool (its own page, or tls_fallback) */
static _Thread_local pool tls_fallback; /* when no page can be mapped */
static atomic_uint_fast64_t generation = 1;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
static pthread_key_t pool_key;
static int have_key;

static void after_fork(void)
{
    atomic_fetch_add(&generation, 1);
}

/* A thread's pool page, wiped and unmapped when the thread ends. */
static void pool_release(void *page)
{
    sodium_memzero(page, sizeof(pool));
    munmap(page, sizeof(pool));
}

static void setup(void)
{
    /* Registered in the parent too: its pools reseed after every fork. If
     * registration fails, MADV_WIPEONFORK still covers the child. */
    (void)pthread_atfork(NULL, after_fork, after_fork);
    have_key = pthread_key_create(&pool_key, pool_release) == 0;
}

static pool *this_pool(void)
{
    if (tls)
        return tls;
    pthread_once(&setup_once, setup);
    void *page =
        mmap(NULL, sizeof(pool), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page != MAP_FAILED) {
#ifdef MADV_WIPEONFORK
        (void)madvise(page, sizeof(pool), MADV_WIPEONFORK); /* else the atfork generation */
#endif
#ifdef MADV_DONTDUMP
        (void)madvise(page, sizeof(pool), MADV_DONTDUMP); /* keys stay out of core files */
#endif
        if (have_key && pthread_setspecific(pool_key, page) == 0) {
            tls = page;
            return tls;
        }
        munmap(page, sizeof(pool));
    }
    tls = &tls_fallback;
    return tls;
}

static void refill(pool *p)
{
    uint8_t out[KEY_BYTES + BLOCK_BYTES];
    uint64_t gen = atomic_load(&generation);
    if (!p->seeded || p->generation != gen || p->since_seed >= RESEED_BYTES) {
        randombytes_buf(p->key, KEY_BYTES);
        p->generation = gen;
        p->since_seed = 0;
        p->seeded = 1;
    }
    randombytes_buf_deterministic(out, sizeof(out), p->key);
    memcpy(p->key, out, KEY_BYTES);
    memcpy(p->block, out + KEY_BYTES, BLOCK_BYTES);
    sodium_memzero(out, sizeof(out));
    p->left = BLOCK_BYTES;
}

void rs__random(void *buf, size_t len)
{
    uint8_t *dst = buf;
    if (len > BLOCK_BYTES) {
        randombytes_buf(buf, len);
        return;
    }
    pool *p = this_pool();
    if (!p->seeded || p->left < len || p->generation != atomic_load(&generation))
        refill(p);
    uint8_t *src = p->block + BLOCK_BYTES - p->left;
    memcpy(dst, src, len);
    sodium_memzero(src, len);
    p->left -= len;
    p->since_seed += len;
}
