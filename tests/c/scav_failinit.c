/* A scavenger whose init reports failure. */
#include <stdio.h>
int msh_scavenger_init(int argc, char **argv) { (void)argc; (void)argv; return 7; }
int msh_scavenger_main(int argc, char **argv) { (void)argc; (void)argv; puts("ran anyway"); return 0; }
