/*
 * Devices and accounts (docs/protocol.md "Devices and accounts"): the
 * user's devices with how far behind each one's acks are, retiring one
 * (its token refused with device_retired, its hold on the prune floor
 * released), renaming, logging out, changing the password and deleting
 * the account with everything it stored.
 *
 * A retirement, logout or deletion drops the tokens concerned from this
 * process's token cache and ends their open event streams at once; other
 * recsyncd processes on the same database refuse them once their cache
 * entries expire (--token-cache-ms), and their streams at the next
 * heartbeat after that (rs_auth_recheck).
 */
#include "server.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* The request body as a JSON object (an empty body is an empty object). */
static int parse_body(json_t **out, const char *body, size_t len)
{
    json_error_t e;
    if (len == 0) {
        *out = json_object();
        return *out ? 0 : rs__error(RS_ENOMEM, "out of memory");
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
    if (root == NULL)
        return rs__error(RS_EINVAL, "the body is not JSON: %s (line %d)", e.text, e.line);
    if (!json_is_object(root)) {
        json_decref(root);
        return rs__error(RS_EINVAL, "the body is not a JSON object");
    }
    *out = root;
    return 0;
}

/* A host id field: required when `dflt` is NULL, else *out = *dflt when absent. */
static int get_host(rs_uuid *out, const json_t *root, const char *field, const rs_uuid *dflt)
{
    const json_t *v = json_object_get(root, field);
    if (v == NULL || json_is_null(v)) {
        if (dflt == NULL)
            return rs__error(RS_EINVAL, "%s: missing", field);
        *out = *dflt;
        return 0;
    }
    if (!json_is_string(v) || rs_uuid_parse(out, json_string_value(v)) < 0 || rs_uuid_is_nil(out))
        return rs__error(RS_EINVAL, "%s: not a host id (a UUID other than nil)", field);
    return 0;
}

/* A password field of 1-1024 bytes; *out points into `root`. */
static int get_password(const char **out, const json_t *root, const char *field)
{
    const json_t *v = json_object_get(root, field);
    if (v == NULL)
        return rs__error(RS_EINVAL, "%s: missing", field);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > RS_WIRE_PASSWORD_MAX ||
        strlen(json_string_value(v)) != json_string_length(v))
        return rs__error(RS_EINVAL, "%s: not a string of 1-1024 bytes", field);
    *out = json_string_value(v);
    return 0;
}

/* Checks `password` for the user of `dev` under the login brake (RS_EAUTH, RS_ETHROTTLED). */
static int check_password(const rs_device *dev, const char *password, struct MHD_Connection *conn,
                          unsigned *retry_after_s)
{
    rs_account account;
    int err = rs_srv.backend->ops->user_lookup(rs_srv.backend, &account, dev->username);
    if (err < 0 && err != RS_ENOTFOUND)
        return err;
    /* known_device 0: a token must not buy unthrottled guesses at the password. */
    err = rs_auth_login(err == RS_ENOTFOUND ? NULL : &account, dev->username, password, conn, 0,
                        retry_after_s);
    sodium_memzero(&account, sizeof(account));
    return err;
}

static int put_host(rs_buf *out, const char *key, const rs_uuid *host)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    return rs_buf_printf(out, "\"%s\":\"%s\"", key, h);
}

typedef struct list_ctx {
    rs_buf *out;
    const rs_uuid *self;
    size_t count;
} list_ctx;

static int list_add(const rs_device_row *row, void *payload)
{
    list_ctx *ctx = payload;
    int err;
    if ((err = rs_buf_puts(ctx->out, ctx->count++ ? ",{" : "{")) < 0 ||
        (err = put_host(ctx->out, "host", &row->host)) < 0 ||
        (err = rs_buf_puts(ctx->out, ",\"name\":")) < 0 ||
        (err = rs_buf_put_json_string(ctx->out, row->name)) < 0 ||
        (err = rs_buf_printf(ctx->out, ",\"created_ms\":%llu,\"last_seen_ms\":%llu",
                             (unsigned long long)row->created_ms,
                             (unsigned long long)row->last_seen_ms)) < 0)
        return err;
    if (row->retired_ms)
        err = rs_buf_printf(ctx->out, ",\"retired_ms\":%llu", (unsigned long long)row->retired_ms);
    else
        err = rs_buf_puts(ctx->out, ",\"retired_ms\":null");
    if (err < 0)
        return err;
    return rs_buf_printf(ctx->out, ",\"behind\":%llu,\"current\":%s}",
                         (unsigned long long)row->behind,
                         rs_uuid_cmp(&row->host, ctx->self) == 0 ? "true" : "false");
}

/* GET /api/v1/devices: every device of the user, oldest first. */
int rs_route_devices_get(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    list_ctx ctx = {.out = &out->body, .self = &dev.host};
    if ((err = rs_buf_puts(&out->body, "{\"devices\":[")) < 0 ||
        (err = rs_srv.backend->ops->device_list(rs_srv.backend, dev.user, list_add, &ctx)) < 0)
        return err;
    if ((err = rs_buf_puts(&out->body, "],")) < 0 ||
        (err = put_host(&out->body, "current", &dev.host)) < 0)
        return err;
    return rs_buf_puts(&out->body, "}");
}

/*
 * POST /api/v1/devices/retire {"host"}: retires a device of the user (this
 * one too, if asked); a device already retired keeps its time.
 */
int rs_route_devices_retire(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len)
{
    rs_device dev;
    rs_uuid host;
    uint64_t retired_ms = 0;
    json_t *root = NULL;
    char h[RS_UUID_STRLEN + 1];
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = parse_body(&root, body, len)) < 0 || (err = get_host(&host, root, "host", NULL)) < 0)
        goto done;
    rs_uuid_format(h, &host);
    if ((err = rs_srv.backend->ops->device_retire(rs_srv.backend, &retired_ms, dev.user, &host,
                                                  rs_now_ms())) < 0) {
        if (err == RS_ENOTFOUND)
            err = rs__error(RS_ENOTFOUND, "user %s has no device %s", dev.username, h);
        goto done;
    }
    rs_auth_forget_device(&host);
    char message[200];
    snprintf(message, sizeof(message), "device %s of user %s was retired", h, dev.username);
    rs_events_revoke(dev.user, &host, "device_retired", message);
    if ((err = rs_buf_puts(&out->body, "{")) < 0 || (err = put_host(&out->body, "host", &host)) < 0)
        goto done;
    err = rs_buf_printf(&out->body, ",\"retired_ms\":%llu}", (unsigned long long)retired_ms);
done:
    json_decref(root);
    return err;
}

/* POST /api/v1/devices/rename {"host" (default: this device), "name"}. */
int rs_route_devices_rename(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len)
{
    rs_device dev;
    rs_uuid host;
    json_t *root = NULL;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = parse_body(&root, body, len)) < 0 ||
        (err = get_host(&host, root, "host", &dev.host)) < 0)
        goto done;
    const json_t *name = json_object_get(root, "name");
    if (name == NULL || !json_is_string(name) ||
        strlen(json_string_value(name)) != json_string_length(name) ||
        !rs_wire_device_name_valid(json_string_value(name))) {
        err = rs__error(RS_EINVAL, "name: %s",
                        name == NULL ? "missing"
                                     : "not a device name (1-64 bytes, no control characters)");
        goto done;
    }
    if ((err = rs_srv.backend->ops->device_rename(rs_srv.backend, dev.user, &host,
                                                  json_string_value(name))) < 0) {
        if (err == RS_ENOTFOUND) {
            char h[RS_UUID_STRLEN + 1];
            rs_uuid_format(h, &host);
            err = rs__error(RS_ENOTFOUND, "user %s has no device %s", dev.username, h);
        }
        goto done;
    }
    if ((err = rs_buf_puts(&out->body, "{")) < 0 ||
        (err = put_host(&out->body, "host", &host)) < 0 ||
        (err = rs_buf_puts(&out->body, ",\"name\":")) < 0 ||
        (err = rs_buf_put_json_string(&out->body, json_string_value(name))) < 0)
        goto done;
    err = rs_buf_puts(&out->body, "}");
done:
    json_decref(root);
    return err;
}

/*
 * POST /api/v1/logout: replaces this device's token with one whose secret
 * nobody holds. The device stays registered (it holds the prune floor
 * until retired or expired) and may log in again.
 */
int rs_route_logout(rs_reply *out, struct MHD_Connection *conn, const char *body, size_t len)
{
    rs_device dev;
    rs_token token;
    char text[RS_TOKEN_TEXT_LEN + 1];
    int err = rs_auth_device(&dev, conn);
    (void)body;
    (void)len;
    if (err < 0)
        return err;
    rs_auth_new_token(text, &token);
    sodium_memzero(text, sizeof(text));
    if ((err = rs_srv.backend->ops->device_revoke(rs_srv.backend, dev.user, &dev.host, &token)) < 0)
        return err;
    rs_auth_forget_device(&dev.host);
    rs_events_revoke(dev.user, &dev.host, "unauthorized", "this device logged out");
    if ((err = rs_buf_puts(&out->body, "{")) < 0 ||
        (err = put_host(&out->body, "logged_out", &dev.host)) < 0)
        return err;
    return rs_buf_puts(&out->body, "}");
}

/*
 * POST /api/v1/account/password {"password", "new_password"}: the old
 * password is checked under the login brake; every device's token keeps
 * working.
 */
int rs_route_account_password(rs_reply *out, struct MHD_Connection *conn, const char *body,
                              size_t len)
{
    rs_device dev;
    json_t *root = NULL;
    const char *old_pw, *new_pw;
    char pwhash[crypto_pwhash_STRBYTES];
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = parse_body(&root, body, len)) < 0 ||
        (err = get_password(&old_pw, root, "password")) < 0 ||
        (err = get_password(&new_pw, root, "new_password")) < 0 ||
        (err = check_password(&dev, old_pw, conn, &out->retry_after_s)) < 0 ||
        (err = rs_auth_hash_password(pwhash, new_pw, &out->retry_after_s)) < 0 ||
        (err = rs_srv.backend->ops->user_password(rs_srv.backend, dev.user, pwhash)) < 0)
        goto done;
    if ((err = rs_buf_puts(&out->body, "{\"username\":")) < 0 ||
        (err = rs_buf_put_json_string(&out->body, dev.username)) < 0)
        goto done;
    err = rs_buf_puts(&out->body, ",\"changed\":true}");
done:
    sodium_memzero(pwhash, sizeof(pwhash));
    json_decref(root); /* the passwords' copies are jansson's: not wiped */
    return err;
}

/*
 * POST /api/v1/account/delete {"password", "confirm": "<user name>"}:
 * deletes the user and everything it stored in one transaction, then ends
 * every stream of the user here.
 */
int rs_route_account_delete(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len)
{
    rs_device dev;
    json_t *root = NULL;
    const char *pw;
    rs_user_delete_stats st;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    if ((err = parse_body(&root, body, len)) < 0 || (err = get_password(&pw, root, "password")) < 0)
        goto done;
    const json_t *confirm = json_object_get(root, "confirm");
    if (confirm == NULL || !json_is_string(confirm) ||
        strcmp(json_string_value(confirm), dev.username) != 0) {
        err = rs__error(RS_EINVAL, "confirm: %s (it must be the user name, %s)",
                        confirm == NULL ? "missing" : "does not match", dev.username);
        goto done;
    }
    if ((err = check_password(&dev, pw, conn, &out->retry_after_s)) < 0 ||
        (err = rs_srv.backend->ops->user_delete(rs_srv.backend, &st, dev.user)) < 0)
        goto done;
    rs_auth_forget_user(dev.user);
    rs_events_revoke(dev.user, NULL, "unauthorized", "the account was deleted");
    if ((err = rs_buf_puts(&out->body, "{\"deleted\":")) < 0 ||
        (err = rs_buf_put_json_string(&out->body, dev.username)) < 0)
        goto done;
    err = rs_buf_printf(&out->body, ",\"devices\":%llu,\"records\":%llu,\"snapshots\":%llu}",
                        (unsigned long long)st.devices, (unsigned long long)st.records,
                        (unsigned long long)st.snapshots);
done:
    json_decref(root);
    return err;
}
