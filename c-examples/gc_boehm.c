/* Boehm GC (bdwgc, Debian libgc-dev) in incremental mode with msh as its dirty-bit
 * source.
 *
 * bdwgc's incremental and generational modes need "virtual dirty bits": which heap
 * pages were written since the collector last looked. Its own backends are mprotect
 * + SIGSEGV, /proc soft-dirty, or MANUAL_VDB, where the client reports writes with
 * GC_end_stubborn_change(). Here the client is msh: the heap is preallocated, tracked
 * by an msh dirty tracker, and whenever bdwgc is about to read its dirty bits (the
 * GC_EVENT_MARK_START event, world stopped, just before GC_initiate_gc() calls
 * GC_read_dirty()), every page msh reports is passed to GC_end_stubborn_change().
 * The program itself has no write barrier at all.
 *
 * A graph of nodes is mutated while marking proceeds in small slices; every pointer
 * slot records the id of the node it should reach, and a final walk checks them: a
 * live node freed and reused shows up as a wrong id. `--no-msh` skips the feeding, to
 * show that walk failing.
 *
 *   gc_boehm [--backend NAME] [--no-msh] [--rounds N]
 * Exit status: 0 ok, 1 error, 2 a live object was freed. */
#define _GNU_SOURCE
#include "gc_msh_vdb.h"
#include <gc/gc.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAP_MIB 64
#define SLOTS 4096
#define FANOUT 4

typedef struct node {
    struct node *next[FANOUT];
    uint64_t next_id[FANOUT]; /* the id each pointer should reach */
    uint64_t id;
} node;

static node **table; /* in the GC heap; reachable from this static root */
static uint64_t next_id = 1;

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void die(const char *what) {
    fprintf(stderr, "gc_boehm: %s\n", what);
    exit(1);
}

static node *new_node(void) {
    node *n = GC_MALLOC(sizeof *n);
    if (!n) die("out of GC heap (the heap is preallocated and fixed)");
    n->id = next_id++;
    return n;
}

static void link_to(node *from, int k, node *to) {
    from->next[k] = to;
    from->next_id[k] = to ? to->id : 0;
}

static node *random_reachable(void) {
    node *n = table[next_random() % SLOTS];
    for (int depth = (int)(next_random() % 3); n && depth > 0; depth--) {
        node *next = n->next[next_random() % FANOUT];
        if (!next) break;
        n = next;
    }
    return n;
}

static void mutate(void) {
    uint64_t action = next_random() % 100;
    node *a = random_reachable();
    if (action < 40) {
        node *fresh = new_node();
        if (a) link_to(a, (int)(next_random() % FANOUT), fresh);
        else table[next_random() % SLOTS] = fresh;
    } else if (action < 80) {
        /* Move a pointer into `a` (possibly already marked) and cut its other path. */
        node *b = table[next_random() % SLOTS];
        int k = (int)(next_random() % FANOUT);
        if (a && b && a != b) {
            link_to(a, (int)(next_random() % FANOUT), b->next[k]);
            link_to(b, k, NULL);
        }
    } else if (action < 95) {
        if (a) link_to(a, (int)(next_random() % FANOUT), NULL);
    } else {
        table[next_random() % SLOTS] = a ? a->next[next_random() % FANOUT] : NULL;
    }
}

/* Walks everything reachable from the table; counts pointers reaching the wrong node. */
static size_t corrupt_links(size_t *checked) {
    size_t bad = 0, top = 0, cap = 1 << 20;
    node **stack = malloc(cap * sizeof *stack);
    uint64_t *visited = calloc((next_id + 64) / 64, sizeof *visited);
    if (!stack || !visited) die("out of memory for the walk");
    for (size_t s = 0; s < SLOTS; s++)
        if (table[s]) stack[top++] = table[s];
    *checked = 0;
    while (top > 0) {
        node *n = stack[--top];
        if (n->id == 0 || n->id >= next_id) { bad++; continue; }
        if (visited[n->id / 64] & (1ull << (n->id % 64))) continue;
        visited[n->id / 64] |= 1ull << (n->id % 64);
        (*checked)++;
        for (int k = 0; k < FANOUT; k++) {
            if (!n->next[k]) continue;
            if (n->next[k]->id != n->next_id[k]) { bad++; continue; }
            if (top == cap) die("walk stack overflow");
            stack[top++] = n->next[k];
        }
    }
    free(stack);
    free(visited);
    return bad;
}

int main(int argc, char **argv) {
    uint32_t backend = MSH_DIRTY_AUTO;
    int rounds = 40, feed_msh = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-msh")) feed_msh = 0;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            const char *name = argv[++i];
            for (backend = 0; backend <= MSH_DIRTY_MPROTECT; backend++)
                if (!strcmp(name, msh_dirty_backend_name(backend))) break;
            if (backend > MSH_DIRTY_MPROTECT) die("unknown backend");
        } else die("usage: gc_boehm [--backend NAME] [--no-msh] [--rounds N]");
    }
    if (rounds < 1) die("--rounds must be at least 1");

    /* Keep the heap where msh tracks it (no unmapping of free blocks), and keep the
     * process single-threaded (no marker threads, whose stacks would show up as new
     * mappings). */
    setenv("GC_UNMAP_THRESHOLD", "0", 1);
    setenv("GC_MARKERS", "1", 1);
    gc_msh_vdb_snapshot_maps();
    GC_set_manual_vdb_allowed(1);
    GC_enable_incremental(); /* includes GC_init() */
    GC_set_time_limit(1);    /* mark in slices of ~1 ms: truly incremental */
    if (!GC_expand_hp((size_t)HEAP_MIB << 20)) die("GC_expand_hp failed");
    gc_msh_vdb_start(backend, feed_msh);

    table = GC_MALLOC(SLOTS * sizeof *table);
    if (!table) die("out of GC heap");
    for (size_t i = 0; i < SLOTS; i++) table[i] = new_node();

    size_t bad = 0, checked = 0;
    for (int r = 0; r < rounds && bad == 0; r++) {
        GC_start_incremental_collection();
        for (int step = 0; step < 4000; step++) {
            mutate();
            if (step % 8 == 0) GC_collect_a_little();
        }
        bad = corrupt_links(&checked);
    }
    GC_gcollect();
    if (!bad) bad = corrupt_links(&checked);

    gc_msh_vdb_stats st = gc_msh_vdb_get_stats();
    printf("bdwgc %d.%d.%d incremental manual-vdb backend %s msh_feed %s gc_no %lu mark_starts %zu pages_fed %zu "
           "tracked_ranges %zu heap_resizes %zu nodes_checked %zu bad_links %zu\n",
           GC_VERSION_MAJOR, GC_VERSION_MINOR, GC_VERSION_MICRO, msh_dirty_backend_name(st.backend),
           feed_msh ? "on" : "off", (unsigned long)GC_get_gc_no(), st.feeds, st.pages_fed, st.tracked_ranges,
           st.heap_resizes, checked, bad);
    gc_msh_vdb_stop();
    return bad ? 2 : 0;
}
