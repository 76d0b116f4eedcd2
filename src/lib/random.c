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
 * are handed out, a fresh key from getrandom every RESEED_BYTES, and a
 * reseed in both parent and child after fork (pthread_atfork bumps a
 * generation every thread compares), so two processes never share output.
 * Requests larger than the block go to randombytes_buf directly.
 */
#include "internal.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <string.h>

#define KEY_BYTES 32
#define BLOCK_BYTES 480           /* handed out between two refills */
#define RESEED_BYTES (1u << 20)   /* fresh entropy from the kernel this often */

typedef struct pool {
    uint8_t key[KEY_BYTES];
    uint8_t block[BLOCK_BYTES];
    size_t left;         /* unused bytes at the end of block */
    size_t since_seed;   /* bytes handed out under keys derived from the last seed */
    unsigned generation; /* fork generation the key was seeded in; 0: never seeded */
} pool;

static _Thread_local pool tls;
static atomic_uint generation = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void after_fork(void)
{
    atomic_fetch_add(&generation, 1);
}

static void register_atfork(void)
{
    /* In the parent too: a thread's pool must not have been copied into a child it keeps using. */
    pthread_atfork(NULL, after_fork, after_fork);
}

static void refill(pool *p)
{
    uint8_t out[KEY_BYTES + BLOCK_BYTES];
    unsigned gen = atomic_load(&generation);
    if (p->generation != gen || p->since_seed >= RESEED_BYTES) {
        pthread_once(&atfork_once, register_atfork);
        randombytes_buf(p->key, KEY_BYTES);
        p->generation = atomic_load(&generation);
        p->since_seed = 0;
    }
    randombytes_buf_deterministic(out, sizeof(out), p->key);
    memcpy(p->key, out, KEY_BYTES);
    memcpy(p->block, out + KEY_BYTES, BLOCK_BYTES);
    sodium_memzero(out, sizeof(out));
    p->left = BLOCK_BYTES;
}

void rs__random(void *buf, size_t len)
{
    pool *p = &tls;
    uint8_t *dst = buf;
    if (len > BLOCK_BYTES) {
        randombytes_buf(buf, len);
        return;
    }
    if (p->left < len || p->generation != atomic_load(&generation))
        refill(p);
    uint8_t *src = p->block + BLOCK_BYTES - p->left;
    memcpy(dst, src, len);
    sodium_memzero(src, len);
    p->left -= len;
    p->since_seed += len;
}
