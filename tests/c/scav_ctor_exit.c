/* A scavenger object whose constructor ends the process. */
#include <stdlib.h>
__attribute__((constructor)) static void leave(void) { exit(3); }
int msh_scavenger_main(int argc, char **argv) { (void)argc; (void)argv; return 0; }
