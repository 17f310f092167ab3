/* Each pool line must get its own globals: `instances` is 1 in every copy. */
#include <msh.h>
#include <stdio.h>
#include <stdlib.h>
static int instances;
int msh_scavenger_main(int argc, char **argv) {
  instances++;
  for (int i = 0; i < 100; i++) msh_yield();
  fprintf(stderr, "scav_globals %s: instances=%d\n", argc > 1 ? argv[1] : "?", instances);
  return 0;
}
