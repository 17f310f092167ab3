//! A page bitmap that fault handlers set (lock-free, async-signal-safe) and the
//! collector takes from, for the backends that learn of writes one fault at a time.

use super::{Error, Limit, Run};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

pub struct PageBitmap {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl PageBitmap {
    pub fn new(pages: usize) -> PageBitmap {
        let words: Vec<AtomicU64> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        PageBitmap {
            words: words.into_boxed_slice(),
            pages,
        }
    }

    /// Marks page `index` written. Async-signal-safe.
    pub fn set(&self, index: usize) {
        if index < self.pages {
            self.words[index / 64].fetch_or(1 << (index % 64), Ordering::SeqCst);
        }
    }

    /// Marks pages `[first, first + count)` written.
    pub fn set_range(&self, first: usize, count: usize) {
        let end = (first + count).min(self.pages);
        for index in first..end {
            self.set(index);
        }
    }

    /// Clears every bit.
    pub fn clear(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::SeqCst);
        }
    }

    /// Reports set bits from page `from` on, in runs `(first_page, count)`, within
    /// `limit`, clearing exactly the reported bits when `take`. Returns the next set page
    /// when `limit` cut the report short.
    pub fn collect(
        &self,
        from: usize,
        limit: Limit,
        take: bool,
        emit: &mut dyn FnMut(usize, usize),
    ) -> Option<usize> {
        let (mut pages, mut runs) = (0usize, 0usize);
        let mut run: Option<(usize, usize)> = None;
        let mut index = from;
        let mut stopped = None;
        while index < self.pages && stopped.is_none() {
            let word_index = index / 64;
            let word = &self.words[word_index];
            let mut rest = word.load(Ordering::SeqCst) & (!0u64 << (index % 64));
            let mut kept = 0u64;
            while rest != 0 {
                let bit = rest.trailing_zeros() as usize;
                let page = word_index * 64 + bit;
                let extends = matches!(run, Some((first, count)) if first + count == page);
                if pages == limit.pages || (!extends && runs == limit.runs) {
                    stopped = Some(page);
                    break;
                }
                kept |= 1 << bit;
                rest &= rest - 1;
                pages += 1;
                match &mut run {
                    Some((_, count)) if extends => *count += 1,
                    _ => {
                        if let Some((first, count)) = run.take() {
                            emit(first, count);
                        }
                        run = Some((page, 1));
                        runs += 1;
                    }
                }
            }
            if take && kept != 0 {
                word.fetch_and(!kept, Ordering::SeqCst);
            }
            index = (word_index + 1) * 64;
        }
        if let Some((first, count)) = run {
            emit(first, count);
        }
        stopped
    }
}

/// Re-protects a span `(address, bytes)` against writes.
pub type Protect<'a> = &'a mut dyn FnMut(usize, usize) -> Result<(), Error>;

impl PageBitmap {
    /// The collection of the backends that learn of writes by protection faults
    /// (mprotect, userfaultfd): emits the written pages of the range that starts at
    /// address `start` from address `from` on, within `limit`, as runs of addresses;
    /// with `protect` (re-arming) it takes their bits and then re-protects them. That
    /// order matters: a write between the two lands before the caller reads the page,
    /// one after it faults and is marked for the next collection. Returns the address
    /// of the next written page when `limit` cut the report short.
    pub fn collect_protected(
        &self,
        start: usize,
        page: usize,
        from: usize,
        limit: Limit,
        protect: Option<Protect<'_>>,
        emit: &mut dyn FnMut(Run),
    ) -> Result<Option<usize>, Error> {
        let mut runs = Vec::new();
        let next = self.collect(
            (from - start) / page,
            limit,
            protect.is_some(),
            &mut |f, c| runs.push((f, c)),
        );
        if let Some(protect) = protect {
            for (first, count) in rearm_plan(&runs) {
                protect(start + first * page, count * page)?;
            }
        }
        for &(first, count) in &runs {
            emit(Run {
                start: start + first * page,
                pages: count,
            });
        }
        Ok(next.map(|p| start + p * page))
    }
}

/// Runs to re-protect after a collection reported `runs` (sorted `(first, count)`):
/// the runs themselves, or one span covering them all when there are many (one
/// syscall instead of thousands; re-protecting clean pages in between is harmless, and
/// for mprotect it merges the VMAs the writes split).
pub fn rearm_plan(runs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    const MANY: usize = 16;
    match (runs.first(), runs.last()) {
        (Some(&(first, _)), Some(&(last, count))) if runs.len() > MANY => {
            vec![(first, last + count - first)]
        }
        _ => runs.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn collect_all(
        map: &PageBitmap,
        from: usize,
        max: usize,
        take: bool,
    ) -> (Vec<(usize, usize)>, Option<usize>) {
        let mut runs = Vec::new();
        let limit = Limit {
            pages: max,
            runs: usize::MAX,
        };
        let next = map.collect(from, limit, take, &mut |f, c| runs.push((f, c)));
        (runs, next)
    }

    #[test]
    fn rearm_plan_coalesces_many_runs() {
        assert_eq!(rearm_plan(&[(1, 2), (5, 1)]), vec![(1, 2), (5, 1)]);
        let many: Vec<(usize, usize)> = (0..20).map(|i| (i * 10, 2)).collect();
        assert_eq!(rearm_plan(&many), vec![(0, 192)]);
        assert_eq!(rearm_plan(&[]), vec![]);
    }

    #[test]
    fn max_runs_cuts_between_runs() {
        let map = PageBitmap::new(128);
        map.set_range(0, 3);
        map.set_range(10, 70);
        map.set(100);
        let mut runs = Vec::new();
        let limit = Limit {
            pages: usize::MAX,
            runs: 2,
        };
        let next = map.collect(0, limit, true, &mut |f, c| runs.push((f, c)));
        assert_eq!((runs, next), (vec![(0, 3), (10, 70)], Some(100)));
        assert_eq!(collect_all(&map, 0, usize::MAX, false).0, vec![(100, 1)]);
    }

    #[test]
    fn runs_cross_word_boundaries_and_take_clears() {
        let map = PageBitmap::new(200);
        map.set_range(60, 10);
        map.set(150);
        map.set(199);
        map.set(500); // out of range: ignored
        assert_eq!(
            collect_all(&map, 0, usize::MAX, false).0,
            vec![(60, 10), (150, 1), (199, 1)]
        );
        assert_eq!(
            collect_all(&map, 65, usize::MAX, true).0,
            vec![(65, 5), (150, 1), (199, 1)]
        );
        assert_eq!(collect_all(&map, 0, usize::MAX, true).0, vec![(60, 5)]);
        assert_eq!(collect_all(&map, 0, usize::MAX, true).0, vec![]);
    }

    #[test]
    fn max_pages_cuts_and_resumes_exactly() {
        let map = PageBitmap::new(300);
        for page in (0..300).step_by(3) {
            map.set(page);
        }
        let mut seen = Vec::new();
        let mut from = 0;
        loop {
            let (runs, next) = collect_all(&map, from, 7, true);
            assert!(runs.iter().map(|r| r.1).sum::<usize>() <= 7);
            seen.extend(runs.iter().map(|r| r.0));
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(seen, (0..300).step_by(3).collect::<Vec<_>>());
        assert_eq!(collect_all(&map, 0, usize::MAX, false).0, vec![]);
    }

    #[test]
    fn exact_fit_reports_no_resume_point() {
        let map = PageBitmap::new(64);
        map.set_range(0, 4);
        assert_eq!(collect_all(&map, 0, 4, false), (vec![(0, 4)], None));
        map.set(9);
        assert_eq!(collect_all(&map, 0, 4, false), (vec![(0, 4)], Some(9)));
    }
}
