/* The sandbox's own network: loopback, and the Runtime API endpoint on it.
 * Shared by the process sandbox's init (in the sandbox's network namespace)
 * and the micro-VM's guest init (in the guest), so plain libc only. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox/sandbox.h"

int sandbox_loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		int e = errno;
		log_warn("bring up lo: socket: %s; the workload has no loopback", strerror(e));
		return -e;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	int r = 0;
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		r = -errno;
	else {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			r = -errno;
	}
	close(s);
	if (r < 0)
		log_warn("bring up lo: %s; the workload has no loopback", strerror(-r));
	return r;
}

int sandbox_runtime_api_listen(uint16_t port, int *out_fd)
{
	*out_fd = -1;
	if (port == 0)
		return -EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int e = errno;
		log_err("Runtime API endpoint: socket: %s", strerror(e));
		return -e;
	}
	int one = 1;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SANDBOX_RUNTIME_API_BACKLOG) < 0) {
		int e = errno;
		log_err("Runtime API endpoint: listen on 127.0.0.1:%u inside the sandbox: %s%s", port, strerror(e),
			e == EADDRNOTAVAIL ? " (lo is not up)" : "");
		close(fd);
		return -e;
	}
	*out_fd = fd;
	return 0;
}
