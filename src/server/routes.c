/*
 * recsyncd's routes: each validates its input, calls the backend and fills
 * a reply, or returns a negative code whose message names what was wrong
 * (http.c turns it into the error body).
 */
#include "server.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#define ROUTE_SHARD_NAME (RS_UUID_STRLEN + RS_TAG_MAX + 2)

/* Strict decimal: digits only, no sign, no overflow. */
static int parse_u64(uint64_t *out, const char *text)
{
    uint64_t v = 0;
    if (text == NULL || *text == '\0')
        return RS_EINVAL;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return RS_EINVAL;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return RS_EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static const char *query_arg(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

/* An optional non-negative integer query argument; `*out` keeps its default when absent. */
static int query_u64(uint64_t *out, struct MHD_Connection *conn, const char *name)
{
    const char *v = query_arg(conn, name);
    if (v == NULL)
        return 0;
    if (parse_u64(out, v) < 0 || *out > (uint64_t)INT64_MAX)
        return rs__error(RS_EINVAL, "%s: '%.40s' is not a non-negative integer", name, v);
    return 0;
}

/* ---- accounts ---- */

static int token_reply(rs_reply *out, unsigned status, const char *token, const char *username)
{
    out->status = status;
    return rs_wire_token_encode(&out->body, token, username);
}

#define INVITE_CODE_MAX 128

/*
 * The optional "invite" field of a registration (the wire decoder ignores
 * fields it does not know): 0 and code[0] = '\0' when absent, RS_EINVAL
 * when it is not a string of 1-128 characters.
 */
static int invite_field(char *code, const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int err = 0;
    code[0] = '\0';
    const json_t *v = root ? json_object_get(root, "invite") : NULL;
    if (v != NULL) {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > INVITE_CODE_MAX)
            err = rs__error(RS_EINVAL, "invite: not an invite code (a string of 1-%d characters)",
                            INVITE_CODE_MAX);
        else
            snprintf(code, INVITE_CODE_MAX + 1, "%s", json_string_value(v));
    }
    json_decref(root);
    return err;
}

/*
 * POST /api/v1/register, cheapest refusals first: registration closed, no
 * invite where one is needed, a taken name (case-insensitively), the
 * address's registration bucket empty; then argon2id (503 when every slot
 * is busy), then user and device created in one transaction (consuming the
 * invite); 201 with the token.
 */
int rs_route_register(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len)
{
    rs_wire_credentials creds;
    rs_account existing;
    char pwhash[crypto_pwhash_STRBYTES];
    char token_text[RS_TOKEN_TEXT_LEN + 1];
    char invite[INVITE_CODE_MAX + 1];
    uint8_t invite_hash[RS_INVITE_HASH_BYTES];
    rs_token token;
    int64_t user;
    int err = rs_wire_credentials_decode(&creds, body, len);
    if (err < 0)
        return err;
    if (rs_srv.cfg.registration == RS_REGISTRATION_CLOSED) {
        err = rs__error(RS_EFORBIDDEN, "registration is closed on this server (recsyncd "
                                       "--registration closed): ask its operator for an account");
        goto done;
    }
    if ((err = invite_field(invite, body, len)) < 0)
        goto done;
    if (rs_srv.cfg.registration == RS_REGISTRATION_INVITE && invite[0] == '\0') {
        err = rs__error(RS_EFORBIDDEN,
                        "registration on this server needs an invite code (the \"invite\" field; "
                        "its operator makes them with recsyncd --make-invite)");
        goto done;
    }
    err = rs_srv.backend->ops->user_lookup(rs_srv.backend, &existing, creds.username);
    if (err == 0) {
        err = strcmp(existing.name, creds.username) == 0
                  ? rs__error(RS_EEXISTS, "user name %s is taken", creds.username)
                  : rs__error(RS_EEXISTS,
                              "user name %s is taken (as %s: user names are case-insensitive)",
                              creds.username, existing.name);
        goto done;
    }
    if (err != RS_ENOTFOUND)
        goto done;
    if ((err = rs_auth_register_admit(conn, &out->retry_after_s)) < 0 ||
        (err = rs_auth_hash_password(pwhash, creds.password, &out->retry_after_s)) < 0)
        goto done;
    if (rs_srv.cfg.registration == RS_REGISTRATION_INVITE)
        rs_auth_invite_hash(invite_hash, invite);
    rs_auth_new_token(token_text, &token);
    if ((err = rs_srv.backend->ops->user_create(
             rs_srv.backend, &user, creds.username, pwhash, &creds.host, &token,
             rs_srv.cfg.registration == RS_REGISTRATION_INVITE ? invite_hash : NULL, creds.name)) <
        0)
        goto done;
    err = token_reply(out, 201, token_text, creds.username);
done:
    sodium_memzero(token_text, sizeof(token_text));
    sodium_memzero(invite, sizeof(invite));
    sodium_memzero(&existing, sizeof(existing));
    rs_wire_credentials_clear(&creds);
    return err;
}

/* True when the request carries a valid token of device of `user` (a device of the account). */
static int known_device(struct MHD_Connection *conn, int64_t user)
{
    rs_device dev;
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION) == NULL)
        return 0;
    int known = rs_auth_device(&dev, conn) == 0 && dev.user == user;
    rs_error_clear();
    sodium_memzero(&dev, sizeof(dev));
    return known;
}

/*
 * POST /api/v1/login: finds the account by name (any case), verifies the
 * password under the login brake (never applied to a request carrying a
 * valid token of the account), then binds this host to the user with a
 * fresh token (retiring its old one). Answers the name as registered.
 */
int rs_route_login(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len)
{
    rs_wire_credentials creds;
    rs_account account;
    char token_text[RS_TOKEN_TEXT_LEN + 1];
    rs_token token;
    int err = rs_wire_credentials_decode(&creds, body, len);
    if (err < 0)
        return err;
    err = rs_srv.backend->ops->user_lookup(rs_srv.backend, &account, creds.username);
    if (err < 0 && err != RS_ENOTFOUND)
        goto done;
    int found = err == 0;
    if ((err = rs_auth_login(found ? &account : NULL, creds.username, creds.password, conn,
                             found && known_device(conn, account.user), &out->retry_after_s)) < 0)
        goto done;
    rs_auth_new_token(token_text, &token);
    if ((err = rs_srv.backend->ops->device_bind(rs_srv.backend, account.user, &creds.host, &token,
                                                creds.name)) < 0)
        goto done;
    rs_auth_forget_device(&creds.host); /* its previous token, if cached */
    err = token_reply(out, 200, token_text, account.name);
done:
    sodium_memzero(token_text, sizeof(token_text));
    sodium_memzero(&account, sizeof(account));
    rs_wire_credentials_clear(&creds);
    return err;
}

/* ---- index and boot ---- */

int rs_route_index(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    rs_index index = {0};
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = rs_srv.backend->ops->index(rs_srv.backend, &index, dev.user)) == 0)
        err = rs_wire_index_encode(&out->body, &index);
    rs_free(index.shards);
    return err;
}

int rs_route_boot(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    rs_index index = {0};
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = rs_srv.backend->ops->index(rs_srv.backend, &index, dev.user)) == 0)
        err = rs_wire_boot_encode(&out->body, dev.username, &index, index.seq);
    rs_free(index.shards);
    return err;
}

/* ---- records ---- */

/* The test hook's stall, from X-Recsync-Test-Stall-Ms when --test-hooks is on. */
static unsigned test_stall_ms(struct MHD_Connection *conn)
{
    uint64_t ms = 0;
    if (!rs_srv.cfg.test_hooks)
        return 0;
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Recsync-Test-Stall-Ms");
    if (v == NULL || parse_u64(&ms, v) < 0 || ms > 60000)
        return 0;
    return (unsigned)ms;
}

/*
 * POST /api/v1/records: decodes and checks the whole batch (fields, sizes,
 * every record in a shard of the uploading device) before the backend
 * stores it all or nothing; answers accepted, inserted and the seq after.
 */
int rs_route_records_post(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len)
{
    rs_device dev;
    rs_wire_batch batch = {0};
    rs_insert_result res;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = rs_wire_decode_records(&batch, body, len, RS_WIRE_UPLOAD,
                                      rs_srv.cfg.max_payload + RS_ENVELOPE_OVERHEAD +
                                          RS_CHAIN_BYTES)) < 0)
        goto done;
    for (size_t i = 0; i < batch.count; i++) {
        const rs_record *rec = &batch.records[i];
        if (memcmp(rec->host.bytes, dev.host.bytes, sizeof(dev.host.bytes)) != 0) {
            char shard[ROUTE_SHARD_NAME], self[RS_UUID_STRLEN + 1];
            rs__shard_name(shard, sizeof(shard), &rec->host, rec->tag);
            rs_uuid_format(self, &dev.host);
            err = rs__error(RS_EFORBIDDEN,
                            "records[%zu]: shard %s belongs to another device; this device (%s) "
                            "may upload only to its own shards",
                            i, shard, self);
            goto done;
        }
    }
    if (batch.count == 0) {
        uint64_t floor;
        memset(&res, 0, sizeof(res));
        if ((err = rs_srv.backend->ops->seq(rs_srv.backend, &res.seq, &floor, dev.user)) < 0)
            goto done;
    } else {
        rs_insert_opts opts = {.stall_ms = test_stall_ms(conn),
                               .quota_bytes = rs_srv.cfg.quota_bytes};
        if ((err = rs_srv.backend->ops->insert(rs_srv.backend, &res, dev.user, batch.records,
                                               batch.count, &opts)) < 0) {
            if (err == RS_EQUOTA)
                atomic_fetch_add(&rs_stats.quota_refused, 1);
            goto done;
        }
    }
    atomic_fetch_add(&rs_stats.records_stored, res.inserted);
    atomic_fetch_add(&rs_stats.bytes_stored, res.bytes);
    err = rs_wire_upload_result_encode(&out->body, res.accepted, res.inserted, res.seq);
done:
    rs_wire_batch_free(&batch);
    return err;
}

typedef struct page_ctx {
    rs_buf *buf;
    size_t max_bytes;
    size_t taken;
    uint64_t bytes;
} page_ctx;

/* Adds one record to the page, or ends the page (> 0) when it would pass the byte bound. */
static int page_add(const rs_record *rec, void *payload)
{
    page_ctx *p = payload;
    if (p->taken > 0 && p->buf->len + rs_wire_record_size(rec) > p->max_bytes)
        return 1; /* full: this record starts the next page */
    int err = rs_wire_records_add(p->buf, rec);
    if (err < 0)
        return err;
    p->taken++;
    p->bytes += rec->data_len;
    return 0;
}

/*
 * GET /api/v1/records: one page of a shard of the user, bounded by the
 * limit (capped at --page-max) and by --page-bytes, records encoded straight
 * from the database rows into the response buffer.
 */
int rs_route_records_get(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    rs_uuid host;
    uint64_t start = 0, limit = rs_srv.cfg.page_default;
    rs_page_result page;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    const char *h = query_arg(conn, "host"), *tag = query_arg(conn, "tag");
    if (h == NULL)
        return rs__error(RS_EINVAL, "host: missing (GET /api/v1/records?host=&tag=&start=&limit=)");
    if (rs_uuid_parse(&host, h) < 0)
        return rs__error(RS_EINVAL, "host: '%.40s' is not a UUID", h);
    if (tag == NULL)
        return rs__error(RS_EINVAL, "tag: missing (GET /api/v1/records?host=&tag=&start=&limit=)");
    if (!rs_tag_valid(tag))
        return rs__error(RS_EINVAL, "tag: '%.70s' is not a tag (1-64 of [a-z0-9._-])", tag);
    if ((err = query_u64(&start, conn, "start")) < 0 ||
        (err = query_u64(&limit, conn, "limit")) < 0)
        return err;
    if (limit == 0)
        return rs__error(RS_EINVAL, "limit: must be at least 1");
    if (limit > rs_srv.cfg.page_max)
        limit = rs_srv.cfg.page_max;

    page_ctx ctx = {.buf = &out->body, .max_bytes = rs_srv.cfg.page_bytes};
    size_t guess = (size_t)limit * 512;
    if ((err = rs_buf_reserve(&out->body, guess < (1u << 20) ? guess : (1u << 20))) < 0 ||
        (err = rs_wire_records_begin(&out->body)) < 0)
        return err;
    if ((err = rs_srv.backend->ops->read_page(rs_srv.backend, &page, dev.user, &host, tag, start,
                                              (size_t)limit, page_add, &ctx)) < 0)
        return err;
    atomic_fetch_add(&rs_stats.records_served, ctx.taken);
    atomic_fetch_add(&rs_stats.bytes_served, ctx.bytes);
    return rs_wire_page_end(&out->body, page.has_next, page.next);
}

/* ---- events ---- */

int rs_route_events(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    uint64_t after = 0;
    int has_after = 0;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    const char *last = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Last-Event-ID");
    const char *q = query_arg(conn, "after");
    if (last && *last) {
        if (parse_u64(&after, last) < 0 || after > (uint64_t)INT64_MAX)
            return rs__error(RS_EINVAL, "Last-Event-ID: '%.40s' is not a seq", last);
        has_after = 1;
    } else if (q) {
        if (parse_u64(&after, q) < 0 || after > (uint64_t)INT64_MAX)
            return rs__error(RS_EINVAL, "after: '%.40s' is not a seq", q);
        has_after = 1;
    }
    return rs_events_open(out, conn, &dev, has_after, after);
}

/* ---- acks ---- */

/*
 * POST /api/v1/acks: the calling device's applied frontier. It may name any
 * shard of the user (a device applies every device's records), never
 * another user's or one that does not exist, and never past a shard's end;
 * the backend checks both in the write transaction and stores all or
 * nothing. The device acked for is always the token's.
 */
int rs_route_acks_post(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len)
{
    rs_device dev;
    rs_index *frontier = NULL;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = rs_wire_frontier_decode(&frontier, body, len)) < 0)
        return err;
    if ((err = rs_srv.backend->ops->ack_put(rs_srv.backend, dev.user, &dev.host, frontier)) == 0 &&
        (err = rs_srv.backend->ops->device_touch(rs_srv.backend, &dev.host)) == 0)
        err = rs_buf_printf(&out->body, "{\"acked\":%zu}", frontier->count);
    rs_index_free(frontier);
    return err;
}

int rs_route_acks_get(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    rs_index floor = {0};
    uint64_t devices = 0;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = rs_srv.backend->ops->ack_floor(rs_srv.backend, &floor, &devices, dev.user)) < 0 ||
        (err = rs_wire_frontier_encode(&out->body, &floor)) < 0)
        goto done;
    /* {"frontier":[...]} gains the device count before its closing brace. */
    out->body.len--;
    err = rs_buf_printf(&out->body, ",\"devices\":%llu}", (unsigned long long)devices);
done:
    rs_free(floor.shards);
    return err;
}

/* ---- operations ---- */

int rs_route_healthz(rs_reply *out, struct MHD_Connection *conn)
{
    int err = rs_srv.backend->ops->ping(rs_srv.backend);
    if (err < 0)
        return err == RS_EUNAVAIL ? err : rs__error(RS_EUNAVAIL, "database: %s", rs_error_last());
    return rs_buf_printf(&out->body, "{\"status\":\"ok\",\"backend\":\"%s\"}",
                         rs_srv.backend->ops->name);
}

int rs_route_metrics(rs_reply *out, struct MHD_Connection *conn)
{
    out->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return rs_metrics_render(&out->body);
}
