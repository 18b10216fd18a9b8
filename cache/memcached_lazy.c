/* libmemcached, loaded on first use.
 *
 * The L2 tier compiles against libmemcached's API but kindling does not link
 * its library: the memcached_* functions below, the ones cache/ (and the L2
 * test tools) call, each forward to libmemcached.so.11, which the first call
 * opens with dlopen().  libmemcached brings the C++ runtime and SASL, which
 * cost every start of every kindling program milliseconds of dynamic
 * linking, while a host without L2 nodes never calls it.
 * common/curl_lazy.c and chunker/archive_lazy.c do the same for libcurl and
 * libarchive.
 *
 * A host without libmemcached.so.11 fails at the first L2 use, with a log
 * line naming the library (the tier then counts as down), instead of at
 * exec. */
#define LOG_COMPONENT "cache"
#include <libmemcached/memcached.h>
#include <pthread.h>

#include "common/common.h"

#define LIBMEMCACHED "libmemcached.so.11"

/* X(return type, name, parameters, arguments, value when libmemcached is missing) */
#define MEMCACHED_FUNCS(X)                                                                                             \
	X(memcached_return_t, memcached_behavior_set, (memcached_st * m, const memcached_behavior_t flag, uint64_t data), \
	  (m, flag, data), MEMCACHED_FAILURE)                                                                          \
	X(memcached_st *, memcached_create, (memcached_st * m), (m), NULL)                                            \
	X(memcached_return_t, memcached_delete, (memcached_st * m, const char *key, size_t key_len, time_t exp),      \
	  (m, key, key_len, exp), MEMCACHED_FAILURE)                                                                   \
	X(memcached_return_t, memcached_flush, (memcached_st * m, time_t exp), (m, exp), MEMCACHED_FAILURE)           \
	X(char *, memcached_get,                                                                                       \
	  (memcached_st * m, const char *key, size_t key_len, size_t *value_len, uint32_t *flags,                     \
	   memcached_return_t *error),                                                                                 \
	  (m, key, key_len, value_len, flags, error), (*error = MEMCACHED_FAILURE, NULL))                              \
	X(const char *, memcached_last_error_message, (const memcached_st *m), (m), "libmemcached could not be loaded") \
	X(memcached_return_t, memcached_server_add, (memcached_st * m, const char *host, in_port_t port),             \
	  (m, host, port), MEMCACHED_FAILURE)                                                                          \
	X(memcached_return_t, memcached_set,                                                                           \
	  (memcached_st * m, const char *key, size_t key_len, const char *value, size_t value_len, time_t exp,        \
	   uint32_t flags),                                                                                            \
	  (m, key, key_len, value, value_len, exp, flags), MEMCACHED_FAILURE)                                          \
	X(const char *, memcached_strerror, (const memcached_st *m, memcached_return_t rc), (m, rc),                   \
	  "libmemcached could not be loaded")

/* libmemcached's entry points, filled once by load(); process-wide, as the
 * dynamic linker's own tables are. */
#define DECLARE(ret, name, params, args, fail) static __typeof__(name) *p_##name;
MEMCACHED_FUNCS(DECLARE)
#undef DECLARE
static __typeof__(memcached_free) *p_memcached_free;
static __typeof__(memcached_quit) *p_memcached_quit;
static void *lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

#define SYM(ret, name, params, args, fail) {#name, (void **)&p_##name},
static const struct lazy_sym syms[] = {MEMCACHED_FUNCS(SYM) SYM(void, memcached_free, , , )
					       SYM(void, memcached_quit, , , )};
#undef SYM

static void load(void)
{
	lib = lazy_lib_open(LIBMEMCACHED, "libmemcached11", syms, sizeof(syms) / sizeof(syms[0]));
}

/* True once libmemcached is loaded (loading it on the first call). */
static bool loaded(void)
{
	pthread_once(&lib_once, load);
	return lib != NULL;
}

#define DEFINE(ret, name, params, args, fail)                                                                          \
	ret name params { return loaded() ? p_##name args : fail; }
MEMCACHED_FUNCS(DEFINE)
#undef DEFINE

void memcached_free(memcached_st *m)
{
	if (loaded())
		p_memcached_free(m);
}

void memcached_quit(memcached_st *m)
{
	if (loaded())
		p_memcached_quit(m);
}
