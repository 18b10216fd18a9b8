/* kvm_smoke: the smallest proof that /dev/kvm works, for the nested harness
 * (tests/nested/run.sh).  It creates a VM with one page of RAM and one vCPU in
 * real mode running
 *
 *     mov dx, 0x10 ; mov al, 0x42 ; out dx, al    -> KVM_EXIT_IO, port 0x10, 0x42
 *     mov [0x2000], al                             -> KVM_EXIT_MMIO at 0x2000 (no RAM there)
 *     hlt                                          -> KVM_EXIT_HLT
 *
 * and checks each exit in turn.  Prints "kvm_smoke: ok" and exits 0, or says
 * which step failed and exits 1.
 *
 *   kvm_smoke [DEVICE]      (default /dev/kvm)
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_GPA 0x1000u
#define RAM_SIZE 0x1000u
#define MMIO_GPA 0x2000u
#define PORT 0x10u

static const uint8_t code[] = {
	0xba, 0x10, 0x00, /* mov dx, 0x10 */
	0xb0, 0x42,	  /* mov al, 0x42 */
	0xee,		  /* out dx, al */
	0xa2, 0x00, 0x20, /* mov [0x2000], al */
	0xf4,		  /* hlt */
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *what)
{
	fprintf(stderr, "kvm_smoke: %s: %s\n", what, strerror(errno));
	return 1;
}

/* One KVM_RUN, retried on EINTR (a signal is not a failure of the VM). */
static int run_once(int vcpu, const struct kvm_run *run, unsigned *reason)
{
	int r;
	do
		r = ioctl(vcpu, KVM_RUN, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	*reason = run->exit_reason;
	return 0;
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/kvm";
	double t0 = now();
	int kvm = open(dev, O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail(dev);
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		fprintf(stderr, "kvm_smoke: KVM API version %d, want %d\n", api, KVM_API_VERSION);
		return 1;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");
	uint8_t *mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return fail("mmap guest RAM");
	memcpy(mem, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = RAM_GPA,
		.memory_size = RAM_SIZE,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return fail("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		return fail("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return fail("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = RAM_GPA, .rflags = 0x2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return fail("KVM_SET_REGS");

	unsigned reason;
	int r = run_once(vcpu, run, &reason);
	if (r < 0) {
		errno = -r;
		return fail("KVM_RUN (1)");
	}
	if (reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT || run->io.port != PORT || run->io.size != 1 ||
	    run->io.count != 1 || ((uint8_t *)run)[run->io.data_offset] != 0x42) {
		fprintf(stderr, "kvm_smoke: first exit %u (port %#x size %u), want KVM_EXIT_IO out of 0x42 to port %#x\n",
			reason, run->io.port, run->io.size, PORT);
		return 1;
	}
	r = run_once(vcpu, run, &reason);
	if (r < 0) {
		errno = -r;
		return fail("KVM_RUN (2)");
	}
	if (reason != KVM_EXIT_MMIO || !run->mmio.is_write || run->mmio.phys_addr != MMIO_GPA || run->mmio.len != 1 ||
	    run->mmio.data[0] != 0x42) {
		fprintf(stderr, "kvm_smoke: second exit %u (addr %#llx), want KVM_EXIT_MMIO write of 0x42 at %#x\n", reason,
			(unsigned long long)run->mmio.phys_addr, MMIO_GPA);
		return 1;
	}
	r = run_once(vcpu, run, &reason);
	if (r < 0) {
		errno = -r;
		return fail("KVM_RUN (3)");
	}
	if (reason != KVM_EXIT_HLT) {
		fprintf(stderr, "kvm_smoke: third exit %u, want KVM_EXIT_HLT\n", reason);
		return 1;
	}
	printf("kvm_smoke: ok (port I/O, MMIO and HLT exits in %.3f s)\n", now() - t0);
	munmap(run, (size_t)run_size);
	munmap(mem, RAM_SIZE);
	close(vcpu);
	close(vm);
	close(kvm);
	return 0;
}
