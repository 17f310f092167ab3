/* ptrchase.c: a latency-bound primary, a random pointer chase over N MiB.
 *
 * Each node is one 64-byte cache line; the nodes form one random cycle, so every
 * hop is a dependent load that misses once the table outgrows the caches. Prints
 * one JSON line: ns per hop, a checksum (the same for every mode), and, when a
 * scavenger ran beside it, how much work the scavenger got done.
 *
 * Modes:
 *   alone        the chase by itself
 *   os-threads   the chase plus a compute thread, both pinned to one CPU: what a
 *                user does without msh
 *   msh          (built with -DPTRCHASE_MSH, linked with libmsh) the chase with
 *                MSH_PREFETCH_YIELD at the chase load and compute scavengers
 *   yield        (built with -DPTRCHASE_YIELD, not linked with libmsh) the chase
 *                with MSH_PREFETCH_YIELD; scavengers come from `msh run`
 */
#define _GNU_SOURCE
#include "compute.h"
#include <msh.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

struct node {
  struct node *next;
  uint64_t value;
  char pad[48];
};

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
  return rng_state;
}

static struct node *build_cycle(size_t count) {
  struct node *nodes = mmap(NULL, count * sizeof *nodes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (nodes == MAP_FAILED) { perror("ptrchase: mmap"); exit(1); }
  madvise(nodes, count * sizeof *nodes, getenv("PTRCHASE_THP") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  size_t *order = malloc(count * sizeof *order);
  if (!order) { perror("ptrchase: malloc"); exit(1); }
  for (size_t i = 0; i < count; i++) order[i] = i;
  for (size_t i = count - 1; i > 0; i--) {
    size_t j = rng() % (i + 1), t = order[i];
    order[i] = order[j]; order[j] = t;
  }
  for (size_t i = 0; i < count; i++) {
    nodes[order[i]].next = &nodes[order[(i + 1) % count]];
    nodes[order[i]].value = order[i];
  }
  struct node *start = &nodes[order[0]];
  free(order);
  return start;
}

/* The warm-up chase: never yields, so scavengers run only in the timed one. */
static uint64_t __attribute__((noinline)) chase_quietly(struct node *p, uint64_t hops) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < hops; i++) { sum += p->value; p = p->next; }
  return sum;
}

/* The chase. The load of p->next is the one that misses. */
static uint64_t __attribute__((noinline)) chase(struct node *p, uint64_t hops) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < hops; i++) {
#if defined(PTRCHASE_MSH) || defined(PTRCHASE_YIELD)
    MSH_PREFETCH_YIELD(p);
#endif
    sum += p->value;
    p = p->next;
  }
  return sum;
}

static void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (err) { fprintf(stderr, "ptrchase: cannot pin to CPU %d: %s\n", cpu, strerror(err)); exit(1); }
}

static void *compute_thread(void *arg) {
  pin_to_cpu(0);
  compute_scavenger(arg);
  return NULL;
}

static void usage(void) {
  fprintf(stderr,
    "usage: ptrchase [-m MIB] [-n HOPS] [--mode alone|os-threads|msh|yield]\n"
    "                [-s SCAVENGERS] [-b BUDGET_NS] [-p MAX_SLOWDOWN_PERMILLE]\n");
  exit(2);
}

int main(int argc, char **argv) {
  size_t mib = 64;
  uint64_t hops = 20 * 1000 * 1000;
  const char *mode = "alone";
  int scavengers = 1;
  long budget_ns = -1, max_slowdown_permille = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-m") && v) { mib = strtoul(v, NULL, 10); i++; }
    else if (!strcmp(a, "-n") && v) { hops = strtoull(v, NULL, 10); i++; }
    else if (!strcmp(a, "--mode") && v) { mode = v; i++; }
    else if (!strcmp(a, "-s") && v) { scavengers = atoi(v); i++; }
    else if (!strcmp(a, "-b") && v) { budget_ns = atol(v); i++; }
    else if (!strcmp(a, "-p") && v) { max_slowdown_permille = atol(v); i++; }
    else usage();
  }
  if (mib == 0 || hops == 0 || scavengers < 1 || scavengers > 64) usage();
  (void)budget_ns; (void)max_slowdown_permille; /* used by the msh build only */
  int msh_mode = !strcmp(mode, "msh"), os_mode = !strcmp(mode, "os-threads");
  if (!msh_mode && !os_mode && strcmp(mode, "alone") && strcmp(mode, "yield")) usage();
#ifndef PTRCHASE_MSH
  if (msh_mode) { fprintf(stderr, "ptrchase: --mode msh needs the ptrchase_msh build\n"); return 2; }
#endif

  struct node *start = build_cycle(mib * 1024 * 1024 / sizeof(struct node));
  chase_quietly(start, hops / 10 + 1); /* warm the page tables */

  struct compute_job jobs[64];
  memset(jobs, 0, sizeof jobs);
  pthread_t threads[64];
  if (os_mode) {
    pin_to_cpu(0);
    for (int s = 0; s < scavengers; s++) {
      jobs[s].seed = s + 1;
      if (pthread_create(&threads[s], NULL, compute_thread, &jobs[s])) { perror("ptrchase: pthread_create"); return 1; }
    }
  }
#ifdef PTRCHASE_MSH
  if (msh_mode) {
    msh_config config;
    msh_config_init(&config);
    if (budget_ns >= 0) config.budget_ns = budget_ns;
    /* -p: find the budget online, starting from -b (or the default). */
    config.max_slowdown_permille = (uint32_t)max_slowdown_permille;
    config.scavengers_per_thread = scavengers;
    msh_status st = msh_init(&config);
    if (st == MSH_OK) st = msh_thread_register();
    for (int s = 0; s < scavengers && st == MSH_OK; s++) {
      jobs[s].seed = s + 1;
      st = msh_spawn_named("compute", compute_scavenger, &jobs[s]);
    }
    if (st != MSH_OK) { fprintf(stderr, "ptrchase: msh: %s\n", msh_strerror(st)); return 1; }
  }
#endif

  double t0 = now_ns();
  uint64_t checksum = chase(start, hops);
  double elapsed = now_ns() - t0;

  uint64_t work = 0, budget_now_ns = 0;
  for (int s = 0; s < scavengers; s++) work += __atomic_load_n(&jobs[s].units, __ATOMIC_RELAXED);
  for (int s = 0; s < scavengers; s++) __atomic_store_n(&jobs[s].stop, 1, __ATOMIC_RELAXED);
  if (os_mode)
    for (int s = 0; s < scavengers; s++) pthread_join(threads[s], NULL);
#ifdef PTRCHASE_MSH
  if (msh_mode) {
    msh_stats stats = {0};
    msh_thread_stats(&stats);
    budget_now_ns = stats.budget_ns;
    msh_status st = msh_shutdown(); /* runs the stopped scavengers to their end */
    if (st != MSH_OK) { fprintf(stderr, "ptrchase: msh_shutdown: %s\n", msh_strerror(st)); return 1; }
    fprintf(stderr, "ptrchase: switches=%llu scavenger_ns=%llu\n",
            (unsigned long long)stats.switches, (unsigned long long)stats.scavenger_ns);
  }
#endif
  printf("ptrchase: {\"mode\": \"%s\", \"mib\": %zu, \"hops\": %llu, \"elapsed_ns\": %.0f, "
         "\"ns_per_hop\": %.2f, \"checksum\": %llu, \"scavenger_units\": %llu, \"budget_ns\": %llu}\n",
         mode, mib, (unsigned long long)hops, elapsed, elapsed / hops,
         (unsigned long long)checksum, (unsigned long long)work,
         (unsigned long long)budget_now_ns);
  return 0;
}
