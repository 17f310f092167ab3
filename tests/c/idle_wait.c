/* idle_wait.c: a primary that waits in epoll_wait, epoll_pwait and poll, for a
 * timeout with nothing ready and then for a pipe a child writes to after 50 ms.
 * Prints one line per wait: `CALL timeout|ready RESULT ELAPSED_MS`, so a test can
 * check that waiting calls keep their meaning when msh harvests idle time. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A pipe that a child writes one byte to after 50 ms. */
static int delayed_pipe(pid_t *child) {
  int fds[2];
  if (pipe(fds) != 0) { perror("pipe"); exit(1); }
  *child = fork();
  if (*child == 0) { usleep(50000); if (write(fds[1], "x", 1) != 1) _exit(1); _exit(0); }
  close(fds[1]);
  return fds[0];
}

static int wait_with(const char *call, int fd, int timeout_ms) {
  if (call[0] == 'p') {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, timeout_ms);
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd }, out[4];
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  int n = call[6] == 'p' ? epoll_pwait(ep, out, 4, timeout_ms, NULL) : epoll_wait(ep, out, 4, timeout_ms);
  if (n == 1 && out[0].data.fd != fd) n = -2; /* the wrong descriptor */
  close(ep);
  return n;
}

int main(void) {
  const char *calls[] = { "poll", "epoll_wait", "epoll_pwait" };
  for (int i = 0; i < 3; i++) {
    int quiet[2];
    if (pipe(quiet) != 0) return 1;
    double t0 = now_ms();
    int n = wait_with(calls[i], quiet[0], 200);
    printf("%s timeout %d %.0f\n", calls[i], n, now_ms() - t0);
    pid_t child;
    int fd = delayed_pipe(&child);
    t0 = now_ms();
    n = wait_with(calls[i], fd, 5000);
    printf("%s ready %d %.0f\n", calls[i], n, now_ms() - t0);
    waitpid(child, NULL, 0);
    close(fd); close(quiet[0]); close(quiet[1]);
  }
  return 0;
}
