/* common/timeline: named phases of a start, shared across fork (timeline.h). */
#define LOG_COMPONENT "timeline"
#include "common/timeline.h"

#include <errno.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

struct timeline_mark {
	const char *name;
	double t;
};

struct timeline {
	double start, precision;
	const char *source; /* NULL until the start is looked up */
	unsigned n; /* claimed with an atomic add; may exceed TIMELINE_MAX_MARKS */
	struct timeline_mark marks[TIMELINE_MAX_MARKS];
};

/* ---- the process start ---------------------------------------------------------------------------------------- */

/* One generic netlink request on |fd| and its reply into |<buf, len>|.
 * Returns the reply's length or -errno. */
static ssize_t genl_call(int fd, uint16_t type, uint8_t cmd, uint16_t attr, const void *val, uint16_t val_len,
			 char *buf, size_t len)
{
	struct {
		struct nlmsghdr n;
		struct genlmsghdr g;
		char attrs[64];
	} req;
	memset(&req, 0, sizeof(req));
	if ((size_t)NLA_HDRLEN + val_len > sizeof(req.attrs))
		return -EINVAL;
	struct nlattr *a = (struct nlattr *)req.attrs;
	a->nla_type = attr;
	a->nla_len = (uint16_t)(NLA_HDRLEN + val_len);
	memcpy(req.attrs + NLA_HDRLEN, val, val_len);
	req.n.nlmsg_len = (uint32_t)(NLMSG_LENGTH(GENL_HDRLEN) + NLA_ALIGN(a->nla_len));
	req.n.nlmsg_type = type;
	req.n.nlmsg_flags = NLM_F_REQUEST;
	req.g.cmd = cmd;
	req.g.version = 1;
	if (send(fd, &req, req.n.nlmsg_len, 0) < 0)
		return -errno;
	ssize_t k = recv(fd, buf, len, 0);
	if (k < 0)
		return -errno;
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	if ((size_t)k < sizeof(*h) || !NLMSG_OK(h, (size_t)k))
		return -EPROTO;
	if (h->nlmsg_type == NLMSG_ERROR) {
		const struct nlmsgerr *e = NLMSG_DATA(h);
		return h->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)) && e->error ? e->error : -EPROTO;
	}
	return k;
}

/* Find attribute |type| in |<p, len>| (a run of netlink attributes). */
static const struct nlattr *nla_find(const char *p, size_t len, uint16_t type)
{
	while (len >= NLA_HDRLEN) {
		const struct nlattr *a = (const struct nlattr *)p;
		if (a->nla_len < NLA_HDRLEN || a->nla_len > len)
			return NULL;
		if ((a->nla_type & NLA_TYPE_MASK) == type)
			return a;
		size_t step = NLA_ALIGN(a->nla_len);
		if (step >= len)
			return NULL;
		p += step;
		len -= step;
	}
	return NULL;
}

/* The calling process's elapsed time since its start, from taskstats, in
 * microseconds.  Returns 0 or -errno. */
static int taskstats_elapsed_us(uint64_t *out)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (fd < 0)
		return -errno;
	struct timeval tv = { .tv_sec = 1 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	static char buf[8192];
	int r = 0;
	ssize_t k = genl_call(fd, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME,
			      sizeof(TASKSTATS_GENL_NAME), buf, sizeof(buf));
	if (k < 0) {
		r = (int)k;
		goto out;
	}
	const struct nlmsghdr *h = (const struct nlmsghdr *)buf;
	const char *attrs = (const char *)NLMSG_DATA(h) + GENL_HDRLEN;
	size_t alen = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	const struct nlattr *id = nla_find(attrs, alen, CTRL_ATTR_FAMILY_ID);
	if (!id || id->nla_len < NLA_HDRLEN + sizeof(uint16_t)) {
		r = -ENOENT;
		goto out;
	}
	uint16_t family;
	memcpy(&family, (const char *)id + NLA_HDRLEN, sizeof(family));
	uint32_t pid = (uint32_t)getpid();
	k = genl_call(fd, family, TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_PID, &pid, sizeof(pid), buf, sizeof(buf));
	if (k < 0) {
		r = (int)k;
		goto out;
	}
	alen = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	const struct nlattr *aggr = nla_find(attrs, alen, TASKSTATS_TYPE_AGGR_PID);
	const struct nlattr *st = aggr ? nla_find((const char *)aggr + NLA_HDRLEN, aggr->nla_len - NLA_HDRLEN,
						  TASKSTATS_TYPE_STATS)
				       : NULL;
	/* ac_etime sits in the part of struct taskstats every version has. */
	size_t need = offsetof(struct taskstats, ac_etime) + sizeof(((struct taskstats *)0)->ac_etime);
	if (!st || st->nla_len < NLA_HDRLEN + need) {
		r = -EPROTO;
		goto out;
	}
	struct taskstats ts;
	memset(&ts, 0, sizeof(ts));
	memcpy(&ts, (const char *)st + NLA_HDRLEN, need);
	*out = ts.ac_etime;
out:
	close(fd);
	return r;
}

int timeline_process_start(double *out_start, double *out_precision, const char **out_source)
{
	uint64_t etime = 0;
	double before = now_seconds();
	if (taskstats_elapsed_us(&etime) == 0) {
		double after = now_seconds();
		/* The kernel took "now" somewhere between before and after. */
		*out_start = after - (double)etime / 1e6;
		*out_precision = after - before + 1e-6;
		*out_source = "taskstats";
		return 0;
	}
	/* Field 22 of /proc/self/stat: clock ticks from boot (CLOCK_BOOTTIME). */
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "re");
	size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	unsigned long long ticks = 0;
	int field = 2;
	for (; p && *p && field < 22; p++)
		if (*p == ' ')
			field++;
	if (!p || sscanf(p, "%llu", &ticks) != 1)
		return -EIO;
	long hz = sysconf(_SC_CLK_TCK);
	struct timespec boot, mono;
	clock_gettime(CLOCK_BOOTTIME, &boot);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	double offset = ((double)boot.tv_sec + (double)boot.tv_nsec / 1e9) -
			((double)mono.tv_sec + (double)mono.tv_nsec / 1e9);
	*out_start = (double)ticks / (double)(hz > 0 ? hz : 100) - offset;
	*out_precision = 1.0 / (double)(hz > 0 ? hz : 100);
	*out_source = "proc-stat";
	return 0;
}

/* ---- the timeline ------------------------------------------------------------------------------------------- */

struct timeline *timeline_new(void)
{
	struct timeline *t = mmap(NULL, sizeof(*t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED)
		return NULL;
	memset(t, 0, sizeof(*t));
	return t;
}

void timeline_free(struct timeline *t)
{
	if (t)
		munmap(t, sizeof(*t));
}

void timeline_mark(struct timeline *t, const char *name)
{
	if (t)
		timeline_mark_at(t, name, now_seconds());
}

void timeline_mark_at(struct timeline *t, const char *name, double now)
{
	if (!t)
		return;
	unsigned i = __atomic_fetch_add(&t->n, 1, __ATOMIC_RELAXED);
	if (i >= TIMELINE_MAX_MARKS)
		return;
	t->marks[i].t = now;
	__atomic_store_n(&t->marks[i].name, name, __ATOMIC_RELEASE);
}

double timeline_start(struct timeline *t)
{
	if (!t->source && timeline_process_start(&t->start, &t->precision, &t->source) < 0) {
		/* No start known: count from the first mark, and say so. */
		t->start = t->n ? t->marks[0].t : now_seconds();
		t->precision = 0;
		t->source = "none";
	}
	return t->start;
}

double timeline_ms_since_start(struct timeline *t, double t_s) { return (t_s - timeline_start(t)) * 1e3; }

double timeline_time_of(const struct timeline *t, const char *name)
{
	double at = -1;
	unsigned n = t->n < TIMELINE_MAX_MARKS ? t->n : TIMELINE_MAX_MARKS;
	for (unsigned i = 0; i < n; i++) {
		const char *m = __atomic_load_n(&t->marks[i].name, __ATOMIC_ACQUIRE);
		if (m && strcmp(m, name) == 0)
			at = t->marks[i].t;
	}
	return at;
}

json_t *timeline_json(struct timeline *t)
{
	timeline_start(t);
	struct timeline_mark m[TIMELINE_MAX_MARKS];
	unsigned n = t->n < TIMELINE_MAX_MARKS ? t->n : TIMELINE_MAX_MARKS, k = 0;
	for (unsigned i = 0; i < n; i++) {
		const char *name = __atomic_load_n(&t->marks[i].name, __ATOMIC_ACQUIRE);
		if (name)
			m[k++] = (struct timeline_mark){ name, t->marks[i].t };
	}
	/* Marks from different processes: order by time (insertion sort,
	 * stable, and they arrive nearly sorted). */
	for (unsigned i = 1; i < k; i++)
		for (unsigned j = i; j > 0 && m[j - 1].t > m[j].t; j--) {
			struct timeline_mark x = m[j];
			m[j] = m[j - 1];
			m[j - 1] = x;
		}
	json_t *phases = json_array(), *o = json_object();
	if (!phases || !o) {
		json_decref(phases);
		json_decref(o);
		return NULL;
	}
	double prev = t->start;
	for (unsigned i = 0; i < k; i++) {
		double ms = (m[i].t - prev) * 1e3;
		json_array_append_new(phases, json_pack("{s:s,s:f}", "name", m[i].name, "ms", ms < 0 ? 0.0 : ms));
		if (m[i].t > prev)
			prev = m[i].t;
	}
	json_object_set_new(o, "phases", phases);
	json_object_set_new(o, "exec_ms", json_real((prev - t->start) * 1e3));
	json_object_set_new(o, "start_source", json_string(t->source));
	json_object_set_new(o, "start_precision_ms", json_real(t->precision * 1e3));
	return o;
}
