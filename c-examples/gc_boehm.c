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
#include <gc/gc.h>
#include <msh.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAP_MIB 64
#define SLOTS 4096
#define FANOUT 4
#define MAX_REGIONS 256
#define MAX_MAPPINGS 4096

typedef struct node {
    struct node *next[FANOUT];
    uint64_t next_id[FANOUT]; /* the id each pointer should reach */
    uint64_t id;
} node;

static node **table; /* in the GC heap; reachable from this static root */
static uint64_t next_id = 1;
static msh_dirty_tracker *tracker;
static int feed_msh = 1;
static size_t pages_fed, feeds, resizes;
static uint32_t requested_backend;
static uintptr_t known[MAX_MAPPINGS][2]; /* anonymous mappings before bdwgc started */
static size_t known_count;
static msh_dirty_range regions[MAX_REGIONS];
static size_t region_count;
static size_t tracked_heap_size;

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

/* Anonymous private writable mappings, as [start, end) pairs. */
static size_t anon_mappings(uintptr_t (*out)[2], size_t capacity) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) die("cannot read /proc/self/maps");
    char line[512];
    size_t n = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end, inode;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s %*s %*s %lu", &start, &end, perms, &inode) != 4) continue;
        if (strcmp(perms, "rw-p") != 0 || inode != 0 || strstr(line, "[stack]")) continue;
        if (n == capacity) die("too many mappings");
        out[n][0] = start;
        out[n][1] = end;
        n++;
    }
    fclose(maps);
    return n;
}

/* Passes every page msh saw written since the last call to bdwgc's dirty set. */
static void feed_dirty_pages(void) {
    uintptr_t pages[512], cursor = 0;
    size_t n;
    do {
        msh_status s = msh_dirty_collect(tracker, MSH_DIRTY_REARM, pages, 512, &n, &cursor);
        if (s != MSH_OK) {
            /* Continuing would let bdwgc free live objects: stop loudly instead. */
            fprintf(stderr, "gc_boehm: msh_dirty_collect: %s (%s)\n", msh_strerror(s), msh_dirty_last_error());
            abort();
        }
        if (feed_msh)
            for (size_t i = 0; i < n; i++) GC_end_stubborn_change((void *)pages[i]);
        pages_fed += n;
    } while (cursor != 0);
}

static void retrack(void);

/* Called by bdwgc with the world stopped and its lock held. */
static void on_collection_event(GC_EventType event) {
    if (event != GC_EVENT_MARK_START || !tracker) return;
    feeds++;
    feed_dirty_pages();
    if (GC_get_heap_size() != tracked_heap_size) {
        /* The heap grew (bdwgc 8.2 does not always call its heap-resize hook): track
         * the new sections too, and count every page in them as written, since they
         * were used before msh watched them. */
        size_t old_count = region_count;
        resizes++;
        msh_dirty_destroy(tracker);
        tracker = NULL;
        retrack();
        for (size_t r = old_count; r < region_count; r++)
            for (uintptr_t page = regions[r].start; page < regions[r].start + regions[r].len; page += 4096) {
                if (feed_msh) GC_end_stubborn_change((void *)page);
                pages_fed++;
            }
    }
}

/* (Re)creates the tracker over the anonymous mappings holding GC heap that appeared
 * since the program started (bdwgc has no API listing its heap sections). */
static void retrack(void) {
    static uintptr_t now[MAX_MAPPINGS][2];
    size_t count = anon_mappings(now, MAX_MAPPINGS);
    for (size_t i = 0; i < count; i++) {
        /* The parts of this mapping that are neither old nor already tracked. */
        uintptr_t start = now[i][0], end = now[i][1];
        while (start < end) {
            uintptr_t stop = end, skip_to = 0;
            for (size_t j = 0; j < known_count; j++) {
                if (known[j][0] <= start && known[j][1] > start) skip_to = known[j][1] > skip_to ? known[j][1] : skip_to;
                else if (known[j][0] > start && known[j][0] < stop) stop = known[j][0];
            }
            for (size_t j = 0; j < region_count; j++) {
                uintptr_t rs = regions[j].start, re = rs + regions[j].len;
                if (rs <= start && re > start) skip_to = re > skip_to ? re : skip_to;
                else if (rs > start && rs < stop) stop = rs;
            }
            if (skip_to) {
                start = skip_to;
                continue;
            }
            /* Only parts holding GC heap (bdwgc's metadata sits beside it; a thread
             * stack would be wrong to track). Free blocks have no header, so test
             * every page. */
            int holds_heap = 0;
            for (uintptr_t page = start; page < stop && !holds_heap; page += 4096) holds_heap = GC_is_heap_ptr((void *)page);
            if (holds_heap) {
                if (region_count == MAX_REGIONS) die("too many heap sections to track");
                regions[region_count++] = (msh_dirty_range){start, stop - start};
            }
            start = stop;
        }
    }
    if (region_count == 0) die("cannot find the GC heap mappings");
    msh_status s = msh_dirty_create(regions, region_count, requested_backend, &tracker);
    if (s != MSH_OK) {
        fprintf(stderr, "gc_boehm: msh_dirty_create: %s (%s)\n", msh_strerror(s), msh_dirty_last_error());
        abort();
    }
    tracked_heap_size = GC_get_heap_size();
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
    int rounds = 40;
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
    known_count = anon_mappings(known, MAX_MAPPINGS);
    GC_set_manual_vdb_allowed(1);
    GC_enable_incremental(); /* includes GC_init() */
    if (!GC_is_incremental_mode() || !GC_get_manual_vdb_allowed()) die("bdwgc did not enter incremental manual-VDB mode");
    GC_set_time_limit(1); /* mark in slices of ~1 ms: truly incremental */
    if (!GC_expand_hp((size_t)HEAP_MIB << 20)) die("GC_expand_hp failed");
    requested_backend = backend;
    retrack();
    GC_set_on_collection_event(on_collection_event);

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

    msh_dirty_backend used;
    msh_dirty_get_backend(tracker, &used);
    printf("bdwgc %d.%d.%d incremental manual-vdb backend %s msh_feed %s gc_no %lu mark_starts %zu pages_fed %zu "
           "tracked_ranges %zu heap_resizes %zu nodes_checked %zu bad_links %zu\n",
           GC_VERSION_MAJOR, GC_VERSION_MINOR, GC_VERSION_MICRO, msh_dirty_backend_name(used), feed_msh ? "on" : "off",
           (unsigned long)GC_get_gc_no(), feeds, pages_fed, region_count, resizes, checked, bad);
    GC_set_on_collection_event(0);
    msh_dirty_destroy(tracker);
    return bad ? 2 : 0;
}
