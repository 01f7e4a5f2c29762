//! Per-page state of the machine's RAM, as an interval map.
//!
//! Linux keeps a `struct page` per frame; here adjacent pages in the same state share one
//! entry, so a terabyte of free RAM is one entry and the cost grows with the number of
//! distinct runs (allocations, preserved blocks), not with RAM size.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a page is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PageState {
    /// In the page allocator.
    Free,
    /// Handed out by the page allocator.
    Allocated,
    /// A KHO metadata page of the running kernel's outgoing handover.
    Metadata,
    /// Preserved by the previous kernel and reserved, not restored (yet).
    Preserved,
    /// Restored as one folio of this order (head and tails).
    RestoredFolio(u8),
    /// Restored as independent order-0 pages.
    RestoredPages,
}

/// An interval map from frame ranges to [`PageState`]. Frames outside every interval are not
/// RAM.
#[derive(Debug, Clone, Default)]
pub struct PageMap {
    /// start -> (end, state), disjoint, adjacent equal states merged.
    runs: BTreeMap<u64, (u64, PageState)>,
}

impl PageMap {
    /// An empty map (no RAM).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of runs (the map's own memory use).
    #[must_use]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The state of one frame, `None` if it is not RAM.
    #[must_use]
    pub fn get(&self, pfn: u64) -> Option<PageState> {
        let (_, &(end, st)) = self.runs.range(..=pfn).next_back()?;
        (pfn < end).then_some(st)
    }

    /// True if every frame of `[start, end)` is RAM in state `st`.
    #[must_use]
    pub fn all_in(&self, start: u64, end: u64, st: PageState) -> bool {
        let mut pos = start;
        while pos < end {
            match self.runs.range(..=pos).next_back() {
                Some((_, &(e, s))) if pos < e && s == st => pos = e,
                _ => return false,
            }
        }
        true
    }

    /// The runs overlapping `[start, end)`, clipped to it.
    #[must_use]
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, u64, PageState)> {
        let first = self.runs.range(..=start).next_back().map_or(start, |(&s, _)| s);
        self.runs
            .range(first..end)
            .filter(|&(_, &(e, _))| e > start)
            .map(|(&s, &(e, st))| (s.max(start), e.min(end), st))
            .collect()
    }

    /// Sets `[start, end)` to `st` (adding RAM if it was not RAM).
    pub fn set(&mut self, start: u64, end: u64, st: PageState) {
        if start >= end {
            return;
        }
        // Cut the run that straddles `start` and the one that straddles `end`.
        if let Some((&s, &(e, old))) = self.runs.range(..start).next_back()
            && e > start
        {
            self.runs.insert(s, (start, old));
            self.runs.insert(start, (e, old));
        }
        if let Some((&s, &(e, old))) = self.runs.range(..end).next_back()
            && e > end
        {
            self.runs.insert(s, (end, old));
            self.runs.insert(end, (e, old));
        }
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.runs.remove(&s);
        }
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &(pe, pst))) = self.runs.range(..s).next_back()
            && pe == s
            && pst == st
        {
            self.runs.remove(&ps);
            s = ps;
        }
        if let Some(&(ne, nst)) = self.runs.get(&e)
            && nst == st
        {
            self.runs.remove(&e);
            e = ne;
        }
        self.runs.insert(s, (e, st));
    }

    /// Pages in each state.
    #[must_use]
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (&s, &(e, st)) in &self.runs {
            *out.entry(format!("{st:?}")).or_insert(0) += e - s;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_split_and_merge() {
        let mut m = PageMap::new();
        m.set(256, 1 << 28, PageState::Free);
        assert_eq!(m.runs(), 1);
        m.set(1000, 1010, PageState::Allocated);
        assert_eq!(m.runs(), 3);
        assert_eq!(m.get(1005), Some(PageState::Allocated));
        assert_eq!(m.get(255), None);
        assert_eq!(m.get(1 << 28), None);
        m.set(1010, 1020, PageState::Allocated);
        assert_eq!(m.runs(), 3);
        m.set(1000, 1020, PageState::Free);
        assert_eq!(m.runs(), 1);
        assert!(m.all_in(256, 1 << 28, PageState::Free));
        assert!(!m.all_in(200, 300, PageState::Free));
    }

    proptest! {
        #[test]
        fn matches_a_per_page_array(ops in proptest::collection::vec((0u64..200, 1u64..50, 0u8..4), 1..60)) {
            let states = [PageState::Free, PageState::Allocated, PageState::Preserved, PageState::RestoredPages];
            let mut m = PageMap::new();
            let mut model = vec![None; 260];
            for (s, len, st) in ops {
                m.set(s, s + len, states[st as usize]);
                for p in s..s + len {
                    model[p as usize] = Some(states[st as usize]);
                }
            }
            for (p, want) in model.iter().enumerate() {
                prop_assert_eq!(m.get(p as u64), *want);
            }
            // Adjacent runs never share a state.
            let v: Vec<_> = m.overlapping(0, 260);
            prop_assert!(v.windows(2).all(|w| !(w[0].1 == w[1].0 && w[0].2 == w[1].2)));
        }
    }
}
