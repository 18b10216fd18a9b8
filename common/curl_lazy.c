/* libcurl, loaded on first use.
 *
 * kindling compiles against libcurl's API but does not link its library:
 * the curl_* functions below are the ones kindling calls, and each forwards
 * to libcurl.so.4, which the first call opens with dlopen().  libcurl and
 * the libraries it pulls in (TLS, LDAP, Kerberos, SSH, IDN, PSL, ...; about
 * 30) cost every program start some 13 ms of dynamic linking on these hosts,
 * while most runs never make an HTTP request: `kindling run` from a file
 * store or from a running blockd, blockd over a file store, the sandbox.
 * (tests/tools/warmstart.sh and `kindling run --timings`' pre-main phase
 * measure it.)
 *
 * A host without libcurl.so.4 fails at the first HTTP request, with a log
 * line naming the library, instead of at exec.  The forwarding is exact:
 * the variadic setopt calls take their one argument with the type libcurl's
 * option numbering gives it (CURLOPTTYPE_*), as libcurl itself reads it.
 *
 * This file is the only one that defines CURL_DISABLE_TYPECHECK: curl.h's
 * type-checking wrappers are macros over these names. */
#define LOG_COMPONENT "curl"
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>

#include "common/common.h"

/* libcurl's entry points, filled once by load().  Process-wide, as the
 * dynamic linker's own tables are. */
static struct {
	void *lib;
	CURLcode (*global_init)(long);
	void (*global_cleanup)(void);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_perform)(CURL *);
	void (*easy_cleanup)(CURL *);
	void (*easy_reset)(CURL *);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	const char *(*easy_strerror)(CURLcode);
	char *(*easy_escape)(CURL *, const char *, int);
	void (*free)(void *);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
	CURLMcode (*multi_add_handle)(CURLM *, CURL *);
	CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
	CURLMcode (*multi_perform)(CURLM *, int *);
	CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd *, unsigned int, int, int *);
	CURLMsg *(*multi_info_read)(CURLM *, int *);
	CURLMcode (*multi_cleanup)(CURLM *);
	const char *(*multi_strerror)(CURLMcode);
	CURLU *(*url)(void);
	void (*url_cleanup)(CURLU *);
	CURLUcode (*url_get)(CURLU *, CURLUPart, char **, unsigned int);
	CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
	const char *(*url_strerror)(CURLUcode);
} fn;
static pthread_once_t fn_once = PTHREAD_ONCE_INIT;

#define LIBCURL "libcurl.so.4"

static const struct lazy_sym syms[] = {
	{"curl_global_init", (void **)&fn.global_init},
	{"curl_global_cleanup", (void **)&fn.global_cleanup},
	{"curl_easy_init", (void **)&fn.easy_init},
	{"curl_easy_setopt", (void **)&fn.easy_setopt},
	{"curl_easy_perform", (void **)&fn.easy_perform},
	{"curl_easy_cleanup", (void **)&fn.easy_cleanup},
	{"curl_easy_reset", (void **)&fn.easy_reset},
	{"curl_easy_getinfo", (void **)&fn.easy_getinfo},
	{"curl_easy_strerror", (void **)&fn.easy_strerror},
	{"curl_easy_escape", (void **)&fn.easy_escape},
	{"curl_free", (void **)&fn.free},
	{"curl_slist_append", (void **)&fn.slist_append},
	{"curl_slist_free_all", (void **)&fn.slist_free_all},
	{"curl_multi_init", (void **)&fn.multi_init},
	{"curl_multi_setopt", (void **)&fn.multi_setopt},
	{"curl_multi_add_handle", (void **)&fn.multi_add_handle},
	{"curl_multi_remove_handle", (void **)&fn.multi_remove_handle},
	{"curl_multi_perform", (void **)&fn.multi_perform},
	{"curl_multi_poll", (void **)&fn.multi_poll},
	{"curl_multi_info_read", (void **)&fn.multi_info_read},
	{"curl_multi_cleanup", (void **)&fn.multi_cleanup},
	{"curl_multi_strerror", (void **)&fn.multi_strerror},
	{"curl_url", (void **)&fn.url},
	{"curl_url_cleanup", (void **)&fn.url_cleanup},
	{"curl_url_get", (void **)&fn.url_get},
	{"curl_url_set", (void **)&fn.url_set},
	{"curl_url_strerror", (void **)&fn.url_strerror},
};

static void load(void)
{
	void *lib = lazy_lib_open(LIBCURL, "libcurl4 (7.66 or later)", syms, sizeof(syms) / sizeof(syms[0]));
	__atomic_store_n(&fn.lib, lib, __ATOMIC_RELEASE);
}

/* True once libcurl is loaded (loading it on the first call). */
static bool loaded(void)
{
	pthread_once(&fn_once, load);
	return fn.lib != NULL;
}

/* True if an earlier call loaded libcurl; never loads it.  For functions that
 * only take what a loaded libcurl handed out. */
static bool was_loaded(void)
{
	return __atomic_load_n(&fn.lib, __ATOMIC_ACQUIRE) != NULL;
}

CURLcode curl_global_init(long flags) { return loaded() ? fn.global_init(flags) : CURLE_FAILED_INIT; }

void curl_global_cleanup(void)
{
	if (was_loaded())
		fn.global_cleanup();
}

CURL *curl_easy_init(void) { return loaded() ? fn.easy_init() : NULL; }

/* The one argument after |option|, read with the type libcurl gives that
 * option's number range, is passed on as that type. */
#define FORWARD_SETOPT(call, h, option, ap)                                                                            \
	((option) < CURLOPTTYPE_OBJECTPOINT	 ? call(h, option, va_arg(ap, long))                                  \
	 : (option) < CURLOPTTYPE_FUNCTIONPOINT ? call(h, option, va_arg(ap, void *))                                \
	 : (option) < CURLOPTTYPE_OFF_T	 ? call(h, option, va_arg(ap, void (*)(void)))                               \
	 : (option) < CURLOPTTYPE_BLOB		 ? call(h, option, va_arg(ap, curl_off_t))                           \
						 : call(h, option, va_arg(ap, void *)))

CURLcode curl_easy_setopt(CURL *h, CURLoption option, ...)
{
	if (!was_loaded())
		return CURLE_FAILED_INIT;
	va_list ap;
	va_start(ap, option);
	CURLcode r = FORWARD_SETOPT(fn.easy_setopt, h, option, ap);
	va_end(ap);
	return r;
}

CURLcode curl_easy_perform(CURL *h) { return was_loaded() ? fn.easy_perform(h) : CURLE_FAILED_INIT; }

void curl_easy_cleanup(CURL *h)
{
	if (was_loaded())
		fn.easy_cleanup(h);
}

void curl_easy_reset(CURL *h)
{
	if (was_loaded())
		fn.easy_reset(h);
}

CURLcode curl_easy_getinfo(CURL *h, CURLINFO info, ...)
{
	if (!was_loaded())
		return CURLE_FAILED_INIT;
	va_list ap;
	va_start(ap, info);
	/* Every CURLINFO takes a pointer to where the answer goes. */
	CURLcode r = fn.easy_getinfo(h, info, va_arg(ap, void *));
	va_end(ap);
	return r;
}

const char *curl_easy_strerror(CURLcode code)
{
	return loaded() ? fn.easy_strerror(code) : "libcurl could not be loaded";
}

char *curl_easy_escape(CURL *h, const char *s, int len) { return loaded() ? fn.easy_escape(h, s, len) : NULL; }

void curl_free(void *p)
{
	if (was_loaded())
		fn.free(p);
}

struct curl_slist *curl_slist_append(struct curl_slist *list, const char *s)
{
	return loaded() ? fn.slist_append(list, s) : NULL;
}

void curl_slist_free_all(struct curl_slist *list)
{
	if (was_loaded())
		fn.slist_free_all(list);
}

CURLM *curl_multi_init(void) { return loaded() ? fn.multi_init() : NULL; }

CURLMcode curl_multi_setopt(CURLM *m, CURLMoption option, ...)
{
	if (!was_loaded())
		return CURLM_INTERNAL_ERROR;
	va_list ap;
	va_start(ap, option);
	CURLMcode r = FORWARD_SETOPT(fn.multi_setopt, m, option, ap);
	va_end(ap);
	return r;
}

CURLMcode curl_multi_add_handle(CURLM *m, CURL *h)
{
	return was_loaded() ? fn.multi_add_handle(m, h) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_remove_handle(CURLM *m, CURL *h)
{
	return was_loaded() ? fn.multi_remove_handle(m, h) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_perform(CURLM *m, int *running)
{
	return was_loaded() ? fn.multi_perform(m, running) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_poll(CURLM *m, struct curl_waitfd *extra, unsigned int n_extra, int timeout_ms, int *numfds)
{
	return was_loaded() ? fn.multi_poll(m, extra, n_extra, timeout_ms, numfds) : CURLM_INTERNAL_ERROR;
}

CURLMsg *curl_multi_info_read(CURLM *m, int *left) { return was_loaded() ? fn.multi_info_read(m, left) : NULL; }

CURLMcode curl_multi_cleanup(CURLM *m) { return was_loaded() ? fn.multi_cleanup(m) : CURLM_INTERNAL_ERROR; }

const char *curl_multi_strerror(CURLMcode code)
{
	return loaded() ? fn.multi_strerror(code) : "libcurl could not be loaded";
}

CURLU *curl_url(void) { return loaded() ? fn.url() : NULL; }

void curl_url_cleanup(CURLU *u)
{
	if (was_loaded())
		fn.url_cleanup(u);
}

CURLUcode curl_url_get(CURLU *u, CURLUPart what, char **part, unsigned int flags)
{
	return was_loaded() ? fn.url_get(u, what, part, flags) : CURLUE_OUT_OF_MEMORY;
}

CURLUcode curl_url_set(CURLU *u, CURLUPart what, const char *part, unsigned int flags)
{
	return was_loaded() ? fn.url_set(u, what, part, flags) : CURLUE_OUT_OF_MEMORY;
}

const char *curl_url_strerror(CURLUcode code)
{
	return loaded() ? fn.url_strerror(code) : "libcurl could not be loaded";
}
