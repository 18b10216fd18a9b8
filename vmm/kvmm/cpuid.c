/* CPUID as each vCPU should report it.  KVM_GET_SUPPORTED_CPUID describes
 * the host's CPU as KVM can virtualise it, topology included; the guest must
 * instead see its own topology (n_cpus single-threaded cores in one package)
 * with APIC ids that match the MADT (vCPU i has APIC id i), or its scheduler
 * and SMP bring-up get confused.  Pure code, so unit tests run it. */
#include <linux/kvm.h>

#include "vmm/kvmm/cpuid.h"

#define LEAF1_ECX_HYPERVISOR (1u << 31)
#define LEAF1_EDX_HTT (1u << 28)
#define TOPO_TYPE_SMT 1
#define TOPO_TYPE_CORE 2

/* Bits of APIC id that number |n| things: ceil(log2(n)). */
static uint32_t id_bits(uint32_t n)
{
	uint32_t b = 0;
	while ((1u << b) < n)
		b++;
	return b;
}

static void fix_leaf1(struct kvm_cpuid_entry2 *e, uint32_t cpu, uint32_t n_cpus)
{
	/* EBX: initial APIC id [31:24], logical processors per package
	 * [23:16] (valid with HTT), CLFLUSH line size in 8-byte units [15:8]. */
	e->ebx = (cpu & 0xff) << 24 | (n_cpus & 0xff) << 16 | 8u << 8 | (e->ebx & 0xff);
	e->ecx |= LEAF1_ECX_HYPERVISOR;
	if (n_cpus > 1)
		e->edx |= LEAF1_EDX_HTT;
	else
		e->edx &= ~LEAF1_EDX_HTT;
}

static void fix_leaf4(struct kvm_cpuid_entry2 *e, uint32_t n_cpus)
{
	/* Deterministic cache parameters: cores per package - 1 [31:26],
	 * logical processors sharing this cache - 1 [25:14].  Each core has
	 * its own L1 and L2; L3 and beyond are shared by the package. */
	uint32_t level = (e->eax >> 5) & 7;
	uint32_t cores = n_cpus > 64 ? 64 : n_cpus;
	uint32_t sharing = level >= 3 ? cores - 1 : 0;
	if ((e->eax & 0x1f) == 0)
		return; /* "no more caches": leave it all zero */
	e->eax = (e->eax & 0x3fff) | (sharing & 0xfff) << 14 | (cores - 1) << 26;
}

static void fix_topology(struct kvm_cpuid_entry2 *e, uint32_t cpu, uint32_t n_cpus)
{
	/* Extended topology (0xB, and 0x1F with the same levels): subleaf 0 is
	 * the SMT level (one thread per core), subleaf 1 the core level
	 * (n_cpus cores), anything further ends the list. */
	uint32_t sub = e->index;
	e->edx = cpu; /* x2APIC id */
	if (sub == 0) {
		e->eax = 0;
		e->ebx = 1;
		e->ecx = TOPO_TYPE_SMT << 8 | sub;
	} else if (sub == 1) {
		e->eax = id_bits(n_cpus);
		e->ebx = n_cpus;
		e->ecx = TOPO_TYPE_CORE << 8 | sub;
	} else {
		e->eax = 0;
		e->ebx = 0;
		e->ecx = sub & 0xff;
	}
}

void kvmm_cpuid_fixup(struct kvm_cpuid_entry2 *e, size_t n, uint32_t cpu, uint32_t n_cpus)
{
	if (n_cpus == 0)
		n_cpus = 1;
	for (size_t i = 0; i < n; i++) {
		switch (e[i].function) {
		case 1:
			fix_leaf1(&e[i], cpu, n_cpus);
			break;
		case 4:
			fix_leaf4(&e[i], n_cpus);
			break;
		case 0xb:
		case 0x1f:
			fix_topology(&e[i], cpu, n_cpus);
			break;
		case 0x80000008:
			/* AMD: cores per package - 1 in ECX[7:0], and the APIC
			 * id bits for them in ECX[15:12]. */
			e[i].ecx = (e[i].ecx & ~0xf0ffu) | id_bits(n_cpus) << 12 | ((n_cpus - 1) & 0xff);
			break;
		default:
			break;
		}
	}
}
