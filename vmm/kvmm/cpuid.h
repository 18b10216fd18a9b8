/* kvmm: CPUID for one vCPU (cpuid.c). */
#ifndef KINDLING_KVMM_CPUID_H
#define KINDLING_KVMM_CPUID_H

#include <stddef.h>
#include <stdint.h>

struct kvm_cpuid_entry2; /* <linux/kvm.h> */

/* Adjust the KVM_GET_SUPPORTED_CPUID list |<e, n>| for vCPU |cpu| of |n_cpus|
 * (1..KVMM_MAX_VCPUS) in place: the initial APIC id and logical processor
 * count in leaf 1, the hypervisor bit, one core per vCPU and one thread per
 * core in the topology leaves (4, 0xB, 0x1F, 0x80000008), x2APIC ids in 0xB
 * and 0x1F.  Leaves not listed are left as KVM reported them. */
void kvmm_cpuid_fixup(struct kvm_cpuid_entry2 *e, size_t n, uint32_t cpu, uint32_t n_cpus);

#endif
