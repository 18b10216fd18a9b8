/* libarchive, loaded on first use.
 *
 * The chunker compiles against libarchive's API but kindling does not link
 * its library: the archive_* functions below, the ones chunker/ calls, each
 * forward to libarchive.so.13, which the first call opens with dlopen().
 * libarchive pulls in libxml2, ICU, nettle and the compressors, which cost
 * every start of every kindling program milliseconds of dynamic linking,
 * while only an import reads a tar stream (`kindling run`, blockd and the
 * sandbox never do).  common/curl_lazy.c does the same for libcurl.
 *
 * A host without libarchive.so.13 fails at the first import, with a log line
 * naming the library, instead of at exec. */
#define LOG_COMPONENT "chunker"
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "common/common.h"

#define LIBARCHIVE "libarchive.so.13"

/* X(return type, name, parameters, arguments, value when libarchive is missing);
 * archive_set_error, variadic, is forwarded by hand below. */
#define ARCHIVE_FUNCS(X)                                                                                               \
	X(__LA_MODE_T, archive_entry_filetype, (struct archive_entry * e), (e), 0)                                    \
	X(la_int64_t, archive_entry_gid, (struct archive_entry * e), (e), 0)                                          \
	X(const char *, archive_entry_hardlink, (struct archive_entry * e), (e), NULL)                                \
	X(const char *, archive_entry_hardlink_utf8, (struct archive_entry * e), (e), NULL)                           \
	X(time_t, archive_entry_mtime, (struct archive_entry * e), (e), 0)                                            \
	X(int, archive_entry_mtime_is_set, (struct archive_entry * e), (e), 0)                                        \
	X(long, archive_entry_mtime_nsec, (struct archive_entry * e), (e), 0)                                         \
	X(const char *, archive_entry_pathname, (struct archive_entry * e), (e), NULL)                                \
	X(const char *, archive_entry_pathname_utf8, (struct archive_entry * e), (e), NULL)                           \
	X(__LA_MODE_T, archive_entry_perm, (struct archive_entry * e), (e), 0)                                        \
	X(dev_t, archive_entry_rdevmajor, (struct archive_entry * e), (e), 0)                                         \
	X(dev_t, archive_entry_rdevminor, (struct archive_entry * e), (e), 0)                                         \
	X(la_int64_t, archive_entry_size, (struct archive_entry * e), (e), 0)                                         \
	X(int, archive_entry_sparse_count, (struct archive_entry * e), (e), 0)                                        \
	X(const char *, archive_entry_symlink, (struct archive_entry * e), (e), NULL)                                 \
	X(const char *, archive_entry_symlink_utf8, (struct archive_entry * e), (e), NULL)                            \
	X(la_int64_t, archive_entry_uid, (struct archive_entry * e), (e), 0)                                          \
	X(int, archive_entry_xattr_next, (struct archive_entry * e, const char **name, const void **value, size_t *len), \
	  (e, name, value, len), ARCHIVE_FATAL)                                                                        \
	X(int, archive_entry_xattr_reset, (struct archive_entry * e), (e), 0)                                         \
	X(int, archive_errno, (struct archive * a), (a), ENOSYS)                                                      \
	X(const char *, archive_error_string, (struct archive * a), (a), "libarchive could not be loaded")            \
	X(la_ssize_t, archive_read_data, (struct archive * a, void *buf, size_t len), (a, buf, len), ARCHIVE_FATAL)   \
	X(int, archive_read_data_block, (struct archive * a, const void **buf, size_t *len, la_int64_t *off),         \
	  (a, buf, len, off), ARCHIVE_FATAL)                                                                           \
	X(int, archive_read_free, (struct archive * a), (a), ARCHIVE_OK)                                              \
	X(struct archive *, archive_read_new, (void), (), NULL)                                                       \
	X(int, archive_read_next_header, (struct archive * a, struct archive_entry * *e), (a, e), ARCHIVE_FATAL)      \
	X(int, archive_read_open,                                                                                      \
	  (struct archive * a, void *data, archive_open_callback *o, archive_read_callback *r, archive_close_callback *c), \
	  (a, data, o, r, c), ARCHIVE_FATAL)                                                                           \
	X(int, archive_read_open_filename, (struct archive * a, const char *path, size_t block), (a, path, block),    \
	  ARCHIVE_FATAL)                                                                                               \
	X(int, archive_read_support_format_tar, (struct archive * a), (a), ARCHIVE_FATAL)

/* libarchive's entry points, filled once by load(); process-wide, as the
 * dynamic linker's own tables are. */
#define DECLARE(ret, name, params, args, fail) static __typeof__(name) *p_##name;
ARCHIVE_FUNCS(DECLARE)
#undef DECLARE
static __typeof__(archive_set_error) *p_archive_set_error;
static void *lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

#define SYM(ret, name, params, args, fail) {#name, (void **)&p_##name},
static const struct lazy_sym syms[] = {ARCHIVE_FUNCS(SYM) SYM(void, archive_set_error, , , )};
#undef SYM

static void load(void)
{
	lib = lazy_lib_open(LIBARCHIVE, "libarchive13", syms, sizeof(syms) / sizeof(syms[0]));
}

/* True once libarchive is loaded (loading it on the first call). */
static bool loaded(void)
{
	pthread_once(&lib_once, load);
	return lib != NULL;
}

#define DEFINE(ret, name, params, args, fail)                                                                          \
	ret name params { return loaded() ? p_##name args : fail; }
ARCHIVE_FUNCS(DEFINE)
#undef DEFINE

void archive_set_error(struct archive *a, int err, const char *fmt, ...)
{
	if (!loaded())
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	p_archive_set_error(a, err, "%s", msg);
}
