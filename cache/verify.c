/* Chunk verification and decryption, as the chunk format defines them
 * (DESIGN.md, "Chunks"): name = SHA-256(ciphertext), ciphertext =
 * AES-256-CTR(key, IV 0), and, where the deployment's salt is known,
 * key = SHA-256(salt || plaintext).
 *
 * Nothing here knows about the cache: chunk_verify_decrypt takes bytes and
 * keys and nothing else, and its arguments are those of image/'s chunk_open,
 * so that the one implementation of the chunk format can take its place.
 * It is the check every chunk from L2 or L3 passes (via chunk_whole_make).
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

/* The critical path of a fetch from L2 or L3 does only what verification
 * needs, in one interleaved pass over the chunk (each piece is hashed,
 * decrypted and, with a salt, hashed again while it is in the CPU cache):
 *   - the name check, SHA-256 of the ciphertext (unless the tier did it:
 *     l2_get hashes fragments as they arrive, overlapped with the network);
 *   - the decryption, AES-256-CTR;
 *   - the key check, SHA-256(salt || plaintext), only when a salt is
 *     configured.  Hosts normally run without the salt (as Lambda's do): the
 *     name check already binds the bytes, and the key comes from a manifest
 *     the host trusts.
 * The per-4 KiB digest table L1 keeps is not computed here: L1 computes it
 * from the verified ciphertext in its background insert (l1.c). */
#define VERIFY_STEP (16u * 1024u)

int chunk_verify_decrypt(const char *name, const uint8_t key[CHUNK_KEY_LEN], const uint8_t *salt, size_t salt_len,
			 const uint8_t *cipher, size_t len, uint8_t *plain)
{
	static const uint8_t iv[16] = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_MD_CTX *kmd = salt ? EVP_MD_CTX_new() : NULL;
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	int r = md && cx && (!salt || kmd) && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
			EVP_EncryptInit_ex(cx, EVP_aes_256_ctr(), NULL, key, iv) == 1 &&
			(!salt || (EVP_DigestInit_ex(kmd, EVP_sha256(), NULL) == 1 &&
				   EVP_DigestUpdate(kmd, salt, salt_len) == 1))
		    ? 0
		    : -EIO;
	for (size_t o = 0; r == 0 && o < len; o += VERIFY_STEP) {
		size_t n = len - o < VERIFY_STEP ? len - o : VERIFY_STEP;
		int outl = 0;
		if ((name && EVP_DigestUpdate(md, cipher + o, n) != 1) ||
		    EVP_EncryptUpdate(cx, plain + o, &outl, cipher + o, (int)n) != 1 || (size_t)outl != n ||
		    (salt && EVP_DigestUpdate(kmd, plain + o, n) != 1))
			r = -EIO;
	}
	uint8_t digest[SHA256_LEN];
	unsigned dlen = 0;
	if (r == 0 && name && (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != SHA256_LEN))
		r = -EIO;
	if (r == 0 && name) {
		char hex[SHA256_HEX_LEN + 1];
		hex_encode(digest, SHA256_LEN, hex);
		r = strcmp(hex, name) == 0 ? 0 : -EBADMSG;
	}
	if (r == 0 && salt) {
		if (EVP_DigestFinal_ex(kmd, digest, &dlen) != 1 || dlen != SHA256_LEN)
			r = -EIO;
		else if (memcmp(digest, key, CHUNK_KEY_LEN) != 0)
			r = -EBADMSG;
	}
	if (r == -EIO)
		log_err("SHA-256 or AES-256-CTR failed (OpenSSL); is libcrypto working?");
	EVP_MD_CTX_free(md);
	EVP_MD_CTX_free(kmd);
	EVP_CIPHER_CTX_free(cx);
	return r;
}
