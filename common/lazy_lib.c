/* Libraries loaded on first use (contract in common.h).  The forwarding
 * files (common/curl_lazy.c, common/microhttpd_lazy.c, chunker/archive_lazy.c,
 * cache/memcached_lazy.c) list the entry points kindling calls; this opens
 * the library and fills them, all or nothing. */
#define LOG_COMPONENT "lazy-lib"
#include "common/common.h"

#include <dlfcn.h>

void *lazy_lib_open(const char *soname, const char *package, const struct lazy_sym *syms, size_t n)
{
	void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		log_err("cannot load %s: %s (install Debian's %s)", soname, dlerror(), package);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		*syms[i].slot = dlsym(h, syms[i].name);
		if (!*syms[i].slot) {
			log_err("%s lacks %s: it is older than kindling needs (install a current %s)", soname,
				syms[i].name, package);
			dlclose(h);
			return NULL;
		}
	}
	return h;
}
