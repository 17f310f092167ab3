/* A process that knows nothing of msh, for `msh checkpoint` and its tests: it maps a
 * heap, fills it, and then obeys one command per line on stdin, answering one line on
 * stdout:
 *
 *   write FRACTION SEED   rewrite that fraction of the heap's pages (distinct pages
 *                         chosen from SEED), split over the worker threads -> "done N"
 *   map MIB               map and fill a new anonymous region -> "mapped N" (regions made)
 *   unmap                 unmap the newest region made by `map` -> "unmapped N" (left)
 *   sum                   -> "sum HEX" (a checksum of the heap)
 *   quit                  exit 0
 *
 *   ckpt_target [--mib N] [--threads T]      prints "ready PID" when the heap is filled.
 * Between commands every thread is blocked (workers on a barrier, main in read(2)), so
 * the process's memory does not change while it waits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

static uint8_t *heap;
static size_t pages;
static int threads = 2;
static size_t *todo, todo_count;
static uint64_t generation;
static pthread_barrier_t start_line, finish_line;
static void *extra[64];
static size_t extra_len[64], extra_count;

static void die(const char *what) {
    fprintf(stderr, "ckpt_target: %s\n", what);
    exit(1);
}

static void fill_page(size_t p, uint64_t gen) {
    uint64_t *words = (uint64_t *)(heap + p * PAGE), x = (p + 1) * 0x9e3779b97f4a7c15ull ^ gen;
    for (size_t i = 0; i < PAGE / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[i] = x;
    }
}

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    for (;;) {
        pthread_barrier_wait(&start_line);
        for (size_t i = id; i < todo_count; i += (size_t)threads) fill_page(todo[i], generation);
        pthread_barrier_wait(&finish_line);
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else die("usage: ckpt_target [--mib N] [--threads T]");
    }
    if (mib == 0 || threads < 1 || threads > 64) die("--mib must be positive, --threads 1 to 64");
    pages = mib * 256;
    heap = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) die("cannot map the heap");
    for (size_t p = 0; p < pages; p++) fill_page(p, 0);
    todo = malloc(pages * sizeof *todo);
    if (!todo) die("out of memory");
    pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&finish_line, NULL, (unsigned)threads + 1);
    for (int t = 0; t < threads; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, (void *)(size_t)t)) die("cannot start a thread");
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);

    char line[256];
    size_t map_mib;
    while (fgets(line, sizeof line, stdin)) {
        double fraction;
        unsigned long long seed;
        if (sscanf(line, "write %lf %llu", &fraction, &seed) == 2) {
            if (!(fraction > 0 && fraction <= 1)) die("write: fraction must be in (0, 1]");
            /* A partial Fisher-Yates shuffle: distinct pages. */
            size_t count = (size_t)(fraction * (double)pages + 0.5);
            if (count == 0) count = 1;
            for (size_t p = 0; p < pages; p++) todo[p] = p;
            uint64_t x = seed * 0x9e3779b97f4a7c15ull | 1;
            for (size_t i = 0; i < count; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                size_t j = i + x % (pages - i), t = todo[i];
                todo[i] = todo[j];
                todo[j] = t;
            }
            todo_count = count;
            generation = seed;
            pthread_barrier_wait(&start_line);
            pthread_barrier_wait(&finish_line);
            printf("done %zu\n", count);
        } else if (sscanf(line, "map %zu", &map_mib) == 1) {
            if (extra_count == 64 || map_mib == 0) die("map: at most 64 regions of at least 1 MiB");
            size_t len = map_mib << 20;
            uint8_t *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (region == MAP_FAILED) die("cannot map a region");
            for (size_t i = 0; i < len; i += 64) region[i] = (uint8_t)(i >> 6 ^ extra_count);
            extra[extra_count] = region;
            extra_len[extra_count++] = len;
            printf("mapped %zu\n", extra_count);
        } else if (!strncmp(line, "unmap", 5)) {
            if (extra_count == 0) die("unmap: nothing mapped");
            extra_count--;
            munmap(extra[extra_count], extra_len[extra_count]);
            printf("unmapped %zu\n", extra_count);
        } else if (!strncmp(line, "sum", 3)) {
            uint64_t h = 1469598103934665603ull;
            const uint64_t *w = (const uint64_t *)heap;
            for (size_t i = 0; i < pages * PAGE / 8; i++) h = (h ^ w[i]) * 1099511628211ull;
            printf("sum %016llx\n", (unsigned long long)h);
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        } else {
            die("unknown command (write FRACTION SEED, sum, quit)");
        }
        fflush(stdout);
    }
    return 0;
}
