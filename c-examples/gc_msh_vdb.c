/* msh as bdwgc's dirty-bit source: see gc_msh_vdb.h. */
#define _GNU_SOURCE
/* The real GC_malloc_kind_global (gc_inline.h maps it to the thread-local
 * GC_malloc_kind without GC_THREADS); no pthread redirection is needed here. */
#define GC_THREADS
#define GC_NO_THREAD_REDIRECTS
#include "gc_msh_vdb.h"

#include <dlfcn.h>
#include <gc/gc.h>
#include <gc/gc_inline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REGIONS 256
#define MAX_MAPPINGS 4096

/* One tracker per batch of heap sections: a heap that grows gets a tracker over the
 * new sections only (re-creating one over the whole heap re-arms every page and took
 * 20-36 ms of a world-stopped pause on a 128 MiB heap). */
static msh_dirty_tracker *trackers[MAX_REGIONS];
static size_t tracker_count;
static int feed_bdwgc = 1;
static uint32_t requested_backend;
static uintptr_t known[MAX_MAPPINGS][2]; /* anonymous mappings before bdwgc started */
static size_t known_count;
static msh_dirty_range regions[MAX_REGIONS];
static size_t region_count;
static size_t tracked_heap_size;
static gc_msh_vdb_stats stats;
static GC_on_collection_event_proc chained;
/* Set while msh feeds bdwgc: GC_generic_malloc_many below takes over. */
static volatile int refill_active;

static void die(const char *what) {
    fprintf(stderr, "gc_msh_vdb: %s\n", what);
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

void gc_msh_vdb_snapshot_maps(void) { known_count = anon_mappings(known, MAX_MAPPINGS); }

/* Passes every page msh saw written since the last call to bdwgc's dirty set. */
static void feed_dirty_pages(void) {
    for (size_t t = 0; t < tracker_count; t++) {
        msh_dirty_tracker *tracker = trackers[t];
        uintptr_t pages[512], cursor = 0;
        size_t n;
        do {
            msh_status s = msh_dirty_collect(tracker, MSH_DIRTY_REARM, pages, 512, &n, &cursor);
            if (s != MSH_OK) {
                /* Continuing would let bdwgc free live objects: stop loudly instead. */
                fprintf(stderr, "gc_msh_vdb: msh_dirty_collect: %s (%s)\n", msh_strerror(s), msh_dirty_last_error());
                abort();
            }
            /* Only heap pages: the tracked mappings also hold bdwgc's own metadata (mark
             * stack, free lists), and a dirty bit for such a page lands in bdwgc's page
             * hash table, where it aliases a heap page and makes it be rescanned. */
            for (size_t i = 0; i < n; i++)
                if (GC_is_heap_ptr((void *)pages[i])) {
                    if (feed_bdwgc) GC_end_stubborn_change((void *)pages[i]);
                    stats.pages_fed++;
                }
        } while (cursor != 0);
    }
}

/* Tracks the anonymous mappings holding GC heap that appeared since the snapshot and
 * are not tracked yet, with one more tracker (bdwgc has no API listing its heap
 * sections). */
static void retrack(void) {
    size_t old_count = region_count;
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
    tracked_heap_size = GC_get_heap_size();
    if (region_count == old_count) return; /* the heap grew inside tracked mappings */
    if (tracker_count == MAX_REGIONS) die("too many trackers");
    msh_dirty_tracker *tracker;
    msh_status s = msh_dirty_create(regions + old_count, region_count - old_count, requested_backend, &tracker);
    if (s != MSH_OK) {
        fprintf(stderr, "gc_msh_vdb: msh_dirty_create: %s (%s)\n", msh_strerror(s), msh_dirty_last_error());
        exit(1);
    }
    trackers[tracker_count++] = tracker;
    stats.tracked_ranges = region_count;
    msh_dirty_get_backend(tracker, &stats.backend);
}

/* Called by bdwgc with its lock held. */
static void on_collection_event(GC_EventType event) {
    if (event == GC_EVENT_MARK_START && tracker_count > 0) {
        stats.feeds++;
        feed_dirty_pages();
        if (GC_get_heap_size() != tracked_heap_size) {
            /* The heap grew (bdwgc 8.2 does not always call its heap-resize hook): track
             * the new sections too, and count every page in them as written, since they
             * were used before msh watched them. */
            size_t old_count = region_count;
            stats.heap_resizes++;
            retrack();
            for (size_t r = old_count; r < region_count; r++)
                for (uintptr_t page = regions[r].start; page < regions[r].start + regions[r].len; page += 4096) {
                    if (feed_bdwgc) GC_end_stubborn_change((void *)page);
                    stats.pages_fed++;
                }
        }
    }
    if (chained) chained(event);
}

/* Thread-local free lists under manual VDB.
 *
 * bdwgc refills a thread's free list with GC_generic_malloc_many. In manual-VDB mode
 * bdwgc 8.2.2 hands out a single object per refill (it would have to report the
 * writes that link a list together), and asks GC_generic_malloc for `lb` bytes where
 * `lb` already includes the extra byte of GC_all_interior_pointers: the extra byte is
 * added twice and every object lands one size class up (a 32-byte node takes 64
 * bytes instead of 48; fixed upstream in bdwgc 8.2.8, commit 03f7708b). The heap holds
 * the same live data on a third more pages, so more pages are dirty, scanned and
 * swept in every collection. msh sees every write, the linking ones included, so
 * while msh feeds bdwgc a refill can hand out a whole list of right-sized objects.
 * The definition here takes the place of libgc's (its internal calls go through the
 * PLT); it forwards to libgc's own whenever msh is not feeding. */
enum { REFILL_MAX = 64, REFILL_BYTES = 4096 };

void GC_generic_malloc_many(size_t lb, int k, void **result) {
    static void (*libgc)(size_t, int, void **);
    if (!refill_active || lb == 0 || lb > REFILL_BYTES / 2) {
        if (!libgc) {
            *(void **)&libgc = dlsym(RTLD_NEXT, "GC_generic_malloc_many");
            if (!libgc) die("cannot find libgc's GC_generic_malloc_many");
        }
        libgc(lb, k, result);
        return;
    }
    /* `lb` is a whole number of granules, the extra byte included: ask for one byte
     * less when bdwgc adds it. */
    size_t request = lb - (GC_get_all_interior_pointers() ? 1 : 0);
    size_t want = REFILL_BYTES / lb;
    if (want > REFILL_MAX) want = REFILL_MAX;
    if (want == 0) want = 1;
    /* On the stack until linked: conservative roots, so a collection triggered by a
     * later allocation here keeps them (a pointer-free object's link is not traced). */
    void *objects[REFILL_MAX];
    size_t n = 0;
    while (n < want) {
        void *op = GC_malloc_kind_global(request, k);
        if (!op) break;
        objects[n++] = op;
    }
    void *list = NULL;
    while (n > 0) {
        void *op = objects[--n];
        *(void **)op = list; /* msh sees this write and reports its page */
        list = op;
    }
    *result = list;
    /* As bdwgc does: the free-list head may itself live in the heap. */
    if (GC_is_heap_ptr(result)) GC_end_stubborn_change(result);
}

void gc_msh_vdb_start(uint32_t backend, int feed) {
    if (!GC_is_incremental_mode() || !GC_get_manual_vdb_allowed()) die("bdwgc is not in incremental manual-VDB mode");
    requested_backend = backend;
    feed_bdwgc = feed;
    retrack();
    chained = GC_get_on_collection_event();
    GC_set_on_collection_event(on_collection_event);
    refill_active = feed;
}

void gc_msh_vdb_stop(void) {
    refill_active = 0;
    GC_set_on_collection_event(chained);
    chained = NULL;
    while (tracker_count > 0) msh_dirty_destroy(trackers[--tracker_count]);
    region_count = 0; /* a later start tracks the heap afresh */
}

gc_msh_vdb_stats gc_msh_vdb_get_stats(void) { return stats; }
