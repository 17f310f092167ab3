/* Shared by checkpoint.c and checkpoint_restore.c: the image format and the checksum.
 *
 * Image: header, the full heap once, then one record per epoch:
 *   header  "MSHCKPT1", u64 heap_bytes, u64 page_bytes
 *   heap    heap_bytes bytes
 *   epoch   "MSHEPOCH", then (u64 offset, u64 length, length bytes)*, then (~0, 0)
 * All integers little-endian (native x86-64). */
#ifndef MSH_CHECKPOINT_H
#define MSH_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#define CKPT_MAGIC "MSHCKPT1"
#define EPOCH_MAGIC "MSHEPOCH"
#define END_OF_EPOCH UINT64_MAX

struct ckpt_header {
    char magic[8];
    uint64_t heap_bytes;
    uint64_t page_bytes;
};

struct ckpt_extent {
    uint64_t offset;
    uint64_t length;
};

/* A 64-bit checksum of the heap's contents (word-wise FNV-1a-style mixing). */
static inline uint64_t heap_checksum(const void *heap, size_t bytes) {
    const uint64_t *words = heap;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes / 8; i++) {
        hash ^= words[i];
        hash *= 0x100000001b3ull;
        hash ^= hash >> 29;
    }
    return hash;
}

#endif
