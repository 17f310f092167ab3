/* An incremental checkpointer on msh dirty-page tracking.
 *
 * The process builds a large heap, writes it to IMAGE once (a full dump), then runs
 * epochs: it dirties a fraction of the heap, and the checkpoint of each epoch writes
 * only the pages msh reports as written since the previous one. `checkpoint_restore`
 * rebuilds the heap from IMAGE; both print the heap's checksum, which must match.
 *
 *   checkpoint IMAGE [--heap-mib N] [--epochs E] [--fraction F] [--backend NAME]
 *
 * The image is written to IMAGE.tmp and renamed when complete: never a partial IMAGE. */
#define _GNU_SOURCE
#include "checkpoint.h"
#include <msh.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static const char *image_path;
static char tmp_path[4096];

static void die(const char *what) {
    fprintf(stderr, "checkpoint: %s\n", what);
    if (tmp_path[0]) unlink(tmp_path);
    exit(1);
}

static void die_msh(const char *what, msh_status status) {
    fprintf(stderr, "checkpoint: %s: %s (%s)\n", what, msh_strerror(status), msh_dirty_last_error());
    if (tmp_path[0]) unlink(tmp_path);
    exit(1);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("write to the image failed");
        p += n;
        len -= (size_t)n;
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Writes the pages written since the last epoch: one record, extents as runs. */
static size_t checkpoint_epoch(int fd, msh_dirty_tracker *tracker, const char *heap) {
    enum { BATCH = 256 };
    msh_dirty_range runs[BATCH];
    size_t count, pages = 0;
    uintptr_t cursor = 0;
    write_all(fd, EPOCH_MAGIC, 8);
    do {
        msh_status s = msh_dirty_collect_ranges(tracker, MSH_DIRTY_REARM, runs, BATCH, &count, &cursor);
        if (s != MSH_OK) die_msh("collecting dirty pages", s);
        for (size_t i = 0; i < count; i++) {
            struct ckpt_extent extent = {runs[i].start - (uintptr_t)heap, runs[i].len};
            struct iovec iov[2] = {{&extent, sizeof extent}, {(void *)runs[i].start, runs[i].len}};
            size_t want = iov[0].iov_len + iov[1].iov_len;
            ssize_t n = writev(fd, iov, 2);
            if (n < 0 || (size_t)n != want) {
                /* A short writev: finish with plain writes. */
                size_t done = n < 0 ? 0 : (size_t)n;
                if (n < 0 && errno != EINTR) die("write to the image failed");
                if (done < sizeof extent) {
                    write_all(fd, (char *)&extent + done, sizeof extent - done);
                    done = sizeof extent;
                }
                write_all(fd, (char *)runs[i].start + (done - sizeof extent), runs[i].len - (done - sizeof extent));
            }
            pages += runs[i].len / 4096;
        }
    } while (cursor != 0);
    struct ckpt_extent end = {END_OF_EPOCH, 0};
    write_all(fd, &end, sizeof end);
    return pages;
}

int main(int argc, char **argv) {
    size_t heap_mib = 1024;
    int epochs = 5;
    double fraction = 0.01;
    uint32_t backend = MSH_DIRTY_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--heap-mib") && i + 1 < argc) heap_mib = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--fraction") && i + 1 < argc) fraction = atof(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            const char *name = argv[++i];
            for (backend = 0; backend <= MSH_DIRTY_MPROTECT; backend++)
                if (!strcmp(name, msh_dirty_backend_name(backend))) break;
            if (backend > MSH_DIRTY_MPROTECT) die("unknown backend (auto, uffd-async, soft-dirty, uffd-sync, mprotect)");
        } else if (argv[i][0] != '-' && !image_path) image_path = argv[i];
        else die("usage: checkpoint IMAGE [--heap-mib N] [--epochs E] [--fraction F] [--backend NAME]");
    }
    if (!image_path) die("usage: checkpoint IMAGE [--heap-mib N] [--epochs E] [--fraction F] [--backend NAME]");
    if (heap_mib == 0 || epochs < 1 || epochs > 10000 || !(fraction > 0 && fraction <= 1))
        die("--heap-mib must be >= 1, --epochs in 1..10000, --fraction in (0, 1]");

    size_t heap_bytes = heap_mib << 20, page = 4096, pages = heap_bytes / page;
    char *heap = mmap(NULL, heap_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (heap == MAP_FAILED) die("cannot map the heap");
    for (size_t i = 0; i < heap_bytes / 8; i++) ((uint64_t *)heap)[i] = i * 0x9e3779b97f4a7c15ull;

    msh_dirty_range range = {(uintptr_t)heap, heap_bytes};
    msh_dirty_tracker *tracker;
    msh_status s = msh_dirty_create(&range, 1, backend, &tracker);
    if (s != MSH_OK) die_msh("starting dirty tracking", s);
    msh_dirty_backend used;
    msh_dirty_get_backend(tracker, &used);

    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", image_path);
    int fd = open(tmp_path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        tmp_path[0] = 0;
        die("cannot create the image");
    }

    /* Epoch 0: the full dump. */
    double t0 = now_ms();
    struct ckpt_header header = {CKPT_MAGIC, heap_bytes, page};
    write_all(fd, &header, sizeof header);
    write_all(fd, heap, heap_bytes);
    double full_ms = now_ms() - t0;

    double *epoch_ms = calloc((size_t)epochs, sizeof *epoch_ms);
    size_t dirty_pages_total = 0;
    for (int e = 0; e < epochs; e++) {
        /* The program runs: scattered writes to `fraction` of the pages. */
        size_t writes = (size_t)(pages * fraction);
        for (size_t w = 0; w < writes; w++) {
            size_t p = next_random() % pages, off = (next_random() % (page / 8)) * 8;
            *(uint64_t *)(heap + p * page + off) = next_random();
        }
        t0 = now_ms();
        dirty_pages_total += checkpoint_epoch(fd, tracker, heap);
        epoch_ms[e] = now_ms() - t0;
    }
    if (close(fd) != 0) die("closing the image failed");
    if (rename(tmp_path, image_path) != 0) die("cannot rename the image into place");
    tmp_path[0] = 0;

    qsort(epoch_ms, (size_t)epochs, sizeof *epoch_ms, compare_double);
    double median = epochs % 2 ? epoch_ms[epochs / 2] : (epoch_ms[epochs / 2 - 1] + epoch_ms[epochs / 2]) / 2;
    printf("backend %s heap_mib %zu epochs %d fraction %.4f dirty_pages_per_epoch %zu\n",
           msh_dirty_backend_name(used), heap_mib, epochs, fraction, dirty_pages_total / (size_t)epochs);
    printf("full_dump_ms %.2f epoch_ms_median %.3f epoch_over_full %.4f\n", full_ms, median, median / full_ms);
    printf("checksum %016llx\n", (unsigned long long)heap_checksum(heap, heap_bytes));
    msh_dirty_destroy(tracker);
    free(epoch_ms);
    munmap(heap, heap_bytes);
    return 0;
}
