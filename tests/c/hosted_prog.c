/* An ordinary program for the hosted-executable tests (run unmodified as a pool
 * scavenger): parses options with getopt, writes through stdio, registers an exit
 * handler, and ends with the status it is asked for.
 * usage: hosted_prog -o OUT [-n LINES] [-s STATUS] [-x] [-E] [-A] [-f] [-l]
 *   -x: end by exit(), not return; -E: by _exit(); -A: by abort();
 *   -f: fault (write to NULL) after the lines;
 *   -l: loop forever, no I/O, after the lines */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static FILE *out;
static long lines = 1000; /* a global of its own: each pool line has a copy */

static void at_end(void) {
  fprintf(out, "atexit ran, optind %d\n", optind);
  fclose(out);
}

int main(int argc, char **argv) {
  const char *path = NULL;
  int status = 0, by_exit = 0, fault = 0, spin = 0, opt;
  while ((opt = getopt(argc, argv, "o:n:s:xEAfl")) != -1) {
    switch (opt) {
    case 'o': path = optarg; break;
    case 'n': lines = atol(optarg); break;
    case 's': status = atoi(optarg); break;
    case 'x': by_exit = 1; break;
    case 'E': by_exit = 2; break;
    case 'A': by_exit = 3; break;
    case 'f': fault = 1; break;
    case 'l': spin = 1; break;
    default: return 64;
    }
  }
  if (!path || optind != argc) return 64;
  out = fopen(path, "w");
  if (!out) return 65;
  atexit(at_end);
  unsigned long x = 88172645463325252UL, sum = 0;
  for (long i = 0; i < lines; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    sum += x % 1000;
    fprintf(out, "line %ld %lu\n", i, x % 1000);
  }
  /* Doubles travel in vector registers (and %al counts them): checks that msh's
   * yield before fprintf keeps them. */
  fprintf(out, "mean %.6f, ratio %.3e\n", (double)sum / (double)(lines ? lines : 1), 1.0 / 3.0);
  fprintf(out, "sum %lu, program %s\n", sum, strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0]);
  if (fault) *(volatile int *)(uintptr_t)(sum & 0) = 1;
  while (spin) x = x * 6364136223846793005UL + (unsigned long)argc, spin = (int)(x | 1);
  if (by_exit == 1) exit(status);
  if (by_exit == 2) _exit(status);
  if (by_exit == 3) abort();
  return status;
}
