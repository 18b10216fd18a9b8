/* kvmm_acpi_dump DIR [N_CPUS [N_DEVS [SLEEP_PORT]]]: build kvmm's ACPI tables
 * for N_CPUS vCPUs and N_DEVS virtio-mmio devices (kvmm's layout) and write
 * each table to DIR/<sig>.dat (rsdp, xsdt, facp, apic, dsdt), so an
 * independent tool (`iasl -d`) can check them.  Prints one line per device,
 * "dev I base 0x... size 0x... gsi N", and one per table,
 * "table NAME gpa 0x... len N". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "vmm/kvmm/acpi.h"
#include "vmm/kvmm/layout.h"

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 5) {
		fprintf(stderr, "usage: %s DIR [N_CPUS [N_DEVS [SLEEP_PORT]]]\n", argv[0]);
		return 2;
	}
	const char *dir = argv[1];
	unsigned long cpus = argc > 2 ? strtoul(argv[2], NULL, 0) : 1;
	unsigned long ndev = argc > 3 ? strtoul(argv[3], NULL, 0) : 2;
	unsigned long port = argc > 4 ? strtoul(argv[4], NULL, 0) : 0;
	if (ndev > 256 || port > 0xffff) {
		fprintf(stderr, "kvmm_acpi_dump: at most 256 devices, ports up to 0xffff\n");
		return 2;
	}
	struct acpi_virtio_mmio devs[256];
	for (size_t i = 0; i < ndev; i++) {
		devs[i].base = KVMM_VIRTIO_MMIO_GPA + i * KVMM_VIRTIO_MMIO_STRIDE;
		devs[i].size = KVMM_VIRTIO_MMIO_SIZE;
		devs[i].gsi = KVMM_VIRTIO_MMIO_IRQ + (uint32_t)i;
		printf("dev %zu base 0x%llx size 0x%x gsi %u\n", i, (unsigned long long)devs[i].base, devs[i].size,
		       devs[i].gsi);
	}
	struct acpi_config cfg = {
		.n_cpus = (uint32_t)cpus,
		.devs = devs,
		.n_devs = ndev,
		.sleep_port = (uint16_t)port,
		.gpa = KVMM_ACPI_GPA,
	};
	static uint8_t blob[KVMM_ACPI_MAX];
	struct acpi_layout lay;
	int r = acpi_build(&cfg, blob, sizeof(blob), &lay);
	if (r < 0) {
		fprintf(stderr, "kvmm_acpi_dump: acpi_build: %s\n", strerror(-r));
		return 1;
	}
	static const char *const names[ACPI_N_TABLES] = { "rsdp", "xsdt", "facp", "apic", "dsdt" };
	if (mkdir_p(dir, 0755) < 0) {
		fprintf(stderr, "kvmm_acpi_dump: mkdir %s failed\n", dir);
		return 1;
	}
	for (int t = 0; t < ACPI_N_TABLES; t++) {
		char *path = xasprintf("%s/%s.dat", dir, names[t]);
		if (!path || write_file_atomic(path, blob + lay.off[t], lay.len[t], 0644) < 0) {
			fprintf(stderr, "kvmm_acpi_dump: cannot write %s\n", path ? path : names[t]);
			free(path);
			return 1;
		}
		free(path);
		unsigned long long gpa = cfg.gpa + lay.off[t];
		printf("table %s gpa 0x%llx len %zu\n", names[t], gpa, lay.len[t]);
	}
	return 0;
}
