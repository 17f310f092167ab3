/* will-it-scale mmap1: map and unmap 128 MiB of anonymous memory (mm_struct.mmap_lock). */
#include "wis.h"
#include <sys/mman.h>

#define SIZE (128UL << 20)

static void *setup(int thread)
{
	(void)thread;
	return NULL;
}

static void testcase(void *arg)
{
	void *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)arg;
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	munmap(p, SIZE);
}
