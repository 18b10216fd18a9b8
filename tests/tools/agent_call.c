/* agent_call: one call to a remote host agent (`kindling agent`) through
 * hostagent_remote_ops, for tests/integration/79-agent-remote.sh.
 *
 *   agent_call URL invoke FUNCTION_JSON [--id ID] [--warm-only] [--tail]
 *                         [--payload TEXT | --payload-file FILE] [--payload-out FILE]
 *   agent_call URL provision FUNCTION_JSON N
 *   agent_call URL drain NAME [VERSION|-] [KEEP_REVISION|-]
 *   agent_call URL stats
 *   agent_call URL log NAME [BYTES]
 *
 * FUNCTION_JSON is the agent's function spec (placement/hostagent/wire.c).
 * Prints one JSON object: {"rc" (0 or -errno), "errno" (its name), and for
 * invoke "outcome" ("ok"/"error"), "payload" (parsed if JSON and under
 * 64 KiB, else its length in "payload_len"), "cold", "init_s",
 * "duration_s", "max_memory", "tail"}; for stats the counters; for log
 * {"log"}.  Exit status 0 when the call was made, whatever its rc. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *errno_name(int rc)
{
	switch (-rc) {
	case 0: return "";
	case EAGAIN: return "EAGAIN";
	case EBUSY: return "EBUSY";
	case ENOENT: return "ENOENT";
	case ESHUTDOWN: return "ESHUTDOWN";
	case ENOTCONN: return "ENOTCONN";
	case ECONNRESET: return "ECONNRESET";
	case EINVAL: return "EINVAL";
	case EPROTO: return "EPROTO";
	case EIO: return "EIO";
	default: return "other";
	}
}

static int usage(void)
{
	fprintf(stderr, "usage: agent_call URL invoke|provision|drain|stats|log ... (see the source)\n");
	return 2;
}

static void emit(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	printf("%s\n", s ? s : "{\"rc\":-12}");
	free(s);
	json_decref(o);
}

static int do_invoke(struct hostagent_remote *h, int argc, char **argv)
{
	if (argc < 1)
		return usage();
	struct ha_wire_function w;
	char err[256];
	if (ha_wire_function_parse(argv[0], &w, err, sizeof(err)) < 0) {
		fprintf(stderr, "agent_call: the function: %s\n", err);
		ha_wire_function_cleanup(&w);
		return 2;
	}
	struct hostagent_invoke_request req = { .fn = &w.f, .request_id = "agent-call-1" };
	uint8_t *payload = NULL;
	size_t len = 0;
	const char *out_file = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--warm-only") == 0)
			req.warm_only = true;
		else if (strcmp(argv[i], "--tail") == 0)
			req.want_log_tail = true;
		else if (i + 1 < argc && strcmp(argv[i], "--id") == 0)
			req.request_id = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--payload") == 0) {
			free(payload);
			payload = (uint8_t *)strdup(argv[++i]);
			len = strlen((char *)payload);
		} else if (i + 1 < argc && strcmp(argv[i], "--payload-file") == 0) {
			free(payload);
			payload = NULL;
			if (read_file_all(argv[++i], 64u << 20, &payload, &len) < 0) {
				fprintf(stderr, "agent_call: cannot read %s\n", argv[i]);
				return 2;
			}
		} else if (i + 1 < argc && strcmp(argv[i], "--payload-out") == 0)
			out_file = argv[++i];
		else
			return usage();
	}
	req.payload = payload;
	req.payload_len = len;
	struct hostagent_invoke_result res;
	int rc = hostagent_remote_ops.invoke(h, &req, &res);
	json_t *o = json_pack("{s:i,s:s}", "rc", rc, "errno", errno_name(rc));
	if (rc == 0) {
		json_object_set_new(o, "outcome", json_string(res.outcome == HOSTAGENT_OK ? "ok" : "error"));
		json_t *p = res.payload_len < 65536 ? json_loadb((const char *)res.payload, res.payload_len, 0, NULL) : NULL;
		if (p)
			json_object_set_new(o, "payload", p);
		json_object_set_new(o, "payload_len", json_integer((json_int_t)res.payload_len));
		json_object_set_new(o, "cold", json_boolean(res.cold));
		json_object_set_new(o, "init_s", json_real(res.init_s));
		json_object_set_new(o, "duration_s", json_real(res.duration_s));
		json_object_set_new(o, "max_memory", json_integer((json_int_t)res.max_memory));
		if (res.log_tail)
			json_object_set_new(o, "tail", json_string(res.log_tail));
		if (out_file && write_file_atomic(out_file, res.payload, res.payload_len, 0644) < 0)
			fprintf(stderr, "agent_call: cannot write %s\n", out_file);
	}
	emit(o);
	hostagent_invoke_result_cleanup(&res);
	ha_wire_function_cleanup(&w);
	free(payload);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	struct hostagent_remote *h = NULL;
	if (hostagent_remote_new(argv[1], 0, &h) < 0)
		return 2;
	const char *cmd = argv[2];
	int status = 0;
	if (strcmp(cmd, "invoke") == 0)
		status = do_invoke(h, argc - 3, argv + 3);
	else if (strcmp(cmd, "provision") == 0 && argc == 5) {
		struct ha_wire_function w;
		char err[256];
		if (ha_wire_function_parse(argv[3], &w, err, sizeof(err)) < 0) {
			fprintf(stderr, "agent_call: the function: %s\n", err);
			status = 2;
		} else {
			int rc = hostagent_remote_ops.provision(h, &w.f, (unsigned)atoi(argv[4]));
			emit(json_pack("{s:i,s:s}", "rc", rc, "errno", errno_name(rc)));
		}
		ha_wire_function_cleanup(&w);
	} else if (strcmp(cmd, "drain") == 0 && argc >= 4) {
		const char *v = argc > 4 && strcmp(argv[4], "-") ? argv[4] : NULL;
		const char *k = argc > 5 && strcmp(argv[5], "-") ? argv[5] : NULL;
		hostagent_remote_ops.drain(h, argv[3], v, k);
		emit(json_pack("{s:i}", "rc", 0));
	} else if (strcmp(cmd, "stats") == 0) {
		struct hostagent_stats st;
		hostagent_remote_ops.get_stats(h, &st);
		emit(json_pack("{s:i,s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:I,s:I}", "rc", 0, "memory_budget",
			       (json_int_t)st.memory_budget, "memory_in_use", (json_int_t)st.memory_in_use, "sandboxes",
			       st.sandboxes, "starting", st.starting, "busy", st.busy, "idle", st.idle, "provisioned",
			       st.provisioned, "cold_starts", (json_int_t)st.cold_starts, "warm_starts",
			       (json_int_t)st.warm_starts));
	} else if (strcmp(cmd, "log") == 0 && argc >= 4) {
		char *log = NULL;
		size_t len = 0;
		int rc = hostagent_remote_ops.read_log(h, argv[3], argc > 4 ? (size_t)atol(argv[4]) : 1u << 20, &log,
						       &len);
		json_t *o = json_pack("{s:i,s:s}", "rc", rc, "errno", errno_name(rc));
		if (rc == 0)
			json_object_set_new(o, "log", json_stringn(log, len));
		emit(o);
		free(log);
	} else
		status = usage();
	hostagent_remote_free(h);
	return status;
}
