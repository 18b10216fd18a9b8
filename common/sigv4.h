/* common: AWS Signature Version 4, one implementation for signing requests
 * (the s3:// store) and for verifying them (the Lambda-compatible API), plus
 * the AWS CLI's credentials file.
 *
 * The algorithm is AWS's
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html)
 * as botocore implements it (botocore/auth.py, which the AWS CLI signs with):
 *
 *   canonical request = METHOD \n canonical URI \n canonical query \n
 *                       canonical headers \n signed headers \n payload hash
 *   string to sign    = AWS4-HMAC-SHA256 \n YYYYMMDDTHHMMSSZ \n
 *                       YYYYMMDD/region/service/aws4_request \n hex(SHA-256(canonical request))
 *   signing key       = HMAC chain "AWS4"+secret -> date -> region -> service -> "aws4_request"
 *   signature         = hex(HMAC(signing key, string to sign))
 *
 * The canonical URI is where services differ.  S3 signs the path exactly as
 * it is sent.  Every other service first removes "." and ".." segments and
 * empty segments, then URI-encodes the path as sent once more: a key or name
 * is encoded once to build the URL and again to sign it, so a function name
 * "a:b" travels as "/a%3Ab" and is signed as "/a%253Ab".  That is why the
 * verifier needs the path exactly as it came on the request line.
 *
 * Presigned URLs (the signature in the query string) are not supported:
 * sigv4_verify refuses them with IncompleteSignatureException and says so.
 */
#ifndef KINDLING_COMMON_SIGV4_H
#define KINDLING_COMMON_SIGV4_H

#include "common/common.h"
#include "common/http_util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* AWS refuses a request whose date is more than 5 minutes off its clock. */
#define SIGV4_DEFAULT_SKEW_S 300u
/* Longest access key id and region the verifier accepts (AWS's are 16-128
 * and at most about 20 characters). */
#define SIGV4_MAX_KEY_ID 128
#define SIGV4_MAX_REGION 64
/* Longest secret access key a lookup may return. */
#define SIGV4_MAX_SECRET 256

/* One HTTP request, as sent or as received.  Every string is borrowed. */
struct sigv4_request {
	const char *method;		   /* "GET", "POST", ... */
	const char *path;		   /* the path exactly as on the request line:
					    * percent-encoded, without the query */
	const char *query;		   /* the raw query after '?', or NULL / "" */
	const struct http_header *headers; /* in arrival order, duplicates kept */
	size_t n_headers;
	/* Signing: required, the lowercase hex SHA-256 of the body (or
	 * SIGV4_UNSIGNED_PAYLOAD).  Verifying: optional, the body's hash if the
	 * caller has it already; NULL makes sigv4_verify hash the body. */
	const char *payload_hash;
};

/* ---- the steps, exposed for known-answer tests ------------------------- */

/* The canonical URI of |raw_path| (as sent, percent-encoded) for |service|:
 * for "s3" the path itself, for every other service the path with dot and
 * empty segments removed and then URI-encoded again ('/' kept).  An empty
 * path is "/".  Returns 0 with |*out| malloc'd, or -ENOMEM. */
int sigv4_canonical_uri(const char *raw_path, const char *service, char **out);

/* The canonical query string of |raw_query| (as sent, without '?'; NULL or
 * "" for none): each name and value percent-decoded and URI-encoded again,
 * a parameter without '=' given the value "", the pairs sorted by encoded
 * name then encoded value, joined by '&'.  Returns 0 with |*out| malloc'd,
 * -EINVAL for a malformed percent escape, or -ENOMEM. */
int sigv4_canonical_query(const char *raw_query, char **out);

/* Encode |n| raw (unencoded) query parameters into the string a signer both
 * sends after '?' and signs: each part URI-encoded, sorted as above, joined
 * by '&'.  Returns a malloc'd string ("" for n == 0) or NULL (errno set). */
char *sigv4_query_encode(const char *const *names, const char *const *values, size_t n);

/* The canonical request for |req| signing the headers |signed_headers| (the
 * Authorization header's form: lowercase names joined by ';').  For each
 * signed name, the values of every request header of that name, in order,
 * each trimmed with runs of white space collapsed to one space, are joined
 * by ','.  The payload line is |req->payload_hash|, which must be set.
 * Returns 0 with |*out| malloc'd; -EINVAL (with a reason in |<err, errlen>|)
 * if |signed_headers| is malformed or names a header the request lacks, or
 * if the query is malformed; -ENOMEM. */
int sigv4_canonical_request(const struct sigv4_request *req, const char *service, const char *signed_headers,
			    char **out, char *err, size_t errlen);

/* The string to sign for |canonical_request| at |amz_date|
 * ("YYYYMMDDTHHMMSSZ") in |region| and |service|.  Returns 0 with |*out|
 * malloc'd, or -ENOMEM. */
int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service, const char *canonical_request,
			 char **out);

/* The signing key for |secret| on |date| ("YYYYMMDD", or a longer amz date
 * whose first 8 characters are used) in |region| and |service|.  Returns 0
 * or -EIO if OpenSSL's HMAC fails (logged). */
int sigv4_signing_key(const char *secret, const char *date, const char *region, const char *service,
		      uint8_t out[SHA256_LEN]);

/* The lowercase hex signature of |string_to_sign| under |key| into
 * |out_hex| (SHA256_HEX_LEN + 1 bytes).  Returns 0 or -EIO (logged). */
int sigv4_signature(const uint8_t key[SHA256_LEN], const char *string_to_sign, char out_hex[SHA256_HEX_LEN + 1]);

/* ---- signing ------------------------------------------------------------- */

/* An access key pair.  Both strings are borrowed. */
struct sigv4_key {
	const char *access_key_id;
	const char *secret_access_key;
};

/* Sign |req| for |service| in |region| at |amz_date| ("YYYYMMDDTHHMMSSZ",
 * UTC) with |key|.  Every header in |req->headers| is signed, so they must
 * be exactly the headers that will be sent with these values, and must
 * include "host" and "x-amz-date" (= |amz_date|), plus
 * "x-amz-security-token" if the key is temporary; |req->payload_hash| is
 * required.  |*out_authorization| gets the malloc'd value of the
 * Authorization header.  Returns 0, -EINVAL (a header the canonical request
 * cannot hold, logged), -ENOMEM or -EIO (OpenSSL, logged). */
int sigv4_sign(const struct sigv4_request *req, const char *amz_date, const char *region, const char *service,
	       const struct sigv4_key *key, char **out_authorization);

/* Format |t| (Unix seconds) as "YYYYMMDDTHHMMSSZ" into |out| (17 bytes). */
void sigv4_amz_date(time_t t, char out[17]);

/* ---- verifying ------------------------------------------------------------ */

/* Find the secret for |access_key_id| and copy it, NUL-terminated, into
 * |<secret, secret_size>|.  Returns 0, -ENOENT for a key it does not know,
 * -ERANGE if the secret does not fit, or another -errno for a failure of its
 * own.  Called from any thread. */
typedef int (*sigv4_lookup_fn)(void *arg, const char *access_key_id, char *secret, size_t secret_size);

/* What a verifier accepts.  Filled by the caller; read-only afterwards, so
 * one verifier serves any number of threads. */
struct sigv4_verifier {
	const char *service;	     /* required: the scope's service, e.g. "lambda" */
	const char *region;	     /* optional: the only region accepted; NULL: any */
	unsigned max_skew_s;	     /* allowed clock difference; 0: SIGV4_DEFAULT_SKEW_S */
	bool allow_unsigned_payload; /* accept x-amz-content-sha256: UNSIGNED-PAYLOAD */
	sigv4_lookup_fn lookup;	     /* required */
	void *lookup_arg;
};

/* Why a request was refused. */
enum sigv4_status {
	SIGV4_ACCEPTED = 0,
	SIGV4_MISSING_TOKEN,   /* no Authorization header at all */
	SIGV4_INCOMPLETE,      /* an Authorization header that is not a whole SigV4 one */
	SIGV4_UNKNOWN_KEY,     /* an access key id the lookup does not know */
	SIGV4_BAD_SIGNATURE,   /* a scope, payload hash or signature that does not match */
	SIGV4_EXPIRED,	       /* a date outside the allowed skew */
};

/* The outcome of sigv4_verify.  Clean up with sigv4_verdict_cleanup. */
struct sigv4_verdict {
	enum sigv4_status status;
	/* When refused: the HTTP status (403, as Lambda answers every
	 * authentication failure), Lambda's error type for x-amzn-ErrorType
	 * (static), and a malloc'd message in AWS's words.  0/NULL when
	 * accepted. */
	int http_status;
	const char *error_type;
	char *message;
	/* Who signed and for which region, once the Credential has parsed
	 * (also on refusals after that point, for logs); "" before. */
	char access_key_id[SIGV4_MAX_KEY_ID + 1];
	char region[SIGV4_MAX_REGION + 1];
	/* The request carried X-Amz-Security-Token (passed through unchecked:
	 * there is no token service to ask). */
	bool session_token;
};

/* Verify the SigV4 Authorization header of |req| against |v| at the
 * server's time |now| (Unix seconds).  The body is |<body, body_len>|
 * (hashed unless |req->payload_hash| is set); an X-Amz-Content-Sha256
 * header, if present, must match it.  The date comes from X-Amz-Date, else
 * from Date, and must be signed, as must Host; it must be within
 * |v->max_skew_s| of |now| and agree with the Credential's date.  The
 * signature is compared in constant time.  Returns 0 when a verdict was
 * reached (accepted or refused: see |out->status|), or -ENOMEM / -EIO
 * (OpenSSL) / a lookup failure's -errno, in which case |out| holds nothing
 * to use but must still be cleaned up. */
int sigv4_verify(const struct sigv4_verifier *v, const struct sigv4_request *req, const void *body, size_t body_len,
		 time_t now, struct sigv4_verdict *out);

/* Free what |v| owns; it may be cleaned up twice. */
void sigv4_verdict_cleanup(struct sigv4_verdict *v);

/* The parts of an Authorization header, for the verifier and its tests. */
struct sigv4_auth {
	char *buf; /* owns every string below */
	const char *access_key_id, *date, *region, *service;
	const char *signed_headers;
	const char *signature;
};

/* Parse the value of an Authorization header.  On failure |<err, errlen>|
 * gets AWS's message (IncompleteSignatureException's words) and nothing
 * needs cleaning up.  The Credential's five parts are split but not checked
 * against any expected scope.  Returns 0, -EINVAL (not a complete
 * AWS4-HMAC-SHA256 header) or -ENOMEM. */
int sigv4_auth_parse(const char *header, struct sigv4_auth *out, char *err, size_t errlen);

/* Free what |a| owns. */
void sigv4_auth_cleanup(struct sigv4_auth *a);

/* ---- the credentials file --------------------------------------------------- */

/* Access key ids and their secrets, read from a file in the AWS CLI's
 * credentials format.  Immutable once made, so any thread may look up. */
struct sigv4_keys;

/* Parse the credentials file text |<text, len>| (|name| is what messages
 * call it, e.g. its path):
 *
 *   # a comment (also ';')
 *   [default]
 *   aws_access_key_id = AKIDEXAMPLE
 *   aws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
 *   aws_session_token = ...   (and any other setting: ignored)
 *
 * Names are matched case-insensitively, '=' or ':' separates a value,
 * white space around names and values is dropped; a value runs to the end
 * of its line (no inline comments, as in botocore).  A section needs both
 * or neither of the id and the secret.  On failure |<err, errlen>| says
 * "NAME:LINE: what is wrong".  Returns 0 with |*out| (free with
 * sigv4_keys_free), -EINVAL for a malformed file (a line outside a section,
 * a broken section header, a line without a separator, a duplicate section
 * or setting, a section with only one of the pair, an empty or multi-line
 * value, one key id with two secrets) or -ENOMEM. */
int sigv4_keys_parse(const char *text, size_t len, const char *name, struct sigv4_keys **out, char *err,
		     size_t errlen);

/* Read and parse the credentials file |path| (at most 1 MiB).  A file that
 * other users can read or write still loads, but a warning naming it and the
 * chmod that fixes it is logged, as ssh does for keys.  Returns 0,
 * -ENOENT, -EFBIG, -EINVAL (see sigv4_keys_parse) or -errno, each with a
 * reason in |<err, errlen>| that names the file. */
int sigv4_keys_load(const char *path, struct sigv4_keys **out, char *err, size_t errlen);

/* How many key ids |k| holds. */
size_t sigv4_keys_count(const struct sigv4_keys *k);

/* The profile (section name) that defined |access_key_id|, or NULL. */
const char *sigv4_keys_profile(const struct sigv4_keys *k, const char *access_key_id);

/* A sigv4_lookup_fn over a struct sigv4_keys passed as |keys|. */
int sigv4_keys_lookup(void *keys, const char *access_key_id, char *secret, size_t secret_size);

/* Wipe the secrets and free |k|; NULL is fine. */
void sigv4_keys_free(struct sigv4_keys *k);

#endif
