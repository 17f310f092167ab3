/* A program that forks: cannot share the primary's process, so it is refused. */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, NULL, 0);
  puts("forked");
  return 0;
}
