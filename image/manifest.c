/* The sealed image manifest.
 *
 * On disk:  "KNDLMAN1" | u32le body_len | body | u32le sealed_len | sealed
 *   body   = canonical JSON (sorted keys, compact): source identity, run
 *            configuration, sizes, layer regions and the chunk table
 *            [[index, "name"], ...] in index order.  Readable without a key,
 *            so garbage collection can find chunk names.
 *   sealed = nonce(12) | AES-256-GCM(keys, 32 bytes per chunk) | tag(16),
 *            with everything before |sealed| as associated data, so the tag
 *            authenticates every byte of the manifest.
 *   A snapshot's body also has "kind": "snapshot" and "snapshot": {"image",
 *   "mem_size", "vmstate_offset", "vmstate_size"}; an image's has no "kind"
 *   (older readers and manifests agree on that).  An image laid out from a
 *   startup trace has "layout_traces": [{"trace", "recorded_on"}, ...]; older
 *   readers ignore it, and a manifest without it is in the usual layout.
 * The nonce is derived from the content (HMAC of body and keys under the
 * tenant key), so the same image always seals to the same bytes and a nonce
 * only ever repeats with an identical plaintext. */
#include "internal.h"
#include "common/bytes.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/params.h>

#define MANIFEST_MAGIC "KNDLMAN1"
#define MANIFEST_FORMAT "kindling-manifest/1"
#define GCM_NONCE 12
#define GCM_TAG 16
#define MAX_BODY (64u << 20)

const char *manifest_kind_name(enum manifest_kind kind)
{
	return kind == MANIFEST_KIND_SNAPSHOT ? "snapshot" : "image";
}

void run_config_cleanup(struct run_config *c)
{
	if (!c)
		return;
	strv_free(c->entrypoint);
	strv_free(c->cmd);
	strv_free(c->env);
	free(c->working_dir);
	free(c->user);
	memset(c, 0, sizeof(*c));
}

void manifest_cleanup(struct manifest *m)
{
	run_config_cleanup(&m->config);
	free(m->source_ref);
	free(m->chunks);
	free(m->layers);
	memset(m, 0, sizeof(*m));
}

static void tenant_key_id(const uint8_t tenant_key[32], char out[17])
{
	uint8_t d[SHA256_LEN];
	static const char label[] = "kindling tenant key id";
	uint8_t buf[sizeof(label) + 32];
	memcpy(buf, label, sizeof(label));
	memcpy(buf + sizeof(label), tenant_key, 32);
	sha256_buf(buf, sizeof(buf), d);
	hex_encode(d, 8, out);
}

static json_t *strv_to_json(char **v)
{
	if (!v)
		return json_null();
	json_t *a = json_array();
	for (; a && *v; v++)
		json_array_append_new(a, json_string(*v));
	return a;
}

json_t *run_config_to_json(const struct run_config *c)
{
	return json_pack("{s:o,s:o,s:o,s:o,s:o}", "entrypoint", strv_to_json(c->entrypoint), "cmd",
			 strv_to_json(c->cmd), "env", strv_to_json(c->env), "working_dir",
			 c->working_dir ? json_string(c->working_dir) : json_null(), "user",
			 c->user ? json_string(c->user) : json_null());
}

static json_t *body_to_json(const struct manifest *m, const char *key_id)
{
	json_t *chunks = json_array();
	for (size_t i = 0; chunks && i < m->n_chunks; i++)
		json_array_append_new(chunks, json_pack("[Is]", (json_int_t)m->chunks[i].index, m->chunks[i].name));
	json_t *layers = json_array();
	for (size_t i = 0; layers && i < m->n_layers; i++)
		json_array_append_new(layers, json_pack("{s:s,s:I,s:I}", "digest", m->layers[i].digest, "offset",
							(json_int_t)m->layers[i].offset, "length",
							(json_int_t)m->layers[i].length));
	json_t *config = run_config_to_json(&m->config);
	json_t *body = json_pack("{s:s,s:{s:s,s:s,s:s},s:o,s:I,s:I,s:I,s:o,s:s,s:o}", "format", MANIFEST_FORMAT, "source",
			 "ref", m->source_ref ? m->source_ref : "", "manifest_digest", m->source_manifest_digest,
			 "config_digest", m->source_config_digest, "config", config, "image_size",
			 (json_int_t)m->image_size, "chunk_size", (json_int_t)m->chunk_size, "metadata_offset",
			 (json_int_t)m->metadata_offset, "layers", layers, "tenant_key_id", key_id, "chunks", chunks);
	if (body && m->kind == MANIFEST_KIND_SNAPSHOT) {
		const struct manifest_snapshot *sn = &m->snapshot;
		json_t *section = json_pack("{s:s,s:I,s:I,s:I}", "image", sn->image_digest, "mem_size",
					    (json_int_t)sn->mem_size, "vmstate_offset", (json_int_t)sn->vmstate_offset,
					    "vmstate_size", (json_int_t)sn->vmstate_size);
		if (!section || json_object_set_new(body, "kind", json_string("snapshot")) < 0 ||
		    json_object_set_new(body, "snapshot", section) < 0) {
			json_decref(body);
			return NULL;
		}
	}
	if (body && m->n_layout_traces) {
		json_t *lts = json_array();
		for (size_t i = 0; lts && i < m->n_layout_traces && i < MANIFEST_MAX_LAYOUT_TRACES; i++)
			if (json_array_append_new(lts, json_pack("{s:s,s:s}", "trace", m->layout_traces[i].trace_digest,
								 "recorded_on", m->layout_traces[i].recorded_on)) < 0) {
				json_decref(lts);
				lts = NULL;
			}
		if (!lts || json_object_set_new(body, "layout_traces", lts) < 0) {
			json_decref(body);
			return NULL;
		}
	}
	return body;
}

/* AES-256-GCM over |<in, len>| with |<aad, aad_len>|.  Encrypts when
 * |encrypt|, else decrypts and checks |tag|.  Returns 0, -EBADMSG on a tag
 * mismatch, or -EIO. */
static int gcm(bool encrypt, const uint8_t key[32], const uint8_t nonce[GCM_NONCE], const uint8_t *aad,
	       size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[GCM_TAG])
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int outl = 0, ok = ctx != NULL && aad_len <= INT32_MAX && len <= INT32_MAX;
	ok = ok && EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) == 1 &&
	     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE, NULL) == 1 &&
	     EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, encrypt) == 1 &&
	     EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aad_len) == 1 &&
	     (len == 0 || EVP_CipherUpdate(ctx, out, &outl, in, (int)len) == 1);
	if (ok && !encrypt)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG, tag) == 1;
	int final_ok = ok && EVP_CipherFinal_ex(ctx, out + (len ? len : 0), &outl) == 1;
	if (final_ok && encrypt)
		final_ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		return -EIO;
	return final_ok ? 0 : -EBADMSG;
}

int manifest_encode(const struct manifest *m, const uint8_t tenant_key[32], uint8_t **out, size_t *out_len)
{
	char key_id[17];
	tenant_key_id(tenant_key, key_id);
	json_t *j = body_to_json(m, key_id);
	if (!j)
		return -ENOMEM;
	char *body = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
	json_decref(j);
	if (!body)
		return -ENOMEM;
	size_t body_len = strlen(body);
	size_t keys_len = m->n_chunks * CHUNK_KEY_LEN;
	size_t sealed_len = GCM_NONCE + keys_len + GCM_TAG;
	size_t total = 8 + 4 + body_len + 4 + sealed_len;
	uint8_t *buf = malloc(total);
	uint8_t *keys = malloc(keys_len ? keys_len : 1);
	if (!buf || !keys || body_len > MAX_BODY) {
		free(buf);
		free(keys);
		free(body);
		return body_len > MAX_BODY ? -EFBIG : -ENOMEM;
	}
	memcpy(buf, MANIFEST_MAGIC, 8);
	put_le32(buf + 8, (uint32_t)body_len);
	memcpy(buf + 12, body, body_len);
	free(body);
	size_t aad_len = 12 + body_len;
	put_le32(buf + aad_len, (uint32_t)sealed_len);
	for (size_t i = 0; i < m->n_chunks; i++)
		memcpy(keys + i * CHUNK_KEY_LEN, m->chunks[i].key, CHUNK_KEY_LEN);

	/* Synthetic nonce: HMAC(tenant key, "nonce" | aad | keys). */
	uint8_t mac[SHA256_LEN];
	EVP_MAC *evp_mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *mctx = evp_mac ? EVP_MAC_CTX_new(evp_mac) : NULL;
	OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0), OSSL_PARAM_construct_end()};
	size_t mlen = 0;
	int ok = mctx && EVP_MAC_init(mctx, tenant_key, 32, params) == 1 &&
		 EVP_MAC_update(mctx, (const uint8_t *)"nonce", 5) == 1 && EVP_MAC_update(mctx, buf, aad_len) == 1 &&
		 EVP_MAC_update(mctx, keys, keys_len) == 1 && EVP_MAC_final(mctx, mac, &mlen, sizeof(mac)) == 1;
	EVP_MAC_CTX_free(mctx);
	EVP_MAC_free(evp_mac);
	int r = ok ? 0 : -EIO;
	uint8_t *sealed = buf + aad_len + 4;
	if (!r) {
		memcpy(sealed, mac, GCM_NONCE);
		r = gcm(true, tenant_key, sealed, buf, aad_len, keys, keys_len, sealed + GCM_NONCE,
			sealed + GCM_NONCE + keys_len);
	}
	OPENSSL_cleanse(keys, keys_len);
	free(keys);
	if (r < 0) {
		log_err("sealing the manifest failed (OpenSSL)");
		free(buf);
		return r;
	}
	*out = buf;
	*out_len = total;
	return 0;
}

/* ---- decoding: the body is untrusted JSON ------------------------------- */

#define bad(...)                                                                                                       \
	do {                                                                                                           \
		log_err("manifest: " __VA_ARGS__);                                                                     \
		return -EBADMSG;                                                                                       \
	} while (0)

static int json_strv(json_t *v, const char *field, char ***out)
{
	*out = NULL;
	if (json_is_null(v))
		return 0;
	if (!json_is_array(v))
		bad("config.%s: expected an array of strings or null", field);
	size_t n = json_array_size(v);
	if (n > 65536)
		bad("config.%s: too many elements", field);
	char **a = calloc(n + 1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	*out = a;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(v, i);
		if (!json_is_string(e))
			bad("config.%s[%zu]: expected a string", field, i);
		if (!(a[i] = strdup(json_string_value(e))))
			return -ENOMEM;
	}
	return 0;
}

static int json_opt_str(json_t *v, const char *field, char **out)
{
	*out = NULL;
	if (json_is_null(v))
		return 0;
	if (!json_is_string(v))
		bad("%s: expected a string or null", field);
	return (*out = strdup(json_string_value(v))) ? 0 : -ENOMEM;
}

int run_config_from_json(json_t *c, struct run_config *out)
{
	int r;
	memset(out, 0, sizeof(*out));
	if (!json_is_object(c))
		bad("config: expected an object");
	if ((r = json_strv(json_object_get(c, "entrypoint"), "entrypoint", &out->entrypoint)) < 0 ||
	    (r = json_strv(json_object_get(c, "cmd"), "cmd", &out->cmd)) < 0 ||
	    (r = json_strv(json_object_get(c, "env"), "env", &out->env)) < 0 ||
	    (r = json_opt_str(json_object_get(c, "working_dir"), "config.working_dir", &out->working_dir)) < 0 ||
	    (r = json_opt_str(json_object_get(c, "user"), "config.user", &out->user)) < 0) {
		run_config_cleanup(out);
		return r;
	}
	return 0;
}

static int json_u64(json_t *obj, const char *field, uint64_t *out)
{
	json_t *v = json_object_get(obj, field);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		bad("%s: expected a non-negative integer", field);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int copy_digest(json_t *v, const char *field, char out[80])
{
	if (!json_is_string(v))
		bad("%s: expected a string", field);
	const char *s = json_string_value(v);
	if (strlen(s) >= 80)
		bad("%s: too long", field);
	strcpy(out, s);
	return 0;
}

/* The "kind" field and, for a snapshot, its section; |m->image_size| is
 * already checked. */
static int parse_kind(json_t *root, struct manifest *m)
{
	int r;
	json_t *kind = json_object_get(root, "kind");
	if (!kind || (json_is_string(kind) && strcmp(json_string_value(kind), "image") == 0)) {
		if (json_object_get(root, "snapshot"))
			bad("snapshot: present in a manifest whose kind is image");
		m->kind = MANIFEST_KIND_IMAGE;
		return 0;
	}
	if (!json_is_string(kind) || strcmp(json_string_value(kind), "snapshot") != 0)
		bad("kind: expected \"image\" or \"snapshot\"");
	m->kind = MANIFEST_KIND_SNAPSHOT;
	json_t *sec = json_object_get(root, "snapshot");
	if (!json_is_object(sec))
		bad("snapshot: expected an object in a snapshot manifest");
	struct manifest_snapshot *sn = &m->snapshot;
	json_t *img = json_object_get(sec, "image");
	if (!json_is_string(img) || !is_sha256_hex(json_string_value(img)))
		bad("snapshot.image: expected the image's manifest digest (64 lower-case hex digits)");
	strcpy(sn->image_digest, json_string_value(img));
	if ((r = json_u64(sec, "mem_size", &sn->mem_size)) < 0 ||
	    (r = json_u64(sec, "vmstate_offset", &sn->vmstate_offset)) < 0 ||
	    (r = json_u64(sec, "vmstate_size", &sn->vmstate_size)) < 0)
		return r;
	if (sn->mem_size == 0 || sn->mem_size % 4096)
		bad("snapshot.mem_size: %llu is not a positive multiple of 4096", (unsigned long long)sn->mem_size);
	if (sn->vmstate_offset % CHUNK_SIZE || sn->vmstate_offset < sn->mem_size ||
	    sn->vmstate_offset - sn->mem_size >= CHUNK_SIZE)
		bad("snapshot.vmstate_offset: %llu is not the chunk boundary after the memory",
		    (unsigned long long)sn->vmstate_offset);
	if (sn->vmstate_size == 0 || sn->vmstate_offset > m->image_size ||
	    sn->vmstate_size > m->image_size - sn->vmstate_offset ||
	    m->image_size - sn->vmstate_offset - sn->vmstate_size >= CHUNK_SIZE)
		bad("snapshot.vmstate_size: %llu does not fill the chunks after the memory",
		    (unsigned long long)sn->vmstate_size);
	return 0;
}

/* The optional "layout_traces" section: the traces an image's layout came
 * from.  Only an image has a layout to come from a trace. */
static int parse_layout_traces(json_t *root, struct manifest *m)
{
	json_t *lts = json_object_get(root, "layout_traces");
	if (!lts)
		return 0;
	if (m->kind != MANIFEST_KIND_IMAGE)
		bad("layout_traces: present in a %s manifest (only an image is laid out)", manifest_kind_name(m->kind));
	size_t n = json_array_size(lts);
	if (!json_is_array(lts) || n == 0 || n > MANIFEST_MAX_LAYOUT_TRACES)
		bad("layout_traces: expected an array of 1 to %u {\"trace\", \"recorded_on\"} objects",
		    MANIFEST_MAX_LAYOUT_TRACES);
	for (size_t i = 0; i < n; i++) {
		json_t *lt = json_array_get(lts, i);
		json_t *trace = json_object_get(lt, "trace"), *on = json_object_get(lt, "recorded_on");
		if (!json_is_object(lt))
			bad("layout_traces[%zu]: expected an object {\"trace\", \"recorded_on\"}", i);
		if (!json_is_string(trace) || !is_sha256_hex(json_string_value(trace)))
			bad("layout_traces[%zu].trace: expected the trace's SHA-256 (64 lower-case hex digits)", i);
		if (!json_is_string(on) || !is_sha256_hex(json_string_value(on)))
			bad("layout_traces[%zu].recorded_on: expected an image's manifest digest (64 lower-case hex "
			    "digits)",
			    i);
		strcpy(m->layout_traces[i].trace_digest, json_string_value(trace));
		strcpy(m->layout_traces[i].recorded_on, json_string_value(on));
	}
	m->n_layout_traces = n;
	return 0;
}

static int parse_body(json_t *root, struct manifest *m, char key_id[17])
{
	int r;
	if (!json_is_object(root))
		bad("body: expected a JSON object");
	json_t *fmt = json_object_get(root, "format");
	if (!json_is_string(fmt) || strcmp(json_string_value(fmt), MANIFEST_FORMAT) != 0)
		bad("format: expected \"%s\"", MANIFEST_FORMAT);
	json_t *src = json_object_get(root, "source");
	if (!json_is_object(src))
		bad("source: expected an object");
	if ((r = copy_digest(json_object_get(src, "manifest_digest"), "source.manifest_digest",
			     m->source_manifest_digest)) < 0 ||
	    (r = copy_digest(json_object_get(src, "config_digest"), "source.config_digest",
			     m->source_config_digest)) < 0 ||
	    (r = json_opt_str(json_object_get(src, "ref"), "source.ref", &m->source_ref)) < 0)
		return r;
	if ((r = run_config_from_json(json_object_get(root, "config"), &m->config)) < 0)
		return r;
	uint64_t chunk_size;
	if ((r = json_u64(root, "image_size", &m->image_size)) < 0 || (r = json_u64(root, "chunk_size", &chunk_size)) < 0 ||
	    (r = json_u64(root, "metadata_offset", &m->metadata_offset)) < 0)
		return r;
	if (chunk_size != CHUNK_SIZE)
		bad("chunk_size: %llu is not supported (expected %u)", (unsigned long long)chunk_size, CHUNK_SIZE);
	m->chunk_size = CHUNK_SIZE;
	if (m->image_size % CHUNK_SIZE || m->image_size == 0 || m->image_size > (16ull << 40))
		bad("image_size: %llu is not a positive multiple of the chunk size", (unsigned long long)m->image_size);
	if (m->metadata_offset >= m->image_size)
		bad("metadata_offset: beyond the image");
	if ((r = parse_kind(root, m)) < 0 || (r = parse_layout_traces(root, m)) < 0)
		return r;
	json_t *kid = json_object_get(root, "tenant_key_id");
	if (!json_is_string(kid) || strlen(json_string_value(kid)) != 16)
		bad("tenant_key_id: expected 16 hex digits");
	strcpy(key_id, json_string_value(kid));

	json_t *layers = json_object_get(root, "layers");
	if (!json_is_array(layers) || json_array_size(layers) > MANIFEST_MAX_LAYERS)
		bad("layers: expected an array of at most %u layers", MANIFEST_MAX_LAYERS);
	m->n_layers = json_array_size(layers);
	m->layers = calloc(m->n_layers ? m->n_layers : 1, sizeof(*m->layers));
	if (!m->layers)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_layers; i++) {
		json_t *l = json_array_get(layers, i);
		if (!json_is_object(l))
			bad("layers[%zu]: expected an object", i);
		if ((r = copy_digest(json_object_get(l, "digest"), "layers[].digest", m->layers[i].digest)) < 0 ||
		    (r = json_u64(l, "offset", &m->layers[i].offset)) < 0 ||
		    (r = json_u64(l, "length", &m->layers[i].length)) < 0)
			return r;
	}

	json_t *chunks = json_object_get(root, "chunks");
	uint64_t max_chunks = m->image_size / CHUNK_SIZE;
	if (!json_is_array(chunks) || json_array_size(chunks) > max_chunks)
		bad("chunks: expected an array of at most %llu entries", (unsigned long long)max_chunks);
	m->n_chunks = json_array_size(chunks);
	m->chunks = calloc(m->n_chunks ? m->n_chunks : 1, sizeof(*m->chunks));
	if (!m->chunks)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_chunks; i++) {
		json_t *e = json_array_get(chunks, i);
		json_t *idx = json_array_get(e, 0), *name = json_array_get(e, 1);
		if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(idx) || !json_is_string(name))
			bad("chunks[%zu]: expected [index, \"name\"]", i);
		json_int_t v = json_integer_value(idx);
		if (v < 0 || (uint64_t)v >= max_chunks || (i > 0 && (uint64_t)v <= m->chunks[i - 1].index))
			bad("chunks[%zu]: index %lld out of order or beyond the image", i, (long long)v);
		if (!is_sha256_hex(json_string_value(name)))
			bad("chunks[%zu]: name is not 64 lower-case hex digits", i);
		m->chunks[i].index = (uint64_t)v;
		strcpy(m->chunks[i].name, json_string_value(name));
	}
	return 0;
}

int manifest_decode(const uint8_t *buf, size_t len, const uint8_t *tenant_key, struct manifest *out)
{
	memset(out, 0, sizeof(*out));
	/* magic, u32 body length, body (the JSON), u32 sealed length, sealed
	 * keys; the first three are the GCM associated data. */
	struct byte_cursor c = cur_init(buf, len);
	const uint8_t *magic = cur_take(&c, 8);
	if (!magic || memcmp(magic, MANIFEST_MAGIC, 8) != 0)
		bad("not a kindling manifest (bad magic)");
	uint32_t body_len = cur_le32(&c);
	const uint8_t *body = body_len <= MAX_BODY ? cur_take(&c, body_len) : NULL;
	if (!body)
		bad("body length %u overruns the file", body_len);
	size_t aad_len = c.off;
	uint32_t sealed_len = cur_le32(&c);
	if (!cur_ok(&c) || (size_t)sealed_len != cur_left(&c))
		bad("sealed section length %u does not match the file", sealed_len);

	json_error_t jerr;
	json_t *root = json_loadb((const char *)body, body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		bad("body is not valid JSON: %s (line %d)", jerr.text, jerr.line);
	char key_id[17];
	int r = parse_body(root, out, key_id);
	json_decref(root);
	if (r < 0)
		goto fail;
	size_t keys_len = out->n_chunks * CHUNK_KEY_LEN;
	if (sealed_len != GCM_NONCE + keys_len + GCM_TAG) {
		log_err("manifest: sealed section holds %u bytes, %zu chunks need %zu", sealed_len, out->n_chunks,
			GCM_NONCE + keys_len + GCM_TAG);
		r = -EBADMSG;
		goto fail;
	}
	if (!tenant_key)
		return 0;
	char my_id[17];
	tenant_key_id(tenant_key, my_id);
	if (strcmp(my_id, key_id) != 0) {
		log_err("manifest: sealed for tenant key %s, but this tenant key is %s; is KINDLING_HOME (or "
			"KINDLING_TENANT_KEY) the one the image was imported with?",
			key_id, my_id);
		r = -EKEYREJECTED;
		goto fail;
	}
	const uint8_t *sealed = buf + aad_len + 4;
	uint8_t *keys = malloc(keys_len ? keys_len : 1);
	if (!keys) {
		r = -ENOMEM;
		goto fail;
	}
	uint8_t tag[GCM_TAG];
	memcpy(tag, sealed + GCM_NONCE + keys_len, GCM_TAG);
	r = gcm(false, tenant_key, sealed, buf, aad_len, sealed + GCM_NONCE, keys_len, keys, tag);
	if (r < 0) {
		log_err("manifest: authentication failed: it was modified after it was sealed (or is corrupt)");
		OPENSSL_cleanse(keys, keys_len);
		free(keys);
		r = -EBADMSG;
		goto fail;
	}
	for (size_t i = 0; i < out->n_chunks; i++)
		memcpy(out->chunks[i].key, keys + i * CHUNK_KEY_LEN, CHUNK_KEY_LEN);
	OPENSSL_cleanse(keys, keys_len);
	free(keys);
	out->keys_present = true;
	return 0;
fail:
	manifest_cleanup(out);
	return r;
}
