/*
 * Hybrid logical clock (Spacedrive's rules with two flaws fixed: a received
 * clock far ahead of the wall clock is refused, and counter overflow is an
 * error instead of a wrap).
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define COUNTER_MAX 0xffffu
#define MS_MAX ((UINT64_C(1) << 48) - 1)

void rs_hlc_clock_init(rs_hlc_clock *clock, rs_hlc last)
{
    memset(clock, 0, sizeof(*clock));
    clock->last = last;
    clock->max_drift_ms = RS_HLC_DEFAULT_MAX_DRIFT_MS;
}

static uint64_t clock_now(const rs_hlc_clock *clock)
{
    uint64_t now = clock->now_ms ? clock->now_ms(clock->now_ctx) : rs_now_ms();
    return now > MS_MAX ? MS_MAX : now;
}

int rs_hlc_tick(rs_hlc *out, rs_hlc_clock *clock)
{
    uint64_t now = clock_now(clock);
    uint64_t last_ms = RS_HLC_MS(clock->last);
    rs_hlc next;

    if (now > last_ms) {
        next = RS_HLC_MAKE(now, 0);
    } else {
        if (RS_HLC_COUNTER(clock->last) == COUNTER_MAX)
            return rs__error(RS_ECLOCK,
                             "clock counter overflow at %llu ms: more than 65535 writes in one "
                             "millisecond, or the wall clock is far behind the last write",
                             (unsigned long long)last_ms);
        next = clock->last + 1;
    }
    clock->last = next;
    *out = next;
    return 0;
}

/* The sender's host id as text for an error message. */
static void device_name(char *out, const rs_uuid *from)
{
    if (from)
        rs_uuid_format(out, from);
    else
        snprintf(out, RS_UUID_STRLEN + 1, "(unknown)");
}

int rs_hlc_recv(rs_hlc_clock *clock, rs_hlc received, const rs_uuid *from)
{
    uint64_t now = clock_now(clock);
    uint64_t recv_ms = RS_HLC_MS(received);
    uint64_t last_ms = RS_HLC_MS(clock->last);
    rs_hlc next;
    char host[RS_UUID_STRLEN + 1];

    if (recv_ms > now && recv_ms - now > clock->max_drift_ms) {
        device_name(host, from);
        return rs__error(RS_ECLOCK,
                         "device %s sent a clock %llu ms ahead of this device's wall clock "
                         "(the bound is %llu ms): its clock is wrong",
                         host, (unsigned long long)(recv_ms - now),
                         (unsigned long long)clock->max_drift_ms);
    }
    if (now > last_ms && now > recv_ms) {
        next = RS_HLC_MAKE(now, 0);
    } else {
        /* The highest of last and received, then one past it. */
        rs_hlc top = received > clock->last ? received : clock->last;
        if (RS_HLC_COUNTER(top) == COUNTER_MAX) {
            device_name(host, from);
            return rs__error(RS_ECLOCK,
                             "clock counter overflow at %llu ms merging a clock from device %s: "
                             "more than 65535 writes in one millisecond",
                             (unsigned long long)RS_HLC_MS(top), host);
        }
        next = top + 1;
    }
    clock->last = next;
    return 0;
}

int rs_hlc_cmp(rs_hlc a, const rs_uuid *host_a, rs_hlc b, const rs_uuid *host_b)
{
    if (a != b)
        return a < b ? -1 : 1;
    int c = rs_uuid_cmp(host_a, host_b);
    return (c > 0) - (c < 0);
}

void rs_hlc_format(char *out, rs_hlc h)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = RS_HLC_STRLEN - 1; i >= 0; i--, h >>= 4)
        out[i] = digits[h & 15];
    out[RS_HLC_STRLEN] = '\0';
}

/*
 * Accepts exactly what rs_hlc_format writes: 16 lowercase hex digits. An
 * uppercase digit is refused, since such text would not sort among the
 * lowercase texts as its clock orders ('A' sorts before '0'..'9' and 'a').
 */
int rs_hlc_parse(rs_hlc *out, const char *text)
{
    rs_hlc h = 0;
    if (text == NULL || strlen(text) != RS_HLC_STRLEN)
        goto bad;
    for (int i = 0; i < RS_HLC_STRLEN; i++) {
        char c = text[i];
        if (c >= '0' && c <= '9')
            h = h << 4 | (rs_hlc)(c - '0');
        else if (c >= 'a' && c <= 'f')
            h = h << 4 | (rs_hlc)(c - 'a' + 10);
        else
            goto bad;
    }
    *out = h;
    return 0;
bad:
    return rs__error(RS_EINVAL, "'%.40s' is not a clock (expected 16 lowercase hex digits)",
                     text ? text : "(null)");
}
