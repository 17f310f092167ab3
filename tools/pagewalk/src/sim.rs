//! One simulation: a design in an environment, fed every access of the source.
//!
//! Per access: translate through the synthetic OS (allocating on first touch), look the
//! page up in the L1 dTLB and the STLB, walk on a miss, then send the data access
//! through the caches (where it competes with the page-table entries). A walk plans
//! its steps with the design's table (`crate::designs`) and executes them: each
//! guest-physical entry address is first translated by the host dimension (nested TLB,
//! else a host walk with the host's PWCs), then read through L1/L2/LLC/memory at its
//! host-physical address. Parallel steps cost their slowest member, prefetched steps
//! overlap the walk (ASAP), sequential steps add up.
use crate::assoc::SetAssoc;
use crate::config::MachineConfig;
use crate::designs::{asap, dmt, ecpt, fpt, radix, Design, Env, Pwcs, Step, Table, WalkCtx};
use crate::phys::{PhysMemory, PAGE};
use crate::space::{Area, Mapping, Xlat};
use crate::Pages;
use anyhow::Result;
use msh_profile::sim::cache::Hierarchy;
use serde::Serialize;

/// Where the steps of walks were served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Served {
    /// Page-walk-cache hits (each skips one or more levels).
    pub pwc: u64,
    /// Entries read from the L1 data cache.
    pub l1: u64,
    /// … from L2.
    pub l2: u64,
    /// … from the last-level cache.
    pub llc: u64,
    /// … from memory.
    pub mem: u64,
    /// Guest table pages whose host translation hit the nested TLB.
    pub ntlb: u64,
}

/// Counters of one simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Accesses simulated.
    pub accesses: u64,
    /// TLB misses, each a walk.
    pub walks: u64,
    /// Sum of walk latencies, cycles.
    pub walk_cycles: u64,
    /// Sum of data-access latencies through the caches, cycles.
    pub data_cycles: u64,
    /// Where walk steps were served.
    pub served: Served,
}

struct Dimension {
    mapping: Mapping,
    /// Nested host: the second stage (L1-physical → L0-physical).
    then: Option<Mapping>,
    table: Table,
    pwc: Option<Pwcs>,
}

impl Dimension {
    #[inline]
    fn translate(
        &mut self,
        addr: u64,
        memories: &mut [PhysMemory],
    ) -> Result<(Xlat, Option<Xlat>)> {
        let x = self.mapping.translate(addr, memories)?;
        match &mut self.then {
            None => Ok((x, None)),
            Some(second) => {
                let y = second.translate(x.out, memories)?;
                let out = Xlat {
                    out: y.out,
                    huge: x.huge && y.huge,
                    area: x.area,
                };
                Ok((out, Some(x)))
            }
        }
    }

    /// [`Dimension::translate`]'s output address if it is known without changing anything.
    #[inline]
    fn peek(&self, addr: u64, memories: &[PhysMemory]) -> Option<Xlat> {
        let x = self.mapping.peek(addr, memories)?;
        match &self.then {
            None => Some(x),
            Some(second) => {
                let y = second.peek(x.out, memories)?;
                Some(Xlat {
                    out: y.out,
                    huge: x.huge && y.huge,
                    area: x.area,
                })
            }
        }
    }

    fn plan(
        &mut self,
        addr: u64,
        xlat: Xlat,
        mid: Option<Xlat>,
        memories: &mut [PhysMemory],
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let ctx = WalkCtx {
            xlat,
            mid,
            mapping: &self.mapping,
            pwc: self.pwc.as_mut(),
            memories,
        };
        self.table.plan(addr, ctx, steps)
    }
}

/// What one simulation is given.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The design.
    pub design: Design,
    /// The environment.
    pub env: Env,
    /// Page size policy.
    pub pages: Pages,
    /// Model the TLBs (L1, STLB, nested TLB).
    pub tlb: bool,
    /// Model the page-walk caches.
    pub pwc: bool,
    /// The machine.
    pub machine: MachineConfig,
    /// Seed of the free-list shuffle and the hash functions.
    pub seed: u64,
}

/// Slots of [`Simulator`]'s look-ahead translations (more than the look-ahead distance).
const AHEAD_SLOTS: usize = 32;

/// The slot of `page` in the look-ahead memo: hashed, since the pages of
/// interleaved streams (areas far apart) agree in their low bits.
#[inline]
fn ahead_slot(page: u64) -> usize {
    (page.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - AHEAD_SLOTS.trailing_zeros())) as usize
}

/// The TLB key of `addr`: one entry per page of the smaller of the guest's and the
/// host's page sizes (a splintered 2 MiB guest page over 4 KiB host pages is cached as
/// 4 KiB pages); `huge`: both are 2 MiB.
#[inline]
fn tlb_key(addr: u64, huge: bool) -> u64 {
    if huge {
        (addr >> 21) | 1 << 60
    } else {
        addr >> 12
    }
}

/// A translation computed ahead: the 4 KiB virtual page, its guest translation, the
/// host-physical page and whether both dimensions map it with 2 MiB pages.
#[derive(Clone, Copy)]
struct Ahead {
    page: u64,
    guest: Xlat,
    pa_page: u64,
    huge: bool,
}

/// One design in one environment.
pub struct Simulator {
    memories: Vec<PhysMemory>,
    guest: Dimension,
    host: Option<Dimension>,
    l1_tlb: Option<SetAssoc>,
    stlb: Option<SetAssoc>,
    ntlb: Option<SetAssoc>,
    caches: Hierarchy,
    /// Latency of L1, L2, LLC, memory.
    latency: [u64; 4],
    pwc_latency: u64,
    guest_steps: Vec<Step>,
    host_steps: Vec<Step>,
    /// The last access's 4 KiB virtual page and its translation (an accelerator for
    /// the simulator, not part of the simulated machine: the TLBs are still looked up).
    last: Option<(u64, Xlat, Option<Xlat>, u64, bool)>,
    /// Translations [`Simulator::prefetch`] computed for accesses ahead, by 4 KiB
    /// virtual page (direct-mapped): the same values [`Simulator::access`] would
    /// compute, so that it need not compute them twice.
    ahead: [Option<Ahead>; AHEAD_SLOTS],
    stats: Stats,
}

impl Simulator {
    /// Builds the machine, the physical memories and the (empty) page tables.
    pub fn new(config: &SimConfig, areas: &[Area]) -> Result<Simulator> {
        let m = &config.machine;
        let thp = config.pages == Pages::Thp;
        let gib = |g: u64| g << 30;
        let mut memories = vec![PhysMemory::new(
            "host",
            "host_memory_gib",
            gib(m.host_memory_gib),
            config.seed,
        )];
        if config.env != Env::Native {
            memories.push(PhysMemory::new(
                "guest",
                "guest_memory_gib",
                gib(m.guest_memory_gib),
                config.seed ^ 1,
            ));
        }
        if config.env == Env::Nested {
            memories.push(PhysMemory::new(
                "L2 guest",
                "nested_guest_memory_gib",
                gib(m.nested_guest_memory_gib),
                config.seed ^ 2,
            ));
        }
        let process = memories.len() - 1;
        let pv = match config.design {
            Design::Pvdmt => Some(0),
            Design::Dmt if config.env == Env::Nested => Some(0),
            _ => None,
        };
        let table = |design: Design, memory: usize, pv: Option<usize>| match design {
            Design::Radix => Table::Radix(radix::Radix::new(memory, radix::Mode::Plain)),
            Design::Dmt | Design::Pvdmt => Table::Radix(radix::Radix::new(
                memory,
                radix::Mode::Dmt(dmt::Teas::new(memory, thp, pv)),
            )),
            Design::Ecpt => Table::Ecpt(ecpt::Ecpt::new(memory, m.ecpt_ways as usize, config.seed)),
            Design::Fpt => Table::Fpt(fpt::Fpt::new(memory)),
            Design::Asap => Table::Radix(radix::Radix::new(
                memory,
                radix::Mode::Asap(asap::Runs::new(memory)),
            )),
        };
        let pwc = || config.pwc.then(|| Pwcs::new(&m.pwc));
        let guest = Dimension {
            mapping: Mapping::new(areas, thp, process),
            then: None,
            table: table(config.design, process, pv),
            pwc: pwc(),
        };
        let vm = |size: u64| {
            [Area {
                start: 0,
                end: size,
            }]
        };
        let host = match config.env {
            Env::Native => None,
            Env::Virt => Some(Dimension {
                mapping: Mapping::new(&vm(gib(m.guest_memory_gib)), thp, 0),
                then: None,
                // The host keeps the same design for its own table (pvDMT's host is DMT).
                table: table(config.design, 0, None),
                pwc: pwc(),
            }),
            Env::Nested => {
                let table = match config.design {
                    Design::Radix => Table::Radix(radix::Radix::new(0, radix::Mode::Plain)),
                    _ => Table::NestedDmtHost(dmt::NestedHost::new(
                        gib(m.nested_guest_memory_gib),
                        gib(m.guest_memory_gib),
                        thp,
                        &mut memories[0],
                    )?),
                };
                Some(Dimension {
                    mapping: Mapping::new(&vm(gib(m.nested_guest_memory_gib)), thp, 1),
                    then: Some(Mapping::new(&vm(gib(m.guest_memory_gib)), thp, 0)),
                    table,
                    pwc: pwc(),
                })
            }
        };
        let tlb = |c| config.tlb.then(|| SetAssoc::new(c));
        let l = &m.latency;
        let mut sim = Simulator {
            memories,
            guest,
            host,
            l1_tlb: tlb(m.l1_tlb),
            stlb: tlb(m.stlb),
            ntlb: tlb(m.nested_tlb),
            caches: Hierarchy::new(&m.hierarchy()),
            latency: [l.l1, l.l2, l.llc, l.mem],
            pwc_latency: l.pwc,
            guest_steps: Vec::with_capacity(8),
            host_steps: Vec::with_capacity(8),
            last: None,
            ahead: [None; AHEAD_SLOTS],
            stats: Stats::default(),
        };
        sim.populate()?;
        Ok(sim)
    }

    /// Maps every page of the known areas before the run, as the DMT artifact's
    /// workloads fault their memory in before tracing, and each VM's whole memory in
    /// its host (preallocated guest memory): page tables (and ECPT's elastic tables)
    /// have their steady-state size from the first access.
    fn populate(&mut self) -> Result<()> {
        self.guest.mapping.populate(&mut self.memories)?;
        if let Some(host) = &mut self.host {
            host.mapping.populate(&mut self.memories)?;
            if let Some(second) = &mut host.then {
                second.populate(&mut self.memories)?;
            }
        }
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Asks the host to load what simulating an access to `addr` will read of the
    /// model (the last-level cache's sets of its line and of the page-table entries its
    /// walk would read; the nearer levels' tags are small enough to stay in the host's
    /// caches), for an access a few ahead of the current one: the sets of a large
    /// simulated cache miss the host's caches, and each access depends on the last.
    /// Changes no simulated state, so results do not depend on it.
    #[inline]
    pub fn prefetch(&mut self, addr: u64) {
        let page = addr >> 12;
        if let Some(a) = &self.ahead[ahead_slot(page)] {
            if a.page == page {
                // Translated and prefetched for an earlier access to this page (whose
                // walk, if any, leaves the translation in the TLB): the data line only.
                self.caches
                    .prefetch_last_level(a.pa_page | (addr & (PAGE - 1)));
                return;
            }
        }
        let memories = &self.memories;
        let Some(g) = self.guest.peek(addr, memories) else {
            return;
        };
        let host = |gpa: u64| match &self.host {
            None => Some((gpa, true)),
            Some(host) => host.peek(gpa, memories).map(|x| (x.out, x.huge)),
        };
        let host_physical = |gpa: u64| host(gpa).map(|(pa, _)| pa);
        if let Some((pa, host_huge)) = host(g.out) {
            self.caches.prefetch_last_level(pa);
            if let Some(stlb) = &self.stlb {
                stlb.prefetch(tlb_key(addr, g.huge && host_huge));
            }
            // Only a guest-side memo: a nested guest dimension has no second stage.
            if self.guest.then.is_none() {
                self.ahead[ahead_slot(page)] = Some(Ahead {
                    page,
                    guest: g,
                    pa_page: pa & !(PAGE - 1),
                    huge: g.huge && host_huge,
                });
            }
        }
        self.guest.table.peek_entries(addr, g.huge, |entry| {
            if let Some(pa) = host_physical(entry) {
                self.caches.prefetch_last_level(pa);
            }
        });
    }

    /// Simulates one access.
    #[inline]
    pub fn access(&mut self, addr: u64) -> Result<()> {
        self.stats.accesses += 1;
        let page = addr >> 12;
        let (g, g_mid, pa_page, huge) = match self.last {
            Some((p, g, g_mid, pa_page, huge)) if p == page => (g, g_mid, pa_page, huge),
            _ => match self.ahead[ahead_slot(page)] {
                Some(a) if a.page == page => {
                    self.last = Some((page, a.guest, None, a.pa_page, a.huge));
                    (a.guest, None, a.pa_page, a.huge)
                }
                _ => {
                    let (g, g_mid) = self.guest.translate(addr, &mut self.memories)?;
                    let (pa, huge) = match &mut self.host {
                        None => (g.out, g.huge),
                        Some(host) => {
                            let (h, _) = host.translate(g.out, &mut self.memories)?;
                            (h.out, g.huge && h.huge)
                        }
                    };
                    let pa_page = pa & !(PAGE - 1);
                    self.last = Some((page, g, g_mid, pa_page, huge));
                    (g, g_mid, pa_page, huge)
                }
            },
        };
        let pa = pa_page | (addr & (PAGE - 1));
        let g = Xlat {
            out: (g.out & !(PAGE - 1)) | (addr & (PAGE - 1)),
            ..g
        };
        let key = tlb_key(addr, huge);
        let hit = match (&mut self.l1_tlb, &mut self.stlb) {
            // An L1 miss fills the L1 from the STLB (or the walk).
            (Some(l1), Some(stlb)) => l1.access(key) || stlb.access(key),
            _ => false,
        };
        if !hit {
            self.walk(addr, g, g_mid)?;
        }
        let level = self.caches.access(0, pa, 8);
        self.stats.data_cycles += self.latency[level];
        Ok(())
    }

    fn walk(&mut self, addr: u64, g: Xlat, g_mid: Option<Xlat>) -> Result<()> {
        self.stats.walks += 1;
        let mut steps = std::mem::take(&mut self.guest_steps);
        steps.clear();
        let result = self
            .guest
            .plan(addr, g, g_mid, &mut self.memories, &mut steps)
            .and_then(|()| self.execute(&steps, true));
        self.guest_steps = steps;
        let mut cycles = result?;
        if self.host.is_some() {
            // The data page's guest-physical address takes a host walk of its own.
            cycles += self.host_walk(g.out)?;
        }
        self.stats.walk_cycles += cycles;
        Ok(())
    }

    /// Executes planned steps; `guest`: they are a guest table's (translate them).
    fn execute(&mut self, steps: &[Step], guest: bool) -> Result<u64> {
        let mut time = 0;
        let mut i = 0;
        while i < steps.len() {
            let first = steps[i];
            let mut latency = self.step(first, guest)?;
            i += 1;
            while i < steps.len() && steps[i].has(Step::PARALLEL) {
                latency = latency.max(self.step(steps[i], guest)?);
                i += 1;
            }
            if first.has(Step::PREFETCH) {
                // Issued at the start of the walk: done when both it and the walk so far are.
                time = latency.max(time);
            } else {
                time += latency;
            }
        }
        Ok(time)
    }

    #[inline]
    fn step(&mut self, step: Step, guest: bool) -> Result<u64> {
        if step.has(Step::PWC_HIT) {
            self.stats.served.pwc += 1;
            return Ok(self.pwc_latency);
        }
        let mut cost = 0;
        let mut pa = step.addr;
        if guest && self.host.is_some() && !step.has(Step::HOST_PHYSICAL) {
            let page = step.addr >> 12;
            let cached = match &mut self.ntlb {
                Some(ntlb) => ntlb.access(page),
                None => false,
            };
            if cached {
                self.stats.served.ntlb += 1;
                cost += self.pwc_latency;
            } else {
                cost += self.host_walk(step.addr)?;
            }
            let host = self.host.as_mut().expect("checked above");
            pa = host.translate(step.addr, &mut self.memories)?.0.out;
        }
        Ok(cost + self.read(pa))
    }

    /// Walks the host dimension for a guest-physical address; returns its cycles.
    fn host_walk(&mut self, gpa: u64) -> Result<u64> {
        let mut steps = std::mem::take(&mut self.host_steps);
        steps.clear();
        let host = self.host.as_mut().expect("a host dimension");
        let planned = host
            .translate(gpa, &mut self.memories)
            .and_then(|(x, mid)| host.plan(gpa, x, mid, &mut self.memories, &mut steps));
        let result = planned.and_then(|()| self.execute(&steps, false));
        self.host_steps = steps;
        result
    }

    #[inline]
    fn read(&mut self, pa: u64) -> u64 {
        let level = self.caches.access(0, pa, 8);
        let served = &mut self.stats.served;
        match level {
            0 => served.l1 += 1,
            1 => served.l2 += 1,
            2 => served.llc += 1,
            _ => served.mem += 1,
        }
        self.latency[level.min(3)]
    }
}
