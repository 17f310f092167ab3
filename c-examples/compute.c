/* compute.c: a compute-bound scavenger that yields explicitly.
 *
 * One "unit" of work is a short run of integer mixing (~20-40 ns); the scavenger
 * calls msh_yield() after each unit, so it gives the core back within one unit of
 * its budget. Units done are counted, which is how the harvest is measured.
 *
 * Used three ways: linked into ptrchase_msh (compute_scavenger), as an OS thread in
 * ptrchase's os-threads mode, and standalone (`compute -t SECONDS`) to measure the
 * work rate alone. */
#include "compute.h"
#include <msh.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    else { fprintf(stderr, "usage: compute [-t SECONDS]\n"); return 2; }
  }
  if (seconds <= 0) { fprintf(stderr, "compute: -t must be positive\n"); return 2; }
  printf("compute: {\"units_per_s\": %.0f, \"unit_ns\": %.2f}\n",
         compute_units_per_second(seconds), 1e9 / compute_units_per_second(seconds / 4));
  return 0;
}
#endif
