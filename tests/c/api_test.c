/* api_test.c: the C API's contract, from C. Each check prints "ok - NAME" or
 * "not ok - NAME" (TAP style); the exit code is the number of failures.
 * `api_test overflow` instead runs a scavenger that overflows its stack, and
 * `api_test contain` scavengers that segfault, call exit(7) and never yield: msh must
 * name and stop each, and the primary runs on to its own exit status (0). */
#include <msh.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(name, cond) do { \
    if (cond) printf("ok - %s\n", name); \
    else { printf("not ok - %s (line %d)\n", name, __LINE__); failures++; } \
  } while (0)

struct counter { int limit; int count; int finished; };

static void count_and_yield(void *arg) {
  struct counter *c = arg;
  while (c->count < c->limit) { c->count++; msh_yield(); }
  c->finished = 1; /* and return: a scavenger that returns is done */
}

static int recurse(int depth) {
  volatile char frame[512];
  frame[0] = (char)depth;
  msh_yield();
  return depth > 1000000 ? frame[0] : recurse(depth + 1) + frame[0];
}
static void deep(void *arg) { (void)arg; recurse(0); }

static void *register_and_wait(void *arg) {
  pthread_barrier_t *barrier = arg;
  msh_status st = msh_thread_register();
  pthread_barrier_wait(barrier); /* registered */
  pthread_barrier_wait(barrier); /* main tried to shut down */
  if (st == MSH_OK) msh_thread_unregister();
  return NULL;
}

static int overflow(void) {
  msh_config config;
  msh_config_init(&config);
  config.stack_size = 16 * 1024;
  if (msh_init(&config) || msh_thread_register() || msh_spawn_named("deep", deep, NULL)) return 1;
  msh_run_pending();
  msh_stats stats;
  msh_thread_stats(&stats);
  printf("primary ran on: stopped %llu, completed %llu\n", (unsigned long long)stats.stopped,
         (unsigned long long)stats.completed);
  return stats.stopped == 1 && stats.completed == 0 ? 0 : 1;
}

static int *volatile null_ptr;
static volatile unsigned long spins;
static void segfaults(void *arg) { (void)arg; msh_yield(); *null_ptr = 1; }
static void exits(void *arg) { (void)arg; msh_yield(); exit(7); }
static void spins_forever(void *arg) { (void)arg; msh_yield(); for (;;) spins++; }

static int contain(void) {
  msh_config config;
  msh_config_init(&config);
  config.scavengers_per_thread = 3;
  if (msh_init(&config) || msh_thread_register()) return 1;
  msh_spawn_named("segfaults", segfaults, NULL);
  msh_spawn_named("exits", exits, NULL);
  msh_spawn_named("spins", spins_forever, NULL);
  int x = 0;
  for (int i = 0; i < 100000; i++) MSH_PREFETCH_YIELD(&x);
  msh_stats stats;
  msh_thread_stats(&stats);
  printf("primary ran on: stopped %llu, preempted %llu\n", (unsigned long long)stats.stopped,
         (unsigned long long)stats.preempted);
  if (msh_shutdown()) return 1;
  return stats.stopped == 3 && stats.preempted == 1 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "overflow")) return overflow();
  if (argc > 1 && !strcmp(argv[1], "contain")) return contain();

  /* Yields are no-ops before anything is set up. */
  int x = 0;
  MSH_PREFETCH_YIELD(&x);
  msh_yield();
  CHECK("yields without msh are no-ops", x == 0);

  /* Null pointers and calls out of order. */
  CHECK("config_init(NULL)", msh_config_init(NULL) == MSH_ERR_NULL);
  CHECK("register before init", msh_thread_register() == MSH_ERR_NOT_INITIALIZED);
  CHECK("spawn before init", msh_spawn(count_and_yield, &x) == MSH_ERR_NOT_INITIALIZED);
  CHECK("shutdown before init", msh_shutdown() == MSH_ERR_NOT_INITIALIZED);
  CHECK("stats(NULL)", msh_global_stats(NULL) == MSH_ERR_NULL);
  CHECK("strerror names every status", strlen(msh_strerror(MSH_ERR_NO_SLOT)) > 0 &&
        strcmp(msh_strerror(MSH_OK), "success") == 0);

  msh_config config;
  CHECK("config_init", msh_config_init(&config) == MSH_OK && config.stack_size >= 64 * 1024);
  msh_config bad = config;
  bad.scavengers_per_thread = 0;
  CHECK("zero slots is invalid", msh_init(&bad) == MSH_ERR_INVALID);
  bad = config;
  bad.flags = 0x80;
  CHECK("unknown flags are invalid", msh_init(&bad) == MSH_ERR_INVALID);

  config.scavengers_per_thread = 2;
  config.budget_ns = 0;
  CHECK("init", msh_init(&config) == MSH_OK);
  CHECK("double init", msh_init(&config) == MSH_ERR_ALREADY_INITIALIZED);
  CHECK("unregister unregistered", msh_thread_unregister() == MSH_ERR_NOT_REGISTERED);
  msh_stats stats;
  CHECK("thread stats unregistered", msh_thread_stats(&stats) == MSH_ERR_NOT_REGISTERED);
  CHECK("register", msh_thread_register() == MSH_OK);
  CHECK("register twice", msh_thread_register() == MSH_ERR_ALREADY_REGISTERED);
  CHECK("spawn(NULL)", msh_spawn(NULL, NULL) == MSH_ERR_NULL);

  /* More scavengers than slots: the rest wait in the pool, then run. */
  struct counter counters[5];
  for (int i = 0; i < 5; i++) {
    counters[i] = (struct counter){ .limit = 100 + i };
    CHECK("spawn", msh_spawn(count_and_yield, &counters[i]) == MSH_OK);
  }
  CHECK("two slots filled, three pending", msh_pending() == 3);
  for (int i = 0; i < 10; i++) MSH_PREFETCH_YIELD(&counters[0]);
  CHECK("yields ran a scavenger", counters[0].count > 0 || counters[1].count > 0);
  CHECK("run_pending", msh_run_pending() == MSH_OK);
  int all = 1;
  for (int i = 0; i < 5; i++) all &= counters[i].finished && counters[i].count == counters[i].limit;
  CHECK("every scavenger ran to its end", all);
  CHECK("thread stats", msh_thread_stats(&stats) == MSH_OK && stats.started == 5 &&
        stats.completed == 5 && stats.switches > 0 && stats.scavenger_yields >= 510);

  /* Shutdown refuses while another thread is registered. */
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, 2);
  pthread_t other;
  pthread_create(&other, NULL, register_and_wait, &barrier);
  pthread_barrier_wait(&barrier);
  CHECK("shutdown while another primary is registered", msh_shutdown() == MSH_ERR_BUSY);
  pthread_barrier_wait(&barrier);
  pthread_join(other, NULL);

  /* Unfinished scavengers run to completion at shutdown. */
  struct counter late = { .limit = 50 };
  msh_spawn(count_and_yield, &late);
  MSH_PREFETCH_YIELD(&late);
  CHECK("shutdown", msh_shutdown() == MSH_OK);
  CHECK("shutdown finished the scavenger", late.finished && late.count == 50);
  CHECK("global stats after shutdown", msh_global_stats(&stats) == MSH_OK && stats.completed >= 6);
  CHECK("yields after shutdown are no-ops", (msh_yield(), 1));

  /* ... or are abandoned if configured. */
  config.flags = MSH_FLAG_ABANDON_AT_EXIT;
  struct counter abandoned = { .limit = 1000000 };
  CHECK("re-init", msh_init(&config) == MSH_OK && msh_thread_register() == MSH_OK);
  msh_spawn(count_and_yield, &abandoned);
  for (int i = 0; i < 3; i++) MSH_PREFETCH_YIELD(&abandoned);
  CHECK("abandoning shutdown", msh_shutdown() == MSH_OK && !abandoned.finished);

  printf("%d failed\n", failures);
  return failures;
}
