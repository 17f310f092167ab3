/* Rebuilds the heap from an image written by `checkpoint` and prints its checksum.
 *
 *   checkpoint_restore IMAGE
 *
 * A malformed or truncated image is a one-line error and exit status 1. */
#define _GNU_SOURCE
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *path;

static void die(const char *what, long long at) {
    if (at >= 0) fprintf(stderr, "checkpoint_restore: %s: %s at byte %lld\n", path, what, at);
    else fprintf(stderr, "checkpoint_restore: %s: %s\n", path, what);
    exit(1);
}

static long long position;

/* Reads exactly `len` bytes; returns 0 at a clean end of file before any byte. */
static int read_exact(int fd, void *buf, size_t len, const char *what) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("read failed", position);
        if (n == 0) {
            if (done == 0) return 0;
            die(what, position);
        }
        done += (size_t)n;
    }
    position += (long long)len;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: checkpoint_restore IMAGE\n");
        return 1;
    }
    path = argv[1];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(strerror(errno), -1);
    struct ckpt_header header;
    if (!read_exact(fd, &header, sizeof header, "truncated header") || memcmp(header.magic, CKPT_MAGIC, 8) != 0)
        die("not a msh checkpoint image (bad magic)", 0);
    if (header.page_bytes != 4096 || header.heap_bytes == 0 || header.heap_bytes % header.page_bytes != 0 ||
        header.heap_bytes > (1ull << 40))
        die("implausible heap or page size in the header", 8);
    char *heap = mmap(NULL, header.heap_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (heap == MAP_FAILED) die("cannot map the heap", -1);
    if (!read_exact(fd, heap, header.heap_bytes, "truncated full dump")) die("truncated full dump", position);

    int epochs = 0;
    char magic[8];
    while (read_exact(fd, magic, 8, "truncated epoch magic")) {
        if (memcmp(magic, EPOCH_MAGIC, 8) != 0) die("bad epoch magic", position - 8);
        for (;;) {
            struct ckpt_extent extent;
            if (!read_exact(fd, &extent, sizeof extent, "truncated extent")) die("epoch without an end marker", position);
            if (extent.offset == END_OF_EPOCH) break;
            if (extent.length == 0 || extent.offset % header.page_bytes || extent.length % header.page_bytes ||
                extent.offset > header.heap_bytes || extent.length > header.heap_bytes - extent.offset)
                die("extent outside the heap", position - (long long)sizeof extent);
            if (!read_exact(fd, heap + extent.offset, extent.length, "truncated extent data"))
                die("truncated extent data", position);
        }
        epochs++;
    }
    printf("restored heap_mib %llu epochs %d\n", (unsigned long long)(header.heap_bytes >> 20), epochs);
    printf("checksum %016llx\n", (unsigned long long)heap_checksum(heap, header.heap_bytes));
    munmap(heap, header.heap_bytes);
    close(fd);
    return 0;
}
