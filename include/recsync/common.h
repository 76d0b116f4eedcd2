/*
 * recsync — errors, identifiers and clocks shared by every module.
 *
 * Conventions (docs/conventions.md): fallible calls return int, 0 on
 * success and a negative RS_E* code on failure; the message that names what
 * failed is rs_error_last(), kept per thread. What comes back through an
 * `out` parameter belongs to the caller and is freed with the matching
 * rs_*_free(), which accepts NULL.
 */
#ifndef RECSYNC_COMMON_H
#define RECSYNC_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RS_VERSION "0.1.0"

#if defined(__GNUC__)
#define RS_WARN_UNUSED __attribute__((warn_unused_result))
#else
#define RS_WARN_UNUSED
#endif

/*
 * Error codes. Numbers never change once released; add new ones at the end.
 */
typedef enum rs_error_code {
    RS_OK = 0,
    RS_ERROR = -1,     /* generic failure */
    RS_ENOMEM = -2,    /* out of memory */
    RS_EINVAL = -3,    /* bad argument or malformed input */
    RS_ENOTFOUND = -4, /* no such record, key, shard or store */
    RS_EEXISTS = -5,   /* already exists (init twice, name taken) */
    RS_ECONFLICT = -6, /* a different record at a taken idx */
    RS_EHOLE = -7,     /* a record would leave a hole in its shard */
    RS_ECRYPTO = -8,   /* a record does not open: tampered header or ciphertext */
    RS_EKEY = -9,      /* a record sealed under another master key */
    RS_EAUTH = -10,    /* wrong password, missing or unknown token, forbidden */
    RS_ENET = -11,     /* server unreachable, connection lost, timeout */
    RS_ESERVER = -12,  /* the server answered with an error or broke the protocol */
    RS_EIO = -13,      /* file or database I/O, disk full */
    RS_ECLOCK = -14,   /* HLC drift beyond the bound, or counter overflow */
    RS_ETOOBIG = -15,  /* a payload beyond the size bound */
    RS_EAHEAD = -16,   /* the server holds more of this device's own shard than the store */
    RS_EGONE = -17,    /* an event cursor older than the server keeps: resync */
    RS_EVERSION = -18, /* a store or record version newer than this build */
    RS_EBUSY = -19,    /* the database stayed locked past the busy timeout */
    RS_EINTR = -20,    /* interrupted by the caller */
    RS_EUNAVAIL = -21, /* the server is temporarily unable to serve (503) */
    RS_EQUOTA = -22,   /* the account's storage quota on the server is used up (507) */
    RS_ECHAIN = -23,   /* a shard's hash chain breaks: the server dropped, forked or rolled back */
    RS_ERETIRED = -24  /* this device was retired from the account (401 device_retired) */
} rs_error_code;

/* A static description of an error code ("record does not open", ...). */
const char *rs_strerror(int code);

/*
 * The message of the last failure on this thread, naming what failed
 * ("record 0190... in shard 3f2a.../kv does not open: ..."). Never NULL;
 * empty when nothing failed yet. Valid until the next failing call.
 */
const char *rs_error_last(void);

/* Clears this thread's last error message. */
void rs_error_clear(void);

/*
 * Identifiers: host ids (random, made at init) and record ids (UUIDv7).
 */
typedef struct rs_uuid {
    uint8_t bytes[16];
} rs_uuid;

#define RS_UUID_STRLEN 36 /* canonical text, without the NUL */

/* Parses canonical UUID text (8-4-4-4-12 hex, either case). RS_EINVAL if malformed. */
int rs_uuid_parse(rs_uuid *out, const char *text) RS_WARN_UNUSED;

/* Writes canonical lowercase text and a NUL into out[RS_UUID_STRLEN + 1]. */
void rs_uuid_format(char *out, const rs_uuid *id);

/* A random (version 4) UUID, used for host ids. */
void rs_uuid_random(rs_uuid *out);

/* A UUIDv7 for the given Unix time in milliseconds. */
void rs_uuid_v7(rs_uuid *out, uint64_t unix_ms);

int rs_uuid_cmp(const rs_uuid *a, const rs_uuid *b);
int rs_uuid_is_nil(const rs_uuid *id);

/*
 * Hybrid logical clock: 48 bits of Unix milliseconds above a 16-bit counter,
 * in one integer, so integer order is clock order. Ties between devices are
 * broken by host id (rs_hlc_cmp). Text form: 16 lowercase hex digits of the
 * value, which sorts as the clock orders.
 */
typedef uint64_t rs_hlc;

#define RS_HLC_STRLEN 16
#define RS_HLC_MS(h) ((uint64_t)(h) >> 16)
#define RS_HLC_COUNTER(h) ((uint32_t)((h)&0xffffu))
#define RS_HLC_MAKE(ms, counter) (((uint64_t)(ms) << 16) | ((uint64_t)(counter)&0xffffu))
#define RS_HLC_DEFAULT_MAX_DRIFT_MS (5 * 60 * 1000)

typedef struct rs_hlc_clock {
    rs_hlc last;
    uint64_t max_drift_ms;         /* received clocks further ahead are refused */
    uint64_t (*now_ms)(void *ctx); /* wall clock; NULL means the system clock */
    void *now_ctx;
} rs_hlc_clock;

void rs_hlc_clock_init(rs_hlc_clock *clock, rs_hlc last);

/*
 * A local write: max(now, last), bumping the counter when the millisecond
 * does not advance. RS_ECLOCK if the counter would overflow.
 */
int rs_hlc_tick(rs_hlc *out, rs_hlc_clock *clock) RS_WARN_UNUSED;

/*
 * Merges a clock received from device `from` (named in the error): the new
 * last is max(local, received, now) with the counter rules. RS_ECLOCK if the
 * received clock is more than max_drift_ms ahead of now, or on overflow;
 * the clock is unchanged on failure.
 */
int rs_hlc_recv(rs_hlc_clock *clock, rs_hlc received, const rs_uuid *from) RS_WARN_UNUSED;

/* Total order of writes: by clock, then by host id. */
int rs_hlc_cmp(rs_hlc a, const rs_uuid *host_a, rs_hlc b, const rs_uuid *host_b);

void rs_hlc_format(char *out, rs_hlc h); /* out[RS_HLC_STRLEN + 1] */
int rs_hlc_parse(rs_hlc *out, const char *text) RS_WARN_UNUSED;

/* Current Unix time in milliseconds (the system clock). */
uint64_t rs_now_ms(void);

/* Tags: 1-64 characters of [a-z0-9._-]. */
#define RS_TAG_MAX 64
int rs_tag_valid(const char *tag);

/* Frees memory this library handed to the caller without a specific free. */
void rs_free(void *ptr);

#ifdef __cplusplus
}
#endif
#endif
