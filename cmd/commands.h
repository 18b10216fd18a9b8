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

/* ---- kindling run --snapshot (cmd/run_snapshot.c) ---- */

#include <stdbool.h>
#include <stddef.h>

#include "image/image.h"
#include "sandbox/sandbox.h"

struct run_snapshot;

struct run_snapshot_options {
	const char *ref;		 /* --snapshot NAME[:TAG] */
	const char *image;		 /* the image the run attaches */
	const struct run_config *identity; /* the invocation: command as entrypoint, env, working dir, user */
	/* the run's own cache, for the memory server */
	const char *store_uri, *l1_dir;
	uint64_t l1_size;
	const char *const *l2;
	size_t n_l2;
	bool prefetch;
	/* the restore's host memory tier (snapstart_restore_options): on unless
	 * host_mem_off; host_mem_dir NULL is the default directory, host_mem_size
	 * 0 the default bound */
	bool host_mem_off;
	const char *host_mem_dir;
	uint64_t host_mem_size;
};

/* Look |opt->ref| up in the store.  There, and taken from |opt->image| for
 * the same invocation: load it, write its vmstate to a private directory
 * and serve its memory on a thread (run_snapshot_restoring() is then true).
 * Not there: prepare to take it (run_snapshot_arm()).  A snapshot of another
 * image or invocation is -EINVAL, logged naming what differs.  Returns 0 or
 * -errno (logged); |*out| is set in both cases (run_snapshot_free()). */
int run_snapshot_new(const struct run_snapshot_options *opt, struct run_snapshot **out);

/* Whether the run restores the snapshot (or else takes it). */
bool run_snapshot_restoring(const struct run_snapshot *s);

/* Make |spec| restore the snapshot (restore, stop_fd), or take it at the
 * workload's first complete stdout line (out_fd becomes a pipe that a thread
 * copies to the old out_fd; on_ready takes the VM handle).  Call once,
 * before sandbox_run().  Returns 0 or -errno (logged). */
int run_snapshot_arm(struct run_snapshot *s, struct sandbox_spec *spec);

/* After sandbox_run() returned |run_result| (and |res| if 0): finish the
 * output and the memory server, and with |info_path| write the snapshot's
 * figures there as JSON (action restored/created/none; first output, exit
 * and restore in ms from |t0|... as sandbox_result has them; the memory
 * server's report: bytes and fraction fetched, chunks per tier, prefetched
 * chunks; the import's chunks).  Returns 0, or -EIO when the memory server
 * failed (the VM was stopped; said on stderr). */
int run_snapshot_finish(struct run_snapshot *s, int run_result, const struct sandbox_result *res, double t0,
			const char *info_path);

/* Stop what still runs, remove the private directory, free.  NULL is fine. */
void run_snapshot_free(struct run_snapshot *s);

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
