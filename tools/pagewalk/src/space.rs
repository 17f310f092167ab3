//! The synthetic OS's view of one address space: its areas (VMAs) and the frame each
//! page maps to, allocated on first touch. A [`Mapping`] maps the addresses of one
//! space (a process's virtual addresses, or a guest's physical ones) into a physical
//! memory; where the page-table entries live is the page table's business
//! (`crate::designs`).
//!
//! Areas come either from the source (the synthetic generators know theirs) or, for
//! traces, are inferred online: each 1 GiB-aligned chunk an access touches becomes an
//! area of 1 GiB (so large heaps get TEAs, ≤ 16 of them, as DMT's kernel would give a
//! large VMA). THP maps the 2 MiB-aligned part of every area with 2 MiB pages.
use crate::phys::{PhysMemory, HUGE, PAGE};
use anyhow::{bail, Result};

/// Areas smaller than this get no TEA (DMT's threshold).
pub(crate) const TEA_MIN_AREA: u64 = 64 << 20;
/// At most this many TEAs per address space (DMT's register count).
pub(crate) const MAX_TEAS: usize = 16;
/// Areas inferred from a trace are the 1 GiB-aligned chunks it touches.
pub(crate) const INFERRED_AREA: u64 = 1 << 30;

/// A virtual memory area: `[start, end)`, page-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Area {
    /// The 2 MiB-aligned part, mapped with 2 MiB pages under THP.
    pub(crate) fn huge_range(&self) -> (u64, u64) {
        (self.start.next_multiple_of(HUGE), self.end / HUGE * HUGE)
    }
}

/// The result of translating one address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Xlat {
    /// The output address (same page offset).
    pub(crate) out: u64,
    /// Mapped by a 2 MiB page.
    pub(crate) huge: bool,
    /// Index of the area in [`Mapping::areas`].
    pub(crate) area: usize,
}

struct AreaState {
    area: Area,
    huge: (u64, u64),
    /// Frame + 1 per 4 KiB page (0: not yet touched), by page index in the area.
    small: SparseMap,
    /// Frame + 1 per 2 MiB page, by 2 MiB index from the huge range's start.
    large: SparseMap,
    /// Populated up front: the first reserved 4 KiB slot and 2 MiB chunk; frames are
    /// then computed, not stored.
    populated: Option<(u64, u64)>,
}

/// One address space's areas and page→frame mapping into a physical memory.
pub(crate) struct Mapping {
    areas: Vec<AreaState>,
    last: usize,
    infer: bool,
    thp: bool,
    pages: u64,
    /// Index of the physical memory data pages come from.
    pub(crate) memory: usize,
}

impl Mapping {
    /// `areas` empty: infer them online (1 GiB chunks).
    pub(crate) fn new(areas: &[Area], thp: bool, memory: usize) -> Mapping {
        let mut mapping = Mapping {
            areas: Vec::new(),
            last: 0,
            infer: areas.is_empty(),
            thp,
            pages: 0,
            memory,
        };
        for &area in areas {
            mapping.add(area);
        }
        mapping
    }

    fn add(&mut self, area: Area) -> usize {
        let huge = if self.thp { area.huge_range() } else { (0, 0) };
        self.areas.push(AreaState {
            area,
            huge,
            small: SparseMap::default(),
            large: SparseMap::default(),
            populated: None,
        });
        self.areas.len() - 1
    }

    pub(crate) fn area(&self, index: usize) -> Area {
        self.areas[index].area
    }

    /// The area holding `addr`, creating it when areas are inferred.
    #[inline]
    pub(crate) fn area_of(&mut self, addr: u64) -> Result<usize> {
        if let Some(a) = self.areas.get(self.last) {
            if a.area.start <= addr && addr < a.area.end {
                return Ok(self.last);
            }
        }
        let found = self
            .areas
            .iter()
            .position(|a| a.area.start <= addr && addr < a.area.end);
        let index = match found {
            Some(index) => index,
            None if self.infer => {
                let start = addr / INFERRED_AREA * INFERRED_AREA;
                self.add(Area {
                    start,
                    end: start + INFERRED_AREA,
                })
            }
            None => bail!("address {addr:#x} is outside every area of the address space"),
        };
        self.last = index;
        Ok(index)
    }

    /// Pages mapped so far (of either size).
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Maps every page of every known area now, in order, as a program that faults its
    /// memory in before its main phase: the frames are those first-touch allocation in
    /// address order would give, reserved at once and computed on use (no map to read).
    pub(crate) fn populate(&mut self, memories: &mut [PhysMemory]) -> Result<()> {
        let memory = &mut memories[self.memory];
        for state in &mut self.areas {
            let (lo, hi) = state.huge;
            let a = state.area;
            let (small, large) = if hi > lo {
                ((lo - a.start + a.end - hi) / PAGE, (hi - lo) / HUGE)
            } else {
                ((a.end - a.start) / PAGE, 0)
            };
            state.populated = Some((memory.reserve_pages(small)?, memory.reserve_chunks(large)?));
            self.pages += small + large;
        }
        Ok(())
    }

    /// Translates `addr`, allocating its frame on first touch.
    #[inline]
    pub(crate) fn translate(&mut self, addr: u64, memories: &mut [PhysMemory]) -> Result<Xlat> {
        let area = self.area_of(addr)?;
        if let Some(x) = self.translate_populated(area, addr, memories) {
            return Ok(x);
        }
        let memory = &mut memories[self.memory];
        let pages = &mut self.pages;
        let state = &mut self.areas[area];
        let (lo, hi) = state.huge;
        if lo <= addr && addr < hi {
            let frame = state.large.get_or_insert((addr - lo) / HUGE, || {
                *pages += 1;
                memory.alloc_huge()
            })?;
            Ok(Xlat {
                out: frame + addr % HUGE,
                huge: true,
                area,
            })
        } else {
            let frame = state
                .small
                .get_or_insert((addr - state.area.start) / PAGE, || {
                    *pages += 1;
                    memory.alloc_page()
                })?;
            Ok(Xlat {
                out: frame + addr % PAGE,
                huge: false,
                area,
            })
        }
    }
}

impl Mapping {
    /// The translation of `addr` in the populated `area` (computed, nothing stored);
    /// `None` if the area is allocated on first touch instead.
    #[inline]
    fn translate_populated(&self, area: usize, addr: u64, memories: &[PhysMemory]) -> Option<Xlat> {
        let state = &self.areas[area];
        let (small, large) = state.populated?;
        let memory = &memories[self.memory];
        let (lo, hi) = state.huge;
        Some(if lo <= addr && addr < hi {
            Xlat {
                out: memory.chunk_at(large + (addr - lo) / HUGE) + addr % HUGE,
                huge: true,
                area,
            }
        } else {
            let index = if hi > lo && addr >= hi {
                (lo - state.area.start + addr - hi) / PAGE
            } else {
                (addr - state.area.start) / PAGE
            };
            Xlat {
                out: memory.page_at(small + index) + addr % PAGE,
                huge: false,
                area,
            }
        })
    }

    /// What [`Mapping::translate`] would return for `addr` if that changes nothing:
    /// `None` when the address is in no area yet or its page is still untouched. For
    /// looking ahead (host prefetches); the simulated state is not touched.
    #[inline]
    pub(crate) fn peek(&self, addr: u64, memories: &[PhysMemory]) -> Option<Xlat> {
        let inside = |a: &AreaState| a.area.start <= addr && addr < a.area.end;
        let area = match self.areas.get(self.last) {
            Some(a) if inside(a) => self.last,
            _ => self.areas.iter().position(inside)?,
        };
        if let Some(x) = self.translate_populated(area, addr, memories) {
            return Some(x);
        }
        let state = &self.areas[area];
        let (lo, hi) = state.huge;
        Some(if lo <= addr && addr < hi {
            Xlat {
                out: state.large.get((addr - lo) / HUGE)? + addr % HUGE,
                huge: true,
                area,
            }
        } else {
            Xlat {
                out: state.small.get((addr - state.area.start) / PAGE)? + addr % PAGE,
                huge: false,
                area,
            }
        })
    }
}

/// A sparse map from a small integer key to a page-aligned physical address, as a
/// two-level array of frame numbers (so memory grows with the keys touched, 4 bytes a
/// page, and lookups never hash).
#[derive(Default)]
pub(crate) struct SparseMap {
    top: Vec<Option<Box<[u32; 512]>>>,
}

impl SparseMap {
    /// The address stored for `key`, if any.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u64> {
        let leaf = self.top.get((key >> 9) as usize)?.as_ref()?;
        match leaf[(key & 511) as usize] {
            0 => None,
            stored => Some((stored as u64 - 1) * PAGE),
        }
    }

    /// The address for `key`, made by `make` on first use.
    #[inline]
    pub(crate) fn get_or_insert(
        &mut self,
        key: u64,
        make: impl FnOnce() -> Result<u64>,
    ) -> Result<u64> {
        let (hi, lo) = ((key >> 9) as usize, (key & 511) as usize);
        if hi >= self.top.len() {
            self.top.resize_with(hi + 1, || None);
        }
        let leaf = self.top[hi].get_or_insert_with(|| Box::new([0; 512]));
        match leaf[lo] {
            0 => {
                let value = make()?;
                debug_assert!(value % PAGE == 0 && value / PAGE < u32::MAX as u64);
                leaf[lo] = (value / PAGE) as u32 + 1;
                Ok(value)
            }
            stored => Ok((stored as u64 - 1) * PAGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Vec<PhysMemory> {
        vec![PhysMemory::new("host", "host_memory_gib", 1 << 30, 3)]
    }

    #[test]
    fn first_touch_allocates_once() {
        let mut mem = memory();
        let area = Area {
            start: 1 << 30,
            end: (1 << 30) + (64 << 20),
        };
        let mut m = Mapping::new(&[area], false, 0);
        let a = m.translate((1 << 30) + 0x1234, &mut mem).unwrap();
        let b = m.translate((1 << 30) + 0x1ff8, &mut mem).unwrap();
        assert_eq!(a.out & !0xfff, b.out & !0xfff);
        assert_eq!(a.out & 0xfff, 0x234);
        let c = m.translate((1 << 30) + 0x2000, &mut mem).unwrap();
        assert_ne!(c.out & !0xfff, a.out & !0xfff);
        assert!(!a.huge);
        assert!(m.translate(5, &mut mem).is_err(), "outside every area");
    }

    #[test]
    fn thp_maps_the_aligned_middle_with_2m_pages() {
        let mut mem = memory();
        let area = Area {
            start: (2 << 20) - PAGE,
            end: (8 << 20) + PAGE,
        };
        let mut m = Mapping::new(&[area], true, 0);
        let head = m.translate(area.start, &mut mem).unwrap();
        let mid = m.translate(3 << 20, &mut mem).unwrap();
        let tail = m.translate(8 << 20, &mut mem).unwrap();
        assert!(!head.huge && mid.huge && !tail.huge);
        assert_eq!(mid.out % HUGE, 1 << 20);
    }

    #[test]
    fn areas_are_inferred_by_1g_chunks() {
        let mut mem = memory();
        let mut m = Mapping::new(&[], false, 0);
        let x = m.translate(0x7f12_3456_7000, &mut mem).unwrap();
        assert_eq!(m.area(x.area).start, 0x7f12_0000_0000 & !((1 << 30) - 1));
        assert_eq!(m.area(x.area).end - m.area(x.area).start, INFERRED_AREA);
    }
}
