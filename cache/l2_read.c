/* L2 reads: the read state machine behind l2_get (contract in internal.h).
 *
 * Parallel reads.  l2_get does its own I/O: it takes one idle connection per
 * node from that node's pool (or dials one, non-blocking), sends k+m text
 * protocol "get"s at once and polls them all from the calling thread.  The
 * reply parser (l2_reply.c) lets each data fragment's bytes land in the
 * caller's buffer at i * frag_len, and the SHA-256 of the chunk (the name
 * check) runs over fragment 0, 1, ... as each arrives, while the others are
 * still on the wire; so a hit costs about one round trip plus the hash of
 * what was not hashed yet, with no thread hand-off and no copy.  A read
 * that also decrypts (l2_get_open, for the cache's L2 layer) decrypts each
 * data fragment as soon as it is in, at its offset in the chunk (CTR mode
 * allows any order), and with a salt feeds the key check in order as the
 * name hash goes, so the decryption too overlaps the wait for the other
 * fragments instead of following it as a second pass.  As soon as
 * k intact fragments are in, the read stops waiting: a missing data
 * fragment is rebuilt from parity, and the connections still waiting for
 * late replies are handed to the drainer thread, which reads the rest of
 * each reply, judges the fragment (a late "not found" or corrupt fragment
 * gets the chunk re-checked and repaired) and puts the connection back in
 * the pool; a slow node therefore costs a read nothing once k have arrived.
 * Nothing of its wait, that is: asking it still costs a request, a late
 * reply for the drainer to read and a connection tied up, on the same cores
 * as the read when the fleet is local.  So a node whose average reply time
 * (l2_health.c) is L2_SLOW_FACTOR times the median of the others, and over
 * L2_SLOW_MIN_MS, is not asked while enough others are up to make k (its
 * fragment, if a data one, is rebuilt from parity) and none of them has
 * failed to answer with its fragment (then it is asked at once), except on
 * every
 * L2_SLOW_PROBE_EVERY-th read, whose answer keeps its average current so
 * that a node that recovers is asked again.
 * A data fragment's CRC-32C is not checked as it lands: the name check
 * covers the same bytes, so only after that check fails are the CRCs looked
 * at, and if one shows a bad fragment the chunk is read once more checking
 * each fragment as it lands (so the bad one is left out, rebuilt from
 * parity and repaired).  Parity fragments, which the name check reaches only
 * through a decode, are checked as they land.
 * The pool and the drainer are in l2_pool.c; the repair of fragments found
 * missing or corrupt on the way is in l2_write.c.
 */
#include "l2_internal.h"

#include "common/bytes.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* What a read learnt about one fragment. */
enum frag_state { FS_UNASKED = 0, FS_PENDING, FS_INTACT, FS_MISSING, FS_CORRUPT, FS_ERROR };

/* One fragment being read by l2_get. */
struct frag_read {
	struct l2_node *nd;
	int fd;
	unsigned gen;
	bool connecting, pooled;
	enum frag_state st;
	double t0;
	char key[L2_KEY_MAX];
	size_t key_len;
	uint8_t hdr[L2_FRAG_HDR_LEN];
	uint8_t *data; /* where its data went */
	struct l2_reply rp;
};

static int frag_send(struct frag_read *f)
{
	char req[L2_KEY_MAX + 8];
	int n = snprintf(req, sizeof(req), "get %s\r\n", f->key);
	ssize_t w = send(f->fd, req, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	return w == n ? 0 : w < 0 ? -errno : -EIO;
}

/* Send fragment |f|'s request on a pooled connection of its node.  Returns
 * true if it went out; false if the pool was empty or its connection dead
 * (the node closed it while it sat in the pool): then dial with
 * frag_dial(). */
static bool frag_send_pooled(struct frag_read *f)
{
	f->t0 = now_seconds();
	f->fd = l2_conn_take(f->nd, &f->gen);
	if (f->fd < 0)
		return false;
	f->pooled = true;
	if (frag_send(f) == 0)
		return true;
	close(f->fd);
	f->fd = -1;
	return false;
}

/* Dial a new connection for fragment |f| and send its request once it is
 * connected (at once on loopback, else from the poll loop). */
static int frag_dial(struct frag_read *f)
{
	f->pooled = false;
	f->fd = l2_conn_dial(f->nd, &f->connecting);
	if (f->fd < 0)
		return f->fd;
	if (f->connecting)
		return 0;
	int r = frag_send(f);
	if (r < 0) {
		close(f->fd);
		f->fd = -1;
	}
	return r;
}

struct read_state {
	struct l2 *l;
	const char *name;
	uint8_t *out;
	struct frag_read f[L2_MAX_FRAGS];
	unsigned n, pending, intact;
	struct l2_frag_set set;
	size_t fl; /* fragment length, fixed by the first VALUE line */
	uint8_t *scratch;
	EVP_MD_CTX *md;
	unsigned hashed; /* data fragments 0..hashed-1 are in the name hash */
	bool hash_failed;
	/* decryption as the fragments land (l2_get_open); ctr NULL without */
	struct chunk_ctr *ctr;
	uint8_t *plain;
	EVP_MD_CTX *kmd; /* the key check, SHA-256(salt || plain), with a salt */
	uint32_t decrypted; /* data fragments whose plaintext is in |plain| */
	/* Data fragments taken without their CRC-32C (lazy_crc): the name
	 * check covers their bytes, so their CRCs are looked at only once that
	 * check has failed, to learn whether a fragment is bad. */
	bool lazy_crc;
	uint32_t crc_unchecked;
};

/* Where fragment i's data goes once its length is known: data fragments at
 * their place in the chunk, parity (and a data fragment that would run past
 * CHUNK_SIZE) in scratch. */
static uint8_t *frag_dst(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	size_t fl = rs->fl;
	if (i < l->k && (size_t)(i + 1) * fl <= CHUNK_SIZE)
		return rs->out + (size_t)i * fl;
	if (!rs->scratch)
		rs->scratch = buf_pool_get(&l->scratch);
	if (!rs->scratch)
		return NULL;
	return rs->scratch + (size_t)(i < l->k ? l->m : i - l->k) * fl;
}

/* The bytes of data fragment i within the chunk: its offset, and its
 * length (0 for a fragment wholly past the end, which is padding). */
static size_t frag_span(const struct read_state *rs, unsigned i, size_t *off)
{
	*off = (size_t)i * rs->set.frag_len;
	if (*off >= rs->set.chunk_len)
		return 0;
	return rs->set.chunk_len - *off < rs->set.frag_len ? rs->set.chunk_len - *off : rs->set.frag_len;
}

/* Decrypt data fragment i from |src| (where its ciphertext is) into its
 * place in rs->plain, once; nothing for a plain l2_get. */
static void decrypt_frag(struct read_state *rs, unsigned i, const uint8_t *src)
{
	if (!rs->ctr || (rs->decrypted >> i & 1))
		return;
	size_t off, n = frag_span(rs, i, &off);
	if (n && chunk_ctr_run(rs->ctr, off, src, n, rs->plain + off) < 0)
		rs->hash_failed = true;
	rs->decrypted |= 1u << i;
}

/* Feed the name hash (and the key check) every data fragment that is in,
 * in order. */
static void hash_ready(struct read_state *rs)
{
	struct l2 *l = rs->l;
	while (!rs->hash_failed && rs->hashed < l->k && rs->set.data[rs->hashed]) {
		size_t off, n = frag_span(rs, rs->hashed, &off);
		if (n && (EVP_DigestUpdate(rs->md, rs->set.data[rs->hashed], n) != 1 ||
			  (rs->kmd && EVP_DigestUpdate(rs->kmd, rs->plain + off, n) != 1)))
			rs->hash_failed = true;
		rs->hashed++;
	}
}

/* A reply is complete: judge the fragment and account it to its node. */
static void frag_finish(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	struct frag_read *f = &rs->f[i];
	struct l2_node *nd = f->nd;
	double ms = (now_seconds() - f->t0) * 1000;
	rs->pending--;
	enum l2_reply_result res = f->rp.result;
	if (res == L2R_HIT) {
		struct l2_fragment_view v;
		size_t dlen = f->rp.value_len > L2_FRAG_HDR_LEN ? f->rp.value_len - L2_FRAG_HDR_LEN : 0;
		bool lazy = rs->lazy_crc && i < l->k;
		bool good = f->data && f->rp.value_len > L2_FRAG_HDR_LEN &&
			    (lazy ? l2_fragment_parse_header(f->hdr, f->data, dlen, rs->name, l->k, l->m, &v)
				  : l2_fragment_parse_split(f->hdr, f->data, dlen, rs->name, l->k, l->m, &v)) == 0 &&
			    v.index == i && l2_frag_set_add(&rs->set, &v) == 0;
		f->st = good ? FS_INTACT : FS_CORRUPT;
		if (good)
			rs->intact++;
		if (good && lazy)
			rs->crc_unchecked |= 1u << i;
		else if (!good)
			log_warn("l2: fragment %s from %s is corrupt (%zu bytes); it will be rewritten", f->key,
				 nd->addr, f->rp.value_len);
	} else if (res == L2R_MISS) {
		f->st = FS_MISSING;
	} else {
		f->st = FS_ERROR;
	}
	pthread_mutex_lock(&nd->mu);
	nd->st.gets++;
	if (res == L2R_HIT) {
		nd->st.hits++;
		nd->st.bytes_read += f->rp.value_len;
		if (f->st == FS_CORRUPT)
			nd->st.corrupt++;
	} else if (res == L2R_MISS) {
		nd->st.misses++;
	}
	if (res == L2R_HIT || res == L2R_MISS)
		l2_node_latency(nd, ms);
	pthread_mutex_unlock(&nd->mu);

	if (res == L2R_HIT || res == L2R_MISS) {
		l2_conn_put(nd, f->fd, f->gen);
	} else {
		close(f->fd);
		l2_node_failed(nd, false, res == L2R_PROTO, "get",
			       res == L2R_PROTO ? "a reply that is not memcached's text protocol"
						: "memcached answered with an error");
	}
	f->fd = -1;
	if (f->st == FS_INTACT && i < l->k) {
		decrypt_frag(rs, i, rs->set.data[i]);
		hash_ready(rs);
	}
}

/* The connection of fragment i died (reset, EOF, failed connect). */
static void frag_broken(struct read_state *rs, unsigned i, int err)
{
	struct frag_read *f = &rs->f[i];
	close_fd(f->fd);
	f->fd = -1;
	f->st = FS_ERROR;
	rs->pending--;
	pthread_mutex_lock(&f->nd->mu);
	f->nd->st.gets++;
	pthread_mutex_unlock(&f->nd->mu);
	l2_node_failed(f->nd, false, true, "get", err ? strerror(err) : "connection closed");
}

/* Fragment i's header is in: pick where its data goes.  The first header
 * that passes every check but the CRC (which needs the data) fixes the
 * fragment length; data that disagrees with it, or behind a bad header, is
 * read and dropped, so garbage never lands over another fragment's bytes. */
static void frag_place(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	struct frag_read *f = &rs->f[i];
	size_t dlen = f->rp.value_len - L2_FRAG_HDR_LEN;
	uint8_t *dst = NULL;
	if (memcmp(f->hdr, L2_FRAG_MAGIC, 4) == 0 && f->hdr[4] == L2_FRAG_VERSION && f->hdr[5] == l->k &&
	    f->hdr[6] == l->m && f->hdr[7] == i && memcmp(f->hdr + 16, rs->name, CHUNK_NAME_HEX_LEN) == 0) {
		uint32_t chunk_len = get_le32(f->hdr + 8), frag_len = get_le32(f->hdr + 12);
		if (chunk_len >= 1 && chunk_len <= CHUNK_SIZE && frag_len == l2_frag_len(chunk_len, l->k) &&
		    frag_len == dlen && (rs->fl == 0 || rs->fl == dlen)) {
			rs->fl = dlen;
			dst = frag_dst(rs, i);
		}
	}
	f->data = dst;
	l2_reply_set_data(&f->rp, dst);
}

struct place_ctx {
	struct read_state *rs;
	unsigned i;
};

static void frag_place_cb(void *ctx)
{
	struct place_ctx *pc = ctx;
	frag_place(pc->rs, pc->i);
}

/* Move whatever has arrived on fragment i's connection into place. */
static void frag_read_ready(struct read_state *rs, unsigned i)
{
	struct place_ctx pc = {rs, i};
	int r = l2_conn_pump(rs->f[i].fd, &rs->f[i].rp, frag_place_cb, &pc);
	if (r == 1)
		frag_finish(rs, i);
	else if (r < 0)
		frag_broken(rs, i, r == -EPIPE ? 0 : -r);
}

static void frag_connected(struct read_state *rs, unsigned i)
{
	struct frag_read *f = &rs->f[i];
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == 0)
		err = -frag_send(f);
	if (err) {
		frag_broken(rs, i, err);
		return;
	}
	f->connecting = false;
}

/* Send the requests of the fragments in |mask| that are FS_PENDING without
 * a connection yet. */
static void frags_ask(struct read_state *rs, uint32_t mask)
{
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		if ((mask >> i & 1) && f->st == FS_PENDING && f->fd < 0 && frag_send_pooled(f))
			rs->pending++;
	}
	/* New connections only after every pooled request is out: a node
	 * whose connections are all still busy with late replies (a slow
	 * one) must not delay the requests to the others. */
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		if (!(mask >> i & 1) || f->st != FS_PENDING || f->fd >= 0)
			continue;
		int r = frag_dial(f);
		if (r < 0) {
			f->st = FS_ERROR;
			l2_node_failed(f->nd, false, true, "connect", strerror(-r));
			continue;
		}
		rs->pending++;
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The fragments (bit i for fragment i, of the |n| nodes in |order|) whose
 * nodes this read leaves out as slow (see the top): the slowest first, and
 * never so many that fewer than k up nodes are asked. */
static uint32_t slow_nodes(struct l2 *l, const unsigned *order, unsigned n)
{
	double ms[L2_MAX_FRAGS], sorted[L2_MAX_FRAGS];
	unsigned n_up = 0;
	for (unsigned i = 0; i < n; i++) {
		struct l2_node *nd = &l->nodes[order[i]];
		pthread_mutex_lock(&nd->mu);
		bool up = !nd->down && !nd->stop;
		ms[i] = up ? nd->st.latency_ewma_ms : -1;
		pthread_mutex_unlock(&nd->mu);
		if (up)
			sorted[n_up++] = ms[i];
	}
	if (n_up <= l->k)
		return 0;
	qsort(sorted, n_up, sizeof(*sorted), cmp_double);
	double limit = sorted[n_up / 2] * L2_SLOW_FACTOR;
	if (limit < L2_SLOW_MIN_MS)
		limit = L2_SLOW_MIN_MS;
	uint32_t skip = 0;
	for (unsigned left = n_up - l->k; left > 0; left--) {
		int worst = -1;
		for (unsigned i = 0; i < n; i++)
			if (!(skip >> i & 1) && ms[i] > limit && (worst < 0 || ms[i] > ms[worst]))
				worst = (int)i;
		if (worst < 0)
			break;
		skip |= 1u << worst;
	}
	/* Every L2_SLOW_PROBE_EVERY-th read asks a slow node anyway. */
	for (unsigned i = 0; i < n; i++) {
		if (!(skip >> i & 1))
			continue;
		struct l2_node *nd = &l->nodes[order[i]];
		pthread_mutex_lock(&nd->mu);
		if (++nd->slow_skips >= L2_SLOW_PROBE_EVERY) {
			nd->slow_skips = 0;
			skip &= ~(1u << i);
			nd->st.slow_probes++;
		} else {
			nd->st.slow_skipped++;
		}
		pthread_mutex_unlock(&nd->mu);
	}
	return skip;
}

/* After a failed name check: whether every data fragment taken without its
 * CRC matches it.  One that does not is bad, and a read that checks each
 * fragment as it lands can leave it out and rebuild it from parity. */
static bool unchecked_crcs_ok(const struct read_state *rs)
{
	for (unsigned i = 0; i < rs->l->k; i++) {
		const struct frag_read *f = &rs->f[i];
		if ((rs->crc_unchecked >> i & 1) &&
		    !l2_fragment_crc_ok(f->hdr, f->data, f->rp.value_len - L2_FRAG_HDR_LEN))
			return false;
	}
	return true;
}

static void read_state_free(struct read_state *rs)
{
	buf_pool_put(&rs->l->scratch, rs->scratch);
	EVP_MD_CTX_free(rs->md);
	EVP_MD_CTX_free(rs->kmd);
	chunk_ctr_free(rs->ctr);
	free(rs);
}

/* One read of chunk |name| (l2_read below).  With |lazy_crc|, data
 * fragments are taken without their CRC; if the name check then fails and a
 * fragment's CRC shows why, nothing is counted, logged or repaired and
 * *|again| is set: the caller reads once more, checking every CRC. */
static int l2_read_once(struct l2 *l, const char *name, const struct l2_open *op, uint8_t *out, size_t *out_len,
			bool wait_all, bool lazy_crc, bool *again)
{
	unsigned order[L2_MAX_FRAGS];
	l2_rank_nodes(l, name, order);

	struct read_state *rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->l = l;
	rs->name = name;
	rs->out = out;
	rs->n = l->k + l->m;
	rs->lazy_crc = lazy_crc;
	l2_frag_set_init(&rs->set, l->k, l->m);
	rs->md = EVP_MD_CTX_new();
	if (!rs->md || EVP_DigestInit_ex(rs->md, EVP_sha256(), NULL) != 1) {
		read_state_free(rs);
		log_err("l2: SHA-256 (OpenSSL) cannot be set up; is libcrypto working?");
		return -EIO;
	}
	if (op) {
		int r = chunk_ctr_new(op->key, &rs->ctr);
		if (r < 0) {
			read_state_free(rs);
			return r;
		}
		rs->plain = op->plain;
		if (op->salt && (!(rs->kmd = EVP_MD_CTX_new()) || EVP_DigestInit_ex(rs->kmd, EVP_sha256(), NULL) != 1 ||
				 EVP_DigestUpdate(rs->kmd, op->salt, op->salt_len) != 1)) {
			read_state_free(rs);
			log_err("l2: SHA-256 (OpenSSL) cannot be set up; is libcrypto working?");
			return -EIO;
		}
	}
	size_t max_value = L2_FRAG_HDR_LEN + l2_frag_len(CHUNK_SIZE, l->k);
	uint32_t held = wait_all ? 0 : slow_nodes(l, order, rs->n);
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		f->nd = &l->nodes[order[i]];
		f->fd = -1;
		f->st = FS_UNASKED;
		pthread_mutex_lock(&f->nd->mu);
		bool up = !f->nd->down && !f->nd->stop;
		pthread_mutex_unlock(&f->nd->mu);
		if (!up) {
			held &= ~(1u << i);
			continue;
		}
		l2_make_key(l, name, i, f->key, sizeof(f->key), &f->key_len);
		l2_reply_init(&f->rp, f->key, f->key_len, max_value, f->hdr, L2_FRAG_HDR_LEN);
		f->st = FS_PENDING;
	}
	frags_ask(rs, ~held);

	/* Poll until k intact fragments are in, every node has answered, or
	 * the timeout passes.  The slow nodes held back are asked as soon as
	 * the others can no longer make k (a miss, an error, a node gone). */
	double deadline = now_seconds() + l->timeout_ms / 1000.0;
	for (;;) {
		if (held && rs->intact + rs->pending < l->k) {
			frags_ask(rs, held);
			held = 0;
		}
		if (!((wait_all || rs->intact < l->k) && rs->pending > 0))
			break;
		struct pollfd pfd[L2_MAX_FRAGS];
		unsigned idx[L2_MAX_FRAGS], np = 0;
		for (unsigned i = 0; i < rs->n; i++)
			if (rs->f[i].fd >= 0) {
				pfd[np] = (struct pollfd){.fd = rs->f[i].fd, .events = rs->f[i].connecting ? POLLOUT : POLLIN};
				idx[np++] = i;
			}
		double left = deadline - now_seconds();
		if (left <= 0)
			break;
		int pr = poll(pfd, np, (int)(left * 1000) + 1);
		if (pr < 0 && errno != EINTR)
			break;
		for (unsigned j = 0; pr > 0 && j < np; j++) {
			if (!pfd[j].revents)
				continue;
			unsigned i = idx[j];
			if (rs->f[i].connecting)
				frag_connected(rs, i);
			else
				frag_read_ready(rs, i);
		}
	}

	/* Replies that are in already are judged now (a quick "not found"
	 * should lead to a repair); the rest are late or lost. */
	for (unsigned i = 0; i < rs->n && rs->intact >= l->k; i++)
		if (rs->f[i].fd >= 0 && !rs->f[i].connecting)
			frag_read_ready(rs, i);
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		if (f->fd < 0)
			continue;
		if (rs->intact >= l->k) {
			if (f->connecting)
				close(f->fd);
			else
				l2_conn_park(l, f->nd, f->fd, f->gen, i, f->t0, &f->rp, f->key, f->hdr, name);
		} else {
			close(f->fd);
			l2_node_failed(f->nd, true, true, "get", "no reply within the timeout");
		}
		f->fd = -1;
	}

	int r = -ENOENT;
	bool decoded = false;
	if (rs->intact >= l->k)
		r = l2_frag_set_decode(&l->codec, &rs->set, out, CHUNK_SIZE, out_len, &decoded);
	bool key_bad = false;
	if (r == 0) {
		/* The data fragments not hashed (or decrypted) yet are in |out|
		 * now: the ones rebuilt from parity. */
		for (unsigned i = 0; i < l->k; i++)
			decrypt_frag(rs, i, out + (size_t)i * rs->set.frag_len);
		size_t off = (size_t)rs->hashed * rs->set.frag_len;
		uint8_t digest[SHA256_LEN];
		unsigned dlen = 0;
		if (rs->hash_failed || (off < *out_len && EVP_DigestUpdate(rs->md, out + off, *out_len - off) != 1) ||
		    EVP_DigestFinal_ex(rs->md, digest, &dlen) != 1 ||
		    (rs->kmd && off < *out_len && EVP_DigestUpdate(rs->kmd, rs->plain + off, *out_len - off) != 1)) {
			log_err("l2: SHA-256 or AES-256-CTR (OpenSSL) failed; is libcrypto working?");
			r = -EIO;
		} else {
			char hex[SHA256_HEX_LEN + 1];
			hex_encode(digest, SHA256_LEN, hex);
			if (strcmp(hex, name) != 0)
				r = -EBADMSG;
		}
	}
	if (r == -EBADMSG && rs->crc_unchecked && !unchecked_crcs_ok(rs)) {
		if (rs->plain)
			memset(rs->plain, 0, CHUNK_SIZE);
		read_state_free(rs);
		*again = true;
		return -EBADMSG;
	}
	if (r == 0 && rs->kmd) {
		/* The name matched; the key is checked before any repair
		 * rewrites fragments of a chunk the caller will drop. */
		uint8_t digest[SHA256_LEN];
		unsigned dlen = 0;
		if (EVP_DigestFinal_ex(rs->kmd, digest, &dlen) != 1 || dlen != SHA256_LEN) {
			log_err("l2: SHA-256 (OpenSSL) failed; is libcrypto working?");
			r = -EIO;
		} else if (CRYPTO_memcmp(digest, op->key, CHUNK_KEY_LEN) != 0) {
			r = -EBADMSG;
			key_bad = true;
		}
	}
	if (r == 0) {
		COUNT(l, hits);
		if (decoded)
			COUNT(l, decodes);
		uint32_t bad = 0;
		for (unsigned i = 0; i < rs->n; i++)
			if (rs->f[i].st == FS_MISSING || rs->f[i].st == FS_CORRUPT)
				bad |= 1u << i;
		if (bad)
			l2_bg_enqueue_repair(l, name, out, *out_len, bad);
	} else {
		COUNT(l, misses);
		if (key_bad)
			log_warn("l2: chunk %s matches its name but not the key it was read with (SHA-256 of salt and "
				 "plaintext); the caller drops its fragments",
				 name);
		else if (r == -EBADMSG)
			log_warn("l2: chunk %s rebuilt from intact fragments does not match its name; the caller drops "
				 "its fragments",
				 name);
		else if (r != -ENOENT && r != -EIO)
			log_warn("l2: get %s: cannot rebuild the chunk from %u fragments: %s", name, rs->set.n,
				 strerror(-r));
		if (r != -EBADMSG && r != -EIO)
			r = -ENOENT;
		if (rs->plain)
			memset(rs->plain, 0, CHUNK_SIZE);
	}
	read_state_free(rs);
	return r;
}

int l2_read(struct l2 *l, const char *name, const struct l2_open *op, uint8_t *out, size_t *out_len, bool wait_all)
{
	/* A read that waits for every fragment is there to judge each one, so
	 * it checks every CRC as the fragment lands. */
	bool again = false;
	int r = l2_read_once(l, name, op, out, out_len, wait_all, !wait_all, &again);
	if (again) {
		COUNT(l, crc_rereads);
		r = l2_read_once(l, name, op, out, out_len, wait_all, false, &again);
	}
	return r;
}

int l2_get(struct l2 *l, const char *name, uint8_t *out, size_t *out_len)
{
	if (!l || !name || !is_sha256_hex(name) || !out || !out_len)
		return -EINVAL;
	COUNT(l, gets);
	return l2_read(l, name, NULL, out, out_len, false);
}

int l2_get_open(struct l2 *l, const char *name, const struct l2_open *op, uint8_t *cipher, size_t *out_len)
{
	if (!l || !name || !is_sha256_hex(name) || !op || !op->key || !op->plain || (op->salt_len && !op->salt) ||
	    !cipher || !out_len)
		return -EINVAL;
	COUNT(l, gets);
	return l2_read(l, name, op, cipher, out_len, false);
}
