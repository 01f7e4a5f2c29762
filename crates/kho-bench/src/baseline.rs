//! The baselines, written from the spec's description of what Linux does at boot (no kernel
//! code): the same handover bytes, read through the same direct map, processed the way
//! Linux 6.16 (kho-v1 chunk list, 512-byte bitmaps) and Linux 7.3 (kho-v4 radix tree) do,
//! and the hardware floor.
//!
//! Both kernels reserve every preserved block on its own with `memblock_reserve` into one
//! sorted array of regions: a linear scan to the insertion point, then a merge with the
//! neighbours or an insertion that moves the tail of the array. Contiguous blocks keep
//! merging into one region (cheap); scattered blocks each add a region, so n of them cost
//! O(n^2). Each block's head page is then marked (`page->private` = order): one word
//! write per block into a model memmap of one word per page.

use std::time::{Duration, Instant};

use kho_core::PAGE_SHIFT;

use crate::platform::DirectMap;

/// A sorted array of disjoint regions `[start, end)`, merged when they touch (memblock's
/// reserved type, modelled).
#[derive(Debug, Default)]
pub struct Memblock {
    regions: Vec<(u64, u64)>,
}

impl Memblock {
    /// An empty array.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Regions now.
    #[must_use]
    pub fn regions(&self) -> &[(u64, u64)] {
        &self.regions
    }

    /// Adds `[base, base + size)`: scan from the first region to the insertion point, merge
    /// with a region it touches or overlaps (and any that then touch), else insert there.
    pub fn reserve(&mut self, base: u64, size: u64) {
        let end = base + size;
        let mut i = 0;
        while i < self.regions.len() && self.regions[i].1 < base {
            i += 1;
        }
        if i < self.regions.len() && self.regions[i].0 <= end {
            let r = &mut self.regions[i];
            r.0 = r.0.min(base);
            r.1 = r.1.max(end);
            while i + 1 < self.regions.len() && self.regions[i + 1].0 <= self.regions[i].1 {
                self.regions[i].1 = self.regions[i].1.max(self.regions[i + 1].1);
                self.regions.remove(i + 1);
            }
        } else {
            self.regions.insert(i, (base, end));
        }
    }
}

/// A model memmap: one word per page (Linux has a 64-byte `struct page`; one word is the
/// floor of what marking a page costs). Frames wrap at the array size, which caps its
/// memory at 2 GiB for the 1 TiB sweep.
#[derive(Debug)]
pub struct PageMarks {
    words: Vec<u64>,
    mask: u64,
}

impl PageMarks {
    /// A memmap for `pages` frames (rounded up to a power of two, at most 2^28), every page
    /// touched once so timing sees no page faults.
    #[must_use]
    pub fn new(pages: u64) -> Self {
        let n = pages.clamp(1, 1 << 28).next_power_of_two();
        let mut words = vec![0u64; usize::try_from(n).expect("fits")];
        for w in words.iter_mut().step_by(512) {
            *w = 1;
        }
        Self { words, mask: n - 1 }
    }

    /// Marks frame `pfn` with `value`.
    #[inline]
    pub fn mark(&mut self, pfn: u64, value: u64) {
        #[allow(clippy::cast_possible_truncation)] // masked below the array length
        let i = (pfn & self.mask) as usize;
        self.words[i] = value;
    }

    /// Frames the array holds.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.mask + 1
    }

    /// Never empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a boot-time walk does per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// `memblock_reserve` + head-page mark (what Linux does).
    ReserveAndMark,
    /// Head-page mark only: the floor of any per-block algorithm.
    MarkOnly,
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Walk {
    /// Blocks processed.
    pub blocks: u64,
    /// Regions in the reserved array at the end.
    pub regions: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// False if the deadline stopped it early.
    pub complete: bool,
}

impl Walk {
    /// Time for all `total` blocks: measured when complete, else extrapolated from the part
    /// done (linear when the region array stayed small, quadratic when every block added a
    /// region).
    #[must_use]
    pub fn projected_secs(&self, total: u64) -> f64 {
        let t = self.elapsed.as_secs_f64();
        if self.complete || self.blocks == 0 {
            return t;
        }
        let ratio = total as f64 / self.blocks as f64;
        let grow = (self.regions as f64 / self.blocks as f64).clamp(0.0, 1.0);
        t * ratio.powf(1.0 + grow)
    }
}

struct Sink<'a> {
    work: Work,
    mb: Memblock,
    marks: &'a mut PageMarks,
    blocks: u64,
    deadline: Instant,
    stopped: bool,
}

impl Sink<'_> {
    #[inline]
    fn block(&mut self, phys: u64, order: u32) {
        if self.work == Work::ReserveAndMark {
            self.mb.reserve(phys, 1u64 << (order + PAGE_SHIFT));
        }
        self.marks.mark(phys >> PAGE_SHIFT, u64::from(order));
        self.blocks += 1;
        if self.blocks.is_multiple_of(4096) && Instant::now() > self.deadline {
            self.stopped = true;
        }
    }
    fn finish(self, t0: Instant) -> Walk {
        Walk {
            blocks: self.blocks,
            regions: self.mb.regions.len() as u64,
            elapsed: t0.elapsed(),
            complete: !self.stopped,
        }
    }
}

/// Linux 6.16 at boot: walk the kho-v1 chunk list at `first_chunk`; for every set bit of
/// every `bitmap_bits`-bit bitmap, reserve the block and mark its head page.
pub fn linux_6_16(
    mem: &DirectMap,
    first_chunk: u64,
    bitmap_bits: u64,
    work: Work,
    marks: &mut PageMarks,
    budget: Duration,
) -> Walk {
    let t0 = Instant::now();
    let mut sink = Sink { work, mb: Memblock::new(), marks, blocks: 0, deadline: t0 + budget, stopped: false };
    let mut chunk = first_chunk;
    'chunks: while chunk != 0 {
        let next = mem.load(chunk);
        let hdr = mem.load(chunk + 8);
        let order = (hdr & 0xffff_ffff) as u32;
        let n = hdr >> 32;
        for e in 0..n {
            let phys_start = mem.load(chunk + 16 + 16 * e);
            let bitmap = mem.load(chunk + 24 + 16 * e);
            for w in 0..bitmap_bits / 64 {
                let mut word = mem.load(bitmap + 8 * w);
                while word != 0 {
                    let b = u64::from(word.trailing_zeros());
                    word &= word - 1;
                    sink.block(phys_start + ((w * 64 + b) << (order + PAGE_SHIFT)), order);
                }
            }
            if sink.stopped {
                break 'chunks;
            }
        }
        chunk = next;
    }
    sink.finish(t0)
}

const TABLE_LOG2: u32 = 9;
const BITMAP_LOG2: u32 = 15;
const DEPTH: u32 = 6;

/// Linux 7.3 at boot: walk the kho-v4 radix tree at `root` depth first; for every key,
/// decode (address, order), reserve the block and mark its head page.
pub fn linux_7_3(mem: &DirectMap, root: u64, work: Work, marks: &mut PageMarks, budget: Duration) -> Walk {
    let t0 = Instant::now();
    let mut sink = Sink { work, mb: Memblock::new(), marks, blocks: 0, deadline: t0 + budget, stopped: false };
    if root != 0 {
        walk_node(mem, root, DEPTH - 1, 0, &mut sink);
    }
    sink.finish(t0)
}

fn walk_node(mem: &DirectMap, node: u64, level: u32, start: u64, sink: &mut Sink<'_>) {
    if level == 0 {
        for w in 0..(1u64 << BITMAP_LOG2) / 64 {
            let mut word = mem.load(node + 8 * w);
            while word != 0 {
                let b = u64::from(word.trailing_zeros());
                word &= word - 1;
                let key = start | (w * 64 + b);
                let p = 63 - key.leading_zeros();
                let order = 64 - PAGE_SHIFT - p;
                let pa = key.checked_shl(PAGE_SHIFT + order).unwrap_or(0);
                sink.block(pa, order);
            }
        }
        return;
    }
    let shift = (level - 1) * TABLE_LOG2 + BITMAP_LOG2;
    for i in 0..1u64 << TABLE_LOG2 {
        let child = mem.load(node + 8 * i);
        if child != 0 {
            walk_node(mem, child, level - 1, start | (i << shift), sink);
            if sink.stopped {
                return;
            }
        }
    }
}

/// The scan floor: read every word of the metadata pages once.
#[must_use]
pub fn scan(mem: &DirectMap, pages: &[u64]) -> u64 {
    let mut acc = 0u64;
    for &p in pages {
        for w in mem.page_words(p) {
            acc = acc.wrapping_add(w.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memblock_merges_neighbours_and_keeps_order() {
        let mut m = Memblock::new();
        m.reserve(0x3000, 0x1000);
        m.reserve(0x1000, 0x1000);
        assert_eq!(m.regions(), &[(0x1000, 0x2000), (0x3000, 0x4000)]);
        m.reserve(0x2000, 0x1000);
        assert_eq!(m.regions(), &[(0x1000, 0x4000)]);
        m.reserve(0x8000, 0x1000);
        m.reserve(0x2000, 0x7000);
        assert_eq!(m.regions(), &[(0x1000, 0x9000)]);
    }

    #[test]
    fn projection_is_quadratic_when_every_block_adds_a_region() {
        let w = Walk { blocks: 100, regions: 100, elapsed: Duration::from_secs(1), complete: false };
        assert!((w.projected_secs(1000) - 100.0).abs() < 1e-9);
        let w = Walk { blocks: 100, regions: 1, elapsed: Duration::from_secs(1), complete: false };
        assert!((w.projected_secs(1000) - 10.0 * 10f64.powf(0.01)).abs() < 1e-6);
    }
}
