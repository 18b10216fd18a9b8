/* The chunk format: convergent AES-256-CTR, named by the SHA-256 of the
 * ciphertext.  A key never encrypts two different plaintexts (it is derived
 * from the plaintext), so the fixed zero IV is safe, and identical plaintext
 * gives identical ciphertext, which is what lets encrypted chunks dedup. */
#include "internal.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

static int aes_ctr(const uint8_t key[CHUNK_KEY_LEN], const uint8_t *in, size_t len, uint8_t *out)
{
	static const uint8_t iv[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int ok = ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_ctr(), NULL, key, iv) == 1;
	size_t done = 0;
	/* EVP lengths are int: feed at most 1 GiB at a time. */
	while (ok && done < len) {
		int step = len - done > (1u << 30) ? 1 << 30 : (int)(len - done), outl = 0;
		ok = EVP_EncryptUpdate(ctx, out + done, &outl, in + done, step) == 1 && outl == step;
		done += (size_t)step;
	}
	EVP_CIPHER_CTX_free(ctx);
	if (!ok) {
		log_err("AES-256-CTR failed (OpenSSL); is libcrypto working?");
		return -EIO;
	}
	return 0;
}

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
	if ((r = aes_ctr(key, plain, len, cipher)) < 0)
		return r;
	uint8_t digest[SHA256_LEN];
	sha256_buf(cipher, len, digest);
	hex_encode(digest, SHA256_LEN, name);
	return 0;
}

int chunk_open(const char *name, const uint8_t key[CHUNK_KEY_LEN], const uint8_t *salt, size_t salt_len,
	       const uint8_t *cipher, size_t len, uint8_t *plain)
{
	uint8_t digest[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(cipher, len, digest);
	hex_encode(digest, SHA256_LEN, hex);
	if (strcmp(hex, name) != 0)
		return -EBADMSG;
	int r = aes_ctr(key, cipher, len, plain);
	if (r < 0)
		return r;
	if (salt) {
		uint8_t check[CHUNK_KEY_LEN];
		if ((r = derive_key(salt, salt_len, plain, len, check)) < 0)
			return r;
		if (memcmp(check, key, CHUNK_KEY_LEN) != 0) {
			memset(plain, 0, len);
			return -EBADMSG;
		}
	}
	return 0;
}
