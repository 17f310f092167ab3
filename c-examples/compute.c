/* compute.c: a compute-bound scavenger that yields explicitly.
 *
 * One "unit" of work is a short run of integer mixing (~20-40 ns); the scavenger
 * calls msh_yield() after each unit, so it gives the core back within one unit of
 * its budget. Units done are counted, which is how the harvest is measured.
 *
 * Used three ways: linked into ptrchase_msh (compute_scavenger), as an OS thread in
 * ptrchase's os-threads mode, and standalone (`compute -t SECONDS`) to measure the
 * work rate alone.
 *
 * A shared counter lets a benchmark read the units done by a process it cannot stop
 * (a server's scavengers, an OS thread beside it) over a window it chooses: with
 * COMPUTE_COUNTER=FILE (a file of at least 8 bytes), the pool scavenger and
 * `compute --forever` add their units to the little-endian u64 at its start.
 *
 * Built with -DMSH_NO_YIELD it has no msh_yield() at all: the scavenger that
 * `msh rewrite --scavenger` instruments (`msh bench harvest --scavenger rewritten`). */
#include "compute.h"
#include <msh.h>
#ifdef MSH_NO_YIELD
#undef msh_yield
#define msh_yield() ((void)0)
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(COMPUTE_MAIN) || (defined(COMPUTE_SCAVENGER_SO) && !defined(MSH_PROTOTYPE_STYLE))
#define COUNTER_FLUSH_UNITS 256

/* The counter named by COMPUTE_COUNTER, mapped shared; NULL when unset or unusable. */
static uint64_t *shared_counter(void) {
  const char *path = getenv("COMPUTE_COUNTER");
  if (!path || !*path) return NULL;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) { perror("compute: COMPUTE_COUNTER"); return NULL; }
  void *map = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) { perror("compute: COMPUTE_COUNTER mmap"); return NULL; }
  return map;
}

/* Computes until the process ends, adding units to `counter` in batches (one atomic
 * add per batch keeps several scavengers from contending on its cache line). */
static void compute_forever(uint64_t *counter) {
  uint64_t state = 7;
  for (;;) {
    for (int i = 0; i < COUNTER_FLUSH_UNITS; i++) { state = compute_unit(state); msh_yield(); }
    if (counter) __atomic_fetch_add(counter, COUNTER_FLUSH_UNITS, __ATOMIC_RELAXED);
  }
}
#endif

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

/* Publishing each unit's result to memory pins the work in program order: without
 * it the compiler may legally defer a pure register computation past the yields and
 * clock reads around it. */
static uint64_t compute_sink;

uint64_t compute_unit(uint64_t state) {
  for (int i = 0; i < COMPUTE_UNIT_ROUNDS; i++) state = mix(state + (uint64_t)i);
  __atomic_store_n(&compute_sink, state, __ATOMIC_RELAXED);
  return state;
}

void compute_scavenger(void *arg) {
  struct compute_job *job = arg;
  uint64_t state = job->seed, units = 0;
  while (!__atomic_load_n(&job->stop, __ATOMIC_RELAXED) &&
         (job->max_units == 0 || units < job->max_units)) {
    state = compute_unit(state);
    units++;
    __atomic_store_n(&job->units, units, __ATOMIC_RELAXED);
    msh_yield();
  }
  job->result = state;
  __atomic_store_n(&job->done, 1, __ATOMIC_RELEASE);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double compute_units_per_second(double seconds) {
  uint64_t state = 1, units = 0;
  double start = now_s(), elapsed;
  do {
    for (int i = 0; i < 1024; i++) { state = compute_unit(state); msh_yield(); }
    units += 1024;
    elapsed = now_s() - start;
  } while (elapsed < seconds);
  if (state == 42) fputs("", stderr); /* keep the work */
  return units / elapsed;
}

#ifdef COMPUTE_SCAVENGER_SO
/* As a pool scavenger (`msh run --pool`): `compute_scav.so [UNITS]` does UNITS units
 * (default: until the process exits), yielding after each. */
static uint64_t parse_units(int argc, char **argv) {
  return argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
}

#ifdef MSH_PROTOTYPE_STYLE
/* The MSH prototype's convention: the loader fills these in and calls entry(). */
int argc = 0;
char **argv = 0;
int crt_pos = 0;
int entry(void) {
  struct compute_job job = { .seed = 7, .max_units = parse_units(argc, argv) };
  compute_scavenger(&job);
  return 0;
}
#else
int msh_scavenger_main(int argc, char **argv) {
  uint64_t *counter = shared_counter();
  if (counter && parse_units(argc, argv) == 0) compute_forever(counter);
  struct compute_job job = { .seed = 7, .max_units = parse_units(argc, argv) };
  compute_scavenger(&job);
  return 0;
}
#endif
#endif

#ifdef COMPUTE_MAIN
int main(int argc, char **argv) {
  double seconds = 1.0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-t") && i + 1 < argc) seconds = atof(argv[++i]);
    else if (!strcmp(argv[i], "--forever")) {
      uint64_t *counter = shared_counter();
      if (!counter) { fprintf(stderr, "compute: --forever needs COMPUTE_COUNTER=FILE\n"); return 2; }
      compute_forever(counter);
    }
    else { fprintf(stderr, "usage: compute [-t SECONDS | --forever]\n"); return 2; }
  }
  if (seconds <= 0) { fprintf(stderr, "compute: -t must be positive\n"); return 2; }
  printf("compute: {\"units_per_s\": %.0f, \"unit_ns\": %.2f}\n",
         compute_units_per_second(seconds), 1e9 / compute_units_per_second(seconds / 4));
  return 0;
}
#endif
