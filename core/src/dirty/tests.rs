//! Behaviour of every backend this kernel supports, on real mappings.

use super::*;
use std::collections::BTreeSet;
use std::vec::Vec;
use std::{format, vec};

/// The backends under test: every one whose self-test passes here. soft-dirty has its
/// own test (it is unavailable on kernels without CONFIG_MEM_SOFT_DIRTY).
fn backends() -> Vec<Backend> {
    let available: Vec<Backend> = Backend::ALL
        .into_iter()
        .filter(|b| b.probe().is_ok())
        .collect();
    // The reference kernel has userfaultfd; mprotect works everywhere.
    assert!(
        available.contains(&Backend::Mprotect),
        "mprotect must always be available"
    );
    available
}

struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    fn new(pages: usize) -> Mapping {
        Self::with_flags(pages, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }

    fn with_flags(pages: usize, flags: i32) -> Mapping {
        let len = pages * page_size();
        // SAFETY: a fresh mapping.
        let addr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Mapping {
            addr: addr as usize,
            len,
        }
    }

    fn page(&self, index: usize) -> usize {
        self.addr + index * page_size()
    }

    fn write(&self, index: usize, value: u8) {
        sys::poke((self.page(index) + 17) as *mut u8, value);
    }

    fn read(&self, index: usize) -> u8 {
        // SAFETY: inside our mapping.
        unsafe { core::ptr::read_volatile((self.page(index) + 17) as *const u8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

fn track(m: &Mapping, backend: Backend) -> Tracker {
    Tracker::new(&[(m.addr, m.len)], Choice::Only(backend))
        .unwrap_or_else(|e| panic!("{backend}: {e}"))
}

fn collected(t: &mut Tracker, rearm: bool) -> BTreeSet<usize> {
    t.collect_pages(rearm)
        .unwrap_or_else(|e| panic!("{}: {e}", t.backend()))
        .into_iter()
        .collect()
}

fn addrs(m: &Mapping, indices: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
    indices.into_iter().map(|i| m.page(i)).collect()
}

/// A deterministic pseudo-random subset of `0..n`.
fn subset(n: usize, seed: u64, one_in: u64) -> Vec<usize> {
    let mut x = seed | 1;
    (0..n)
        .filter(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % one_in == 0
        })
        .collect()
}

#[test]
fn exact_on_populated_and_never_touched_pages() {
    for backend in backends() {
        let m = Mapping::new(512);
        for i in 0..256 {
            m.write(i, 1); // the first half populated, the second never touched
        }
        let mut t = track(&m, backend);
        assert_eq!(t.backend(), backend);
        assert!(
            collected(&mut t, true).is_empty(),
            "{backend}: nothing written yet"
        );
        let first = subset(512, 7, 5);
        assert!(first.iter().any(|&i| i >= 256) && first.iter().any(|&i| i < 256));
        for &i in &first {
            m.write(i, 2);
        }
        // Without re-arm the answer stays; with re-arm it is consumed.
        assert_eq!(
            collected(&mut t, false),
            addrs(&m, first.clone()),
            "{backend}"
        );
        assert_eq!(
            collected(&mut t, true),
            addrs(&m, first.clone()),
            "{backend}"
        );
        assert!(collected(&mut t, true).is_empty(), "{backend}: re-armed");
        let second = subset(512, 99, 9);
        for &i in &second {
            m.write(i, 3);
        }
        assert_eq!(collected(&mut t, true), addrs(&m, second), "{backend}");
        // Reads are not writes.
        let sum: u32 = (0..512).map(|i| m.read(i) as u32).sum();
        assert!(sum > 0);
        assert!(
            collected(&mut t, true).is_empty(),
            "{backend}: reads reported"
        );
        // reset forgets everything written so far.
        m.write(3, 9);
        t.reset().unwrap();
        assert!(collected(&mut t, true).is_empty(), "{backend}: reset");
    }
}

#[test]
fn cursor_and_limits_page_through_several_ranges() {
    let limits = [
        Limit {
            pages: 13,
            runs: usize::MAX,
        },
        Limit {
            pages: usize::MAX,
            runs: 4,
        },
    ];
    for (backend, limit) in backends().into_iter().flat_map(|b| limits.map(|l| (b, l))) {
        let (a, b) = (Mapping::new(300), Mapping::new(100));
        let mut t =
            Tracker::new(&[(b.addr, b.len), (a.addr, a.len)], Choice::Only(backend)).unwrap();
        let (wa, wb) = (subset(300, 3, 3), subset(100, 5, 2));
        wa.iter().for_each(|&i| a.write(i, 1));
        wb.iter().for_each(|&i| b.write(i, 1));
        let mut expected = addrs(&a, wa);
        expected.extend(addrs(&b, wb));
        let mut seen = Vec::new();
        let mut cursor = 0;
        let mut calls = 0;
        loop {
            let (mut pages, mut runs) = (0, 0);
            let next = t
                .collect(cursor, limit, true, &mut |run| {
                    pages += run.pages;
                    runs += 1;
                    seen.extend((0..run.pages).map(|i| run.start + i * page_size()));
                })
                .unwrap();
            assert!(
                pages <= limit.pages && runs <= limit.runs,
                "{backend}: {limit:?} exceeded"
            );
            calls += 1;
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert!(calls > 5);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{backend}: not in address order or repeated"
        );
        assert_eq!(
            seen.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{backend}"
        );
        assert!(collected(&mut t, true).is_empty(), "{backend}");
    }
}

#[test]
fn madvise_dontneed_loses_no_write() {
    for backend in backends() {
        let m = Mapping::new(128);
        (0..128).for_each(|i| m.write(i, 1));
        let mut t = track(&m, backend);
        let before = [1, 2, 3, 40];
        before.iter().for_each(|&i| m.write(i, 2));
        // Zap pages 0..64: some written this epoch, some clean.
        // SAFETY: our mapping.
        assert_eq!(
            unsafe { libc::madvise(m.addr as *mut _, 64 * page_size(), libc::MADV_DONTNEED) },
            0
        );
        let after = [5, 6, 70, 100];
        after.iter().for_each(|&i| m.write(i, 3));
        let got = collected(&mut t, true);
        let mut written = addrs(&m, before);
        written.extend(addrs(&m, after));
        assert!(
            written.is_subset(&got),
            "{backend}: a write was lost: {written:?} vs {got:?}"
        );
        let mut allowed = written.clone();
        allowed.extend(addrs(&m, 0..64)); // zapped pages may count as written
        assert!(
            got.is_subset(&allowed),
            "{backend}: reported a page neither written nor zapped"
        );
        if backend != Backend::Mprotect {
            // userfaultfd sees the zap itself (a content change a checkpointer needs).
            assert_eq!(got, allowed, "{backend}: zapped pages not reported");
        }
        // Next epoch: exact again, including writes to zapped (now empty) pages.
        let next = [7, 8, 90];
        next.iter().for_each(|&i| m.write(i, 4));
        assert_eq!(collected(&mut t, true), addrs(&m, next), "{backend}");
    }
}

#[test]
fn transparent_huge_pages() {
    for backend in backends() {
        let huge = 2 << 20;
        // Over-allocate to carve out a 2 MiB-aligned 8 MiB region.
        let big = Mapping::new((10 * huge) / page_size());
        let start = (big.addr + huge - 1) & !(huge - 1);
        let len = 8 * huge;
        // SAFETY: inside our mapping.
        unsafe { libc::madvise(start as *mut _, len, libc::MADV_HUGEPAGE) };
        for off in (0..len).step_by(page_size()) {
            sys::poke((start + off) as *mut u8, 1);
        }
        if thp_enabled() {
            assert!(
                anon_huge_kib(start) > 0,
                "{backend}: the test region got no huge pages"
            );
        }
        let mut t = Tracker::new(&[(start, len)], Choice::Only(backend)).unwrap();
        let written: BTreeSet<usize> = [0usize, 1, 511, 512, 513, 2047, 4095]
            .iter()
            .map(|&i| start + i * page_size())
            .collect();
        written.iter().for_each(|&p| sys::poke(p as *mut u8, 2));
        assert_eq!(collected(&mut t, true), written, "{backend}");
        assert!(collected(&mut t, true).is_empty(), "{backend}");
        sys::poke((start + 3000 * page_size()) as *mut u8, 3);
        assert_eq!(
            collected(&mut t, true),
            [start + 3000 * page_size()].into_iter().collect(),
            "{backend}"
        );
    }
}

/// Whether THP can back a MADV_HUGEPAGE region here (`always` or `madvise`).
fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| !s.contains("[never]"))
        .unwrap_or(false)
}

/// `AnonHugePages` of the mapping containing `addr`, in KiB.
fn anon_huge_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(mapping) = maps::parse_line(line.as_bytes()) {
            inside = mapping.start <= addr && addr < mapping.end;
        } else if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                return rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
            }
        }
    }
    0
}

#[test]
fn mprotect_out_of_mappings_reports_everything_rather_than_crash() {
    // Alternate written pages until the process runs out of VMAs (vm.max_map_count):
    // the handler must degrade to "the whole range is dirty", never lose a write. In a
    // child process: exhausting the mappings would break concurrent tests.
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if limit > 300_000 {
        return; // would need gigabytes here; the default is 65,530
    }
    let pages = 2 * (limit / 2 + 2000);
    // SAFETY: the child runs the scenario and _exits; the parent only waits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let m = Mapping::new(pages);
        let mut t = track(&m, Backend::Mprotect);
        (0..pages).step_by(2).for_each(|i| m.write(i, 1));
        let got = t.collect_pages(true).unwrap_or_default();
        let all_reported = got.len() == pages;
        m.write(5, 2);
        let exact_again = t
            .collect_pages(true)
            .map(|p| p == vec![m.page(5)])
            .unwrap_or(false);
        // SAFETY: ending the child.
        unsafe { libc::_exit(if all_reported && exact_again { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
}

#[test]
fn several_threads_writing_while_collecting() {
    for backend in backends() {
        let pages = 4096;
        let m = Mapping::new(pages);
        let mut t = track(&m, backend);
        let base = m.addr;
        let writers: Vec<_> = (0..3)
            .map(|w| {
                std::thread::spawn(move || {
                    // Each writer writes every third page, twice over.
                    for round in 0..2u8 {
                        for i in (w..pages).step_by(3) {
                            sys::poke(
                                (base + i * page_size() + round as usize) as *mut u8,
                                round + 1,
                            );
                        }
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        while !writers.iter().all(|h| h.is_finished()) {
            seen.extend(collected(&mut t, true));
        }
        writers.into_iter().for_each(|h| h.join().unwrap());
        seen.extend(collected(&mut t, true));
        assert_eq!(
            seen,
            addrs(&m, 0..pages),
            "{backend}: every page was written"
        );
        assert!(collected(&mut t, true).is_empty(), "{backend}");
        // And the memory holds what the writers wrote.
        for i in 0..pages {
            // SAFETY: inside our mapping.
            assert_eq!(
                unsafe { core::ptr::read_volatile((base + i * page_size() + 1) as *const u8) },
                2
            );
        }
    }
}

#[test]
fn fork_child_is_untracked_and_unharmed() {
    for backend in backends() {
        let m = Mapping::new(64);
        (0..64).for_each(|i| m.write(i, 1));
        let mut t = track(&m, backend);
        m.write(1, 5);
        // SAFETY: the child only writes memory, calls the tracker (which must refuse)
        // and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            (0..64).for_each(|i| m.write(i, 7));
            let ok = (0..64).all(|i| m.read(i) == 7)
                && matches!(t.collect_pages(true), Err(Error::ForkedChild));
            // SAFETY: ending the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waiting for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{backend}: child status {status:#x}"
        );
        m.write(9, 6);
        // The child's writes went to its own copy: only the parent's are reported.
        assert_eq!(collected(&mut t, true), addrs(&m, [1, 9]), "{backend}");
        assert_eq!(m.read(20), 1, "{backend}: the parent's memory changed");
        m.write(20, 2);
        assert_eq!(collected(&mut t, true), addrs(&m, [20]), "{backend}");
    }
}

#[test]
fn unmapped_range_is_an_error() {
    for backend in backends() {
        let m = Mapping::new(64);
        let mut t = track(&m, backend);
        // SAFETY: unmapping part of our own mapping (Mapping::drop unmaps the rest).
        assert_eq!(
            unsafe { libc::munmap(m.page(10) as *mut _, 4 * page_size()) },
            0
        );
        assert!(
            matches!(t.collect_pages(true), Err(Error::RangeChanged { .. })),
            "{backend}"
        );
        assert!(
            matches!(t.reset(), Err(Error::RangeChanged { .. })),
            "{backend}"
        );
    }
}

#[test]
fn remapped_range_is_an_error_for_userfaultfd_backends() {
    // mprotect cannot see a mapping placed over its range (documented in its module).
    for backend in backends().into_iter().filter(|&b| b != Backend::Mprotect) {
        let m = Mapping::new(64);
        let mut t = track(&m, backend);
        // SAFETY: replacing part of our own mapping with a fresh one.
        let fixed = unsafe {
            libc::mmap(
                m.page(8) as *mut _,
                2 * page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(fixed as usize, m.page(8));
        m.write(8, 1);
        assert!(
            matches!(t.collect_pages(true), Err(Error::RangeChanged { .. })),
            "{backend}"
        );
    }
}

#[test]
fn kernel_writes_are_seen_by_userfaultfd() {
    for backend in [Backend::UffdAsync, Backend::UffdSync]
        .into_iter()
        .filter(|b| b.probe().is_ok())
    {
        let m = Mapping::new(16);
        let mut t = track(&m, backend);
        let mut fds = [0; 2];
        // SAFETY: plain pipe and I/O into our own mapping.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::write(fds[1], b"hello".as_ptr().cast(), 5), 5);
            assert_eq!(libc::read(fds[0], m.page(4) as *mut _, 5), 5);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(collected(&mut t, true), addrs(&m, [4]), "{backend}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = Mapping::new(16);
    let p = page_size();
    let err = |ranges: &[(usize, usize)], choice| {
        Tracker::new(ranges, choice).err().map(|e| format!("{e}"))
    };
    assert!(err(&[(m.addr + 1, p)], Choice::Auto)
        .unwrap()
        .contains("page-aligned"));
    assert!(err(&[(m.addr, p + 1)], Choice::Auto)
        .unwrap()
        .contains("page-aligned"));
    assert!(err(&[(m.addr, 0)], Choice::Auto).unwrap().contains("empty"));
    assert!(err(&[], Choice::Auto).unwrap().contains("no ranges"));
    // Past the end of the mapping.
    let past = Tracker::new(&[(m.addr, 1 << 40)], Choice::Auto).err();
    assert!(
        matches!(
            past,
            Some(Error::Mapping {
                problem: MappingProblem::Unmapped | MappingProblem::NotWritable,
                ..
            })
        ),
        "{past:?}"
    );
    let hole = Mapping::new(4);
    // SAFETY: punching a hole in our own mapping.
    unsafe { libc::munmap(hole.page(1) as *mut _, p) };
    assert!(matches!(
        Tracker::new(&[(hole.addr, 4 * p)], Choice::Auto).err(),
        Some(Error::Mapping {
            problem: MappingProblem::Unmapped,
            ..
        })
    ));
    // Shared memory: no backend tracks it.
    let shared = Mapping::with_flags(4, libc::MAP_SHARED | libc::MAP_ANONYMOUS);
    assert!(matches!(
        Tracker::new(&[(shared.addr, shared.len)], Choice::Auto).err(),
        Some(Error::Mapping {
            problem: MappingProblem::Shared,
            ..
        })
    ));
    // Overlap, within one tracker and across two.
    assert!(matches!(
        Tracker::new(&[(m.addr, 4 * p), (m.addr + 2 * p, p)], Choice::Auto).err(),
        Some(Error::Overlap { .. })
    ));
    let first = Tracker::new(&[(m.addr, 8 * p)], Choice::Auto).unwrap();
    assert!(matches!(
        Tracker::new(&[(m.addr + 4 * p, 8 * p)], Choice::Auto).err(),
        Some(Error::Overlap { .. })
    ));
    drop(first);
    let mut again = Tracker::new(&[(m.addr + 4 * p, 8 * p)], Choice::Auto).unwrap();
    assert!(matches!(
        again.collect(1, Limit::NONE, true, &mut |_| {}),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        again.collect(0, Limit { pages: 0, runs: 1 }, true, &mut |_| {}),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn private_file_mapping_falls_back_to_mprotect() {
    let path = std::env::temp_dir().join(format!("msh-dirty-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(8 * page_size() as u64).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a private mapping of our own file.
    let addr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            8 * page_size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    } as usize;
    let _ = std::fs::remove_file(&path);
    let range = [(addr, 8 * page_size())];
    if Backend::UffdAsync.probe().is_ok() {
        let only = Tracker::new(&range, Choice::Only(Backend::UffdAsync)).err();
        assert!(
            matches!(
                only,
                Some(Error::Mapping {
                    problem: MappingProblem::FileBacked,
                    ..
                })
            ),
            "{only:?}"
        );
    }
    let mut t = Tracker::new(&range, Choice::Auto).unwrap();
    assert_eq!(t.backend(), Backend::Mprotect);
    sys::poke((addr + 3 * page_size()) as *mut u8, 1);
    assert_eq!(t.collect_pages(true).unwrap(), vec![addr + 3 * page_size()]);
    drop(t);
    // SAFETY: our mapping.
    unsafe { libc::munmap(addr as *mut _, 8 * page_size()) };
}

#[test]
fn auto_picks_the_best_available_backend() {
    let m = Mapping::new(8);
    let t = Tracker::new(&[(m.addr, m.len)], Choice::Auto).unwrap();
    let best = Backend::ALL
        .into_iter()
        .find(|b| b.probe().is_ok())
        .unwrap();
    assert_eq!(t.backend(), best);
}

#[test]
fn soft_dirty_is_exact_or_unavailable_with_the_reason() {
    match Backend::SoftDirty.probe() {
        Err(why) => assert!(why.reason.contains("bit 55") || why.errno != 0, "{why}"),
        Ok(()) => {
            let m = Mapping::new(32);
            let mut t = track(&m, Backend::SoftDirty);
            [2, 9, 30].iter().for_each(|&i| m.write(i, 1));
            assert_eq!(collected(&mut t, true), addrs(&m, [2, 9, 30]));
        }
    }
}

#[test]
fn mprotect_chains_faults_it_does_not_own() {
    // A fault outside every tracked range must reach the handler installed before us.
    // Run in a child: it installs its own handler, then arms mprotect (which chains).
    // SAFETY: the child uses only async-signal-safe calls after fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        static mut GUARD: usize = 0;
        extern "C" fn prior(_: i32, info: *mut libc::siginfo_t, _: *mut core::ffi::c_void) {
            // SAFETY: the kernel's siginfo; the child is single-threaded.
            unsafe {
                let addr = (*info).si_addr() as usize;
                if addr == GUARD {
                    libc::mprotect(
                        GUARD as *mut _,
                        page_size(),
                        libc::PROT_READ | libc::PROT_WRITE,
                    );
                    return;
                }
                libc::_exit(3);
            }
        }
        // SAFETY: installing a handler in the single-threaded child.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = prior as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSEGV, &action, core::ptr::null_mut());
        }
        let guard = Mapping::new(1);
        let m = Mapping::new(4);
        // Arming re-installs msh's handler over `prior` and chains to it.
        let mut t = track(&m, Backend::Mprotect);
        // SAFETY: protecting our own page, then faulting on it.
        unsafe {
            GUARD = guard.addr;
            libc::mprotect(guard.addr as *mut _, page_size(), libc::PROT_READ);
        }
        sys::poke(guard.addr as *mut u8, 1);
        m.write(2, 1);
        let ok = t
            .collect_pages(true)
            .map(|p| p == vec![m.page(2)])
            .unwrap_or(false);
        // SAFETY: ending the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
}
