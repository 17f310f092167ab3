/* A shared object with neither msh_scavenger_main nor entry. */
int not_an_entry_point(void) { return 0; }
