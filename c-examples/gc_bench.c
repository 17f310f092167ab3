/* Allocation-heavy workloads for `msh bench gc`: Boehm GC (bdwgc, Debian libgc-dev) in
 * one of three configurations.
 *
 *   stop_the_world     bdwgc's default: every collection marks with the world stopped
 *   bdwgc_incremental  GC_enable_incremental() with bdwgc's own dirty bits (this build
 *                      tries soft-dirty, then mprotect + SIGSEGV; `vdb` says which ran)
 *   msh_incremental    the same, with bdwgc's manual VDB fed by msh (gc_msh_vdb.c)
 *
 * Workloads:
 *   trees      GCBench-style: a long-lived binary tree and array, many short-lived
 *              trees built top-down and bottom-up; between iterations, subtrees of the
 *              long-lived tree are replaced (old objects written)
 *   histogram  map-reduce word count over a large pointerful corpus: per chunk a
 *              local hash table (garbage), merged into a long-lived global table
 *
 * A pause is an interval in which the collector held the world stopped: from
 * GC_EVENT_PRE_STOP_WORLD to GC_EVENT_POST_START_WORLD, extended to GC_EVENT_RECLAIM_END
 * when the collection finished (the reclaim set-up runs in the same call, the mutator
 * still waiting). Incremental mark slices run with the world running and are not
 * pauses. Timestamps are CLOCK_MONOTONIC, taken in the event callback.
 *
 * After the workload, the mutator's cost per first write to a page since the last
 * collection is measured: 2048 live page-sized objects, GC_gcollect(), one write to
 * each (timed), then the same writes again (timed); the difference per page, median
 * of 5. `node_bytes` is the size bdwgc gives a tree node then.
 *
 *   gc_bench --workload trees|histogram --config NAME [--scale N] [--heap-mib N]
 *            [--time-limit-ms N]   (the incremental modes' slice bound, default 10)
 *            [--alloc thread-local|global]   (see ALLOC below; default thread-local)
 * prints one line `gc_bench: {json}`. Exit 1 on an error, 2 when a check fails. */
#define _GNU_SOURCE
/* The real GC_malloc_kind_global: without GC_THREADS gc_inline.h maps it to the
 * thread-local GC_malloc_kind. The program has one thread: no pthread redirection. */
#define GC_THREADS
#define GC_NO_THREAD_REDIRECTS
#include "gc_msh_vdb.h"
#include <gc/gc.h>
#include <gc/gc_inline.h>

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Allocation path. bdwgc's default (GC_MALLOC) takes small objects from per-thread
 * free lists, refilled by GC_generic_malloc_many; in manual-VDB mode bdwgc 8.2.2 would
 * refill them one object at a time and one size class too big, so gc_msh_vdb.c takes
 * the refill over while msh feeds bdwgc (see there). `--alloc global` takes every
 * object from the global free lists (GC_malloc_kind_global) in every configuration. */
static int alloc_global;
#define ALLOC(size) (alloc_global ? GC_malloc_kind_global((size), GC_I_NORMAL) : GC_MALLOC(size))
#define ALLOC_ATOMIC(size) (alloc_global ? GC_malloc_kind_global((size), GC_I_PTRFREE) : GC_MALLOC_ATOMIC(size))

static void die(const char *what) {
    fprintf(stderr, "gc_bench: %s\n", what);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* ---- pauses ------------------------------------------------------------------- */

static double pause_start, pause_total, pause_max;
static size_t pause_count;
static int in_pause, mark_done;

static void end_pause(void) {
    double d = now_s() - pause_start;
    pause_total += d;
    if (d > pause_max) pause_max = d;
    pause_count++;
    in_pause = 0;
}

static void on_event(GC_EventType event) {
    switch (event) {
    case GC_EVENT_PRE_STOP_WORLD:
        if (in_pause) end_pause(); /* a finished collection without reclaim events */
        pause_start = now_s();
        in_pause = 1;
        mark_done = 0;
        break;
    case GC_EVENT_MARK_END: mark_done = 1; break;
    case GC_EVENT_POST_START_WORLD:
        if (in_pause && !mark_done) end_pause();
        break;
    case GC_EVENT_RECLAIM_END:
        if (in_pause) end_pause();
        break;
    default: break;
    }
}

/* ---- trees (after Boehm's GCBench) ------------------------------------------- */

typedef struct tnode {
    struct tnode *left, *right;
    long i, j;
} tnode;

static tnode *new_tnode(tnode *l, tnode *r) {
    tnode *n = ALLOC(sizeof *n);
    if (!n) die("out of memory");
    n->left = l;
    n->right = r;
    return n;
}

static long tree_size(int depth) { return (1L << (depth + 1)) - 1; }

/* Top down: writes into nodes allocated earlier. */
static void populate(int depth, tnode *n) {
    if (depth <= 0) return;
    n->left = new_tnode(NULL, NULL);
    n->right = new_tnode(NULL, NULL);
    populate(depth - 1, n->left);
    populate(depth - 1, n->right);
}

static tnode *make_tree(int depth) {
    if (depth <= 0) return new_tnode(NULL, NULL);
    return new_tnode(make_tree(depth - 1), make_tree(depth - 1));
}

static long count_nodes(const tnode *n) {
    long c = 0;
    while (n) { /* recurse left, loop right */
        c += 1 + count_nodes(n->left);
        n = n->right;
    }
    return c;
}

static uint64_t run_trees(int scale) {
    const int stretch_depth = 16 + scale, long_depth = 14 + scale, min_depth = 4, max_depth = 14 + scale;
    uint64_t checksum = 0;
    tnode *stretch = make_tree(stretch_depth);
    if (count_nodes(stretch) != tree_size(stretch_depth)) exit(2);
    stretch = NULL;

    tnode *long_lived = new_tnode(NULL, NULL);
    populate(long_depth, long_lived);
    size_t array_len = (size_t)250000 << scale;
    double *array = ALLOC_ATOMIC(array_len * sizeof *array);
    if (!array) die("out of memory");
    for (size_t i = 0; i < array_len / 2; i++) array[i] = 1.0 / (double)(i + 1);

    for (int d = min_depth; d <= max_depth; d += 2) {
        long iters = 2 * tree_size(stretch_depth) / tree_size(d);
        for (long i = 0; i < iters; i++) {
            tnode *t = new_tnode(NULL, NULL);
            populate(d, t);
            checksum += (uint64_t)count_nodes(t);
            t = make_tree(d);
            checksum += (uint64_t)count_nodes(t);
        }
        /* Replace subtrees of the long-lived tree: old objects are written. */
        for (int k = 0; k < 64; k++) {
            tnode *n = long_lived;
            for (int level = 0; level < long_depth - 6 && n->left; level++) n = (next_random() & 1) ? n->left : n->right;
            tnode *fresh = make_tree(5);
            if (next_random() & 1) n->left = fresh;
            else n->right = fresh;
        }
    }
    long live = count_nodes(long_lived);
    if (live != tree_size(long_depth) || array[1000] != 1.0 / 1001.0) exit(2);
    return checksum + (uint64_t)live;
}

/* ---- histogram (map-reduce word count) ----------------------------------------- */

typedef struct entry {
    struct entry *next;
    const char *word; /* an interned word: compared by address */
    uint64_t count;
} entry;

typedef struct {
    entry **buckets;
    size_t mask;
} table;

static table new_table(size_t buckets) {
    table t = {ALLOC(buckets * sizeof(entry *)), buckets - 1};
    if (!t.buckets) die("out of memory");
    return t;
}

static size_t hash_ptr(const void *p) { return (size_t)(((uintptr_t)p >> 4) * 0x9e3779b97f4a7c15ull >> 20); }

static void add(table *t, const char *word, uint64_t n) {
    entry **slot = &t->buckets[hash_ptr(word) & t->mask];
    for (entry *e = *slot; e; e = e->next)
        if (e->word == word) {
            e->count += n;
            return;
        }
    entry *e = ALLOC(sizeof *e);
    if (!e) die("out of memory");
    e->word = word;
    e->count = n;
    e->next = *slot;
    *slot = e;
}

static uint64_t run_histogram(int scale) {
    const size_t vocab = 50000, docs = (size_t)4096 << scale, words_per_doc = 1024, chunk = 64, passes = 2;
    const char **words = ALLOC(vocab * sizeof *words);
    if (!words) die("out of memory");
    for (size_t w = 0; w < vocab; w++) {
        char *s = ALLOC_ATOMIC(16);
        if (!s) die("out of memory");
        snprintf(s, 16, "w%zu", w);
        words[w] = s;
    }
    /* The corpus: documents as arrays of pointers to words (Zipf-like skew). */
    const char ***corpus = ALLOC(docs * sizeof *corpus);
    if (!corpus) die("out of memory");
    for (size_t d = 0; d < docs; d++) {
        const char **doc = ALLOC(words_per_doc * sizeof *doc);
        if (!doc) die("out of memory");
        for (size_t i = 0; i < words_per_doc; i++) {
            uint64_t r = next_random();
            size_t w = (r & 3) ? (r >> 8) % 1000 : (r >> 8) % vocab;
            doc[i] = words[w];
        }
        corpus[d] = doc;
    }
    table global = new_table(1 << 16);
    for (size_t pass = 0; pass < passes; pass++)
        for (size_t c = 0; c < docs; c += chunk) {
            table local = new_table(1 << 12); /* map */
            for (size_t d = c; d < c + chunk && d < docs; d++)
                for (size_t i = 0; i < words_per_doc; i++) add(&local, corpus[d][i], 1);
            for (size_t b = 0; b <= local.mask; b++) /* reduce */
                for (entry *e = local.buckets[b]; e; e = e->next) add(&global, e->word, e->count);
        }
    uint64_t total = 0, mix = 0;
    for (size_t b = 0; b <= global.mask; b++)
        for (entry *e = global.buckets[b]; e; e = e->next) {
            total += e->count;
            uint64_t h = 1469598103934665603ull; /* FNV-1a of the word: layout-independent */
            for (const char *c = e->word; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
            mix ^= e->count * h;
        }
    if (total != docs * words_per_doc * passes) exit(2);
    return total ^ (mix << 1);
}

/* ---- first-write cost ------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double first_write_ns(void) {
    enum { OBJECTS = 2048, REPS = 5 };
    void **objects = ALLOC(OBJECTS * sizeof *objects);
    if (!objects) die("out of memory");
    for (int i = 0; i < OBJECTS; i++)
        if (!(objects[i] = ALLOC(3000))) die("out of memory"); /* one per heap block */
    double per_write[REPS];
    for (int r = 0; r < REPS; r++) {
        GC_gcollect();
        double t0 = now_s();
        for (int i = 0; i < OBJECTS; i++) ((volatile uintptr_t *)objects[i])[8] = (uintptr_t)i;
        double t1 = now_s();
        for (int i = 0; i < OBJECTS; i++) ((volatile uintptr_t *)objects[i])[8] = (uintptr_t)i + 1;
        double t2 = now_s();
        per_write[r] = ((t1 - t0) - (t2 - t1)) / OBJECTS * 1e9;
    }
    qsort(per_write, REPS, sizeof per_write[0], cmp_double);
    return per_write[REPS / 2];
}

/* Which dirty-bit mechanism bdwgc's own incremental mode runs on. */
static const char *own_vdb(void) {
    if (GC_incremental_protection_needs() & GC_PROTECTS_POINTER_HEAP) return "mprotect";
    /* Soft-dirty keeps /proc/self/clear_refs open. */
    DIR *fds = opendir("/proc/self/fd");
    if (!fds) return "unknown";
    struct dirent *d;
    const char *found = "unknown";
    while ((d = readdir(fds))) {
        char link[320], target[256];
        snprintf(link, sizeof link, "/proc/self/fd/%s", d->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (strstr(target, "clear_refs")) found = "soft-dirty";
        }
    }
    closedir(fds);
    return found;
}

int main(int argc, char **argv) {
    const char *workload = NULL, *config = NULL;
    int scale = 1, heap_mib = 64, time_limit_ms = 10;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--workload") && i + 1 < argc) workload = argv[++i];
        else if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[++i];
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc) scale = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--heap-mib") && i + 1 < argc) heap_mib = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--time-limit-ms") && i + 1 < argc) time_limit_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--alloc") && i + 1 < argc) {
            const char *path = argv[++i];
            if (!strcmp(path, "global")) alloc_global = 1;
            else if (strcmp(path, "thread-local")) die("--alloc: thread-local or global");
        }
        else die("usage: gc_bench --workload trees|histogram --config stop_the_world|bdwgc_incremental|msh_incremental "
                 "[--scale N] [--heap-mib N] [--time-limit-ms N] [--alloc thread-local|global]");
    }
    if (!workload || !config) die("--workload and --config are required");
    if (strcmp(workload, "trees") && strcmp(workload, "histogram")) die("unknown workload (trees, histogram)");
    if (scale < 0 || scale > 6) die("--scale must be 0 to 6");
    if (heap_mib < 1) die("--heap-mib must be at least 1");
    if (time_limit_ms < 1) die("--time-limit-ms must be at least 1");
    int incremental = 0, msh = 0;
    if (!strcmp(config, "stop_the_world")) {
    } else if (!strcmp(config, "bdwgc_incremental")) incremental = 1;
    else if (!strcmp(config, "msh_incremental")) incremental = msh = 1;
    else die("unknown config (stop_the_world, bdwgc_incremental, msh_incremental)");

    /* The same settings in every configuration: one marker thread, no unmapping of
     * free blocks (msh tracks the heap where it is), the same initial heap. */
    setenv("GC_UNMAP_THRESHOLD", "0", 1);
    setenv("GC_MARKERS", "1", 1);
    const char *vdb = "none";
    if (msh) {
        gc_msh_vdb_snapshot_maps();
        GC_set_manual_vdb_allowed(1);
    }
    if (incremental) GC_enable_incremental(); /* includes GC_init() */
    else GC_init();
    if (incremental && !GC_is_incremental_mode()) die("bdwgc did not enter incremental mode");
    /* Both incremental modes mark in slices of at most this long (bdwgc's default here
     * is unlimited, which makes every collection one world-stopped mark). */
    if (incremental) GC_set_time_limit((unsigned long)time_limit_ms);
    if (!GC_expand_hp((size_t)heap_mib << 20)) die("GC_expand_hp failed");
    GC_set_on_collection_event(on_event);
    if (msh) {
        gc_msh_vdb_start(MSH_DIRTY_AUTO, 1);
        vdb = "manual";
    } else if (incremental) {
        vdb = own_vdb();
    }

    unsigned long gc0 = (unsigned long)GC_get_gc_no();
    double t0 = now_s();
    uint64_t checksum = !strcmp(workload, "trees") ? run_trees(scale) : run_histogram(scale);
    double total = now_s() - t0;
    unsigned long collections = (unsigned long)GC_get_gc_no() - gc0;
    double mean = pause_count ? pause_total / pause_count : 0;
    size_t pauses = pause_count;
    double pause_sum = pause_total, pause_longest = pause_max;
    double fw = first_write_ns();
    /* The bytes bdwgc gives a tree node once the allocation path is warm (past the
     * first refills): the same in every configuration unless a refill is wrong. */
    size_t node_bytes = 0;
    for (int i = 0; i < 4096; i++) {
        void *node = ALLOC(sizeof(tnode));
        if (!node) die("out of memory");
        node_bytes = GC_size(node);
    }

    char backend[64] = "";
    if (msh) {
        gc_msh_vdb_stats st = gc_msh_vdb_get_stats();
        snprintf(backend, sizeof backend, ",\"msh_backend\":\"%s\",\"pages_fed\":%zu", msh_dirty_backend_name(st.backend),
                 st.pages_fed);
    }
    printf("gc_bench: {\"workload\":\"%s\",\"config\":\"%s\",\"vdb\":\"%s\"%s,\"total_s\":%.6f,\"collections\":%lu,"
           "\"pauses\":%zu,\"pause_ms_total\":%.4f,\"pause_ms_mean\":%.4f,\"pause_ms_max\":%.4f,"
           "\"first_write_ns\":%.1f,\"node_bytes\":%zu,\"heap_mib_final\":%.1f,\"time_limit_ms\":%lu,\"alloc\":\"%s\",\"bdwgc\":\"%d.%d.%d\","
           "\"checksum\":%llu}\n",
           workload, config, vdb, backend, total, collections, pauses, pause_sum * 1e3, mean * 1e3, pause_longest * 1e3,
           fw, node_bytes, GC_get_heap_size() / 1048576.0, (unsigned long)GC_get_time_limit(), alloc_global ? "global" : "thread-local", GC_VERSION_MAJOR,
           GC_VERSION_MINOR, GC_VERSION_MICRO, (unsigned long long)checksum);
    if (msh) gc_msh_vdb_stop();
    return 0;
}
