/* will-it-scale open1: each thread opens and closes its own file in one shared directory. */
#include "wis.h"
#include <fcntl.h>

static void *setup(int thread)
{
	char *path = malloc(64);
	int fd;

	snprintf(path, 64, "/tmp/kpatch-open1.%d.%d", getpid(), thread);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	close(fd);
	return path;
}

static void testcase(void *arg)
{
	int fd = open(arg, O_RDWR);

	if (fd < 0) {
		perror("open");
		exit(1);
	}
	close(fd);
	/* The file goes away with the process's last iteration. */
	if (atomic_load_explicit(&stop, memory_order_relaxed))
		unlink(arg);
}
