/* A shared object whose msh_scavenger_main is data, not a function. */
int msh_scavenger_main[4] = { 1, 2, 3, 4 };
