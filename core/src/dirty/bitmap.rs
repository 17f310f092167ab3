//! A page bitmap that fault handlers set (lock-free, async-signal-safe) and the
//! collector takes from, for the backends that learn of writes one fault at a time.

use alloc::boxed::Box;
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

    /// Reports set bits from page `from` on, in runs `(first_page, count)`, at most
    /// `max_pages` pages, clearing exactly the reported bits when `take`. Returns the
    /// number of pages reported and the page to resume from when `max_pages` cut it short.
    pub fn collect(
        &self,
        from: usize,
        max_pages: usize,
        take: bool,
        emit: &mut dyn FnMut(usize, usize),
    ) -> (usize, Option<usize>) {
        let mut reported = 0;
        let mut run: Option<(usize, usize)> = None;
        let flush = |run: &mut Option<(usize, usize)>, emit: &mut dyn FnMut(usize, usize)| {
            if let Some((first, count)) = run.take() {
                emit(first, count);
            }
        };
        let mut index = from;
        while index < self.pages {
            let word_index = index / 64;
            let low_bit = index % 64;
            let mut bits = self.words[word_index].load(Ordering::SeqCst) & (!0u64 << low_bit);
            if bits == 0 {
                index = (word_index + 1) * 64;
                continue;
            }
            // Keep only as many bits as the caller has room for.
            let room = max_pages - reported;
            let mut kept = 0u64;
            while bits != 0 && (kept.count_ones() as usize) < room {
                let lowest = bits & bits.wrapping_neg();
                kept |= lowest;
                bits &= !lowest;
            }
            if take {
                self.words[word_index].fetch_and(!kept, Ordering::SeqCst);
            }
            let mut rest = kept;
            while rest != 0 {
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let page = word_index * 64 + bit;
                match &mut run {
                    Some((first, count)) if *first + *count == page => *count += 1,
                    _ => {
                        flush(&mut run, emit);
                        run = Some((page, 1));
                    }
                }
            }
            reported += kept.count_ones() as usize;
            if reported == max_pages {
                flush(&mut run, emit);
                // Resume after the last reported page if anything is left.
                let next = match kept {
                    0 => index,
                    _ => word_index * 64 + 63 - kept.leading_zeros() as usize + 1,
                };
                let more = (next..self.pages)
                    .any(|i| self.words[i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) != 0);
                return (reported, more.then_some(next));
            }
            index = (word_index + 1) * 64;
        }
        flush(&mut run, emit);
        (reported, None)
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
        let (n, next) = map.collect(from, max, take, &mut |f, c| runs.push((f, c)));
        assert_eq!(n, runs.iter().map(|r| r.1).sum::<usize>());
        (runs, next)
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
    }
}
