/* A program with thread-local storage of its own (PT_TLS): cannot be hosted. */
#include <stdio.h>
static __thread int calls;
int main(void) {
  calls++;
  printf("calls %d\n", calls);
  return 0;
}
