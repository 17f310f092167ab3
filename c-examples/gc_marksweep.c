/* A small incremental mark-sweep collector whose card table comes from msh.
 *
 * Marking runs in slices interleaved with the mutator. A mutator that stores a pointer
 * to a white (unmarked) object into a black (already scanned) one would hide it from
 * the marker; instead of a compiler-inserted write barrier, the collector asks msh
 * which heap pages were written since marking began, and in the final stop-the-world
 * step re-scans the marked objects on those pages (as Boehm GC does with its virtual
 * dirty bits). Mark bits live outside the heap, so marking itself dirties nothing.
 *
 * After every sweep, an independent full trace checks that no reachable object was
 * freed. `--no-cards` skips the dirty-page re-scan, to show that check failing.
 *
 *   gc_marksweep [--cycles N] [--backend NAME] [--no-cards]
 * Exit status: 0 ok, 1 error, 2 a live object was freed. */
#define _GNU_SOURCE
#include <msh.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define FIELDS 6
#define OBJECTS (1u << 18) /* 16 MiB heap of 64-byte objects */
#define ROOTS 512
#define PAGE 4096

typedef struct object {
    uint32_t allocated;
    uint32_t tag;
    struct object *field[FIELDS];
    uint64_t payload;
} object;

_Static_assert(sizeof(object) == 64, "objects tile pages exactly");

static object *heap;              /* tracked by msh */
static object *roots[ROOTS];      /* not tracked: re-scanned in the final step */
static uint8_t mark[OBJECTS];     /* side mark bits */
static uint32_t free_list[OBJECTS];
static size_t free_count;
static uint32_t gray[OBJECTS];
static size_t gray_count;
static uint8_t seen[OBJECTS];     /* the verifier's own trace */
static int marking;

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fail_msh(const char *what, msh_status s) {
    fprintf(stderr, "gc_marksweep: %s: %s (%s)\n", what, msh_strerror(s), msh_dirty_last_error());
    exit(1);
}

static size_t index_of(const object *o) { return (size_t)(o - heap); }

static void shade(object *o) {
    if (o && !mark[index_of(o)]) {
        mark[index_of(o)] = 1;
        gray[gray_count++] = (uint32_t)index_of(o);
    }
}

static void scan(object *o) {
    for (int f = 0; f < FIELDS; f++) shade(o->field[f]);
}

/* Marks at most `budget` gray objects; returns 1 when gray is empty. */
static int mark_slice(size_t budget) {
    while (gray_count > 0 && budget-- > 0) scan(&heap[gray[--gray_count]]);
    return gray_count == 0;
}

static object *allocate(void) {
    if (free_count == 0) return NULL;
    object *o = &heap[free_list[--free_count]];
    memset(o, 0, sizeof *o);
    o->allocated = 1;
    o->tag = (uint32_t)next_random();
    if (marking) mark[index_of(o)] = 1; /* allocate black */
    return o;
}

/* A random object reachable from the roots (or NULL). */
static object *reachable(void) {
    object *o = roots[next_random() % ROOTS];
    for (int depth = (int)(next_random() % 4); o && depth > 0; depth--) {
        object *next = o->field[next_random() % FIELDS];
        if (!next) break;
        o = next;
    }
    return o;
}

/* One mutator action. The "move" cases are the classic hazard: a pointer is copied
 * into an object the marker may have finished, and its other path is cut. */
static void mutate(void) {
    uint64_t action = next_random() % 100;
    object *a = reachable();
    if (action < 35) {
        object *o = allocate();
        if (!o) return;
        if (a && next_random() % 2) a->field[next_random() % FIELDS] = o;
        else roots[next_random() % ROOTS] = o;
    } else if (action < 60) {
        object *b = reachable();
        if (a && b) a->field[next_random() % FIELDS] = b;
    } else if (action < 85) {
        /* Move: a->f = r->g; r->g = NULL (r is usually not yet scanned, a may be). */
        size_t r = next_random() % ROOTS;
        int f = (int)(next_random() % FIELDS), g = (int)(next_random() % FIELDS);
        if (a && roots[r] && roots[r] != a) {
            a->field[f] = roots[r]->field[g];
            roots[r]->field[g] = NULL;
        }
    } else if (action < 95) {
        if (a) a->field[next_random() % FIELDS] = NULL;
    } else {
        roots[next_random() % ROOTS] = a ? a->field[next_random() % FIELDS] : NULL;
    }
}

static size_t sweep(void) {
    size_t freed = 0;
    for (size_t i = 0; i < OBJECTS; i++) {
        if (heap[i].allocated && !mark[i]) {
            memset(&heap[i], 0xde, sizeof heap[i]); /* poison */
            heap[i].allocated = 0;
            free_list[free_count++] = (uint32_t)i;
            freed++;
        }
    }
    return freed;
}

/* Independent trace from the roots: the number of reachable objects that were freed. */
static size_t live_objects_freed(void) {
    size_t bad = 0, top = 0;
    memset(seen, 0, sizeof seen);
    for (size_t r = 0; r < ROOTS; r++)
        if (roots[r] && !seen[index_of(roots[r])]) seen[index_of(roots[r])] = 1, gray[top++] = (uint32_t)index_of(roots[r]);
    while (top > 0) {
        object *o = &heap[gray[--top]];
        if (!o->allocated) {
            bad++;
            continue; /* its fields are poison */
        }
        for (int f = 0; f < FIELDS; f++) {
            object *c = o->field[f];
            if (c && !seen[index_of(c)]) seen[index_of(c)] = 1, gray[top++] = (uint32_t)index_of(c);
        }
    }
    return bad;
}

int main(int argc, char **argv) {
    int cycles = 30, use_cards = 1;
    uint32_t backend = MSH_DIRTY_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cycles") && i + 1 < argc) cycles = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-cards")) use_cards = 0;
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            const char *name = argv[++i];
            for (backend = 0; backend <= MSH_DIRTY_MPROTECT; backend++)
                if (!strcmp(name, msh_dirty_backend_name(backend))) break;
            if (backend > MSH_DIRTY_MPROTECT) {
                fprintf(stderr, "gc_marksweep: unknown backend %s\n", name);
                return 1;
            }
        } else {
            fprintf(stderr, "usage: gc_marksweep [--cycles N] [--backend NAME] [--no-cards]\n");
            return 1;
        }
    }
    if (cycles < 1) {
        fprintf(stderr, "gc_marksweep: --cycles must be at least 1\n");
        return 1;
    }
    size_t heap_bytes = OBJECTS * sizeof(object);
    heap = mmap(NULL, heap_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) {
        perror("gc_marksweep: mmap");
        return 1;
    }
    for (size_t i = 0; i < OBJECTS; i++) free_list[free_count++] = (uint32_t)(OBJECTS - 1 - i);

    msh_dirty_range range = {(uintptr_t)heap, heap_bytes};
    msh_dirty_tracker *tracker;
    msh_status s = msh_dirty_create(&range, 1, backend, &tracker);
    if (s != MSH_OK) fail_msh("starting dirty tracking", s);
    msh_dirty_backend used;
    msh_dirty_get_backend(tracker, &used);

    /* Warm up: build a live graph. */
    for (int i = 0; i < 200000; i++) mutate();

    size_t total_freed = 0, total_cards = 0, total_rescanned = 0, violations = 0;
    for (int c = 0; c < cycles; c++) {
        /* Begin marking: clear marks, arm the card table, shade the roots. */
        memset(mark, 0, sizeof mark);
        gray_count = 0;
        if ((s = msh_dirty_reset(tracker)) != MSH_OK) fail_msh("arming", s);
        marking = 1;
        for (size_t r = 0; r < ROOTS; r++) shade(roots[r]);
        /* Concurrent phase: marking slices interleaved with the mutator. */
        while (!mark_slice(64))
            for (int m = 0; m < 48; m++) mutate();
        for (int m = 0; m < 2000; m++) mutate();
        /* Final step (the mutator is stopped): roots, then marked objects on dirty pages. */
        for (size_t r = 0; r < ROOTS; r++) shade(roots[r]);
        if (use_cards) {
            uintptr_t pages[512], cursor = 0;
            size_t n;
            do {
                if ((s = msh_dirty_collect(tracker, 0, pages, 512, &n, &cursor)) != MSH_OK) fail_msh("collecting", s);
                total_cards += n;
                for (size_t p = 0; p < n; p++) {
                    object *first = (object *)pages[p];
                    for (size_t k = 0; k < PAGE / sizeof(object); k++)
                        if (first[k].allocated && mark[index_of(&first[k])]) scan(&first[k]), total_rescanned++;
                }
            } while (cursor != 0);
        }
        mark_slice(SIZE_MAX);
        marking = 0;
        total_freed += sweep();
        violations += live_objects_freed();
        if (violations) break;
    }
    printf("backend %s cycles %d cards %s freed %zu dirty_pages %zu rescanned %zu live_objects_freed %zu\n",
           msh_dirty_backend_name(used), cycles, use_cards ? "on" : "off", total_freed, total_cards, total_rescanned,
           violations);
    msh_dirty_destroy(tracker);
    munmap(heap, heap_bytes);
    return violations ? 2 : 0;
}
