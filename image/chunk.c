/* The chunk format: convergent AES-256-CTR, named by the SHA-256 of the
 * ciphertext.  A key never encrypts two different plaintexts (it is derived
 * from the plaintext), so the fixed zero IV is safe, and identical plaintext
 * gives identical ciphertext, which is what lets encrypted chunks dedup. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static int derive_key(const uint8_t *salt, size_t salt_len, const uint8_t *plain, size_t len,
		      uint8_t key[CHUNK_KEY_LEN])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int out_len = 0;
	int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
		 EVP_DigestUpdate(md, salt, salt_len) == 1 && EVP_DigestUpdate(md, plain, len) == 1 &&
		 EVP_DigestFinal_ex(md, key, &out_len) == 1 && out_len == CHUNK_KEY_LEN;
	EVP_MD_CTX_free(md);
	return ok ? 0 : -EIO;
}

int chunk_seal(const uint8_t *salt, size_t salt_len, const uint8_t *plain, size_t len, uint8_t key[CHUNK_KEY_LEN],
	       uint8_t *cipher, char name[CHUNK_NAME_HEX_LEN + 1])
{
	int r = derive_key(salt, salt_len, plain, len, key);
	if (r < 0)
		return r;
	if ((r = chunk_ctr_at(key, 0, plain, len, cipher)) < 0)
		return r;
	uint8_t digest[SHA256_LEN];
	sha256_buf(cipher, len, digest);
	hex_encode(digest, SHA256_LEN, name);
	return 0;
}

/* The read path's critical pass does only what verification needs, in one
 * interleaved pass over the chunk: each piece is hashed (the name check),
 * decrypted and, with a salt, hashed again (the key check) while it is in the
 * CPU cache.  Hosts normally run without the salt, as Lambda's do: the name
 * check already binds the bytes, and the key comes from a manifest the host
 * trusts. */
#define OPEN_STEP (16u * 1024u)

int chunk_open(const char *name, const uint8_t key[CHUNK_KEY_LEN], const uint8_t *salt, size_t salt_len,
	       const uint8_t *cipher, size_t len, uint8_t *plain)
{
	static const uint8_t iv[16];
	EVP_MD_CTX *md = name ? EVP_MD_CTX_new() : NULL;
	EVP_MD_CTX *kmd = salt ? EVP_MD_CTX_new() : NULL;
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	int r = cx && (!name || md) && (!salt || kmd) && EVP_EncryptInit_ex(cx, EVP_aes_256_ctr(), NULL, key, iv) == 1 &&
			(!name || EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1) &&
			(!salt || (EVP_DigestInit_ex(kmd, EVP_sha256(), NULL) == 1 &&
				   EVP_DigestUpdate(kmd, salt, salt_len) == 1))
		    ? 0
		    : -EIO;
	for (size_t o = 0; r == 0 && o < len; o += OPEN_STEP) {
		size_t n = len - o < OPEN_STEP ? len - o : OPEN_STEP;
		int outl = 0;
		if ((name && EVP_DigestUpdate(md, cipher + o, n) != 1) ||
		    EVP_EncryptUpdate(cx, plain + o, &outl, cipher + o, (int)n) != 1 || (size_t)outl != n ||
		    (salt && EVP_DigestUpdate(kmd, plain + o, n) != 1))
			r = -EIO;
	}
	uint8_t digest[SHA256_LEN];
	unsigned dlen = 0;
	if (r == 0 && name) {
		char hex[SHA256_HEX_LEN + 1];
		if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != SHA256_LEN)
			r = -EIO;
		else {
			hex_encode(digest, SHA256_LEN, hex);
			r = strcmp(hex, name) == 0 ? 0 : -EBADMSG;
		}
	}
	if (r == 0 && salt) {
		if (EVP_DigestFinal_ex(kmd, digest, &dlen) != 1 || dlen != SHA256_LEN)
			r = -EIO;
		else if (CRYPTO_memcmp(digest, key, CHUNK_KEY_LEN) != 0)
			r = -EBADMSG;
	}
	if (r == -EIO)
		log_err("SHA-256 or AES-256-CTR failed (OpenSSL); is libcrypto working?");
	if (r < 0)
		memset(plain, 0, len);
	EVP_MD_CTX_free(md);
	EVP_MD_CTX_free(kmd);
	EVP_CIPHER_CTX_free(cx);
	return r;
}

/* A key's AES-256 schedule, set up once and reused for every piece of the
 * chunk: the L2 read decrypts each fragment as it lands, at its offset. */
struct chunk_ctr {
	EVP_CIPHER_CTX *cx;
};

int chunk_ctr_new(const uint8_t key[CHUNK_KEY_LEN], struct chunk_ctr **out)
{
	static const uint8_t iv[16];
	*out = NULL;
	struct chunk_ctr *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->cx = EVP_CIPHER_CTX_new();
	if (!c->cx || EVP_EncryptInit_ex(c->cx, EVP_aes_256_ctr(), NULL, key, iv) != 1) {
		chunk_ctr_free(c);
		log_err("AES-256-CTR cannot be set up (OpenSSL); is libcrypto working?");
		return -EIO;
	}
	*out = c;
	return 0;
}

int chunk_ctr_run(struct chunk_ctr *c, uint64_t off, const uint8_t *in, size_t len, uint8_t *out)
{
	/* The counter block of byte |off| is off / 16 (IV 0 at offset 0);
	 * within that block, off % 16 bytes of key stream are skipped by
	 * running them over zeros. */
	static const uint8_t zero[16];
	uint8_t iv[16] = {0}, skip[16];
	uint64_t ctr = off / 16;
	int skip_n = (int)(off % 16), outl = 0, skipl = 0;
	for (int i = 0; i < 8; i++)
		iv[15 - i] = (uint8_t)(ctr >> (8 * i));
	int ok = len <= (1u << 30) && EVP_EncryptInit_ex(c->cx, NULL, NULL, NULL, iv) == 1 &&
		 (skip_n == 0 || (EVP_EncryptUpdate(c->cx, skip, &skipl, zero, skip_n) == 1 && skipl == skip_n)) &&
		 EVP_EncryptUpdate(c->cx, out, &outl, in, (int)len) == 1 && (size_t)outl == len;
	if (!ok) {
		log_err("AES-256-CTR failed (OpenSSL); is libcrypto working?");
		return -EIO;
	}
	return 0;
}

void chunk_ctr_free(struct chunk_ctr *c)
{
	if (!c)
		return;
	EVP_CIPHER_CTX_free(c->cx);
	free(c);
}

int chunk_ctr_at(const uint8_t key[CHUNK_KEY_LEN], uint64_t off, const uint8_t *in, size_t len, uint8_t *out)
{
	struct chunk_ctr *c;
	int r = chunk_ctr_new(key, &c);
	if (r == 0)
		r = chunk_ctr_run(c, off, in, len, out);
	chunk_ctr_free(c);
	return r;
}
