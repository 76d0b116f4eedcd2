/*
 * History import: the bytes as a bash history file (fuzz_history_bash;
 * fuzz_history_bash_multiline, FUZZ_MULTILINE, as lithist files), a zsh
 * one (fuzz_history_zsh, FUZZ_ZSH) or a fish_history (fuzz_history_fish,
 * FUZZ_FISH), through rs_history_import_flags, which
 * reads a path: each input is written to a file in a temporary directory
 * that also holds the one store every input is imported into (under
 * /dev/shm when there is one: the store's commits then cost no disk
 * flushes). An import
 * must succeed (any bytes are some history) and importing the same file
 * again must add nothing.
 */
#define _XOPEN_SOURCE 700
#include "fuzz.h"

#include <ftw.h>
#include <recsync.h>
#include <unistd.h>

#if defined(FUZZ_ZSH)
#define FORMAT RS_HISTORY_ZSH
#elif defined(FUZZ_FISH)
#define FORMAT RS_HISTORY_FISH
#else
#define FORMAT RS_HISTORY_BASH
#endif
#ifdef FUZZ_MULTILINE
#define FLAGS RS_HISTORY_IMPORT_MULTILINE
#else
#define FLAGS 0
#endif

static char root[64];
static char file[128];
static rs_store *store;

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void cleanup(void)
{
    rs_store_free(store);
    store = NULL;
    if (root[0])
        nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[128];
    snprintf(root, sizeof(root), "%s/rs-fuzz-history-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (mkdtemp(root) == NULL)
        abort();
    snprintf(dir, sizeof(dir), "%s/store", root);
    snprintf(file, sizeof(file), "%s/history", root);
    if (rs_store_init(&store, dir, NULL) < 0) {
        fprintf(stderr, "cannot make a store in %s: %s\n", dir, rs_error_last());
        abort();
    }
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rs_history_import_stats first, second;
    FILE *f = fopen(file, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, size, f) == size);
    CHECK(fclose(f) == 0);
    CHECK(rs_history_import_flags(&first, store, FORMAT, file, FLAGS) == 0);
    CHECK(first.imported + first.skipped == first.entries);
    CHECK(rs_history_import_flags(&second, store, FORMAT, file, FLAGS) == 0);
    CHECK(second.entries == first.entries && second.imported == 0);
    return 0;
}
