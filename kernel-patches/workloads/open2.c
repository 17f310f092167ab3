/* will-it-scale open2: each thread opens and closes its own file in its own directory. */
#include "wis.h"
#include <fcntl.h>
#include <sys/stat.h>

struct paths {
	char dir[64];
	char file[80];
};

static void *setup(int thread)
{
	struct paths *p = malloc(sizeof(*p));
	int fd;

	snprintf(p->dir, sizeof(p->dir), "/tmp/kpatch-open2.%d.%d", getpid(), thread);
	snprintf(p->file, sizeof(p->file), "%s/file", p->dir);
	if (mkdir(p->dir, 0700) && errno != EEXIST) {
		perror(p->dir);
		exit(1);
	}
	fd = open(p->file, O_RDWR | O_CREAT, 0600);
	if (fd < 0) {
		perror(p->file);
		exit(1);
	}
	close(fd);
	return p;
}

static void testcase(void *arg)
{
	struct paths *p = arg;
	int fd = open(p->file, O_RDWR);

	if (fd < 0) {
		perror("open");
		exit(1);
	}
	close(fd);
	if (atomic_load_explicit(&stop, memory_order_relaxed)) {
		unlink(p->file);
		rmdir(p->dir);
	}
}
