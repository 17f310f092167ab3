/* A scavenger that misbehaves as argv[1] says, after 100 good yields:
 * segv, exit, _exit, abort, spin (never yields again), libc-fault (faults inside the
 * C library), forever (yields forever, never finishes), ok (returns). */
#include <msh.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int *volatile null_ptr;
static volatile unsigned long spins;

int msh_scavenger_main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "ok";
  for (int i = 0; i < 100; i++) msh_yield();
  if (!strcmp(what, "segv")) return *null_ptr;
  if (!strcmp(what, "exit")) exit(7);
  if (!strcmp(what, "_exit")) _exit(7);
  if (!strcmp(what, "abort")) abort();
  if (!strcmp(what, "spin")) for (;;) spins++;
  if (!strcmp(what, "libc-fault")) return (int)strlen((const char *)null_ptr);
  if (!strcmp(what, "forever")) for (;;) msh_yield();
  return 0;
}
