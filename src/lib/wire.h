/*
 * The JSON wire codec shared by recsyncd and the client (DESIGN.md, "Wire
 * contract"; docs/protocol.md). Not API: the server, the library's client
 * code, tests and fuzzers include it; the CLI does not.
 *
 * Encoding writes straight into a growable buffer (rs_buf) without building
 * a JSON tree: every field of a record is either a number, fixed-alphabet
 * text (UUID, hlc hex, a tag of [a-z0-9._-]) or base64, so nothing needs
 * escaping and a page of records costs one buffer, not thousands of
 * allocations. Decoding parses with jansson and validates every field; an
 * error names the field and the record's position in the batch
 * ("records[3].idx: not a non-negative integer") and returns RS_EINVAL
 * (RS_ETOOBIG for an envelope over the bound).
 */
#ifndef RS_WIRE_H
#define RS_WIRE_H

#include "internal.h"

#include <jansson.h>

/*
 * A growable byte buffer. Zero-initialize it (`rs_buf b = {0};`); `ptr` is
 * NUL-terminated whenever len > 0 was written by the rs_buf / rs_wire
 * functions. Memory comes from rs__malloc; free with rs_buf_free, or take
 * it with rs_buf_detach (then free with rs_free).
 */
typedef struct rs_buf {
    char *ptr;
    size_t len;
    size_t cap;
} rs_buf;

/* Makes room for `extra` more bytes plus a NUL. RS_ENOMEM on failure. */
int rs_buf_reserve(rs_buf *buf, size_t extra);
int rs_buf_put(rs_buf *buf, const void *data, size_t len);
int rs_buf_puts(rs_buf *buf, const char *text);
int rs_buf_printf(rs_buf *buf, const char *fmt, ...) RS_PRINTF(2, 3);
/* Appends `text` as a JSON string literal, quotes included, escaping as needed. */
int rs_buf_put_json_string(rs_buf *buf, const char *text);
/* Empties the buffer, keeping its memory for reuse. */
void rs_buf_clear(rs_buf *buf);
void rs_buf_free(rs_buf *buf);
/* The buffer's memory (NUL-terminated; never NULL unless out of memory), reset to empty. */
char *rs_buf_detach(rs_buf *buf);

/*
 * Standard base64 with padding (RFC 4648 section 4), byte for byte what
 * libsodium's sodium_base64_VARIANT_ORIGINAL writes and accepts (padding
 * required, no whitespace, unused bits zero), but table-driven instead of
 * constant-time: envelopes are ciphertext, not secrets, and on the upload
 * path libsodium's constant-time decoder took a third of the server's time.
 * rs_base64_encode writes RS_BASE64_LEN(len) characters (no NUL);
 * rs_base64_decode needs room for len / 4 * 3 bytes and returns RS_EINVAL
 * (without a message: callers name the field) for anything not canonical.
 */
#define RS_BASE64_LEN(n) (((n) + 2) / 3 * 4)
size_t rs_base64_encode(char *out, const uint8_t *in, size_t len);
int rs_base64_decode(uint8_t *out, size_t *out_len, const char *in, size_t len);

/* Largest envelope accepted by default: a 1 MiB payload sealed. */
#define RS_WIRE_DEFAULT_MAX_DATA (RS_DEFAULT_MAX_PAYLOAD + RS_ENVELOPE_OVERHEAD)

/*
 * Records. A body or page is written in three steps, so a server can encode
 * rows as its database hands them out:
 *
 *   rs_wire_records_begin(&b);             {"records":[
 *   rs_wire_records_add(&b, &rec);  ...     {...},{...}
 *   rs_wire_upload_end(&b);                ]}                  (POST body)
 *   rs_wire_page_end(&b, has_next, next);  ],"next":N|null}   (GET page)
 *
 * rs_wire_records_add refuses (RS_EINVAL) a record whose tag is not valid.
 */
int rs_wire_records_begin(rs_buf *out);
int rs_wire_records_add(rs_buf *out, const rs_record *rec);
int rs_wire_upload_end(rs_buf *out);
int rs_wire_page_end(rs_buf *out, int has_next, uint64_t next);

/* Bytes one record takes when encoded (exact), for byte-bounded pages. */
size_t rs_wire_record_size(const rs_record *rec);

/*
 * A decoded batch: records whose `data` point into the batch's own arena.
 * Reuse one batch for many decodes (a sync's pages) to reuse its memory;
 * zero-initialize it first and release with rs_wire_batch_free.
 */
typedef struct rs_wire_batch {
    rs_record *records;
    size_t count;
    int has_next;  /* pages only: "next" was a number */
    uint64_t next; /* pages only: the idx to ask for next */
    size_t records_cap;
    uint8_t *arena;
    size_t arena_cap;
} rs_wire_batch;

typedef enum rs_wire_kind {
    RS_WIRE_UPLOAD, /* {"records": [...]} */
    RS_WIRE_PAGE    /* {"records": [...], "next": N|null} */
} rs_wire_kind;

/*
 * Decodes `len` bytes of `text` (need not be NUL-terminated) into `out`,
 * replacing what it held. Every record is checked: id and host UUIDs, a
 * valid tag, idx a non-negative integer, hlc 16 hex digits, version a
 * 32-bit unsigned integer, data standard base64 of an envelope (magic
 * RS_ENVELOPE_MAGIC, at least RS_ENVELOPE_OVERHEAD bytes, at most
 * `max_data` bytes; 0 means RS_WIRE_DEFAULT_MAX_DATA). Unknown fields are
 * ignored. On failure `out` holds no records and the message names the
 * field.
 */
int rs_wire_decode_records(rs_wire_batch *out, const char *text, size_t len, rs_wire_kind kind,
                           size_t max_data);
void rs_wire_batch_free(rs_wire_batch *batch);

/*
 * The index: {"shards": [{"host", "tag", "start", "end"}], "seq": N}.
 * Decoding checks start <= end and refuses a shard listed twice; *out is
 * the caller's (rs_index_free). rs_wire_index_from_json decodes an index
 * nested in a larger document (boot), naming it `where` in messages.
 */
int rs_wire_index_encode(rs_buf *out, const rs_index *index);
int rs_wire_index_decode(rs_index **out, const char *text, size_t len);
int rs_wire_index_from_json(rs_index **out, const json_t *obj, const char *where);

/* The boot document: {"user": "...", "index": {...}, "resume_point": N}. */
typedef struct rs_wire_boot {
    char *user; /* rs_free */
    rs_index *index;
    uint64_t resume_point;
} rs_wire_boot;

int rs_wire_boot_encode(rs_buf *out, const char *user, const rs_index *index,
                        uint64_t resume_point);
int rs_wire_boot_decode(rs_wire_boot *out, const char *text, size_t len);
void rs_wire_boot_clear(rs_wire_boot *boot);

/*
 * One live event, the data line of an SSE `records` event: shard (host,
 * tag) gained [start, end), the last of whose records got seq `seq`.
 */
typedef struct rs_wire_event {
    rs_uuid host;
    char tag[RS_TAG_MAX + 1];
    uint64_t start;
    uint64_t end;
    uint64_t seq;
} rs_wire_event;

int rs_wire_event_encode(rs_buf *out, const rs_wire_event *event);
int rs_wire_event_decode(rs_wire_event *out, const char *text, size_t len);

/*
 * A frontier (acks): {"frontier": [{"host", "tag", "end"}]}, carried in an
 * rs_index whose shards' `end` is the position below which everything is
 * applied (`start` is 0, `seq` unused). Decoding refuses a shard listed
 * twice.
 */
int rs_wire_frontier_encode(rs_buf *out, const rs_index *frontier);
int rs_wire_frontier_decode(rs_index **out, const char *text, size_t len);

/* register / login request: {"username", "password", "host"[, "name"]}. */
#define RS_WIRE_USERNAME_MAX 64
#define RS_WIRE_PASSWORD_MAX 1024
#define RS_WIRE_DEVICE_NAME_MAX 64 /* bytes of UTF-8 */

typedef struct rs_wire_credentials {
    char username[RS_WIRE_USERNAME_MAX + 1];
    char *password; /* rs__malloc'd; wiped and freed by rs_wire_credentials_clear */
    rs_uuid host;
    char name[RS_WIRE_DEVICE_NAME_MAX + 1]; /* the device's name; "" when not given */
} rs_wire_credentials;

int rs_wire_credentials_encode(rs_buf *out, const char *username, const char *password,
                               const rs_uuid *host);
/* As rs_wire_credentials_encode, with the device's `name` (NULL or "": none). */
int rs_wire_credentials_encode_named(rs_buf *out, const char *username, const char *password,
                                     const rs_uuid *host, const char *name);
/* A device name: 1-64 bytes, no control characters (bytes below 0x20, 0x7f). */
int rs_wire_device_name_valid(const char *name);
/*
 * Checks the user name is 1-64 characters of [A-Za-z0-9._@+-], the password
 * 1-1024 bytes, the host a UUID other than nil, the name (optional) a
 * device name; RS_EINVAL naming the field.
 */
int rs_wire_credentials_decode(rs_wire_credentials *out, const char *text, size_t len);
void rs_wire_credentials_clear(rs_wire_credentials *creds);
int rs_wire_username_valid(const char *name);

/* {"token": "...", "username": "..."} */
int rs_wire_token_encode(rs_buf *out, const char *token, const char *username);
int rs_wire_token_decode(char **token, char **username, const char *text, size_t len);

/* Upload result {"accepted": N, "inserted": N, "seq": N}. */
int rs_wire_upload_result_encode(rs_buf *out, uint64_t accepted, uint64_t inserted, uint64_t seq);
int rs_wire_upload_result_decode(uint64_t *accepted, uint64_t *inserted, uint64_t *seq,
                                 const char *text, size_t len);

/*
 * An error body {"error": code, "message": text}. Decoding copies into the
 * caller's buffers (truncating); a body that is not such an object is
 * RS_EINVAL.
 */
int rs_wire_error_encode(rs_buf *out, const char *code, const char *message);
int rs_wire_error_decode(char *code, size_t code_size, char *message, size_t message_size,
                         const char *text, size_t len);

#endif
