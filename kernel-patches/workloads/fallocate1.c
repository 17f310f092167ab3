/* will-it-scale fallocate1: fallocate and truncate a private tmpfs file, 1 MiB at a time. */
#include "wis.h"
#include <fcntl.h>

#define SIZE (1 << 20)

static void *setup(int thread)
{
	char path[64];
	int *fd = malloc(sizeof(*fd));

	snprintf(path, sizeof(path), "/dev/shm/kpatch-fallocate1.%d.%d", getpid(), thread);
	*fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (*fd < 0) {
		perror(path);
		exit(1);
	}
	unlink(path); /* gone when the descriptor closes */
	return fd;
}

static void testcase(void *arg)
{
	int fd = *(int *)arg;

	if (fallocate(fd, 0, 0, SIZE)) {
		perror("fallocate");
		exit(1);
	}
	if (ftruncate(fd, 0)) {
		perror("ftruncate");
		exit(1);
	}
}
