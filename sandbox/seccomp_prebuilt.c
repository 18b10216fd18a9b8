/* The process sandbox's seccomp program, compiled by libseccomp at build
 * time (seccomp.c says why; sandbox/seccomp_gen.c writes seccomp_bpf.h). */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox/internal.h"
#include "seccomp_bpf.h" /* generated: sandbox_seccomp_bpf[] */

int sandbox_seccomp_build(struct sandbox_seccomp *out)
{
	size_t n = sizeof(sandbox_seccomp_bpf) / sizeof(sandbox_seccomp_bpf[0]);
	out->n = 0;
	if (!(out->insns = malloc(sizeof(sandbox_seccomp_bpf)))) {
		log_err("seccomp: cannot copy the sandbox's filter: out of memory");
		return -ENOMEM;
	}
	memcpy(out->insns, sandbox_seccomp_bpf, sizeof(sandbox_seccomp_bpf));
	out->n = n;
	return 0;
}
