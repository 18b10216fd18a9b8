/* kvmm: the KVM micro-VM monitor, its one public header.
 *
 * kvmm runs one micro-VM per process on /dev/kvm, driven the way Firecracker
 * is: the same flags, --config-file JSON and REST API on a unix socket.  The
 * rest of kindling runs it as a program (vmm/sandbox_microvm.c writes a
 * config file and starts kvmm); this header is the monitor as a library, the
 * four pieces main.c composes:
 *
 *   config.h       the VM's configuration, in Firecracker's terms;
 *   vm.h           the VM: create it from a config or a snapshot, start,
 *                  pause, snapshot, wait, destroy;
 *   api.h          Firecracker's REST API on a unix socket;
 *   jail.h         a seccomp allowlist per thread, and the jailer's
 *                  cgroup, chroot and user for the whole process.
 *
 * The parts below them have a header each, beside their source, and are
 * kvmm's own (README.md has the map).  The pure ones run and are tested
 * without /dev/kvm (unit tests, fuzz targets, tools): guest memory (every
 * guest address goes through ONE overflow-checked accessor), virtqueues,
 * virtio-mmio, virtio-blk, virtio-vsock, the Linux boot protocol, ACPI, the
 * HTTP parser, the UART, the i8042 and the CPUID fixups.  The VM itself needs
 * /dev/kvm; tests/nested/ runs it under nested KVM.
 *
 * Threading: the device objects do not lock themselves.  The VM gives each
 * device a mutex that its vCPU threads take around MMIO exits and the device
 * loop (kvmm_loop) takes around the device's callbacks.
 */
#ifndef KINDLING_KVMM_H
#define KINDLING_KVMM_H

#include "vmm/kvmm/api.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/jail.h"
#include "vmm/kvmm/vm.h"

#endif
