/* common: the small pieces more than one kindling component uses.
 *
 * Logging, checked arithmetic, hex and SHA-256 helpers, and crash-safe file
 * writes.  Nothing here keeps hidden state except the process-wide log level,
 * which a daemon sets once from its command line.
 */
#ifndef KINDLING_COMMON_H
#define KINDLING_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- logging ---------------------------------------------------------- */

enum log_level { LOG_SILENT = -1, LOG_ERR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Write one line "program: level: message" to stderr if |level| is at or below
 * the current threshold; "program[component]: ..." when debugging, and
 * "component: ..." until a program has set its name.  Thread-safe (one
 * write(2) per line). */
void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Name the program in every log line ("kindling", "chunkify"), so a library's
 * message reads as coming from the command the operator ran.  Call it once
 * from main() before starting threads; |name| must outlive the process's
 * logging (a string literal). */
void log_set_program(const char *name);

/* How many errors have been logged so far in this process: a program's main()
 * prints its own one-line failure only when nothing below it said why. */
unsigned log_errors_logged(void);

/* Set the threshold; the default is LOG_WARN so tools stay quiet on success.
 * KINDLING_DEBUG=1 in the environment raises it to LOG_DEBUG at first use. */
void log_set_level(enum log_level level);

#ifndef LOG_COMPONENT
#define LOG_COMPONENT "kindling"
#endif
#define log_err(...) log_msg(LOG_ERR, LOG_COMPONENT, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, LOG_COMPONENT, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, LOG_COMPONENT, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, LOG_COMPONENT, __VA_ARGS__)

/* ---- checked arithmetic ------------------------------------------------ */

/* Each returns true on success and false if the result would overflow; on
 * overflow |*out| is unspecified.  Use them on every size that came from
 * untrusted input. */
static inline bool ck_add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool ck_mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool ck_add_size(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool ck_mul_size(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }

/* Round |v| up to a multiple of |align| (a power of two); false on overflow. */
static inline bool ck_align_up_u64(uint64_t v, uint64_t align, uint64_t *out)
{
	uint64_t t;
	if (!ck_add_u64(v, align - 1, &t))
		return false;
	*out = t & ~(align - 1);
	return true;
}

/* ---- hashing and hex ------------------------------------------------------ */

#define SHA256_LEN 32
#define SHA256_HEX_LEN 64

/* Lower-case hex of |len| bytes of |in| into |out|, which must hold 2*len+1. */
void hex_encode(const uint8_t *in, size_t len, char *out);

/* Parse exactly 2*|out_len| hex digits from |in| (which must be NUL-terminated
 * right after them).  Returns 0 or -EINVAL. */
int hex_decode(const char *in, uint8_t *out, size_t out_len);

/* True if |s| is exactly 64 lower-case hex digits. */
bool is_sha256_hex(const char *s);

/* One-shot SHA-256 of |<p, n>| into |out|. */
void sha256_buf(const void *p, size_t n, uint8_t out[SHA256_LEN]);

/* True if all |n| bytes at |p| are zero. */
bool is_all_zero(const void *p, size_t n);

/* ---- files ---------------------------------------------------------------- */

/* Create |path| and missing parents with |mode|.  Returns 0 or -errno. */
int mkdir_p(const char *path, mode_t mode);

/* Write |<buf, len>| to |path| crash-safely: a temporary name in the same
 * directory, fsync, then rename over |path|.  On failure nothing is left
 * behind and |path| is unchanged.  Returns 0 or -errno. */
int write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode);

/* Write all of |<buf, len>| to |fd|, retrying short writes and EINTR.
 * Returns 0 or -errno. */
int write_full(int fd, const void *buf, size_t len);

/* Read all of |path| into a malloc'd buffer (caller frees) of at most |max|
 * bytes.  Returns 0, -ENOENT, -EFBIG if larger than |max|, or -errno. */
int read_file_all(const char *path, size_t max, uint8_t **out, size_t *out_len);

/* A growable list of owned strings. */
struct str_list {
	char **items;
	size_t n, cap;
};

/* Append a copy of |s|.  Returns 0 or -ENOMEM. */
int str_list_add(struct str_list *l, const char *s);

/* Free every string and the array; the list is empty afterwards. */
void str_list_clear(struct str_list *l);

/* Free a NULL-terminated array of malloc'd strings and the array; NULL is
 * allowed. */
void strv_free(char **v);

/* Fill |<buf, len>| from the OS random source.  Returns 0 or -errno. */
int random_bytes(void *buf, size_t len);

/* Format a message for the caller into |<err, errlen>| (nothing if errlen is
 * 0) and return |rc|: for parsers that hand a reason back instead of logging
 * it, as in `return err_set(err, errlen, -EINVAL, "bad %s", what);`. */
__attribute__((format(printf, 4, 5))) int err_set(char *err, size_t errlen, int rc, const char *fmt, ...);

/* Parse a byte count with an optional K/M/G/T suffix (powers of 1024), as
 * command lines take sizes ("64M").  Returns 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);

/* Monotonic clock in seconds. */
double now_seconds(void);

/* malloc'd printf; returns NULL and sets errno on failure. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- libraries loaded on first use ----------------------------------------- */

/* One entry point of a library loaded on first use: its name and the
 * function pointer that receives its address. */
struct lazy_sym {
	const char *name;
	void **slot;
};

/* Open |soname| with dlopen() and resolve each of the |n| entries of |syms|
 * into its slot.  Returns the library's handle; NULL, with a log line naming
 * the library and |package| (the Debian package to install), when it cannot
 * be opened or lacks one of the entry points (then the slots must not be
 * called).  Not thread-safe: call it once, under pthread_once().  Used by the
 * forwarding files of libcurl, libarchive, libmemcached and libmicrohttpd
 * (common/curl_lazy.c and its siblings). */
void *lazy_lib_open(const char *soname, const char *package, const struct lazy_sym *syms, size_t n);

/* Load libcrypto now rather than at the first hash or cipher
 * (common/crypto_lazy.c): for a program that will confine itself first (a
 * chroot, a seccomp filter without open or exec mappings, as kvmm's jail
 * and threads) and still hash afterwards.  Like every first call, it ends
 * the program with status 127, logged, when libcrypto.so.3 cannot be
 * loaded.  Thread-safe; later calls do nothing. */
void crypto_lib_load(void);

#endif
