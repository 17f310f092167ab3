/*
 * A minimal will-it-scale harness: THREADS threads (argv[2], default 4) run
 * testcase() for SECONDS (argv[1], default 2), sharing one process (so one
 * files_struct, one mm, one sighand: the locks will-it-scale's thread mode
 * contends). Prints the iterations done.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

static atomic_int stop;

/* One iteration of the test; `arg` is the thread's setup() result. */
static void testcase(void *arg);
/* Per-thread setup (e.g. a private file); may return NULL. */
static void *setup(int thread);

struct worker {
	pthread_t id;
	int index;
	unsigned long long iterations;
};

static void *work(void *p)
{
	struct worker *w = p;
	void *arg = setup(w->index);

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		testcase(arg);
		w->iterations++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 2.0;
	int threads = argc > 2 ? atoi(argv[2]) : 4;
	struct worker *workers;
	unsigned long long total = 0;

	if (seconds <= 0 || seconds > 600 || threads < 1 || threads > 1024) {
		fprintf(stderr, "usage: %s [SECONDS (0-600]] [THREADS (1-1024)]\n", argv[0]);
		return 2;
	}
	workers = calloc(threads, sizeof(*workers));
	if (!workers) {
		perror("calloc");
		return 1;
	}
	for (int i = 0; i < threads; i++) {
		workers[i].index = i;
		if (pthread_create(&workers[i].id, NULL, work, &workers[i])) {
			perror("pthread_create");
			return 1;
		}
	}
	usleep((useconds_t)(seconds * 1e6));
	atomic_store(&stop, 1);
	for (int i = 0; i < threads; i++) {
		pthread_join(workers[i].id, NULL);
		total += workers[i].iterations;
	}
	printf("%llu iterations in %.1f s with %d threads\n", total, seconds, threads);
	return 0;
}
