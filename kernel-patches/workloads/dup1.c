/* will-it-scale dup1: dup() and close() one shared descriptor (files_struct.file_lock). */
#include "wis.h"
#include <fcntl.h>

static int fd = -1;
static pthread_once_t opened = PTHREAD_ONCE_INIT;

static void open_shared(void)
{
	fd = open("/dev/null", O_RDONLY);
	if (fd < 0) {
		perror("open /dev/null");
		exit(1);
	}
}

static void *setup(int thread)
{
	(void)thread;
	pthread_once(&opened, open_shared);
	return NULL;
}

static void testcase(void *arg)
{
	(void)arg;
	close(dup(fd));
}
