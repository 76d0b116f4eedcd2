/*
 * History importers (include/recsync/history.h, rs_history_import_flags):
 * bash, zsh and fish history files and Atuin's history.db.
 *
 * An import reads its input whole (a file, a pipe, a FIFO or standard
 * input), parses it into entries whose text is collected (joined,
 * unmetafied, unescaped, repaired to UTF-8) in one arena, dates the entries
 * the input leaves undated, gives every entry a deterministic id, and
 * writes the new ones in one transaction, indexing them in one pass at its
 * end (history.c says why).
 *
 * Each parser follows the shell's own reading rules, and Atuin's importers
 * for values out of range; the differences from Atuin are on purpose:
 *  - zsh continuation lines: zsh drops the backslash that ends a continued
 *    line (it wrote it to escape the newline); Atuin keeps it.
 *  - times before 1970 are undated here (Atuin keeps them back to year
 *    -9999): recsync orders entries by Unix milliseconds from 0.
 *  - a zsh start too large for seconds (after 9999) but in range as
 *    milliseconds is read as milliseconds; Atuin drops it.
 *  - an undated entry is dated 1 ms after the one before it, as Atuin does,
 *    but the first undated ones in a file with no dated entry end at the
 *    file's modification time instead of now, and Atuin's fish importer
 *    gives an undated entry its predecessor's time instead of 1 ms more.
 *  - non-UTF-8 bytes are repaired (U+FFFD), not the line skipped.
 */
#include "history_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The last valid time: 9999-12-31 23:59:59.999 UTC, Atuin's range end. */
#define MAX_SECS INT64_C(253402300799)
#define MAX_MS (MAX_SECS * 1000 + 999)
#define NO_TEXT SIZE_MAX
#define FIFO_WAIT_MS 10000

/* One entry as parsed: texts are offsets into the parser's arena. */
typedef struct parsed {
    size_t off; /* the command: arena[off .. off + len) */
    size_t len;
    size_t cwd, session, hostname, ext_id; /* NO_TEXT when the input has none */
    int64_t time_ms;                       /* -1: the input gives none */
    int64_t duration_ms;
    int64_t exit_code;
    bool timed;
} parsed;

typedef struct parser {
    const char *path;
    parsed *entries;
    size_t count;
    size_t cap;
    char *arena;
    size_t arena_len;
    size_t arena_cap;
    char *scratch; /* the command being assembled, raw */
    size_t scratch_len;
    size_t scratch_cap;
} parser;

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    size_t n = *cap ? *cap : 64;
    void *grown;
    if (need <= *cap)
        return 0;
    while (n < need)
        n *= 2;
    if ((grown = rs__realloc(*buf, n * elem)) == NULL)
        return rs__error(RS_ENOMEM, "out of memory importing history");
    *buf = grown;
    *cap = n;
    return 0;
}

static int scratch_add(parser *p, const char *s, size_t len)
{
    int err = grow((void **)&p->scratch, &p->scratch_cap, p->scratch_len + len + 1, 1);
    if (err < 0)
        return err;
    memcpy(p->scratch + p->scratch_len, s, len);
    p->scratch_len += len;
    return 0;
}

/* Copies s[0..len) into the arena as UTF-8 (repaired); its offset to *out. */
static int arena_add(size_t *out, parser *p, const char *s, size_t len)
{
    int err = grow((void **)&p->arena, &p->arena_cap, p->arena_len + 3 * len + 1, 1);
    if (err < 0)
        return err;
    *out = p->arena_len;
    p->arena_len += rs__utf8_repair(p->arena + p->arena_len, s, len) + 1;
    return 0;
}

/*
 * zsh keeps some bytes "metafied": 0x83 (Meta) followed by the byte XOR 32.
 * Undone in place.
 */
static void unmetafy(char *s, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < *len; i++) {
        if ((unsigned char)s[i] == 0x83 && i + 1 < *len)
            s[o++] = (char)(s[++i] ^ 32);
        else
            s[o++] = s[i];
    }
    *len = o;
}

/*
 * Emits the scratch command (unless empty once trailing newlines are cut)
 * as a new entry with the given time (-1: undated) and duration; clears
 * scratch. *out gets the entry, or NULL when none was made.
 */
static int emit(parsed **out, parser *p, int64_t time_ms, int64_t duration_ms, bool zsh)
{
    size_t len = p->scratch_len;
    parsed *e;
    int err;

    if (out)
        *out = NULL;
    if (zsh)
        unmetafy(p->scratch, &len);
    while (len > 0 && p->scratch[len - 1] == '\n')
        len--;
    p->scratch_len = 0;
    if (len == 0)
        return 0;
    if ((err = grow((void **)&p->entries, &p->cap, p->count + 1, sizeof(*p->entries))) < 0)
        return err;
    e = &p->entries[p->count];
    memset(e, 0, sizeof(*e));
    if ((err = arena_add(&e->off, p, p->scratch, len)) < 0)
        return err;
    p->count++;
    e->len = strlen(p->arena + e->off);
    e->cwd = e->session = e->hostname = e->ext_id = NO_TEXT;
    e->timed = time_ms >= 0;
    e->time_ms = time_ms;
    e->duration_ms = duration_ms;
    e->exit_code = -1;
    if (out)
        *out = e;
    return 0;
}

/* The next line of buf[*pos..len) without its "\n" or "\r\n"; false at the end. */
static bool next_line(const char **line, size_t *line_len, const char *buf, size_t len, size_t *pos)
{
    const char *nl;
    size_t n;
    if (*pos >= len)
        return false;
    nl = memchr(buf + *pos, '\n', len - *pos);
    n = nl ? (size_t)(nl - (buf + *pos)) : len - *pos;
    *line = buf + *pos;
    *pos += n + (nl != NULL);
    if (n > 0 && (*line)[n - 1] == '\r')
        n--;
    *line_len = n;
    return true;
}

/*
 * An optionally signed decimal number at s[*i..n) into *out, saturating at
 * INT64_MIN/INT64_MAX (so a 19-digit or longer value is merely out of
 * range); false when there are no digits.
 */
static bool parse_int(int64_t *out, const char *s, size_t n, size_t *i, bool sign)
{
    bool neg = false;
    size_t start;
    int64_t v = 0;
    if (sign && *i < n && s[*i] == '-') {
        neg = true;
        (*i)++;
    }
    start = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        int d = s[*i] - '0';
        v = v > (INT64_MAX - d) / 10 ? INT64_MAX : v * 10 + d;
        (*i)++;
    }
    *out = neg ? (v == INT64_MAX ? INT64_MIN : -v) : v;
    return *i > start;
}

/* Unix seconds as milliseconds, or -1 when out of [1970, 9999]. */
static int64_t secs_to_ms(int64_t secs)
{
    return secs >= 0 && secs <= MAX_SECS ? secs * 1000 : -1;
}

/*
 * ": <start>:<elapsed>;" at the head of a zsh line, as zsh reads it (a digit
 * right after ": "; Atuin's tests' negative starts allowed too); *skip is
 * its length. *time_ms is -1 when the start is out of range; a start past
 * 9999 as seconds that is in range as milliseconds is taken as such.
 * *duration_ms saturates.
 */
static bool zsh_extended(int64_t *time_ms, int64_t *duration_ms, size_t *skip, const char *s,
                         size_t n)
{
    int64_t start, elapsed;
    size_t i = 2;
    if (n < 3 || s[0] != ':' || s[1] != ' ' || !(s[2] == '-' || (s[2] >= '0' && s[2] <= '9')))
        return false;
    if (!parse_int(&start, s, n, &i, true) || i >= n || s[i++] != ':' ||
        !parse_int(&elapsed, s, n, &i, false) || i >= n || s[i++] != ';')
        return false;
    *time_ms = secs_to_ms(start);
    if (*time_ms < 0 && start > MAX_SECS && start <= MAX_MS)
        *time_ms = start;
    *duration_ms = elapsed > INT64_MAX / 1000 ? INT64_MAX : elapsed * 1000;
    *skip = i;
    return true;
}

static int parse_zsh(parser *p, const char *buf, size_t len)
{
    const char *line;
    size_t n, pos = 0, skip;
    int err;

    while (next_line(&line, &n, buf, len, &pos)) {
        int64_t time_ms = -1, duration_ms = -1;
        if (zsh_extended(&time_ms, &duration_ms, &skip, line, n)) {
            line += skip;
            n -= skip;
        }
        /* A trailing backslash continues the command on the next line. */
        while (n > 0 && line[n - 1] == '\\') {
            if ((err = scratch_add(p, line, n - 1)) < 0 || (err = scratch_add(p, "\n", 1)) < 0)
                return err;
            if (!next_line(&line, &n, buf, len, &pos)) {
                n = 0;
                break;
            }
        }
        if ((err = scratch_add(p, line, n)) < 0 ||
            (err = emit(NULL, p, time_ms, duration_ms, true)) < 0)
            return err;
    }
    return 0;
}

/*
 * "#" and an optionally signed number only: bash's timestamp line (bash
 * itself wants a digit after the "#"; a negative one is taken as a
 * timestamp out of range, as Atuin does, not as a command). *out is its
 * time in ms, -1 when out of range.
 */
static bool bash_timestamp(int64_t *out, const char *s, size_t n)
{
    size_t i = 1;
    int64_t secs;
    if (n < 2 || s[0] != '#' || !parse_int(&secs, s, n, &i, true) || i != n)
        return false;
    *out = secs_to_ms(secs);
    return true;
}

/*
 * bash: each line is an entry; a timestamp line dates the entry after it.
 * `multiline` (bash's lithist with timestamps): the lines after a
 * timestamp make one entry up to the next timestamp.
 */
static int parse_bash(parser *p, const char *buf, size_t len, bool multiline)
{
    const char *line;
    size_t n, pos = 0;
    int64_t ts, time_ms = -1;
    bool joining = false; /* multiline, after a timestamp */
    int err;

    while (next_line(&line, &n, buf, len, &pos)) {
        if (bash_timestamp(&ts, line, n)) {
            if (joining && (err = emit(NULL, p, time_ms, -1, false)) < 0)
                return err;
            joining = multiline;
            time_ms = ts;
            continue;
        }
        if (joining) {
            if ((p->scratch_len > 0 && (err = scratch_add(p, "\n", 1)) < 0) ||
                (err = scratch_add(p, line, n)) < 0)
                return err;
            continue;
        }
        if (n == 0)
            continue;
        if ((err = scratch_add(p, line, n)) < 0 || (err = emit(NULL, p, time_ms, -1, false)) < 0)
            return err;
        time_ms = -1;
    }
    return joining ? emit(NULL, p, time_ms, -1, false) : 0;
}

/* fish's escaping of a "cmd:" value: "\\" for a backslash, "\n" for a newline. */
static int fish_unescape(parser *p, const char *s, size_t n)
{
    size_t start = 0;
    int err;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\' || (s[i + 1] != '\\' && s[i + 1] != 'n'))
            continue;
        if ((err = scratch_add(p, s + start, i - start)) < 0 ||
            (err = scratch_add(p, s[i + 1] == 'n' ? "\n" : "\\", 1)) < 0)
            return err;
        start = ++i + 1;
    }
    return scratch_add(p, s + start, n - start);
}

/*
 * fish_history: "- cmd: <escaped command>" starts an entry, "  when: <unix
 * time>" dates it; "  paths:" and its items, and lines of no known shape,
 * are skipped, as fish skips them.
 */
static int parse_fish(parser *p, const char *buf, size_t len)
{
    static const char cmd[] = "- cmd: ", when[] = "  when: ";
    const char *line;
    size_t n, pos = 0, i;
    parsed *cur = NULL;
    int64_t secs;
    int err;

    while (next_line(&line, &n, buf, len, &pos)) {
        if (n >= sizeof(cmd) - 1 && memcmp(line, cmd, sizeof(cmd) - 1) == 0) {
            if ((err = fish_unescape(p, line + sizeof(cmd) - 1, n - (sizeof(cmd) - 1))) < 0 ||
                (err = emit(&cur, p, -1, -1, false)) < 0)
                return err;
        } else if (cur && n >= sizeof(when) - 1 && memcmp(line, when, sizeof(when) - 1) == 0) {
            i = sizeof(when) - 1;
            if (parse_int(&secs, line, n, &i, true) && i == n && secs_to_ms(secs) >= 0) {
                cur->time_ms = secs_to_ms(secs);
                cur->timed = true;
            }
        }
    }
    return 0;
}

/* The text of column `col` into the arena, or NO_TEXT when NULL. */
static int column_to_arena(size_t *out, parser *p, sqlite3_stmt *st, int col)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    *out = NO_TEXT;
    return s ? arena_add(out, p, s, (size_t)sqlite3_column_bytes(st, col)) : 0;
}

/*
 * Atuin's history.db: the rows of its history table not deleted (older
 * databases have no deleted_at), oldest first. Atuin keeps nanoseconds and
 * "host:user"; recsync keeps milliseconds and the host.
 */
static int parse_atuin(parser *p, const char *path)
{
    static const char *const queries[] = {
        "SELECT id, timestamp, duration, exit, command, cwd, session, hostname FROM history "
        "WHERE deleted_at IS NULL ORDER BY timestamp, id",
        "SELECT id, timestamp, duration, exit, command, cwd, session, hostname FROM history "
        "ORDER BY timestamp, id"};
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    parsed *e;
    char *colon;
    int rc, err = 0;

    if (strcmp(path, "-") == 0)
        return rs__error(RS_EINVAL, "an Atuin import reads a history.db file, not standard input");
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, queries[0], -1, &st, NULL);
    if (rc == SQLITE_ERROR)
        rc = sqlite3_prepare_v2(db, queries[1], -1, &st, NULL);
    if (rc != SQLITE_OK) {
        if (rc == SQLITE_CANTOPEN)
            err = rs__error(RS_ENOTFOUND, "cannot open %s: %s", path,
                            db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        else
            err = rs__error(RS_EIO, "%s is not an Atuin history database: %s", path,
                            db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t ns = sqlite3_column_int64(st, 1), dur = sqlite3_column_int64(st, 2);
        const char *command = (const char *)sqlite3_column_text(st, 4);
        if (command == NULL || *command == '\0')
            continue;
        if ((err = scratch_add(p, command, (size_t)sqlite3_column_bytes(st, 4))) < 0 ||
            (err = emit(&e, p, ns >= 0 ? ns / 1000000 : -1, dur >= 0 ? dur / 1000000 : -1, false)) <
                0)
            goto done;
        if (e == NULL)
            continue;
        e->exit_code = sqlite3_column_type(st, 3) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 3);
        if ((err = column_to_arena(&e->ext_id, p, st, 0)) < 0 ||
            (err = column_to_arena(&e->cwd, p, st, 5)) < 0 ||
            (err = column_to_arena(&e->session, p, st, 6)) < 0 ||
            (err = column_to_arena(&e->hostname, p, st, 7)) < 0)
            goto done;
        if (e->hostname != NO_TEXT && (colon = strrchr(p->arena + e->hostname, ':')) != NULL)
            *colon = '\0';
    }
    if (rc != SQLITE_DONE)
        err = rs__error(RS_EIO, "reading Atuin history %s: %s", path, sqlite3_errmsg(db));
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return err;
}

/*
 * Dates the entries the input left undated, keeping its order: those after
 * a dated entry 1 ms after their predecessor; those before the first dated
 * entry 1 ms apart up to it, or, when no entry is dated, up to 1 ms before
 * `end_ms` (the file's modification time, or now).
 */
static void date_entries(parser *p, int64_t end_ms)
{
    size_t first = 0;
    int64_t t;
    while (first < p->count && !p->entries[first].timed)
        first++;
    t = first < p->count ? p->entries[first].time_ms : end_ms;
    for (size_t i = first; i-- > 0;)
        p->entries[i].time_ms = t > 0 ? --t : 0;
    for (size_t i = first + 1; i < p->count; i++) {
        if (!p->entries[i].timed)
            p->entries[i].time_ms =
                p->entries[i - 1].time_ms < MAX_MS ? p->entries[i - 1].time_ms + 1 : MAX_MS;
    }
}

/* Counts of the entries seen so far per (time, command) hash, for their ordinals. */
typedef struct seen_slot {
    uint8_t key[16];
    uint32_t count;
    bool used;
} seen_slot;

typedef struct seen_table {
    seen_slot *slots;
    size_t cap; /* a power of two */
    size_t used;
} seen_table;

static uint64_t slot_hash(const uint8_t *key)
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return h;
}

/* The number of times `key` was seen before this call (0 the first time). */
static int seen_count(uint32_t *out, seen_table *t, const uint8_t *key)
{
    size_t i;
    if (t->used * 10 >= t->cap * 7) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        seen_slot *slots = rs__calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return rs__error(RS_ENOMEM, "out of memory importing history");
        for (size_t k = 0; k < t->cap; k++) {
            if (!t->slots[k].used)
                continue;
            for (i = slot_hash(t->slots[k].key) & (cap - 1); slots[i].used; i = (i + 1) & (cap - 1))
                ;
            slots[i] = t->slots[k];
        }
        rs_free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    for (i = slot_hash(key) & (t->cap - 1); t->slots[i].used; i = (i + 1) & (t->cap - 1)) {
        if (memcmp(t->slots[i].key, key, 16) == 0) {
            *out = t->slots[i].count++;
            return 0;
        }
    }
    memcpy(t->slots[i].key, key, 16);
    t->slots[i].used = true;
    t->slots[i].count = 1;
    t->used++;
    *out = 0;
    return 0;
}

static void put_be64(uint8_t *out, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

/*
 * An imported entry's id, a UUIDv8: the input's time for it in the first
 * 48 bits (zero for an undated entry, whose date depends on the file's
 * mtime and its neighbours), then a hash of that time, the command, and how
 * many identical (time, command) entries came before it in the input; for
 * Atuin's entries, a hash of Atuin's id instead.
 */
static int entry_id(rs_uuid *out, seen_table *seen, const parser *p, const parsed *e)
{
    static const char domain[] = "recsync history import v1";
    static const char atuin_domain[] = "recsync history import atuin v1";
    crypto_generichash_state h;
    uint8_t base[16], num[8];
    uint32_t ordinal = 0;
    int err;

    if (e->ext_id != NO_TEXT) {
        const char *ext = p->arena + e->ext_id;
        crypto_generichash_init(&h, NULL, 0, sizeof(out->bytes));
        crypto_generichash_update(&h, (const uint8_t *)atuin_domain, sizeof(atuin_domain));
        crypto_generichash_update(&h, (const uint8_t *)ext, strlen(ext));
        crypto_generichash_final(&h, out->bytes, sizeof(out->bytes));
    } else {
        crypto_generichash_init(&h, NULL, 0, sizeof(base));
        crypto_generichash_update(&h, (const uint8_t *)domain, sizeof(domain));
        put_be64(num, e->timed ? (uint64_t)e->time_ms : UINT64_MAX);
        crypto_generichash_update(&h, num, sizeof(num));
        crypto_generichash_update(&h, (const uint8_t *)p->arena + e->off, e->len);
        crypto_generichash_final(&h, base, sizeof(base));
        if ((err = seen_count(&ordinal, seen, base)) < 0)
            return err;
        put_be64(num, ordinal);
        crypto_generichash_init(&h, NULL, 0, sizeof(out->bytes));
        crypto_generichash_update(&h, base, sizeof(base));
        crypto_generichash_update(&h, num, sizeof(num));
        crypto_generichash_final(&h, out->bytes, sizeof(out->bytes));
    }
    /* The time leads, as in a UUIDv7, so one import's ids go into the id index in order. */
    put_be64(num, e->timed ? (uint64_t)e->time_ms : 0);
    memcpy(out->bytes, num + 2, 6);
    out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x80);
    out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80);
    return 0;
}

/*
 * Waits up to FIFO_WAIT_MS for a FIFO opened without blocking to have a
 * writer (data or an end of file after one), then makes `fd` blocking.
 * Linux reports no POLLHUP on a FIFO that has never had a writer, so poll
 * waits for the first one.
 */
static int await_writer(int fd, const char *path)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    int rc;
    do
        rc = poll(&pfd, 1, FIFO_WAIT_MS);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return rs__error(RS_EIO, "cannot wait on %s: %s", path, strerror(errno));
    if (rc == 0)
        return rs__error(RS_EIO, "%s: nothing opened the FIFO for writing within %d s", path,
                         FIFO_WAIT_MS / 1000);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0)
        return rs__error(RS_EIO, "cannot read %s: %s", path, strerror(errno));
    return 0;
}

/*
 * Reads all of `path` ("-": standard input) into *out (NUL-terminated).
 * *mtime_ms is a regular file's modification time, else 0.
 */
static int read_input(char **out, size_t *out_len, int64_t *mtime_ms, const char *path)
{
    bool std_in = strcmp(path, "-") == 0;
    const char *name = std_in ? "standard input" : path;
    int fd = std_in ? STDIN_FILENO : open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    ssize_t n;
    int err = 0;

    *mtime_ms = 0;
    if (fd < 0)
        return rs__error(errno == ENOENT ? RS_ENOTFOUND : RS_EIO, "cannot open %s: %s", path,
                         strerror(errno));
    if (fstat(fd, &st) != 0) {
        err = rs__error(RS_EIO, "cannot read %s: %s", name, strerror(errno));
        goto done;
    }
    if (S_ISDIR(st.st_mode)) {
        err = rs__error(RS_EIO, "%s is a directory, not a history file", name);
        goto done;
    }
    if (S_ISREG(st.st_mode))
        *mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (!std_in && S_ISFIFO(st.st_mode) && (err = await_writer(fd, path)) < 0)
        goto done;
    if (!std_in && !S_ISFIFO(st.st_mode) &&
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        err = rs__error(RS_EIO, "cannot read %s: %s", name, strerror(errno));
        goto done;
    }
    /* A regular file's size plus one, so its end is seen without growing. */
    if ((err = grow((void **)&buf, &cap,
                    S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 2 : 65536, 1)) < 0)
        goto done;
    for (;;) {
        if (len + 1 >= cap && (err = grow((void **)&buf, &cap, cap * 2, 1)) < 0)
            goto done;
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = rs__error(RS_EIO, "cannot read %s: %s", name, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
done:
    if (!std_in)
        close(fd);
    if (err < 0) {
        rs_free(buf);
        return err;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* Writes the parsed entries that are new, inside the caller's transaction. */
static int import_entries(rs_history_import_stats *stats, rs_store *store, history_state *hs,
                          parser *p)
{
    seen_table seen = {NULL, 0, 0};
    rs_history_entry e;
    char hostname[256];
    int state, err = 0;

    rs__history_hostname(hostname, sizeof(hostname));
    memset(&e, 0, sizeof(e));
    for (size_t i = 0; i < p->count; i++) {
        const parsed *pe = &p->entries[i];
        if ((err = entry_id(&e.id, &seen, p, pe)) < 0)
            goto done;
        state = rs__history_entry_state(hs, &e.id);
        if (state >= 0) {
            stats->skipped++;
            continue;
        }
        if (state != RS_ENOTFOUND) {
            err = state;
            goto done;
        }
        e.command = p->arena + pe->off;
        e.cwd = pe->cwd != NO_TEXT ? p->arena + pe->cwd : "";
        e.session = pe->session != NO_TEXT ? p->arena + pe->session : "";
        e.hostname = pe->hostname != NO_TEXT ? p->arena + pe->hostname : hostname;
        e.exit_code = pe->exit_code;
        e.time_ms = pe->time_ms;
        e.duration_ms = pe->duration_ms;
        if ((err = rs__history_write_create(store, &e)) < 0) {
            rs__error(err, "%s: entry %zu: %s", p->path, i + 1, rs_error_last());
            goto done;
        }
        stats->imported++;
    }
done:
    rs_free(seen.slots);
    return err;
}

static int parse_input(parser *p, int64_t *end_ms, rs_history_format format, const char *path,
                       unsigned flags)
{
    char *buf = NULL;
    size_t len = 0;
    int64_t mtime_ms = 0;
    int err;

    *end_ms = (int64_t)rs_now_ms();
    if (format == RS_HISTORY_ATUIN)
        return parse_atuin(p, path);
    if (format != RS_HISTORY_BASH && format != RS_HISTORY_ZSH && format != RS_HISTORY_FISH)
        return rs__error(RS_EINVAL, "history import: unknown format %d", (int)format);
    if ((err = read_input(&buf, &len, &mtime_ms, path)) < 0)
        return err;
    if (mtime_ms > 0)
        *end_ms = mtime_ms;
    if (format == RS_HISTORY_ZSH)
        err = parse_zsh(p, buf, len);
    else if (format == RS_HISTORY_FISH)
        err = parse_fish(p, buf, len);
    else
        err = parse_bash(p, buf, len, (flags & RS_HISTORY_IMPORT_MULTILINE) != 0);
    rs_free(buf);
    return err;
}

int rs_history_import_flags(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                            const char *path, unsigned flags)
{
    history_state *hs = rs__history_of(store);
    rs_history_import_stats stats = {0, 0, 0};
    parser p;
    int64_t end_ms = 0;
    bool savepoint = store->explicit_txn != 0, in_txn = false;
    int err;

    memset(&p, 0, sizeof(p));
    p.path = strcmp(path, "-") == 0 ? "standard input" : path;
    if (hs == NULL)
        return rs__error(RS_ENOTFOUND, "store %s has no history store registered", store->dir);
    if ((err = parse_input(&p, &end_ms, format, path, flags)) < 0)
        goto done;
    date_entries(&p, end_ms);
    stats.entries = p.count;
    /* All or nothing: a transaction of its own, or a savepoint in the caller's. */
    if (savepoint)
        err = rs__exec(store, "SAVEPOINT rs_import", "starting a history import");
    else
        err = rs_store_begin(store);
    if (err < 0)
        goto done;
    in_txn = true;
    rs__history_defer_begin(hs);
    if ((err = import_entries(&stats, store, hs, &p)) < 0 ||
        (err = rs__history_defer_end(hs, true)) < 0)
        goto done;
    in_txn = false;
    if (savepoint)
        err = rs__exec(store, "RELEASE rs_import", "finishing a history import");
    else
        err = rs_store_commit(store);
    if (err < 0)
        goto done;
    if (out)
        *out = stats;
done:
    rs__history_defer_end(hs, false);
    if (in_txn && savepoint)
        sqlite3_exec(store->db, "ROLLBACK TO rs_import; RELEASE rs_import", NULL, NULL, NULL);
    else if (in_txn)
        rs_store_rollback(store);
    rs_free(p.entries);
    rs_free(p.arena);
    rs_free(p.scratch);
    return err;
}

int rs_history_import(rs_history_import_stats *out, rs_store *store, rs_history_format format,
                      const char *path)
{
    return rs_history_import_flags(out, store, format, path, 0);
}
