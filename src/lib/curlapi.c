/*
 * libcurl loaded on first use (curlapi.h says why).
 */
#include "curlapi.h"

#include "internal.h"

#include <dlfcn.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

rs__curl_api rs__curl;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_err;       /* 0, or the RS_E* code of the failure */
static char load_msg[512]; /* its message, repeated to every later caller */
static volatile int loaded;

/* The sonames libcurl's ABI 4 ships under on Debian: the OpenSSL build
 * (libcurl4) and the GnuTLS one (libcurl3-gnutls). */
static const char *const sonames[] = {"libcurl.so.4", "libcurl-gnutls.so.4"};

static const struct {
    size_t offset;
    const char *name;
} syms[] = {
    {offsetof(rs__curl_api, global_init), "curl_global_init"},
    {offsetof(rs__curl_api, easy_init), "curl_easy_init"},
    {offsetof(rs__curl_api, easy_setopt), "curl_easy_setopt"},
    {offsetof(rs__curl_api, easy_perform), "curl_easy_perform"},
    {offsetof(rs__curl_api, easy_getinfo), "curl_easy_getinfo"},
    {offsetof(rs__curl_api, easy_cleanup), "curl_easy_cleanup"},
    {offsetof(rs__curl_api, easy_strerror), "curl_easy_strerror"},
    {offsetof(rs__curl_api, slist_append), "curl_slist_append"},
    {offsetof(rs__curl_api, slist_free_all), "curl_slist_free_all"},
    {offsetof(rs__curl_api, multi_init), "curl_multi_init"},
    {offsetof(rs__curl_api, multi_add_handle), "curl_multi_add_handle"},
    {offsetof(rs__curl_api, multi_remove_handle), "curl_multi_remove_handle"},
    {offsetof(rs__curl_api, multi_perform), "curl_multi_perform"},
    {offsetof(rs__curl_api, multi_poll), "curl_multi_poll"},
    {offsetof(rs__curl_api, multi_info_read), "curl_multi_info_read"},
    {offsetof(rs__curl_api, multi_cleanup), "curl_multi_cleanup"},
};

static void load_once(void)
{
    void *h = NULL;
    const char *which = NULL;
    char first[256] = "";
    rs__curl_api api;

    for (size_t i = 0; i < sizeof(sonames) / sizeof(sonames[0]) && h == NULL; i++) {
        h = dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL);
        which = sonames[i];
        if (h == NULL && first[0] == '\0') {
            const char *e = dlerror();
            snprintf(first, sizeof(first), "%s", e ? e : sonames[i]);
        }
    }
    if (h == NULL) {
        load_err = RS_ERROR;
        snprintf(load_msg, sizeof(load_msg),
                 "cannot load libcurl, which recsync needs to reach a server: %s "
                 "(on Debian: apt-get install libcurl4)",
                 first);
        return;
    }
    for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
        void *fn = dlsym(h, syms[i].name);
        if (fn == NULL) {
            load_err = RS_ERROR;
            snprintf(load_msg, sizeof(load_msg),
                     "%s has no function %s: recsync needs libcurl 7.85 or newer", which,
                     syms[i].name);
            dlclose(h);
            return;
        }
        /* POSIX guarantees a data pointer from dlsym converts to a function pointer. */
        memcpy((char *)&api + syms[i].offset, &fn, sizeof(fn));
    }
    CURLcode rc = api.global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        load_err = RS_ERROR;
        snprintf(load_msg, sizeof(load_msg), "libcurl (%s) failed to initialize: %s", which,
                 api.easy_strerror(rc));
        return; /* h stays open: libcurl may have registered handlers */
    }
    rs__curl = api;
    loaded = 1;
}

int rs__curl_load(void)
{
    pthread_once(&once, load_once);
    if (load_err)
        return rs__error(load_err, "%s", load_msg);
    return 0;
}

int rs__curl_loaded(void)
{
    return loaded;
}
