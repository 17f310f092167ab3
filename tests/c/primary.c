/* A primary for the containment tests: a pointer chase with a prefetch-and-yield
 * at each hop, deterministic output and exit status 5.
 * usage: primary [ENTRIES] [HOPS] */
#include <msh.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : (size_t)1 << 22;
  long hops = argc > 2 ? atol(argv[2]) : 2000000;
  size_t *next = malloc(n * sizeof *next);
  if (!next || n < 2) return 1;
  for (size_t i = 0; i < n; i++) next[i] = i;
  uint64_t s = 42; /* Sattolo's shuffle: one cycle through every entry */
  for (size_t i = n - 1; i > 0; i--) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    size_t j = (size_t)(s >> 33) % i, t = next[i];
    next[i] = next[j];
    next[j] = t;
  }
  size_t p = 0;
  uint64_t sum = 0;
  for (long h = 0; h < hops; h++) {
    MSH_PREFETCH_YIELD(&next[p]);
    p = next[p];
    sum += p;
  }
  printf("primary: %ld hops, checksum %llu\n", hops, (unsigned long long)sum);
  free(next);
  return 5;
}
