/* kindling's subcommands beyond `run` (cmd/serve.c). */
#ifndef KINDLING_CMD_COMMANDS_H
#define KINDLING_CMD_COMMANDS_H

/* `kindling serve ...`: the Lambda-compatible service.  Returns the exit
 * status. */
int cmd_serve(int argc, char **argv);

/* `kindling logs FUNCTION ...`: print a function's log. */
int cmd_logs(int argc, char **argv);

/* `kindling dlq ...`: list the dead-lettered Event invocations. */
int cmd_dlq(int argc, char **argv);

/* `kindling placement ...`: the fleet's placement service (cmd/placement.c).
 * Returns the exit status. */
int cmd_placement(int argc, char **argv);

/* `kindling snapshot-serve NAME[:TAG] ...`: serve a micro-VM snapshot's
 * memory lazily over Firecracker's Uffd handshake (cmd/snapshot_serve.c).
 * Returns the exit status. */
int cmd_snapshot_serve(int argc, char **argv);

/* `kindling agent ...`: one host of a fleet (cmd/agent.c). */
int cmd_agent(int argc, char **argv);

#include <stdint.h>

struct hostagent;

/* What `kindling serve` and `kindling agent` both give the host agent. */
struct cmd_agent_opts {
	const char *store;     /* the origin store URI; required */
	const char *l1_dir;    /* the L1 directory; NULL = none */
	const char *state_dir; /* the agent's state (mount, logs); required */
	const char *isolation; /* NULL = auto */
	const char *region;    /* NULL = us-east-1 */
	uint64_t memory_budget; /* 0 = half the RAM */
	double idle_timeout_s;	/* 0 = the agent's default */
};

/* Start a host agent with |o| (hostagent_new).  On failure the reason is
 * printed on stderr after |prog|.  Returns 0 with |*out|, or -errno. */
int cmd_hostagent_start(const char *prog, const struct cmd_agent_opts *o, struct hostagent **out);

#endif
