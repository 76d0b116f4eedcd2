/*
 * recsyncd's snapshot routes (docs/protocol.md, "Snapshots"): uploading a
 * chunk, listing a user's complete snapshots, fetching one chunk. A
 * snapshot is opaque to the server: sealed chunks of a store's state at a
 * frontier (shard host -> end, for the snapshot's tag). The server checks
 * the shapes, that a frontier never claims records it does not hold, and
 * that every chunk of one snapshot agrees; the backend does the rest in
 * one write transaction per chunk.
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_CHUNKS_MAX 1000000u
#define SNAPSHOT_FRONTIER_MAX 10000u
#define SNAPSHOT_CHUNK_SLACK 1024u /* a chunk may exceed --max-payload by this much */

/* A JSON integer in [min, max]; RS_EINVAL naming `field` otherwise. */
static int json_u64(uint64_t *out, const json_t *root, const char *field, uint64_t min,
                    uint64_t max)
{
    const json_t *v = json_object_get(root, field);
    if (v == NULL)
        return rs__error(RS_EINVAL, "%s: missing", field);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < min ||
        (uint64_t)json_integer_value(v) > max)
        return rs__error(RS_EINVAL, "%s: not an integer from %llu to %llu", field,
                         (unsigned long long)min, (unsigned long long)max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int cmp_host(const void *a, const void *b)
{
    return memcmp(((const rs_shard *)a)->host.bytes, ((const rs_shard *)b)->host.bytes, 16);
}

/*
 * Decodes "frontier": [{"host", "end"}, ...] into `out` (shards of `tag`),
 * sorted by host, and hashes it. Hosts must be unique UUIDs, ends
 * non-negative integers, at most SNAPSHOT_FRONTIER_MAX entries.
 */
static int decode_frontier(rs_index *out, uint8_t *hash, const json_t *root, const char *tag)
{
    const json_t *arr = json_object_get(root, "frontier");
    char h[RS_UUID_STRLEN + 1];
    int err = 0;
    if (arr == NULL)
        return rs__error(RS_EINVAL, "frontier: missing (an array of {\"host\", \"end\"})");
    if (!json_is_array(arr))
        return rs__error(RS_EINVAL, "frontier: not an array");
    if (json_array_size(arr) > SNAPSHOT_FRONTIER_MAX)
        return rs__error(RS_EINVAL, "frontier: %zu entries; at most %u", json_array_size(arr),
                         SNAPSHOT_FRONTIER_MAX);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *e = json_array_get(arr, i);
        const json_t *host = json_object_get(e, "host"), *end = json_object_get(e, "end");
        rs_uuid id;
        if (!json_is_object(e))
            return rs__error(RS_EINVAL, "frontier[%zu]: not an object", i);
        if (host == NULL || !json_is_string(host) ||
            rs_uuid_parse(&id, json_string_value(host)) < 0)
            return rs__error(RS_EINVAL, "frontier[%zu].host: %s", i,
                             host == NULL ? "missing" : "not a UUID");
        if (end == NULL || !json_is_integer(end) || json_integer_value(end) < 0)
            return rs__error(RS_EINVAL, "frontier[%zu].end: %s", i,
                             end == NULL ? "missing" : "not a non-negative integer");
        if ((err = rs_index_add(out, &id, tag, 0, (uint64_t)json_integer_value(end))) < 0)
            return err;
    }
    if (out->count > 1)
        qsort(out->shards, out->count, sizeof(out->shards[0]), cmp_host);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    for (size_t i = 0; i < out->count; i++) {
        uint8_t end[8];
        if (i > 0 && cmp_host(&out->shards[i - 1], &out->shards[i]) == 0) {
            rs_uuid_format(h, &out->shards[i].host);
            return rs__error(RS_EINVAL, "frontier: host %s is listed twice", h);
        }
        for (int k = 0; k < 8; k++)
            end[k] = (uint8_t)(out->shards[i].end >> (56 - 8 * k));
        crypto_generichash_update(&st, out->shards[i].host.bytes, 16);
        crypto_generichash_update(&st, end, sizeof(end));
    }
    crypto_generichash_final(&st, hash, 32);
    return 0;
}

/*
 * POST /api/v1/snapshots: one chunk of a snapshot. Every field is checked
 * (400 naming it; 413 for a chunk over --max-payload + 1024) before the
 * backend stores it; answers the snapshot's id, whether it is complete and
 * how many of its chunks are stored.
 */
int rs_route_snapshots_post(rs_reply *out, struct MHD_Connection *conn, const char *body,
                            size_t len)
{
    rs_device dev;
    json_error_t jerr;
    json_t *root = NULL;
    rs_index frontier = {0};
    rs_snapshot_put in;
    rs_snapshot_put_result res;
    uint8_t *data = NULL;
    char idtext[RS_UUID_STRLEN + 1];
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    memset(&in, 0, sizeof(in));
    if ((root = json_loadb(body, len, 0, &jerr)) == NULL)
        return rs__error(RS_EINVAL, "body: invalid JSON at line %d column %d: %s", jerr.line,
                         jerr.column, jerr.text);
    const json_t *id = json_object_get(root, "id"), *tag = json_object_get(root, "tag");
    const json_t *d = json_object_get(root, "data");
    if (!json_is_object(root)) {
        err = rs__error(RS_EINVAL, "body: not a JSON object");
        goto done;
    }
    if (id == NULL || !json_is_string(id) || rs_uuid_parse(&in.id, json_string_value(id)) < 0) {
        err = rs__error(RS_EINVAL, "id: %s", id == NULL ? "missing" : "not a UUID");
        goto done;
    }
    if (tag == NULL || !json_is_string(tag) || !rs_tag_valid(json_string_value(tag))) {
        err = rs__error(RS_EINVAL, "tag: %s",
                        tag == NULL ? "missing" : "not a tag (1-64 of [a-z0-9._-])");
        goto done;
    }
    snprintf(in.tag, sizeof(in.tag), "%s", json_string_value(tag));
    if ((err = json_u64(&in.chunks, root, "chunks", 1, SNAPSHOT_CHUNKS_MAX)) < 0 ||
        (err = json_u64(&in.chunk, root, "chunk", 0, SNAPSHOT_CHUNKS_MAX)) < 0)
        goto done;
    if (in.chunk >= in.chunks) {
        err = rs__error(RS_EINVAL, "chunk: %llu is not below chunks (%llu)",
                        (unsigned long long)in.chunk, (unsigned long long)in.chunks);
        goto done;
    }
    if ((err = decode_frontier(&frontier, in.frontier_hash, root, in.tag)) < 0)
        goto done;
    in.frontier = &frontier;
    if (d == NULL || !json_is_string(d) || json_string_length(d) == 0) {
        err = rs__error(RS_EINVAL, "data: %s",
                        d == NULL ? "missing" : "not a non-empty base64 string");
        goto done;
    }
    size_t max = rs_srv.cfg.max_payload + SNAPSHOT_CHUNK_SLACK, dlen = json_string_length(d);
    if (dlen / 4 * 3 > max + 2) {
        err = rs__error(RS_ETOOBIG,
                        "data: about %zu bytes decoded; a chunk holds at most %zu "
                        "(--max-payload + %u)",
                        dlen / 4 * 3, max, SNAPSHOT_CHUNK_SLACK);
        goto done;
    }
    if ((data = rs__malloc(dlen / 4 * 3 + 1)) == NULL) {
        err = rs__error(RS_ENOMEM, "out of memory decoding a snapshot chunk");
        goto done;
    }
    if (rs_base64_decode(data, &in.data_len, json_string_value(d), dlen) < 0 || in.data_len == 0) {
        err = rs__error(RS_EINVAL, "data: not standard base64 of a non-empty chunk");
        goto done;
    }
    if (in.data_len > max) {
        err = rs__error(RS_ETOOBIG,
                        "data: %zu bytes decoded; a chunk holds at most %zu "
                        "(--max-payload + %u)",
                        in.data_len, max, SNAPSHOT_CHUNK_SLACK);
        goto done;
    }
    in.data = data;
    if ((err = rs_srv.backend->ops->snapshot_put_chunk(rs_srv.backend, &res, dev.user, &in)) < 0)
        goto done;
    if (res.inserted)
        atomic_fetch_add(&rs_snap_stats.chunks_stored, 1);
    rs_uuid_format(idtext, &in.id);
    err = rs_buf_printf(&out->body, "{\"id\":\"%s\",\"complete\":%s,\"stored\":%llu}", idtext,
                        res.complete ? "true" : "false", (unsigned long long)res.stored);
done:
    rs_free(data);
    rs_free(frontier.shards);
    json_decref(root);
    return err;
}

/* Appends one snapshot to the listing. */
static int list_add(const rs_snapshot_meta *info, void *payload)
{
    rs_buf *buf = payload;
    char id[RS_UUID_STRLEN + 1], h[RS_UUID_STRLEN + 1];
    int err;
    rs_uuid_format(id, &info->id);
    if (buf->len > 0 && buf->ptr[buf->len - 1] == '}' && (err = rs_buf_puts(buf, ",")) < 0)
        return err;
    if ((err = rs_buf_printf(buf, "{\"id\":\"%s\",\"tag\":\"%s\",\"frontier\":[", id, info->tag)) <
        0)
        return err;
    for (size_t i = 0; i < info->frontier_count; i++) {
        rs_uuid_format(h, &info->frontier[i].host);
        if ((err = rs_buf_printf(buf, "%s{\"host\":\"%s\",\"end\":%llu}", i ? "," : "", h,
                                 (unsigned long long)info->frontier[i].end)) < 0)
            return err;
    }
    return rs_buf_printf(buf, "],\"chunks\":%llu,\"bytes\":%llu,\"seq\":%llu,\"created_ms\":%llu}",
                         (unsigned long long)info->chunks, (unsigned long long)info->bytes,
                         (unsigned long long)info->seq, (unsigned long long)info->created_ms);
}

/* GET /api/v1/snapshots[?tag=]: the user's complete snapshots, newest first. */
int rs_route_snapshots_get(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    const char *tag = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "tag");
    if (tag != NULL && !rs_tag_valid(tag))
        return rs__error(RS_EINVAL, "tag: '%.70s' is not a tag (1-64 of [a-z0-9._-])", tag);
    if ((err = rs_buf_puts(&out->body, "{\"snapshots\":[")) < 0 ||
        (err = rs_srv.backend->ops->snapshot_list(rs_srv.backend, dev.user, tag, list_add,
                                                  &out->body)) < 0)
        return err;
    return rs_buf_puts(&out->body, "]}");
}

typedef struct chunk_ctx {
    rs_buf *buf;
    uint64_t chunk;
} chunk_ctx;

static int chunk_add(const rs_snapshot_meta *info, const uint8_t *data, size_t len, void *payload)
{
    chunk_ctx *ctx = payload;
    char id[RS_UUID_STRLEN + 1];
    int err;
    rs_uuid_format(id, &info->id);
    if ((err = rs_buf_printf(ctx->buf, "{\"id\":\"%s\",\"chunk\":%llu,\"chunks\":%llu,\"data\":\"",
                             id, (unsigned long long)ctx->chunk,
                             (unsigned long long)info->chunks)) < 0 ||
        (err = rs_buf_reserve(ctx->buf, RS_BASE64_LEN(len) + 2)) < 0)
        return err;
    ctx->buf->len += rs_base64_encode(ctx->buf->ptr + ctx->buf->len, data, len);
    ctx->buf->ptr[ctx->buf->len] = '\0';
    atomic_fetch_add(&rs_stats.bytes_served, len);
    return rs_buf_puts(ctx->buf, "\"}");
}

/* GET /api/v1/snapshot?id=&chunk=: one chunk of one of the user's complete snapshots. */
int rs_route_snapshot_get(rs_reply *out, struct MHD_Connection *conn)
{
    rs_device dev;
    rs_uuid id;
    int err = rs_auth_device(&dev, conn);
    if (err < 0)
        return err;
    const char *i = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "id");
    const char *c = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "chunk");
    if (i == NULL)
        return rs__error(RS_EINVAL, "id: missing (GET /api/v1/snapshot?id=&chunk=)");
    if (rs_uuid_parse(&id, i) < 0)
        return rs__error(RS_EINVAL, "id: '%.40s' is not a UUID", i);
    if (c == NULL)
        return rs__error(RS_EINVAL, "chunk: missing (GET /api/v1/snapshot?id=&chunk=)");
    char *end = NULL;
    unsigned long long chunk = strtoull(c, &end, 10);
    if (*c < '0' || *c > '9' || *end != '\0' || chunk >= SNAPSHOT_CHUNKS_MAX)
        return rs__error(RS_EINVAL, "chunk: '%.40s' is not an integer from 0 to %u", c,
                         SNAPSHOT_CHUNKS_MAX - 1);
    chunk_ctx ctx = {.buf = &out->body, .chunk = chunk};
    return rs_srv.backend->ops->snapshot_chunk_get(rs_srv.backend, dev.user, &id, chunk, chunk_add,
                                                   &ctx);
}
