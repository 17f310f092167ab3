/* will-it-scale signal1: every thread raises SIGUSR1 on itself (sighand_struct.siglock). */
#include "wis.h"
#include <signal.h>

static void handler(int sig)
{
	(void)sig;
}

static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void install(void)
{
	signal(SIGUSR1, handler);
}

static void *setup(int thread)
{
	(void)thread;
	/* Every thread waits here until the handler is in place. */
	pthread_once(&installed, install);
	return NULL;
}

static void testcase(void *arg)
{
	(void)arg;
	raise(SIGUSR1);
}
