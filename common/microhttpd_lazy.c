/* libmicrohttpd, loaded on first use.
 *
 * common/http_server.c compiles against libmicrohttpd's API but kindling
 * does not link its library: the MHD_* functions below, the ones it calls,
 * each forward to libmicrohttpd.so.12, which the first call opens with
 * dlopen().  libmicrohttpd brings GnuTLS and p11-kit, whose loading and
 * constructors cost every start of every kindling program milliseconds,
 * while only the services (`kindling serve`, `kindling agent`, the Runtime
 * API) serve HTTP.  common/curl_lazy.c says more; chunker/archive_lazy.c and
 * cache/memcached_lazy.c do the same for libarchive and libmemcached.
 *
 * A host without libmicrohttpd.so.12 fails when a server starts, with a log
 * line naming the library, instead of at exec. */
#define LOG_COMPONENT "http"
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>

#include "common/common.h"

#define LIBMHD "libmicrohttpd.so.12"

/* X(return type, name, parameters, arguments, value when the library is missing) */
#define MHD_FUNCS(X)                                                                                                   \
	X(enum MHD_Result, MHD_add_response_header, (struct MHD_Response * r, const char *header, const char *content), \
	  (r, header, content), MHD_NO)                                                                                \
	X(struct MHD_Response *, MHD_create_response_from_buffer,                                                      \
	  (size_t size, void *buffer, enum MHD_ResponseMemoryMode mode), (size, buffer, mode), NULL)                   \
	X(int, MHD_get_connection_values_n,                                                                            \
	  (struct MHD_Connection * c, enum MHD_ValueKind kind, MHD_KeyValueIteratorN it, void *cls), (c, kind, it, cls), \
	  -1)                                                                                                          \
	X(enum MHD_Result, MHD_queue_response, (struct MHD_Connection * c, unsigned int status, struct MHD_Response * r), \
	  (c, status, r), MHD_NO)                                                                                      \
	X(MHD_socket, MHD_quiesce_daemon, (struct MHD_Daemon * d), (d), MHD_INVALID_SOCKET)

/* The library's entry points, filled once by load(); process-wide, as the
 * dynamic linker's own tables are. */
#define DECLARE(ret, name, params, args, fail) static __typeof__(name) *p_##name;
MHD_FUNCS(DECLARE)
#undef DECLARE
static __typeof__(MHD_destroy_response) *p_MHD_destroy_response;
static __typeof__(MHD_stop_daemon) *p_MHD_stop_daemon;
static __typeof__(MHD_start_daemon_va) *p_MHD_start_daemon_va;
static __typeof__(MHD_get_connection_info) *p_MHD_get_connection_info;
static void *lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

#define SYM(ret, name, params, args, fail) {#name, (void **)&p_##name},
static const struct lazy_sym syms[] = {MHD_FUNCS(SYM) SYM(void, MHD_destroy_response, , , )
					       SYM(void, MHD_stop_daemon, , , ) SYM(void, MHD_start_daemon_va, , , )
						       SYM(void, MHD_get_connection_info, , , )};
#undef SYM

static void load(void)
{
	lib = lazy_lib_open(LIBMHD, "libmicrohttpd12", syms, sizeof(syms) / sizeof(syms[0]));
}

/* True once the library is loaded (loading it on the first call). */
static bool loaded(void)
{
	pthread_once(&lib_once, load);
	return lib != NULL;
}

#define DEFINE(ret, name, params, args, fail)                                                                          \
	ret name params { return loaded() ? p_##name args : fail; }
MHD_FUNCS(DEFINE)
#undef DEFINE

void MHD_destroy_response(struct MHD_Response *r)
{
	if (loaded())
		p_MHD_destroy_response(r);
}

void MHD_stop_daemon(struct MHD_Daemon *d)
{
	if (loaded())
		p_MHD_stop_daemon(d);
}

struct MHD_Daemon *MHD_start_daemon(unsigned int flags, uint16_t port, MHD_AcceptPolicyCallback apc, void *apc_cls,
				    MHD_AccessHandlerCallback dh, void *dh_cls, ...)
{
	if (!loaded())
		return NULL;
	va_list ap;
	va_start(ap, dh_cls);
	struct MHD_Daemon *d = p_MHD_start_daemon_va(flags, port, apc, apc_cls, dh, dh_cls, ap);
	va_end(ap);
	return d;
}

/* The info types kindling asks for (the connection's descriptor, the
 * client's address, the socket context) take no further argument. */
const union MHD_ConnectionInfo *MHD_get_connection_info(struct MHD_Connection *c, enum MHD_ConnectionInfoType type,
							 ...)
{
	return loaded() ? p_MHD_get_connection_info(c, type) : NULL;
}
