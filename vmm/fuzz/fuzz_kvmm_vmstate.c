/* Fuzz kvmm's vmstate parser (vmm/kvmm/vmstate.c), the one reader of snapshot
 * files, with hostile bytes.  Whatever it accepts must be within the format's
 * limits and must encode again to the very same bytes; whatever it refuses
 * must say why. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/kvmm/vmstate.h"

#include "tests/fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct kvmm_vmstate *s;
	if (!s)
		s = kvmm_vmstate_new(); /* large: one for the whole run */
	MUST(s);
	char err[512];
	int r = kvmm_vmstate_decode(data, size, s, err, sizeof(err));
	if (r < 0) {
		MUST(err[0]);
		return 0;
	}
	MUST(s->cfg.vcpu_count >= 1 && s->cfg.vcpu_count <= KVMM_MAX_VCPUS);
	MUST(s->cfg.n_drives <= KVMM_MAX_DRIVES && s->n_cpuid <= KVMM_VMSTATE_MAX_CPUID);
	MUST(s->n_devs == s->cfg.n_drives + (s->cfg.has_vsock ? 1 : 0));
	for (unsigned i = 0; i < s->cfg.vcpu_count; i++)
		MUST(s->vcpu[i].n_msrs <= KVMM_VMSTATE_MAX_MSRS);
	for (uint32_t i = 0; i < s->n_devs; i++)
		MUST(s->devs[i].n_queues >= 1 && s->devs[i].n_queues <= VIRTIO_MMIO_MAX_QUEUES);
	/* Re-encoding reproduces the input when the writer's build is ours
	 * (another build string is the only field not round-tripped). */
	uint8_t *out = NULL;
	size_t len = 0;
	MUST(kvmm_vmstate_encode(s, &out, &len, err, sizeof(err)) == 0);
	if (strcmp(s->build, kvmm_vmstate_build()) == 0)
		MUST(len == size && memcmp(out, data, size) == 0);
	free(out);
	return 0;
}
