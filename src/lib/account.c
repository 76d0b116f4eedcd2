/*
 * The account's devices, logout, password and deletion (devices.h), and
 * the key checks that refuse a wrong key at login and at key import
 * before anything is written.
 */
#include "client.h"
#include "keyring.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* Wipes and frees a token text. */
static void token_free(char *token)
{
    if (token) {
        sodium_memzero(token, strlen(token));
        rs_free(token);
    }
}

/*
 * Opens the last record of one of the server's shards under `key` (or a
 * key of its keyring): another device's shards first, then this device's.
 * A shard whose record cannot be read (pruned, damaged on the server), or
 * is sealed under another key (after a rotation, a shard may end under an
 * older key than the one imported: keyring.c), makes it try the next.
 * RS_EKEY (the first such record's message) when none opened and one was
 * sealed under another key; 0 when one opened or there was none to read.
 */
static int remote_key_check(rs_client *client, const rs_key *key, const rs_uuid *self)
{
    rs_index *remote = NULL;
    rs_wire_batch one;
    char ekey[600] = "";
    int err = rs__fetch_index(&remote, client);
    if (err < 0)
        return err;
    memset(&one, 0, sizeof(one));
    err = 0;
    for (int own = 0; own < 2; own++) {
        for (size_t i = 0; i < remote->count; i++) {
            const rs_shard *sh = &remote->shards[i];
            if ((rs_uuid_cmp(&sh->host, self) == 0) != own || sh->end <= sh->start)
                continue;
            rs_wire_batch_free(&one);
            memset(&one, 0, sizeof(one));
            err = rs__fetch_record(&one, client, &sh->host, sh->tag, sh->end - 1);
            if (err == RS_ENET || err == RS_EUNAVAIL || err == RS_EAUTH || err == RS_ERETIRED ||
                err == RS_ENOMEM)
                goto done;
            if (err < 0)
                continue;
            err = rs__open(NULL, NULL, key, &one.records[0]);
            if (err == 0)
                goto done;
            if (err == RS_EKEY && ekey[0] == '\0')
                snprintf(ekey, sizeof(ekey), "%s", rs_error_last());
        }
    }
    err = ekey[0] ? rs__error(RS_EKEY, "%s", ekey) : 0;
done:
    rs_wire_batch_free(&one);
    rs_index_free(remote);
    return err;
}

/*
 * Withdraws a login the store will not keep: retires this device again
 * (its new token refused, no hold on the server's pruning) so a device
 * with the wrong key is not left counted among the account's devices.
 * Best effort: the first failure is what the caller reports.
 */
static void withdraw(rs_client *client, const rs_uuid *self)
{
    const rs_buf *resp;
    char body[64 + RS_UUID_STRLEN], h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, self);
    snprintf(body, sizeof(body), "{\"host\":\"%s\"}", h);
    rs__client_request(&resp, NULL, client, "/api/v1/devices/retire", body, strlen(body), 0);
}

int rs__login_key_check(rs_store *store, const char *url, const char *token)
{
    rs_client *client = NULL;
    rs_uuid self;
    int err = rs__client_new(&client, url, token, NULL);
    if (err < 0)
        return err;
    rs_store_host(&self, store);
    err = remote_key_check(client, store->key, &self);
    if (err == RS_EKEY) {
        char msg[700];
        snprintf(msg, sizeof(msg), "%s", rs_error_last());
        withdraw(client, &self);
        err = rs__error(RS_EKEY,
                        "refusing to log in to %s: the server's records are sealed under another "
                        "key (%s). Nothing was written to the store, and the server's token for "
                        "this device was revoked. Use the account's key: 'recsync key export' on "
                        "a device that syncs, 'recsync key import' here, then log in again",
                        url, msg);
    } else if (err < 0) {
        char msg[700];
        snprintf(msg, sizeof(msg), "%s", rs_error_last());
        err = rs__error(err,
                        "logged in to %s, but could not check the key against its records: %s. "
                        "Nothing was written to the store; log in again",
                        url, msg);
    }
    rs__client_free(client);
    return err;
}

int rs_key_import_checked(rs_store *store, const char *text)
{
    rs_client *client = NULL;
    rs_key *key = NULL;
    char *token = NULL;
    rs_uuid self;
    int err;
    if ((err = rs_store_meta_get(&token, store, RS_META_TOKEN)) == RS_ENOTFOUND)
        return rs_store_key_import(store, text);
    if (err < 0)
        return err;
    token_free(token);
    if ((err = rs__key_from_text(&key, text)) < 0)
        return err;
    if (sodium_memcmp(key->bytes, store->key->bytes, RS_KEY_BYTES) == 0)
        goto done;
    if ((err = rs__store_client(&client, store, NULL)) < 0)
        goto done;
    rs_store_host(&self, store);
    err = remote_key_check(client, key, &self);
    if (err == RS_EKEY) {
        char new_id[RS_KEY_ID_STRLEN + 1];
        rs__key_id_hex(new_id, key->id);
        err = rs__error(RS_EKEY,
                        "refusing to import key %s: the records of server %s are sealed under "
                        "another key (%s). Nothing was written",
                        new_id, rs__client_url(client), rs_error_last());
        goto done;
    }
    if (err < 0) {
        err = rs__error(err,
                        "cannot check key against the records of server %s: %s. Nothing "
                        "was written",
                        rs__client_url(client), rs_error_last());
        goto done;
    }
    /* The server's records open under it: the key is the account's, older keys stay. */
    err = rs_store_key_import(store, text);
    if (err == RS_EKEY)
        err = rs__keyring_import(store, key);
done:
    rs__key_free(key);
    rs__client_free(client);
    return err;
}

/* POSTs `body` (NULL: GET) to `path` with the store's token; the parsed answer in *out. */
static int call(json_t **out, rs_store *store, const char *path, const char *body, size_t len)
{
    rs_client *client = NULL;
    const rs_buf *resp;
    json_error_t e;
    int err = rs__store_client(&client, store, NULL);
    if (err < 0)
        return err;
    if ((err = rs__client_request(&resp, NULL, client, path, body, len, body == NULL)) < 0)
        goto done;
    if (out && (*out = json_loadb(resp->ptr, resp->len, 0, &e)) == NULL)
        err = rs__error(RS_ESERVER, "server %s answered %s with JSON that does not parse: %s",
                        rs__client_url(client), path, e.text);
done:
    rs__client_free(client);
    return err;
}

static uint64_t json_u64_or(const json_t *obj, const char *name, uint64_t dflt)
{
    const json_t *v = json_object_get(obj, name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint64_t)json_integer_value(v)
                                                            : dflt;
}

int rs_devices_list(rs_device_info **out, size_t *count, rs_store *store)
{
    json_t *root = NULL;
    rs_device_info *list = NULL;
    rs_uuid self;
    int err = call(&root, store, "/api/v1/devices", NULL, 0);
    if (err < 0)
        return err;
    rs_store_host(&self, store);
    const json_t *devs = json_object_get(root, "devices");
    size_t n = json_is_array(devs) ? json_array_size(devs) : 0;
    if (!json_is_array(devs)) {
        err = rs__error(RS_ESERVER, "the server's device list has no \"devices\" array");
        goto done;
    }
    if ((list = rs__calloc(n ? n : 1, sizeof(*list))) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory for %zu devices", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(devs, i);
        const char *host = json_string_value(json_object_get(d, "host"));
        const char *name = json_string_value(json_object_get(d, "name"));
        if (host == NULL || rs_uuid_parse(&list[i].host, host) < 0) {
            err = rs__error(RS_ESERVER,
                            "the server's device list: devices[%zu].host is not a "
                            "UUID",
                            i);
            goto done;
        }
        snprintf(list[i].name, sizeof(list[i].name), "%s", name ? name : "");
        list[i].created_ms = json_u64_or(d, "created_ms", 0);
        list[i].last_seen_ms = json_u64_or(d, "last_seen_ms", 0);
        list[i].retired_ms = json_u64_or(d, "retired_ms", 0);
        list[i].behind = json_u64_or(d, "behind", 0);
        list[i].current = rs_uuid_cmp(&list[i].host, &self) == 0;
    }
    *out = list;
    *count = n;
    list = NULL;
done:
    rs_free(list);
    json_decref(root);
    return err;
}

/* {"host": "<uuid>"[, "name": name]} */
static int host_body(rs_buf *out, const rs_uuid *host, const char *name)
{
    char h[RS_UUID_STRLEN + 1];
    int err = rs_buf_puts(out, "{");
    if (err == 0 && host) {
        rs_uuid_format(h, host);
        err = rs_buf_printf(out, "\"host\":\"%s\"%s", h, name ? "," : "");
    }
    if (err == 0 && name && (err = rs_buf_puts(out, "\"name\":")) == 0)
        err = rs_buf_put_json_string(out, name);
    if (err == 0)
        err = rs_buf_puts(out, "}");
    return err;
}

int rs_device_retire(uint64_t *out_retired_ms, rs_store *store, const rs_uuid *host)
{
    rs_buf body = {0};
    json_t *root = NULL;
    int err = host_body(&body, host, NULL);
    if (err == 0 && (err = call(&root, store, "/api/v1/devices/retire", body.ptr, body.len)) == 0 &&
        out_retired_ms)
        *out_retired_ms = json_u64_or(root, "retired_ms", 0);
    json_decref(root);
    rs_buf_free(&body);
    return err;
}

int rs_device_rename(rs_store *store, const rs_uuid *host, const char *name)
{
    rs_buf body = {0};
    if (name == NULL || !rs_wire_device_name_valid(name))
        return rs__error(RS_EINVAL,
                         "device name '%.70s' is not valid: 1-64 bytes, no control "
                         "characters",
                         name ? name : "");
    int err = host_body(&body, host, name);
    if (err == 0)
        err = call(NULL, store, "/api/v1/devices/rename", body.ptr, body.len);
    rs_buf_free(&body);
    return err;
}

/* Forgets the token (and with `account_gone`, the last sync) in one transaction. */
static int forget_token(rs_store *store, int account_gone)
{
    int err = rs_store_begin(store);
    if (err < 0)
        return err;
    if ((err = rs_store_meta_del(store, RS_META_TOKEN)) < 0 ||
        (account_gone && ((err = rs_store_meta_del(store, RS_META_LAST_SYNC)) < 0 ||
                          (err = rs_store_meta_del(store, RS_META_LAST_INDEX)) < 0))) {
        rs_store_rollback(store);
        return err;
    }
    return rs_store_commit(store);
}

int rs_logout(int *out_revoked, rs_store *store)
{
    int err = call(NULL, store, "/api/v1/logout", "{}", 2);
    int revoked = err == 0;
    if (err == RS_EAUTH || err == RS_ERETIRED)
        err = 0; /* the server refuses the token already: forget it all the same */
    if (err == 0)
        err = forget_token(store, 0);
    if (err == 0 && out_revoked)
        *out_revoked = revoked;
    return err;
}

/* {"password": ..., <field>: <value>}, wiped by the caller. */
static int password_body(rs_buf *out, const char *password, const char *field, const char *value)
{
    int err;
    if (password == NULL || *password == '\0' || strlen(password) > RS_WIRE_PASSWORD_MAX)
        return rs__error(RS_EINVAL, "the password must be 1-%d bytes", RS_WIRE_PASSWORD_MAX);
    if ((err = rs_buf_puts(out, "{\"password\":")) < 0 ||
        (err = rs_buf_put_json_string(out, password)) < 0 ||
        (err = rs_buf_printf(out, ",\"%s\":", field)) < 0 ||
        (err = rs_buf_put_json_string(out, value)) < 0)
        return err;
    return rs_buf_puts(out, "}");
}

static void wipe(rs_buf *b)
{
    if (b->ptr)
        sodium_memzero(b->ptr, b->len);
    rs_buf_free(b);
}

int rs_account_password(rs_store *store, const char *old_password, const char *new_password)
{
    rs_buf body = {0};
    int err;
    if (new_password == NULL || *new_password == '\0' ||
        strlen(new_password) > RS_WIRE_PASSWORD_MAX)
        return rs__error(RS_EINVAL, "the new password must be 1-%d bytes", RS_WIRE_PASSWORD_MAX);
    if ((err = password_body(&body, old_password, "new_password", new_password)) == 0)
        err = call(NULL, store, "/api/v1/account/password", body.ptr, body.len);
    wipe(&body);
    return err;
}

int rs_account_delete(rs_store *store, const char *password)
{
    rs_buf body = {0};
    char *user = NULL;
    int err = rs_store_meta_get(&user, store, RS_META_USER);
    if (err == RS_ENOTFOUND)
        return rs__error(RS_EAUTH, "store %s is not logged in to a server", rs_store_dir(store));
    if (err < 0)
        return err;
    if ((err = password_body(&body, password, "confirm", user)) == 0 &&
        (err = call(NULL, store, "/api/v1/account/delete", body.ptr, body.len)) == 0)
        err = forget_token(store, 1);
    wipe(&body);
    rs_free(user);
    return err;
}
