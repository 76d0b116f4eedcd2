/*
 * Shard indexes and the diff that tells sync what to move.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rs_index_add(rs_index *index, const rs_uuid *host, const char *tag, uint64_t start,
                 uint64_t end)
{
    rs_shard *grown;
    if (!rs_tag_valid(tag))
        return rs__error(RS_EINVAL, "index entry has an invalid tag '%.70s'", tag ? tag : "");
    if (start > end)
        return rs__error(RS_EINVAL, "index entry for tag %s has start %llu after end %llu", tag,
                         (unsigned long long)start, (unsigned long long)end);
    /* Capacity is implied by count: 8, then doubling at each power of two. */
    if (index->count == 0 || (index->count >= 8 && (index->count & (index->count - 1)) == 0)) {
        size_t cap = index->count ? index->count * 2 : 8;
        grown = rs__realloc(index->shards, cap * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory building an index");
        index->shards = grown;
    }
    rs_shard *sh = &index->shards[index->count++];
    memset(sh, 0, sizeof(*sh));
    sh->host = *host;
    snprintf(sh->tag, sizeof(sh->tag), "%s", tag);
    sh->start = start;
    sh->end = end;
    return 0;
}

const rs_shard *rs_index_find(const rs_index *index, const rs_uuid *host, const char *tag)
{
    for (size_t i = 0; index && i < index->count; i++)
        if (rs_uuid_cmp(&index->shards[i].host, host) == 0 &&
            strcmp(index->shards[i].tag, tag) == 0)
            return &index->shards[i];
    return NULL;
}

void rs_index_free(rs_index *index)
{
    if (index == NULL)
        return;
    rs_free(index->shards);
    rs_free(index);
}

static int shard_cmp(const void *a, const void *b)
{
    const rs_shard *x = a, *y = b;
    int c = rs_uuid_cmp(&x->host, &y->host);
    return c ? c : strcmp(x->tag, y->tag);
}

static int sorted_copy(rs_shard **out, const rs_index *index)
{
    size_t n = index ? index->count : 0;
    *out = rs__malloc((n ? n : 1) * sizeof(rs_shard));
    if (*out == NULL)
        return rs__error(RS_ENOMEM, "out of memory comparing indexes");
    if (n) {
        memcpy(*out, index->shards, n * sizeof(rs_shard));
        qsort(*out, n, sizeof(rs_shard), shard_cmp);
    }
    return 0;
}

static int add_op(rs_diff *diff, size_t *cap, rs_diff_kind kind, const rs_shard *sh, uint64_t from,
                  uint64_t to)
{
    if (diff->count == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        rs_diff_op *grown = rs__realloc(diff->ops, ncap * sizeof(*grown));
        if (grown == NULL)
            return rs__error(RS_ENOMEM, "out of memory building a diff");
        diff->ops = grown;
        *cap = ncap;
    }
    rs_diff_op *op = &diff->ops[diff->count++];
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->host = sh->host;
    snprintf(op->tag, sizeof(op->tag), "%s", sh->tag);
    op->from = from;
    op->to = to;
    return 0;
}

/*
 * Walks both indexes in (host, tag) order as a merge. A shard missing on
 * one side counts as [0, 0) there.
 */
int rs_index_diff(rs_diff **out, const rs_index *local, const rs_index *remote, const rs_uuid *self)
{
    rs_shard *l = NULL, *r = NULL;
    size_t nl = local ? local->count : 0, nr = remote ? remote->count : 0, i = 0, j = 0, cap = 0;
    rs_diff *diff = rs__calloc(1, sizeof(*diff));
    int err = 0;

    if (diff == NULL)
        return rs__error(RS_ENOMEM, "out of memory building a diff");
    if ((err = sorted_copy(&l, local)) < 0 || (err = sorted_copy(&r, remote)) < 0)
        goto done;
    while (i < nl || j < nr) {
        rs_shard empty, *ls, *rsh;
        int c = i >= nl ? 1 : j >= nr ? -1 : shard_cmp(&l[i], &r[j]);
        if (c < 0) {
            ls = &l[i++];
            empty = *ls;
            empty.start = empty.end = 0;
            rsh = &empty;
        } else if (c > 0) {
            rsh = &r[j++];
            empty = *rsh;
            empty.start = empty.end = 0;
            ls = &empty;
        } else {
            ls = &l[i++];
            rsh = &r[j++];
        }
        if (rs_uuid_cmp(&ls->host, self) == 0) {
            if (rsh->end > ls->end) {
                char name[RS_UUID_STRLEN + RS_TAG_MAX + 2];
                rs__shard_name(name, sizeof(name), &ls->host, ls->tag);
                err = rs__error(RS_EAHEAD,
                                "this device's log %s on the server ends at idx %llu but the "
                                "local store ends at %llu: was the store restored from an old "
                                "copy? Refusing to sync rather than write a second, different "
                                "record at an existing idx. If this store directory was copied "
                                "(or restored from a backup) and the other copy synced since, "
                                "run 'recsync reidentify' here, on the machine refused: it "
                                "gives this store its own host id and keeps what both wrote",
                                name, (unsigned long long)rsh->end, (unsigned long long)ls->end);
                goto done;
            }
            if (ls->end > rsh->end) {
                if (rsh->end < ls->start) {
                    char name[RS_UUID_STRLEN + RS_TAG_MAX + 2];
                    rs__shard_name(name, sizeof(name), &ls->host, ls->tag);
                    err = rs__error(RS_EHOLE,
                                    "shard %s: the server ends at idx %llu but this store "
                                    "starts at %llu, so the records between cannot be uploaded",
                                    name, (unsigned long long)rsh->end,
                                    (unsigned long long)ls->start);
                    goto done;
                }
                if ((err = add_op(diff, &cap, RS_DIFF_UPLOAD, ls, rsh->end, ls->end)) < 0)
                    goto done;
            }
        } else if (rsh->end > ls->end) {
            if ((err = add_op(diff, &cap, RS_DIFF_DOWNLOAD, rsh, ls->end, rsh->end)) < 0)
                goto done;
        }
    }
done:
    rs_free(l);
    rs_free(r);
    if (err < 0) {
        rs_diff_free(diff);
        return err;
    }
    *out = diff;
    return 0;
}

void rs_diff_free(rs_diff *diff)
{
    if (diff == NULL)
        return;
    rs_free(diff->ops);
    rs_free(diff);
}
