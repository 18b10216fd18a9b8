/* CPUID fixups for each vCPU: APIC ids that match the MADT, the hypervisor
 * bit, and a topology of n single-threaded cores, on a list shaped like what
 * KVM_GET_SUPPORTED_CPUID returns. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <linux/kvm.h>
#include <string.h>

#include "tests/check.h"
#include "vmm/kvmm/cpuid.h"

#define FLAG_IDX KVM_CPUID_FLAG_SIGNIFCANT_INDEX

static size_t host_list(struct kvm_cpuid_entry2 *e)
{
	size_t n = 0;
	memset(e, 0, 16 * sizeof(*e));
	/* leaf 1 as an 8-thread host reports it: APIC id 5, 16 logical. */
	e[n++] = (struct kvm_cpuid_entry2){ .function = 1, .eax = 0x806f8, .ebx = 0x05100800 | 0x12,
					    .ecx = 0x7ffafbff, .edx = 0x178bfbff };
	/* leaf 4: L1d, L1i, L2, L3 and the terminator. */
	e[n++] = (struct kvm_cpuid_entry2){ .function = 4, .index = 0, .flags = FLAG_IDX, .eax = 0x1c004121 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 4, .index = 1, .flags = FLAG_IDX, .eax = 0x1c004122 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 4, .index = 2, .flags = FLAG_IDX, .eax = 0x1c004143 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 4, .index = 3, .flags = FLAG_IDX, .eax = 0x1c03c163 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 4, .index = 4, .flags = FLAG_IDX, .eax = 0 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 7, .ebx = 0x12345678 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 0, .flags = FLAG_IDX, .eax = 1, .ebx = 2,
					    .ecx = 0x100, .edx = 5 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 1, .flags = FLAG_IDX, .eax = 4, .ebx = 16,
					    .ecx = 0x201, .edx = 5 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 2, .flags = FLAG_IDX, .ecx = 2, .edx = 5 };
	e[n++] = (struct kvm_cpuid_entry2){ .function = 0x80000008, .eax = 0x3030, .ecx = 0x700f };
	return n;
}

static const struct kvm_cpuid_entry2 *find(const struct kvm_cpuid_entry2 *e, size_t n, uint32_t fn, uint32_t idx)
{
	for (size_t i = 0; i < n; i++)
		if (e[i].function == fn && e[i].index == idx)
			return &e[i];
	return NULL;
}

int main(void)
{
	struct kvm_cpuid_entry2 e[16];
	size_t n = host_list(e);

	/* vCPU 3 of 4. */
	kvmm_cpuid_fixup(e, n, 3, 4);
	const struct kvm_cpuid_entry2 *l1 = find(e, n, 1, 0);
	CHECK(l1->ebx >> 24 == 3);		  /* initial APIC id = vCPU index = MADT's */
	CHECK(((l1->ebx >> 16) & 0xff) == 4);	  /* logical processors in the package */
	CHECK(((l1->ebx >> 8) & 0xff) == 8);	  /* 64-byte CLFLUSH line */
	CHECK((l1->ebx & 0xff) == 0x12);	  /* brand index kept */
	CHECK(l1->ecx & (1u << 31));		  /* hypervisor */
	CHECK(l1->edx & (1u << 28));		  /* HTT: the count above is valid */
	CHECK(l1->eax == 0x806f8);		  /* signature untouched */
	CHECK(find(e, n, 4, 0)->eax >> 26 == 3); /* 4 cores per package */
	CHECK(((find(e, n, 4, 0)->eax >> 14) & 0xfff) == 0); /* L1d private */
	CHECK(((find(e, n, 4, 2)->eax >> 14) & 0xfff) == 0); /* L2 private */
	CHECK(((find(e, n, 4, 3)->eax >> 14) & 0xfff) == 3); /* L3 shared by all 4 */
	CHECK((find(e, n, 4, 3)->eax & 0x3fff) == (0x1c03c163u & 0x3fff)); /* cache type and level kept */
	CHECK(find(e, n, 4, 4)->eax == 0);
	CHECK(find(e, n, 7, 0)->ebx == 0x12345678);
	const struct kvm_cpuid_entry2 *smt = find(e, n, 0xb, 0), *core = find(e, n, 0xb, 1), *end = find(e, n, 0xb, 2);
	CHECK(smt->eax == 0 && smt->ebx == 1 && smt->ecx == 0x100 && smt->edx == 3);
	CHECK(core->eax == 2 && core->ebx == 4 && core->ecx == 0x201 && core->edx == 3);
	CHECK(end->eax == 0 && end->ebx == 0 && end->ecx == 2 && end->edx == 3);
	const struct kvm_cpuid_entry2 *amd = find(e, n, 0x80000008, 0);
	CHECK((amd->ecx & 0xff) == 3 && ((amd->ecx >> 12) & 0xf) == 2);
	CHECK(amd->eax == 0x3030); /* address sizes kept */

	/* One vCPU: no HTT, APIC id 0, a single core; 5 vCPUs need 3 id bits. */
	n = host_list(e);
	kvmm_cpuid_fixup(e, n, 0, 1);
	l1 = find(e, n, 1, 0);
	CHECK(l1->ebx >> 24 == 0 && ((l1->ebx >> 16) & 0xff) == 1 && !(l1->edx & (1u << 28)));
	CHECK(find(e, n, 4, 3)->eax >> 26 == 0 && ((find(e, n, 4, 3)->eax >> 14) & 0xfff) == 0);
	CHECK(find(e, n, 0xb, 1)->eax == 0 && find(e, n, 0xb, 1)->ebx == 1);
	n = host_list(e);
	kvmm_cpuid_fixup(e, n, 4, 5);
	CHECK(find(e, n, 0xb, 1)->eax == 3 && find(e, n, 0xb, 1)->edx == 4);
	CHECK(find(e, n, 1, 0)->ebx >> 24 == 4);
	return check_report();
}
