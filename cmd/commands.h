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

#endif
