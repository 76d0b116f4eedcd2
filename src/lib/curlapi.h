/*
 * libcurl, loaded when the first client or watch needs it.
 *
 * libcurl drags about thirty shared libraries into a process (TLS, Kerberos,
 * LDAP, SSH, IDN, ...); mapping and relocating them costs a short-lived
 * process more than everything else it does (measured: 7 ms for a program
 * linked with SQLite, libsodium and jansson, 32 ms once it also links
 * libcurl). Most `recsync` runs never touch the network (`history add` from
 * a shell hook, `kv get`, `log`), so the library opens libcurl with dlopen
 * on first use, as systemd does for its optional dependencies, and resolves
 * the functions it calls into rs__curl. The prototypes come from
 * <curl/curl.h>, so every pointer has the real function's type.
 *
 * curl_easy_setopt and curl_easy_getinfo are variadic; the typed helpers
 * below are the only way this code calls them, so each option gets the type
 * libcurl reads for it (a long, a pointer, a callback, a curl_off_t).
 */
#ifndef RS_CURLAPI_H
#define RS_CURLAPI_H

#include <curl/curl.h>

typedef struct rs__curl_api {
    __typeof__(curl_global_init) *global_init;
    __typeof__(curl_easy_init) *easy_init;
    __typeof__(curl_easy_setopt) *easy_setopt;
    __typeof__(curl_easy_perform) *easy_perform;
    __typeof__(curl_easy_getinfo) *easy_getinfo;
    __typeof__(curl_easy_cleanup) *easy_cleanup;
    __typeof__(curl_easy_strerror) *easy_strerror;
    __typeof__(curl_slist_append) *slist_append;
    __typeof__(curl_slist_free_all) *slist_free_all;
    __typeof__(curl_multi_init) *multi_init;
    __typeof__(curl_multi_add_handle) *multi_add_handle;
    __typeof__(curl_multi_remove_handle) *multi_remove_handle;
    __typeof__(curl_multi_perform) *multi_perform;
    __typeof__(curl_multi_poll) *multi_poll;
    __typeof__(curl_multi_info_read) *multi_info_read;
    __typeof__(curl_multi_cleanup) *multi_cleanup;
} rs__curl_api;

/* Filled by rs__curl_load; read only after it returned 0. */
extern rs__curl_api rs__curl;

/*
 * Opens libcurl (libcurl.so.4, else libcurl-gnutls.so.4), resolves every
 * function above and runs curl_global_init, once per process (thread-safe).
 * 0, or RS_ERROR naming the library or the missing function; every later
 * call returns the same result.
 */
int rs__curl_load(void);

/* 1 once libcurl has been opened in this process (for tests). */
int rs__curl_loaded(void);

static inline CURLcode rs__curl_long(CURL *h, CURLoption opt, long v)
{
    return rs__curl.easy_setopt(h, opt, v);
}

static inline CURLcode rs__curl_ptr(CURL *h, CURLoption opt, const void *v)
{
    return rs__curl.easy_setopt(h, opt, v);
}

static inline CURLcode rs__curl_off(CURL *h, CURLoption opt, curl_off_t v)
{
    return rs__curl.easy_setopt(h, opt, v);
}

static inline CURLcode rs__curl_write_fn(CURL *h, curl_write_callback fn)
{
    return rs__curl.easy_setopt(h, CURLOPT_WRITEFUNCTION, fn);
}

static inline CURLcode rs__curl_info_long(CURL *h, CURLINFO info, long *v)
{
    return rs__curl.easy_getinfo(h, info, v);
}

#endif
