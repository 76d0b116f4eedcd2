/*
 * The index diff: what sync uploads and downloads for every combination of
 * local and remote shards, own and other devices', sorted or not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static rs_uuid self_host, other_host, third_host;

static int setup(void **state)
{
    (void)state;
    memset(&self_host, 0, sizeof(self_host));
    memset(&other_host, 0, sizeof(other_host));
    memset(&third_host, 0, sizeof(third_host));
    /* other < self < third, so own shards sit in the middle of the merge. */
    other_host.bytes[0] = 0x10;
    self_host.bytes[0] = 0x20;
    third_host.bytes[0] = 0x30;
    return 0;
}

static rs_index *new_index(void)
{
    rs_index *index = calloc(1, sizeof(*index));
    assert_non_null(index);
    return index;
}

static void add(rs_index *index, const rs_uuid *host, const char *tag, uint64_t start, uint64_t end)
{
    assert_int_equal(rs_index_add(index, host, tag, start, end), 0);
}

static void expect_op(const rs_diff_op *op, rs_diff_kind kind, const rs_uuid *host, const char *tag,
                      uint64_t from, uint64_t to)
{
    assert_int_equal(op->kind, kind);
    assert_memory_equal(op->host.bytes, host->bytes, 16);
    assert_string_equal(op->tag, tag);
    assert_int_equal(op->from, from);
    assert_int_equal(op->to, to);
}

static rs_diff *diff_ok(const rs_index *local, const rs_index *remote)
{
    rs_diff *diff = NULL;
    int err = rs_index_diff(&diff, local, remote, &self_host);
    if (err != 0)
        fail_msg("diff failed: %d %s", err, rs_error_last());
    assert_non_null(diff);
    return diff;
}

static void diff_of_two_empty_indexes_moves_nothing(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 0);
    rs_diff_free(diff);
    diff = diff_ok(NULL, NULL);
    assert_int_equal(diff->count, 0);
    rs_diff_free(diff);
    /* Shards of no records on either side. */
    add(local, &self_host, "kv", 0, 0);
    add(remote, &other_host, "kv", 0, 0);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 0);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_with_empty_local_downloads_other_shards(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(remote, &other_host, "kv", 0, 5);
    add(remote, &third_host, "history", 0, 7);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 2);
    expect_op(&diff->ops[0], RS_DIFF_DOWNLOAD, &other_host, "kv", 0, 5);
    expect_op(&diff->ops[1], RS_DIFF_DOWNLOAD, &third_host, "history", 0, 7);
    rs_diff_free(diff);
    /* NULL local means the same. */
    diff = diff_ok(NULL, remote);
    assert_int_equal(diff->count, 2);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_with_empty_remote_uploads_own_shards_only(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &self_host, "kv", 0, 3);
    add(local, &self_host, "history", 0, 9);
    add(local, &other_host, "kv", 0, 4); /* another device's: it uploads its own */
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 2);
    expect_op(&diff->ops[0], RS_DIFF_UPLOAD, &self_host, "history", 0, 9);
    expect_op(&diff->ops[1], RS_DIFF_UPLOAD, &self_host, "kv", 0, 3);
    rs_diff_free(diff);
    diff = diff_ok(local, NULL);
    assert_int_equal(diff->count, 2);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_of_one_sided_shards_on_both_sides(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &self_host, "notes", 0, 2);     /* only local, own: upload */
    add(local, &third_host, "kv", 0, 6);       /* only local, other: nothing */
    add(remote, &other_host, "notes", 0, 4);   /* only remote, other: download */
    add(remote, &third_host, "history", 0, 1); /* only remote, other: download */
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 3);
    expect_op(&diff->ops[0], RS_DIFF_DOWNLOAD, &other_host, "notes", 0, 4);
    expect_op(&diff->ops[1], RS_DIFF_UPLOAD, &self_host, "notes", 0, 2);
    expect_op(&diff->ops[2], RS_DIFF_DOWNLOAD, &third_host, "history", 0, 1);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_uploads_the_tail_of_an_own_shard_ahead_locally(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &self_host, "kv", 0, 10);
    add(remote, &self_host, "kv", 0, 7);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 1);
    expect_op(&diff->ops[0], RS_DIFF_UPLOAD, &self_host, "kv", 7, 10);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_downloads_the_tail_of_another_shard_ahead_remotely(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &other_host, "kv", 0, 3);
    add(remote, &other_host, "kv", 0, 8);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 1);
    expect_op(&diff->ops[0], RS_DIFF_DOWNLOAD, &other_host, "kv", 3, 8);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_refuses_an_own_shard_ahead_on_the_server(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff = NULL;
    char shard[RS_UUID_STRLEN + 1];
    (void)state;
    rs_uuid_format(shard, &self_host);
    add(local, &other_host, "kv", 0, 1);
    add(local, &self_host, "kv", 0, 4);
    add(remote, &other_host, "kv", 0, 2);
    add(remote, &self_host, "kv", 0, 6);
    rs_error_clear();
    assert_int_equal(rs_index_diff(&diff, local, remote, &self_host), RS_EAHEAD);
    assert_null(diff);
    assert_non_null(strstr(rs_error_last(), shard));
    assert_non_null(strstr(rs_error_last(), "/kv"));
    assert_non_null(strstr(rs_error_last(), "idx 6"));
    assert_non_null(strstr(rs_error_last(), "at 4"));
    assert_non_null(strstr(rs_error_last(), "restored from an old copy"));
    /* An own shard the store has lost entirely is the same case. */
    rs_index_free(local);
    local = new_index();
    assert_int_equal(rs_index_diff(&diff, local, remote, &self_host), RS_EAHEAD);
    assert_null(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_leaves_another_shard_ahead_locally_alone(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &other_host, "kv", 0, 9);
    add(remote, &other_host, "kv", 0, 2);
    add(local, &self_host, "kv", 0, 5);
    add(remote, &self_host, "kv", 0, 5);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 0);
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_refuses_to_upload_across_a_gap_below_a_pruned_local_start(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff = NULL;
    (void)state;
    add(local, &self_host, "kv", 10, 12);
    add(remote, &self_host, "kv", 0, 5);
    assert_int_equal(rs_index_diff(&diff, local, remote, &self_host), RS_EHOLE);
    assert_null(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void diff_is_the_same_for_unsorted_inputs(void **state)
{
    rs_index *local = new_index(), *remote = new_index();
    rs_diff *diff;
    (void)state;
    add(local, &third_host, "kv", 0, 1);
    add(local, &self_host, "zz", 0, 3);
    add(local, &other_host, "b", 0, 2);
    add(local, &self_host, "aa", 0, 5);
    add(remote, &self_host, "zz", 0, 1);
    add(remote, &third_host, "kv", 0, 4);
    add(remote, &other_host, "b", 0, 6);
    add(remote, &self_host, "aa", 0, 2);
    diff = diff_ok(local, remote);
    assert_int_equal(diff->count, 4);
    expect_op(&diff->ops[0], RS_DIFF_DOWNLOAD, &other_host, "b", 2, 6);
    expect_op(&diff->ops[1], RS_DIFF_UPLOAD, &self_host, "aa", 2, 5);
    expect_op(&diff->ops[2], RS_DIFF_UPLOAD, &self_host, "zz", 1, 3);
    expect_op(&diff->ops[3], RS_DIFF_DOWNLOAD, &third_host, "kv", 1, 4);
    rs_diff_free(diff);
    /* The inputs are not reordered in place. */
    assert_memory_equal(local->shards[0].host.bytes, third_host.bytes, 16);
    assert_memory_equal(remote->shards[0].host.bytes, self_host.bytes, 16);
    rs_index_free(local);
    rs_index_free(remote);
}

static uint64_t rng = 88172645463325252u;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Many shards, both sides shuffled: every op matches a per-shard rule. */
static void diff_of_many_shards_matches_the_rule_for_each(void **state)
{
    enum { HOSTS = 300, TAGS = 4 };
    static const char *const tags[TAGS] = {"kv", "history", "notes", "a.b-c_d"};
    static uint64_t lend[HOSTS][TAGS], rend[HOSTS][TAGS];
    static int lhas[HOSTS][TAGS], rhas[HOSTS][TAGS];
    static rs_uuid hosts[HOSTS];
    rs_index *local = new_index(), *remote = new_index();
    size_t order[HOSTS * TAGS], expected = 0, k = 0;
    rs_diff *diff;
    (void)state;

    for (size_t h = 0; h < HOSTS; h++) {
        rs_uuid_random(&hosts[h]);
        for (size_t t = 0; t < TAGS; t++) {
            lhas[h][t] = next_rand() % 4 != 0;
            rhas[h][t] = next_rand() % 4 != 0;
            lend[h][t] = lhas[h][t] ? next_rand() % 20 : 0;
            rend[h][t] = rhas[h][t] ? next_rand() % 20 : 0;
        }
    }
    hosts[7] = self_host;
    for (size_t t = 0; t < TAGS; t++)
        if (rend[7][t] > lend[7][t]) /* keep own shards uploadable */
            rend[7][t] = lend[7][t] / 2;
    for (size_t i = 0; i < HOSTS * TAGS; i++)
        order[i] = i;
    for (size_t i = HOSTS * TAGS - 1; i > 0; i--) {
        size_t j = next_rand() % (i + 1), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (size_t i = 0; i < HOSTS * TAGS; i++) {
        size_t h = order[i] / TAGS, t = order[i] % TAGS;
        if (lhas[h][t])
            add(local, &hosts[h], tags[t], 0, lend[h][t]);
    }
    for (size_t i = HOSTS * TAGS; i-- > 0;) {
        size_t h = order[i] / TAGS, t = order[i] % TAGS;
        if (rhas[h][t])
            add(remote, &hosts[h], tags[t], 0, rend[h][t]);
    }
    diff = diff_ok(local, remote);
    for (size_t h = 0; h < HOSTS; h++)
        for (size_t t = 0; t < TAGS; t++) {
            bool own = h == 7;
            if ((own && lend[h][t] > rend[h][t]) || (!own && rend[h][t] > lend[h][t]))
                expected++;
        }
    assert_int_equal(diff->count, expected);
    for (k = 0; k < diff->count; k++) {
        const rs_diff_op *op = &diff->ops[k];
        size_t h = 0, t = 0;
        while (h < HOSTS && rs_uuid_cmp(&hosts[h], &op->host) != 0)
            h++;
        assert_true(h < HOSTS);
        while (t < TAGS && strcmp(tags[t], op->tag) != 0)
            t++;
        assert_true(t < TAGS);
        if (h == 7) {
            expect_op(op, RS_DIFF_UPLOAD, &hosts[h], tags[t], rend[h][t], lend[h][t]);
        } else {
            expect_op(op, RS_DIFF_DOWNLOAD, &hosts[h], tags[t], lend[h][t], rend[h][t]);
        }
        if (k > 0) {
            int c = rs_uuid_cmp(&diff->ops[k - 1].host, &op->host);
            assert_true(c < 0 || (c == 0 && strcmp(diff->ops[k - 1].tag, op->tag) < 0));
        }
    }
    rs_diff_free(diff);
    rs_index_free(local);
    rs_index_free(remote);
}

static void index_add_grows_and_refuses_bad_entries(void **state)
{
    rs_index *index = new_index();
    char tag[8];
    (void)state;
    for (int i = 0; i < 1000; i++) {
        snprintf(tag, sizeof(tag), "t%d", i);
        add(index, &other_host, tag, (uint64_t)i, (uint64_t)i * 2);
    }
    assert_int_equal(index->count, 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(tag, sizeof(tag), "t%d", i);
        assert_string_equal(index->shards[i].tag, tag);
        assert_int_equal(index->shards[i].start, (uint64_t)i);
        assert_int_equal(index->shards[i].end, (uint64_t)i * 2);
    }
    assert_int_equal(rs_index_add(index, &other_host, "Bad Tag", 0, 1), RS_EINVAL);
    assert_int_equal(rs_index_add(index, &other_host, "", 0, 1), RS_EINVAL);
    assert_int_equal(rs_index_add(index, &other_host, "kv", 5, 4), RS_EINVAL);
    assert_int_equal(index->count, 1000);
    rs_index_free(index);
    rs_index_free(NULL);
    rs_diff_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(diff_of_two_empty_indexes_moves_nothing),
        cmocka_unit_test(diff_with_empty_local_downloads_other_shards),
        cmocka_unit_test(diff_with_empty_remote_uploads_own_shards_only),
        cmocka_unit_test(diff_of_one_sided_shards_on_both_sides),
        cmocka_unit_test(diff_uploads_the_tail_of_an_own_shard_ahead_locally),
        cmocka_unit_test(diff_downloads_the_tail_of_another_shard_ahead_remotely),
        cmocka_unit_test(diff_refuses_an_own_shard_ahead_on_the_server),
        cmocka_unit_test(diff_leaves_another_shard_ahead_locally_alone),
        cmocka_unit_test(diff_refuses_to_upload_across_a_gap_below_a_pruned_local_start),
        cmocka_unit_test(diff_is_the_same_for_unsorted_inputs),
        cmocka_unit_test(diff_of_many_shards_matches_the_rule_for_each),
        cmocka_unit_test(index_add_grows_and_refuses_bad_entries),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
