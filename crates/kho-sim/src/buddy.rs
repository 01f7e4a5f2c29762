//! A binary buddy allocator over page frame numbers, sized for terabytes.
//!
//! Orders below the maximum keep a sorted set of free block starts; free blocks of the
//! maximum order are kept as *runs* (`start -> end` of consecutive free max-order blocks), so
//! freshly added RAM of any size is a handful of entries, not one per block or page. Memory
//! use grows with fragmentation, never with RAM size. Allocation is lowest-address first,
//! which keeps runs deterministic and the sparse RAM file compact.

use std::collections::{BTreeMap, BTreeSet};

/// A buddy allocator for one pool of frames.
#[derive(Debug, Clone)]
pub struct Buddy {
    max_order: u32,
    /// `lists[k]`: starts of free blocks of order `k < max_order`.
    lists: Vec<BTreeSet<u64>>,
    /// Runs of free max-order blocks: start frame -> end frame, both aligned.
    top: BTreeMap<u64, u64>,
    free_pages: u64,
}

impl Buddy {
    /// An empty allocator whose largest block is `2^max_order` pages (`max_order <= 30`).
    #[must_use]
    pub fn new(max_order: u32) -> Self {
        let max_order = max_order.min(30);
        Self { max_order, lists: vec![BTreeSet::new(); max_order as usize], top: BTreeMap::new(), free_pages: 0 }
    }

    /// The largest order.
    #[must_use]
    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    /// Free pages.
    #[must_use]
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    fn top_pages(&self) -> u64 {
        1 << self.max_order
    }

    /// Frees `[start, end)`: every page must currently be outside the allocator.
    pub fn add_range(&mut self, start: u64, end: u64) {
        let mut pfn = start;
        let top = self.top_pages();
        while pfn < end {
            if pfn.is_multiple_of(top) && end - pfn >= top {
                // A whole run of max-order blocks goes in as one entry (O(1), not O(blocks)).
                let run = (end - pfn) / top * top;
                self.free_pages += run;
                self.top_insert(pfn, pfn + run);
                pfn += run;
                continue;
            }
            let align = if pfn == 0 { 63 } else { pfn.trailing_zeros() };
            let fit = 63 - (end - pfn).leading_zeros();
            let order = align.min(fit).min(self.max_order);
            self.free_block(pfn, order);
            pfn += 1 << order;
        }
    }

    /// Frees one aligned block; orders above the maximum are split.
    pub fn free(&mut self, pfn: u64, order: u32) {
        if order >= self.max_order {
            self.add_range(pfn, pfn + (1u64 << order.min(62)));
        } else {
            self.free_block(pfn, order);
        }
    }

    fn free_block(&mut self, mut pfn: u64, mut order: u32) {
        self.free_pages += 1 << order;
        while order < self.max_order {
            let buddy = pfn ^ (1 << order);
            if !self.lists[order as usize].remove(&buddy) {
                self.lists[order as usize].insert(pfn);
                return;
            }
            pfn = pfn.min(buddy);
            order += 1;
        }
        self.top_insert(pfn, pfn + self.top_pages());
    }

    /// Inserts a free run of max-order blocks, merging with neighbours.
    fn top_insert(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.top.range(..start).next_back()
            && e == start
        {
            self.top.remove(&s);
            start = s;
        }
        if let Some(e) = self.top.remove(&end) {
            end = e;
        }
        self.top.insert(start, end);
    }

    /// Allocates a block of `order`, lowest address first.
    pub fn alloc(&mut self, order: u32) -> Option<u64> {
        if order > self.max_order {
            return None;
        }
        let (pfn, from) = match (order..self.max_order).find_map(|k| self.lists[k as usize].pop_first().map(|p| (p, k)))
        {
            Some(found) => found,
            None => {
                let (&s, &e) = self.top.iter().next()?;
                self.top.remove(&s);
                if s + self.top_pages() < e {
                    self.top.insert(s + self.top_pages(), e);
                }
                (s, self.max_order)
            }
        };
        for k in (order..from).rev() {
            self.lists[k as usize].insert(pfn + (1 << k));
        }
        self.free_pages -= 1 << order;
        Some(pfn)
    }

    /// Allocates `pages` physically contiguous pages (any count; more than one max-order
    /// block is taken from a run). The unused tail of the last block is freed again.
    pub fn alloc_contig(&mut self, pages: u64) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let order = 64 - (pages - 1).leading_zeros();
        let (start, taken) = if order <= self.max_order {
            (self.alloc(order)?, 1u64 << order)
        } else {
            let blocks = pages.div_ceil(self.top_pages());
            let need = blocks * self.top_pages();
            let (&s, &e) = self.top.iter().find(|&(&s, &e)| e - s >= need)?;
            self.top.remove(&s);
            if s + need < e {
                self.top.insert(s + need, e);
            }
            self.free_pages -= need;
            (s, need)
        };
        if taken > pages {
            self.add_range(start + pages, start + taken);
        }
        Some(start)
    }

    /// Takes every free page of `[start, end)` out of the allocator (memblock_reserve);
    /// returns how many pages were free.
    pub fn remove_range(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let before = self.free_pages;
        let mut give_back: Vec<(u64, u64)> = Vec::new();
        for k in 0..self.max_order {
            let size = 1u64 << k;
            let hits: Vec<u64> = self.lists[k as usize].range(start.saturating_sub(size - 1)..end).copied().collect();
            for b in hits {
                self.lists[k as usize].remove(&b);
                self.free_pages -= size;
                give_back.push((b, start.max(b)));
                give_back.push((end.min(b + size), b + size));
            }
        }
        let runs: Vec<(u64, u64)> =
            self.top.range(..end).rev().take_while(|&(_, &e)| e > start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in runs {
            self.top.remove(&s);
            self.free_pages -= e - s;
            give_back.push((s, start.max(s)));
            give_back.push((end.min(e), e));
        }
        for (s, e) in give_back {
            if s < e {
                self.add_range(s, e);
            }
        }
        before - self.free_pages
    }

    /// True if `pfn` is inside a free block.
    #[must_use]
    pub fn is_free(&self, pfn: u64) -> bool {
        if let Some((_, &e)) = self.top.range(..=pfn).next_back()
            && pfn < e
        {
            return true;
        }
        (0..self.max_order).any(|k| self.lists[k as usize].contains(&(pfn & !((1u64 << k) - 1))))
    }

    /// Free memory as sorted, coalesced `[start, end)` frame ranges.
    #[must_use]
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.top.iter().map(|(&s, &e)| (s, e)).collect();
        for (k, l) in self.lists.iter().enumerate() {
            all.extend(l.iter().map(|&p| (p, p + (1u64 << k))));
        }
        all.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in all {
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Entries in the free structures (a measure of the allocator's own memory use).
    #[must_use]
    pub fn entries(&self) -> usize {
        self.top.len() + self.lists.iter().map(BTreeSet::len).sum::<usize>()
    }

    /// Checks the buddy invariant: no free block has its buddy free at the same order.
    #[must_use]
    pub fn is_fully_coalesced(&self) -> bool {
        self.lists.iter().enumerate().all(|(k, l)| l.iter().all(|&p| !l.contains(&(p ^ (1u64 << k)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_pages(b: &Buddy) -> BTreeSet<u64> {
        b.free_ranges().into_iter().flat_map(|(s, e)| s..e).collect()
    }

    #[test]
    fn terabyte_of_ram_is_a_few_entries() {
        let mut b = Buddy::new(10);
        b.add_range(256, 1 << 28); // 1 MiB .. 1 TiB
        assert_eq!(b.free_pages(), (1 << 28) - 256);
        assert!(b.entries() < 8, "{}", b.entries());
        let p = b.alloc(0).unwrap();
        assert_eq!(p, 256);
        let big = b.alloc_contig(3000).unwrap();
        assert_eq!(big % 1024, 0);
        assert_eq!(b.free_pages(), (1 << 28) - 256 - 1 - 3000);
        b.remove_range(1 << 20, (1 << 20) + 77);
        assert!(!b.is_free(1 << 20) && b.is_free((1 << 20) + 77));
    }

    #[test]
    fn freeing_everything_coalesces_back() {
        let mut b = Buddy::new(4);
        b.add_range(3, 100);
        let mut got = Vec::new();
        while let Some(p) = b.alloc(0) {
            got.push(p);
        }
        assert_eq!(got.len(), 97);
        for p in got {
            b.free(p, 0);
        }
        assert!(b.is_fully_coalesced());
        assert_eq!(b.free_ranges(), [(3, 100)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u32),
        Free(usize),
        Contig(u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..6).prop_map(Op::Alloc),
            (0usize..64).prop_map(Op::Free),
            (1u64..80).prop_map(Op::Contig),
            (0u64..600, 1u64..40).prop_map(|(s, l)| Op::Remove(s, s + l)),
        ]
    }

    proptest! {
        /// The allocator against a set of free pages: allocations are free, aligned and
        /// disjoint; frees and removals change exactly the pages they name.
        #[test]
        fn matches_a_free_page_model(start in 0u64..50, len in 1u64..600, ops in proptest::collection::vec(op(), 1..80)) {
            let mut b = Buddy::new(4);
            b.add_range(start, start + len);
            let mut model: BTreeSet<u64> = (start..start + len).collect();
            let mut live: Vec<(u64, u64)> = Vec::new(); // (pfn, pages) of order-sized blocks
            for op in ops {
                match op {
                    Op::Alloc(order) => {
                        let got = b.alloc(order);
                        if let Some(p) = got {
                            prop_assert_eq!(p % (1 << order), 0);
                            for q in p..p + (1 << order) {
                                prop_assert!(model.remove(&q), "page {q} handed out twice");
                            }
                            live.push((p, 1 << order));
                        }
                    }
                    Op::Free(i) => {
                        if !live.is_empty() {
                            let (p, n) = live.swap_remove(i % live.len());
                            b.add_range(p, p + n);
                            model.extend(p..p + n);
                        }
                    }
                    Op::Contig(n) => {
                        if let Some(p) = b.alloc_contig(n) {
                            for q in p..p + n {
                                prop_assert!(model.remove(&q), "page {q} handed out twice");
                            }
                            live.push((p, n));
                        }
                    }
                    Op::Remove(s, e) => {
                        let want = model.range(s..e).count() as u64;
                        prop_assert_eq!(b.remove_range(s, e), want);
                        model.retain(|&q| q < s || q >= e);
                    }
                }
                prop_assert_eq!(b.free_pages(), model.len() as u64);
            }
            prop_assert_eq!(model_pages(&b), model);
            prop_assert!(b.is_fully_coalesced());
        }
    }
}
