/*
 * Chooses the backend a --db argument names, and what both backends share:
 * the user-name key, the wording of the refusals they both give, and the
 * prune floor's rule.
 */
#include "backend.h"

#include <string.h>

int rs_backend_open(rs_backend **out, const char *db, const rs_backend_opts *opts)
{
    if (db == NULL || *db == '\0')
        return rs__error(RS_EINVAL, "no database given");
    if (strncmp(db, "postgres://", 11) == 0 || strncmp(db, "postgresql://", 13) == 0) {
#ifdef RS_HAVE_POSTGRES
        return rs_backend_postgres_open(out, db, opts);
#else
        return rs__error(RS_EINVAL, "this recsyncd was built without PostgreSQL support");
#endif
    }
    return rs_backend_sqlite_open(out, db, opts);
}

void rs_backend_name_key(char *out, const char *name)
{
    size_t n = 0;
    for (; name[n] && n < RS_WIRE_USERNAME_MAX; n++) {
        char c = name[n];
        out[n] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    out[n] = '\0';
}

int rs_backend_ack_error(size_t i, const rs_shard *entry, int exists, uint64_t end)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, &entry->host);
    if (!exists)
        return rs__error(RS_EINVAL,
                         "frontier[%zu]: shard %s/%s does not exist for this user; an ack names "
                         "a shard of the user's index",
                         i, h, entry->tag);
    return rs__error(RS_EINVAL,
                     "frontier[%zu]: shard %s/%s ends at idx %llu; an ack cannot pass its end "
                     "(%llu)",
                     i, h, entry->tag, (unsigned long long)end, (unsigned long long)entry->end);
}

int rs_backend_quota_error(uint64_t stored, uint64_t adding, uint64_t quota)
{
    return rs__error(RS_EQUOTA,
                     "storage quota exceeded: this user stores %llu bytes and the batch adds at "
                     "least %llu more, past the quota of %llu bytes; nothing of the batch was "
                     "stored",
                     (unsigned long long)stored, (unsigned long long)adding,
                     (unsigned long long)quota);
}

int rs_backend_invite_error(const char *username)
{
    return rs__error(RS_EFORBIDDEN,
                     "registration needs an invite: the invite code given for %s is unknown, "
                     "already used, or made for another name",
                     username);
}

int rs_backend_frontier_error(const rs_uuid *host, const char *tag, uint64_t claimed, uint64_t held)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    return rs__error(RS_ECONFLICT,
                     "snapshot frontier says shard %s/%s ends at %llu but the server holds %llu", h,
                     tag, (unsigned long long)claimed, (unsigned long long)held);
}

int rs_backend_snapshot_conflict(const rs_uuid *id, const char *detail)
{
    char s[RS_UUID_STRLEN + 1];
    rs_uuid_format(s, id);
    return rs__error(RS_ECONFLICT, "snapshot %s: %s", s, detail);
}

int rs_backend_pruned_error(const rs_uuid *host, const char *tag, uint64_t start)
{
    char h[RS_UUID_STRLEN + 1];
    rs_uuid_format(h, host);
    return rs__error(RS_ESNAPSHOT,
                     "shard %s/%s starts at idx %llu (older records were pruned): load a snapshot",
                     h, tag, (unsigned long long)start);
}

uint64_t rs_backend_prune_floor(uint64_t end, uint64_t devices, uint64_t acked, uint64_t ack_min,
                                uint64_t snap)
{
    uint64_t floor = devices == 0 ? end : acked < devices ? 0 : ack_min;
    if (snap < floor)
        floor = snap;
    return floor < end ? floor : end;
}
