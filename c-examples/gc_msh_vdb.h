/* msh as bdwgc's dirty-bit source (bdwgc's manual-VDB mode), shared by gc_boehm and
 * gc_bench.
 *
 * Call gc_msh_vdb_start() after GC_set_manual_vdb_allowed(1), GC_enable_incremental()
 * and GC_expand_hp(): it tracks the anonymous mappings holding GC heap with an msh
 * tracker and installs a collection-event handler (chaining to any installed before).
 * Whenever bdwgc is about to read its dirty bits (GC_EVENT_MARK_START, world stopped,
 * just before GC_initiate_gc() calls GC_read_dirty()), every page msh reports as
 * written is passed to GC_end_stubborn_change(). When the heap grows, the new sections
 * are tracked too (by one more tracker) and counted as written. The program needs no
 * write barrier. While msh feeds bdwgc, this file's GC_generic_malloc_many takes over
 * the refills of bdwgc's per-thread free lists (see gc_msh_vdb.c: bdwgc 8.2.2 refills
 * them one size class too big in manual-VDB mode).
 *
 * Call gc_msh_vdb_snapshot_maps() before GC_init() (GC_enable_incremental) so the
 * mappings that existed before the collector are never tracked. */
#ifndef GC_MSH_VDB_H
#define GC_MSH_VDB_H

#include <msh.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t feeds;          /* GC_EVENT_MARK_START events handled */
    size_t pages_fed;      /* pages passed to GC_end_stubborn_change */
    size_t tracked_ranges; /* heap sections tracked */
    size_t heap_resizes;   /* times the heap grew under tracking */
    msh_dirty_backend backend;
} gc_msh_vdb_stats;

/* Remembers the anonymous mappings that exist now (before bdwgc maps its heap). */
void gc_msh_vdb_snapshot_maps(void);
/* Starts tracking the GC heap with `backend` (an msh_dirty_backend); `feed` 0 collects
 * but withholds the pages from bdwgc (to show the collector fail without them). Exits
 * with a one-line error when tracking cannot start. */
void gc_msh_vdb_start(uint32_t backend, int feed);
/* Stops tracking and removes the event handler (restoring the previous one). */
void gc_msh_vdb_stop(void);
gc_msh_vdb_stats gc_msh_vdb_get_stats(void);

#endif
