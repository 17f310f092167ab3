/* A pthread program that knows nothing of msh but yields (compiled against msh.h,
 * not linked with libmsh). Worker threads yield in a loop; one blocks in a condition
 * wait meanwhile. Prints a checksum and exits with status 3, which must survive
 * `msh run`. */
#include <msh.h>
#include <pthread.h>
#include <stdio.h>

enum { THREADS = 3, ITERS = 200000 };
static unsigned long sums[THREADS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int released;

static void *worker(void *arg) {
  long id = (long)arg;
  unsigned long sum = 0;
  for (long i = 0; i < ITERS; i++) {
    sum += (unsigned long)i * (id + 1);
    msh_yield();
  }
  sums[id] = sum;
  return NULL;
}

static void *sleeper(void *arg) {
  (void)arg;
  pthread_mutex_lock(&lock);
  while (!released) pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  return NULL;
}

int main(void) {
  pthread_t threads[THREADS], blocked;
  pthread_create(&blocked, NULL, sleeper, NULL);
  for (long i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
  for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
  pthread_mutex_lock(&lock);
  released = 1;
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(blocked, NULL);
  unsigned long total = 0;
  for (int i = 0; i < THREADS; i++) total += sums[i];
  printf("threads: checksum %lu\n", total);
  return 3;
}
