/* errno_test.c: errno and the floating-point control words travel with each side of
 * a switch. A primary and a scavenger each set errno to their own value before every
 * switch and check it after; the scavenger runs with another rounding mode (MXCSR and
 * x87 control word, via fesetround), which must never leak into the primary, and
 * the primary's must never leak into the scavenger. The scavenger also raises the
 * sticky inexact flag, which must never show in the primary's MXCSR. Prints one line per check (TAP
 * style); the exit code is the number of failures. */
#include <errno.h>
#include <fenv.h>
#include <msh.h>
#include <stdio.h>

#define SWITCHES 200000

static int failures;
#define CHECK(name, cond) do { \
    if (cond) printf("ok - %s\n", name); \
    else { printf("not ok - %s (line %d)\n", name, __LINE__); failures++; } \
  } while (0)

struct scav_state {
  volatile int stop;
  long yields, errno_wrong, round_wrong, flags_lost;
};

/* 1/3 is inexact: sets the sticky FE_INEXACT flag in the MXCSR. Both volatile, so
 * the division is done at run time and not dropped as dead code. */
static volatile double three = 3.0, third;

static void scavenger(void *arg) {
  struct scav_state *s = arg;
  fesetround(FE_TOWARDZERO);
  while (!s->stop) {
    int mine = 2000 + (int)(s->yields % 1000);
    errno = mine;
    third = 1.0 / three;
    msh_yield();
    if (errno != mine) s->errno_wrong++;
    if (fegetround() != FE_TOWARDZERO) s->round_wrong++;
    if (!fetestexcept(FE_INEXACT)) s->flags_lost++;
    s->yields++;
  }
}

int main(void) {
  msh_config config;
  msh_config_init(&config);
  config.budget_ns = 0; /* every scavenger yield switches back */
  config.scavengers_per_thread = 1;
  if (msh_init(&config) != MSH_OK || msh_thread_register() != MSH_OK) {
    printf("not ok - msh init\n");
    return 1;
  }
  struct scav_state state = { 0 };
  msh_spawn_named("errno-scavenger", scavenger, &state);

  long errno_wrong = 0, round_wrong = 0, flags_wrong = 0;
  feclearexcept(FE_ALL_EXCEPT);
  for (long i = 0; i < SWITCHES; i++) {
    int mine = 1000 + (int)(i % 1000);
    errno = mine;
    MSH_PREFETCH_YIELD(&state);
    if (errno != mine) errno_wrong++;
    if (fegetround() != FE_TONEAREST) round_wrong++;
    if (fetestexcept(FE_ALL_EXCEPT)) flags_wrong++;
  }
  msh_stats stats;
  msh_thread_stats(&stats);
  printf("# switches %llu, scavenger yields %ld\n", (unsigned long long)stats.switches,
         state.yields);
  CHECK("every yield switched", stats.switches >= SWITCHES && state.yields >= SWITCHES - 1);
  CHECK("the primary sees its own errno after every switch", errno_wrong == 0);
  CHECK("the scavenger sees its own errno after every switch", state.errno_wrong == 0);
  CHECK("the scavenger's rounding mode never leaks into the primary", round_wrong == 0);
  CHECK("the scavenger keeps its rounding mode", state.round_wrong == 0);
  CHECK("the scavenger's exception flags never leak into the primary", flags_wrong == 0);
  CHECK("the scavenger keeps its exception flags", state.flags_lost == 0);

  /* A scavenger that ends gives the primary back its errno and rounding mode. */
  state.stop = 1;
  errno = 4242;
  msh_run_pending();
  CHECK("after the scavenger ends, errno is the primary's", errno == 4242);
  CHECK("after the scavenger ends, the rounding mode is the primary's",
        fegetround() == FE_TONEAREST);
  msh_shutdown();
  printf("%d failed\n", failures);
  return failures;
}
