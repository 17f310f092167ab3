/* compute.h: the compute scavenger shared by the examples. */
#ifndef MSH_EXAMPLE_COMPUTE_H
#define MSH_EXAMPLE_COMPUTE_H
#include <stdint.h>

#ifndef COMPUTE_UNIT_ROUNDS
#define COMPUTE_UNIT_ROUNDS 8
#endif

struct compute_job {
  uint64_t seed;
  uint64_t max_units;   /* 0 = until stop */
  int stop;             /* set by the owner to end the scavenger */
  uint64_t units;       /* units done so far */
  uint64_t result;
  int done;
};

uint64_t compute_unit(uint64_t state);
void compute_scavenger(void *job);
double compute_units_per_second(double seconds);
#endif
