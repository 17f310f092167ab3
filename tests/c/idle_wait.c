/* idle_wait.c: a primary that waits in epoll_wait, epoll_pwait, poll, ppoll and
 * select, for a
 * timeout with nothing ready and then for a pipe a child writes to after 50 ms.
 * Prints one line per wait: `CALL timeout|ready RESULT ELAPSED_MS UNITS`, so a test
 * can check that waiting calls keep their meaning when msh harvests idle time, and
 * that each one harvested: UNITS is what the compute scavengers counted meanwhile
 * (in the COMPUTE_COUNTER file; 0 without one). */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The compute scavengers' shared counter, or a zero when there is none. */
static const volatile uint64_t *units_counter(void) {
  static const uint64_t none = 0;
  const char *path = getenv("COMPUTE_COUNTER");
  if (!path) return &none;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { perror("COMPUTE_COUNTER"); exit(1); }
  void *map = mmap(NULL, sizeof(uint64_t), PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) { perror("mmap"); exit(1); }
  close(fd);
  return map;
}

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
    if (call[1] == 'o') return poll(&p, 1, timeout_ms);
    struct timespec ts = { timeout_ms / 1000, (timeout_ms % 1000) * 1000000L };
    return ppoll(&p, 1, &ts, NULL);
  }
  if (call[0] == 's') {
    /* A pipe nobody writes to is in the set too: it must come back cleared. */
    int never[2];
    if (pipe(never) != 0) { perror("pipe"); exit(1); }
    fd_set read_set;
    FD_ZERO(&read_set);
    FD_SET(fd, &read_set);
    FD_SET(never[0], &read_set);
    int top = fd > never[0] ? fd : never[0];
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    int n = select(top + 1, &read_set, NULL, NULL, &tv);
    if (n == 1 && !FD_ISSET(fd, &read_set)) n = -2;        /* the wrong descriptor */
    if (n >= 0 && FD_ISSET(never[0], &read_set)) n = -3;   /* a set left uncleared */
    if (n == 0 && (tv.tv_sec != 0 || tv.tv_usec != 0)) n = -4; /* time left after a timeout */
    close(never[0]); close(never[1]);
    return n;
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
  const volatile uint64_t *units = units_counter();
  const char *calls[] = { "poll", "ppoll", "select", "epoll_wait", "epoll_pwait" };
  for (int i = 0; i < 5; i++) {
    int quiet[2];
    if (pipe(quiet) != 0) return 1;
    double t0 = now_ms();
    uint64_t u0 = *units;
    int n = wait_with(calls[i], quiet[0], 200);
    printf("%s timeout %d %.0f %llu\n", calls[i], n, now_ms() - t0,
           (unsigned long long)(*units - u0));
    pid_t child;
    int fd = delayed_pipe(&child);
    t0 = now_ms();
    u0 = *units;
    n = wait_with(calls[i], fd, 5000);
    printf("%s ready %d %.0f %llu\n", calls[i], n, now_ms() - t0,
           (unsigned long long)(*units - u0));
    waitpid(child, NULL, 0);
    close(fd); close(quiet[0]); close(quiet[1]);
  }
  return 0;
}
