/* libcrypto (OpenSSL 3), loaded on first use.
 *
 * kindling compiles against OpenSSL's API but does not link libcrypto: the
 * functions below, every one kindling's programs, tests and tools call, each
 * forward to libcrypto.so.3, which the first call opens with dlopen().
 * Linking it cost every start of every kindling program 2 to 3 ms on these
 * hosts (some 3,400 symbol lookups of libcrypto's own references, and its
 * pages mapped and relocated), while a `kindling run` served by a running
 * blockd never hashes or decrypts anything itself: the blockd does.
 * `tests/tools/warmstart.sh` measures that start.  common/curl_lazy.c,
 * chunker/archive_lazy.c and cache/memcached_lazy.c do the same for libcurl,
 * libarchive and libmemcached.
 *
 * Unlike those, libcrypto is not optional: a chunk cannot be verified or a
 * manifest opened without it, and some of its functions (SHA256,
 * EVP_EncodeBlock, OPENSSL_cleanse) have no failure a caller could act on.
 * So a host without libcrypto.so.3 ends the program at the first call, with
 * a log line naming the library and its package and exit status 127, as the
 * dynamic linker would have at exec. */
#define LOG_COMPONENT "crypto"
/* SHA256_Init and its siblings (kvmm's vmstate checksum) are declared
 * without deprecation at this API level. */
#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <unistd.h>

#include "common/common.h"

#define LIBCRYPTO "libcrypto.so.3"

/* X(return type, name, parameters, arguments): the functions that return. */
#define CRYPTO_FUNCS(X)                                                                                                \
	X(int, CRYPTO_memcmp, (const void *a, const void *b, size_t len), (a, b, len))                               \
	X(int, EVP_CIPHER_CTX_ctrl, (EVP_CIPHER_CTX * ctx, int type, int arg, void *ptr), (ctx, type, arg, ptr))    \
	X(EVP_CIPHER_CTX *, EVP_CIPHER_CTX_new, (void), ())                                                          \
	X(int, EVP_CipherFinal_ex, (EVP_CIPHER_CTX * ctx, unsigned char *out, int *outl), (ctx, out, outl))          \
	X(int, EVP_CipherInit_ex,                                                                                      \
	  (EVP_CIPHER_CTX * ctx, const EVP_CIPHER *type, ENGINE *impl, const unsigned char *key,                      \
	   const unsigned char *iv, int enc),                                                                          \
	  (ctx, type, impl, key, iv, enc))                                                                             \
	X(int, EVP_CipherUpdate, (EVP_CIPHER_CTX * ctx, unsigned char *out, int *outl, const unsigned char *in, int inl), \
	  (ctx, out, outl, in, inl))                                                                                   \
	X(int, EVP_DecodeBlock, (unsigned char *t, const unsigned char *f, int n), (t, f, n))                        \
	X(int, EVP_Digest,                                                                                             \
	  (const void *data, size_t count, unsigned char *md, unsigned int *size, const EVP_MD *type, ENGINE *impl), \
	  (data, count, md, size, type, impl))                                                                         \
	X(int, EVP_DigestFinal_ex, (EVP_MD_CTX * ctx, unsigned char *md, unsigned int *s), (ctx, md, s))             \
	X(int, EVP_DigestInit_ex, (EVP_MD_CTX * ctx, const EVP_MD *type, ENGINE *impl), (ctx, type, impl))           \
	X(int, EVP_DigestUpdate, (EVP_MD_CTX * ctx, const void *d, size_t cnt), (ctx, d, cnt))                       \
	X(int, EVP_EncodeBlock, (unsigned char *t, const unsigned char *f, int n), (t, f, n))                        \
	X(int, EVP_EncryptInit_ex,                                                                                     \
	  (EVP_CIPHER_CTX * ctx, const EVP_CIPHER *type, ENGINE *impl, const unsigned char *key,                      \
	   const unsigned char *iv),                                                                                   \
	  (ctx, type, impl, key, iv))                                                                                  \
	X(int, EVP_EncryptUpdate, (EVP_CIPHER_CTX * ctx, unsigned char *out, int *outl, const unsigned char *in, int inl), \
	  (ctx, out, outl, in, inl))                                                                                   \
	X(EVP_MAC_CTX *, EVP_MAC_CTX_new, (EVP_MAC * mac), (mac))                                                    \
	X(EVP_MAC *, EVP_MAC_fetch, (OSSL_LIB_CTX * libctx, const char *algorithm, const char *properties),          \
	  (libctx, algorithm, properties))                                                                             \
	X(int, EVP_MAC_final, (EVP_MAC_CTX * ctx, unsigned char *out, size_t *outl, size_t outsize),                 \
	  (ctx, out, outl, outsize))                                                                                   \
	X(int, EVP_MAC_init, (EVP_MAC_CTX * ctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[]), \
	  (ctx, key, keylen, params))                                                                                  \
	X(int, EVP_MAC_update, (EVP_MAC_CTX * ctx, const unsigned char *data, size_t datalen), (ctx, data, datalen)) \
	X(EVP_MD_CTX *, EVP_MD_CTX_new, (void), ())                                                                  \
	X(const EVP_CIPHER *, EVP_aes_256_ctr, (void), ())                                                           \
	X(const EVP_CIPHER *, EVP_aes_256_gcm, (void), ())                                                           \
	X(const EVP_MD *, EVP_sha256, (void), ())                                                                    \
	X(unsigned char *, HMAC,                                                                                       \
	  (const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *data, size_t data_len,           \
	   unsigned char *md, unsigned int *md_len),                                                                   \
	  (evp_md, key, key_len, data, data_len, md, md_len))                                                          \
	X(OSSL_PARAM, OSSL_PARAM_construct_end, (void), ())                                                          \
	X(OSSL_PARAM, OSSL_PARAM_construct_utf8_string, (const char *key, char *buf, size_t bsize), (key, buf, bsize)) \
	X(unsigned char *, SHA256, (const unsigned char *d, size_t n, unsigned char *md), (d, n, md))                \
	X(int, SHA256_Final, (unsigned char *md, SHA256_CTX *c), (md, c))                                            \
	X(int, SHA256_Init, (SHA256_CTX * c), (c))                                                                   \
	X(int, SHA256_Update, (SHA256_CTX * c, const void *data, size_t len), (c, data, len))

/* X(name, parameters, arguments): the ones that return nothing. */
#define CRYPTO_VOID_FUNCS(X)                                                                                           \
	X(EVP_CIPHER_CTX_free, (EVP_CIPHER_CTX * ctx), (ctx))                                                        \
	X(EVP_MAC_CTX_free, (EVP_MAC_CTX * ctx), (ctx))                                                              \
	X(EVP_MAC_free, (EVP_MAC * mac), (mac))                                                                      \
	X(EVP_MD_CTX_free, (EVP_MD_CTX * ctx), (ctx))                                                                \
	X(OPENSSL_cleanse, (void *ptr, size_t len), (ptr, len))

/* libcrypto's entry points, filled once by load(); process-wide, as the
 * dynamic linker's own tables are. */
#define DECLARE(ret, name, params, args) static __typeof__(name) *p_##name;
#define DECLARE_VOID(name, params, args) static __typeof__(name) *p_##name;
CRYPTO_FUNCS(DECLARE)
CRYPTO_VOID_FUNCS(DECLARE_VOID)
#undef DECLARE
#undef DECLARE_VOID
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

#define SYM(ret, name, params, args) {#name, (void **)&p_##name},
#define SYM_VOID(name, params, args) {#name, (void **)&p_##name},
static const struct lazy_sym syms[] = {CRYPTO_FUNCS(SYM) CRYPTO_VOID_FUNCS(SYM_VOID)};
#undef SYM
#undef SYM_VOID

static void load(void)
{
	if (!lazy_lib_open(LIBCRYPTO, "libssl3", syms, sizeof(syms) / sizeof(syms[0]))) {
		log_err("kindling cannot hash, encrypt or verify anything without %s; stopping", LIBCRYPTO);
		_exit(127);
	}
}

void crypto_lib_load(void)
{
	pthread_once(&lib_once, load);
}

#define DEFINE(ret, name, params, args)                                                                                \
	ret name params                                                                                                \
	{                                                                                                              \
		pthread_once(&lib_once, load);                                                                         \
		return p_##name args;                                                                                  \
	}
#define DEFINE_VOID(name, params, args)                                                                                \
	void name params                                                                                               \
	{                                                                                                              \
		pthread_once(&lib_once, load);                                                                         \
		p_##name args;                                                                                         \
	}
CRYPTO_FUNCS(DEFINE)
CRYPTO_VOID_FUNCS(DEFINE_VOID)
#undef DEFINE
#undef DEFINE_VOID
