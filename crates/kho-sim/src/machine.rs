//! The machine a simulated kernel runs on: RAM, the page allocator with its scratch-only
//! boot mode, and the per-page memory map.
//!
//! `Machine` implements the platform traits the KHO engine needs: [`PhysRead`]/[`PhysWrite`]
//! (through its [`Ram`]), [`MetaAlloc`] (metadata pages, always outside scratch) and, through
//! [`MapRef`], [`MemMap`] for the incoming side.

use std::cell::RefCell;

use kho_core::{AllocError, Block, MemError, MemMap, MetaAlloc, PAGE_SHIFT, PAGE_SIZE, Pfn, PhysAddr, PhysRange};
use kho_core::{PhysRead, PhysWrite};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::buddy::Buddy;
use crate::memmap::{PageMap, PageState};
use crate::ram::{RAM_BASE, Ram};

/// Scratch areas are aligned to and sized in multiples of this (Linux 7.3:
/// `PAGE_SIZE << MAX_PAGE_ORDER` = 4 MiB on x86-64).
pub const SCRATCH_ALIGN: u64 = 4 << 20;
/// Scratch areas of the lowmem kind must end below this address.
pub const LOWMEM_LIMIT: u64 = 4 << 30;

/// Sizes of the scratch areas allocated at a cold boot (`kho_scratch=lowmem,global,pernode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchSizes {
    /// The lowmem area, below 4 GiB.
    pub lowmem: u64,
    /// The global area.
    pub global: u64,
    /// One area per node.
    pub per_node: u64,
}

impl Default for ScratchSizes {
    fn default() -> Self {
        Self { lowmem: 16 << 20, global: 64 << 20, per_node: 64 << 20 }
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn range(start: u64, end: u64) -> Result<PhysRange, SimError> {
    PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end))
        .ok_or_else(|| SimError::Config(format!("empty range [{start:#x}, {end:#x})")))
}

/// Lays out the scratch areas of a cold boot, in `kho_scratch[]` order: lowmem, global, then
/// one per node. RAM `[1 MiB, ram_end)` is split evenly into `nodes` nodes; the lowmem and
/// global areas sit at the bottom of RAM, each node's area at the top of its node.
///
/// # Errors
/// [`SimError::Config`] if the areas do not fit.
pub fn cold_scratch_layout(ram_end: u64, sizes: ScratchSizes, nodes: u32) -> Result<Vec<PhysRange>, SimError> {
    let sz = |v: u64| align_up(v.max(SCRATCH_ALIGN), SCRATCH_ALIGN);
    let (low, global, node) = (sz(sizes.lowmem), sz(sizes.global), sz(sizes.per_node));
    let nodes = u64::from(nodes.max(1));
    let low_start = align_up(RAM_BASE, SCRATCH_ALIGN);
    let global_start = low_start + low;
    let bottom_end = global_start + global;
    if low_start + low > LOWMEM_LIMIT {
        return Err(SimError::Config("the lowmem scratch area does not fit below 4 GiB".into()));
    }
    let mut out = vec![range(low_start, low_start + low)?, range(global_start, bottom_end)?];
    let span = ram_end.saturating_sub(RAM_BASE) / nodes;
    for i in 0..nodes {
        let node_end = if i + 1 == nodes { ram_end } else { RAM_BASE + span * (i + 1) };
        let end = node_end / SCRATCH_ALIGN * SCRATCH_ALIGN;
        let start = end.saturating_sub(node);
        let node_start = RAM_BASE + span * i;
        if start < node_start.max(bottom_end) || end > ram_end {
            return Err(SimError::Config(format!(
                "RAM of {} MiB is too small for scratch areas of {} + {} + {}x{} MiB",
                ram_end >> 20,
                low >> 20,
                global >> 20,
                nodes,
                node >> 20
            )));
        }
        out.push(range(start, end)?);
    }
    Ok(out)
}

#[derive(Debug)]
struct Mm {
    scratch_pool: Buddy,
    general: Buddy,
    scratch_only: bool,
    map: PageMap,
    conflicts: Vec<String>,
    meta_pages: u64,
}

/// Counters about the machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStats {
    /// Free pages outside scratch.
    pub free_general_pages: u64,
    /// Free pages inside scratch.
    pub free_scratch_pages: u64,
    /// Runs in the memory map.
    pub map_runs: usize,
    /// Entries in the allocator's free structures.
    pub allocator_entries: usize,
    /// Live metadata pages.
    pub metadata_pages: u64,
}

/// A simulated machine: RAM plus the memory management of the kernel running on it.
#[derive(Debug)]
pub struct Machine {
    ram: Ram,
    ram_range: PhysRange,
    scratch: Vec<PhysRange>,
    sorted_scratch: Vec<PhysRange>,
    max_order: u32,
    mm: RefCell<Mm>,
}

fn pfn_of(phys: u64) -> u64 {
    phys >> PAGE_SHIFT
}

impl Machine {
    /// Boots memory management on `ram` with the given scratch areas (`kho_scratch[]` order)
    /// and maximum order. With `scratch_only`, allocations come only from scratch until
    /// [`Machine::end_scratch_only`] (a KHO boot before the handover is reserved).
    ///
    /// # Errors
    /// [`SimError::Config`] if a scratch area is outside RAM, unaligned or overlapping.
    pub fn boot(ram: Ram, scratch: Vec<PhysRange>, max_order: u32, scratch_only: bool) -> Result<Self, SimError> {
        let ram_range = ram.range();
        let mut sorted = scratch.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0].overlaps(w[1]) {
                return Err(SimError::Config(format!("scratch areas {} and {} overlap", w[0], w[1])));
            }
        }
        let (rs, re) = (pfn_of(ram_range.start().as_u64()), pfn_of(ram_range.end().as_u64()));
        let mut mm = Mm {
            scratch_pool: Buddy::new(max_order),
            general: Buddy::new(max_order),
            scratch_only,
            map: PageMap::new(),
            conflicts: Vec::new(),
            meta_pages: 0,
        };
        mm.map.set(rs, re, PageState::Free);
        let mut pos = rs;
        for s in &sorted {
            if !ram_range.contains_range(*s) || !s.start().is_page_aligned() || s.len() % PAGE_SIZE != 0 {
                return Err(SimError::Config(format!("scratch area {s} is not page-aligned RAM")));
            }
            let (ss, se) = (pfn_of(s.start().as_u64()), pfn_of(s.end().as_u64()));
            mm.general.add_range(pos, ss);
            mm.scratch_pool.add_range(ss, se);
            pos = se;
        }
        mm.general.add_range(pos, re);
        Ok(Self { ram, ram_range, scratch, sorted_scratch: sorted, max_order, mm: RefCell::new(mm) })
    }

    /// The RAM.
    #[must_use]
    pub fn ram(&self) -> &Ram {
        &self.ram
    }

    /// Gives the RAM back (for the next kernel).
    #[must_use]
    pub fn into_ram(self) -> Ram {
        self.ram
    }

    /// Usable RAM.
    #[must_use]
    pub fn ram_range(&self) -> PhysRange {
        self.ram_range
    }

    /// Scratch areas in `kho_scratch[]` order.
    #[must_use]
    pub fn scratch(&self) -> &[PhysRange] {
        &self.scratch
    }

    /// The kernel's maximum order.
    #[must_use]
    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    /// True while allocations are limited to scratch.
    #[must_use]
    pub fn scratch_only(&self) -> bool {
        self.mm.borrow().scratch_only
    }

    /// Leaves scratch-only mode: the rest of RAM (minus what was reserved) becomes usable.
    pub fn end_scratch_only(&self) {
        self.mm.borrow_mut().scratch_only = false;
    }

    /// Allocates a block of `order` pages for a kernel user: outside scratch, or inside scratch
    /// only in scratch-only mode.
    ///
    /// # Errors
    /// [`SimError::OutOfMemory`].
    pub fn alloc(&self, order: u32) -> Result<Pfn, SimError> {
        let mut mm = self.mm.borrow_mut();
        let pfn = if mm.scratch_only { mm.scratch_pool.alloc(order) } else { mm.general.alloc(order) };
        let pfn = pfn.ok_or(SimError::OutOfMemory { pages: 1 << order.min(63) })?;
        mm.map.set(pfn, pfn + (1 << order), PageState::Allocated);
        Pfn::new(pfn).ok_or(SimError::OutOfMemory { pages: 1 })
    }

    /// Allocates `pages` contiguous pages (may exceed the maximum order).
    ///
    /// # Errors
    /// [`SimError::OutOfMemory`].
    pub fn alloc_contig(&self, pages: u64) -> Result<Pfn, SimError> {
        let mut mm = self.mm.borrow_mut();
        let pfn = if mm.scratch_only { mm.scratch_pool.alloc_contig(pages) } else { mm.general.alloc_contig(pages) };
        let pfn = pfn.ok_or(SimError::OutOfMemory { pages })?;
        mm.map.set(pfn, pfn + pages, PageState::Allocated);
        Pfn::new(pfn).ok_or(SimError::OutOfMemory { pages })
    }

    /// Frees `count` pages at `pfn` that were allocated or restored. Pages in another state
    /// are left alone and recorded as a conflict (a double free).
    pub fn free_pages(&self, pfn: Pfn, count: u64) {
        let (s, e) = (pfn.as_u64(), pfn.as_u64() + count);
        let mut mm = self.mm.borrow_mut();
        for (a, b, st) in mm.map.overlapping(s, e) {
            match st {
                PageState::Allocated | PageState::RestoredFolio(_) | PageState::RestoredPages => {
                    mm.map.set(a, b, PageState::Free);
                    self.give_back(&mut mm, a, b);
                }
                other => mm.conflicts.push(format!(
                    "free of pages {:#x}..{:#x} in state {other:?}",
                    a << PAGE_SHIFT,
                    b << PAGE_SHIFT
                )),
            }
        }
    }

    /// Returns `[s, e)` to the right pool(s): scratch pages to the scratch pool.
    fn give_back(&self, mm: &mut Mm, s: u64, e: u64) {
        let mut pos = s;
        for sc in &self.sorted_scratch {
            let (ss, se) = (pfn_of(sc.start().as_u64()), pfn_of(sc.end().as_u64()));
            if se <= pos {
                continue;
            }
            if ss >= e {
                break;
            }
            if pos < ss {
                mm.general.add_range(pos, ss);
            }
            let end = e.min(se);
            mm.scratch_pool.add_range(pos.max(ss), end);
            pos = end;
        }
        if pos < e {
            mm.general.add_range(pos, e);
        }
    }

    /// The state of a page.
    #[must_use]
    pub fn state(&self, pfn: u64) -> Option<PageState> {
        self.mm.borrow().map.get(pfn)
    }

    /// True if the page at `phys` is free.
    #[must_use]
    pub fn is_free(&self, phys: u64) -> bool {
        self.state(phys >> PAGE_SHIFT) == Some(PageState::Free)
    }

    /// True if every page of `[pfn, pfn + count)` is in `st`.
    #[must_use]
    pub fn all_in(&self, pfn: u64, count: u64, st: PageState) -> bool {
        self.mm.borrow().map.all_in(pfn, pfn + count, st)
    }

    /// Page-state totals (for reports).
    #[must_use]
    pub fn state_totals(&self) -> std::collections::BTreeMap<String, u64> {
        self.mm.borrow().map.totals()
    }

    /// Inconsistencies seen by the memory map (double frees, reserving allocated pages...).
    #[must_use]
    pub fn conflicts(&self) -> Vec<String> {
        self.mm.borrow().conflicts.clone()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> MemStats {
        let mm = self.mm.borrow();
        MemStats {
            free_general_pages: mm.general.free_pages(),
            free_scratch_pages: mm.scratch_pool.free_pages(),
            map_runs: mm.map.runs(),
            allocator_entries: mm.general.entries() + mm.scratch_pool.entries(),
            metadata_pages: mm.meta_pages,
        }
    }

    /// A [`MemMap`] view for the incoming side of the engine.
    #[must_use]
    pub fn memmap(&self) -> MapRef<'_> {
        MapRef(self)
    }
}

impl PhysRead for Machine {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.ram.read_phys(phys, buf)
    }
}

impl PhysWrite for Machine {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.ram.write_phys(phys, data)
    }
}

impl MetaAlloc for Machine {
    /// Metadata pages come from the general pool (never scratch) and are zeroed.
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        let pfn = {
            let mut mm = self.mm.borrow_mut();
            if mm.scratch_only {
                return Err(AllocError);
            }
            let pfn = mm.general.alloc(0).ok_or(AllocError)?;
            mm.map.set(pfn, pfn + 1, PageState::Metadata);
            mm.meta_pages += 1;
            pfn
        };
        let phys = PhysAddr::new(pfn << PAGE_SHIFT);
        self.ram.write_phys(phys, &[0u8; PAGE_SIZE as usize]).map_err(|_| AllocError)?;
        Ok(phys)
    }

    fn free_meta_page(&self, page: PhysAddr) {
        let pfn = pfn_of(page.as_u64());
        let mut mm = self.mm.borrow_mut();
        if mm.map.get(pfn) == Some(PageState::Metadata) {
            mm.map.set(pfn, pfn + 1, PageState::Free);
            mm.meta_pages -= 1;
            mm.general.add_range(pfn, pfn + 1);
        } else {
            mm.conflicts.push(format!("free of metadata page {page} that is not a metadata page"));
        }
    }
}

/// The memory map of a [`Machine`], as the engine's incoming side uses it.
#[derive(Debug)]
pub struct MapRef<'a>(pub &'a Machine);

impl MemMap for MapRef<'_> {
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.0.state(pfn.as_u64()).is_some()
    }

    fn reserve(&mut self, ranges: &[PhysRange]) {
        let mut mm = self.0.mm.borrow_mut();
        for r in ranges {
            let (s, e) = (pfn_of(r.start().as_u64()), pfn_of(r.end().as_u64().saturating_add(PAGE_SIZE - 1)));
            for (a, b, st) in mm.map.overlapping(s, e) {
                if st != PageState::Free {
                    mm.conflicts.push(format!(
                        "reserve of preserved {:#x}..{:#x}: pages are {st:?}",
                        a << PAGE_SHIFT,
                        b << PAGE_SHIFT
                    ));
                }
            }
            mm.general.remove_range(s, e);
            mm.scratch_pool.remove_range(s, e);
            mm.map.set(s, e, PageState::Preserved);
        }
    }

    fn claim_folio(&mut self, block: Block) {
        self.claim(block, PageState::RestoredFolio(block.order().as_u32().min(255) as u8));
    }

    fn claim_pages(&mut self, block: Block) {
        self.claim(block, PageState::RestoredPages);
    }

    fn release(&mut self, block: Block) {
        let (s, e) = (block.pfn().as_u64(), block.end_pfn());
        let mut mm = self.0.mm.borrow_mut();
        if mm.map.all_in(s, e, PageState::Preserved) {
            mm.map.set(s, e, PageState::Free);
            self.0.give_back(&mut mm, s, e);
        } else {
            mm.conflicts.push(format!("release of {block}: not reserved as preserved"));
        }
    }
}

impl MapRef<'_> {
    fn claim(&mut self, block: Block, st: PageState) {
        let (s, e) = (block.pfn().as_u64(), block.end_pfn());
        let mut mm = self.0.mm.borrow_mut();
        if !mm.map.all_in(s, e, PageState::Preserved) {
            mm.conflicts.push(format!("restore of {block}: pages are not all reserved as preserved"));
        }
        mm.map.set(s, e, st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> PhysRange {
        range(s, e).unwrap()
    }

    #[test]
    fn layout_matches_linux_order_and_alignment() {
        let l = cold_scratch_layout(4 << 30, ScratchSizes::default(), 2).unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(l[0], r(4 << 20, 20 << 20));
        assert_eq!(l[1], r(20 << 20, 84 << 20));
        assert!(l.iter().all(|a| a.start().is_aligned(SCRATCH_ALIGN) && a.len() % SCRATCH_ALIGN == 0));
        assert_eq!(l[3].end().as_u64(), 4 << 30);
        assert!(cold_scratch_layout(64 << 20, ScratchSizes::default(), 1).is_err());
    }

    #[test]
    fn scratch_only_mode_and_metadata_placement() {
        let ram = Ram::create(256 << 20).unwrap();
        let scratch = cold_scratch_layout(256 << 20, ScratchSizes::default(), 1).unwrap();
        let m = Machine::boot(ram, scratch.clone(), 10, true).unwrap();
        let p = m.alloc(3).unwrap();
        assert!(scratch.iter().any(|s| s.contains(p.phys())), "scratch-only allocation at {p}");
        assert!(m.alloc_meta_page().is_err(), "no metadata before the handover is reserved");
        m.end_scratch_only();
        let meta = m.alloc_meta_page().unwrap();
        assert!(scratch.iter().all(|s| !s.contains(meta)));
        let q = m.alloc(9).unwrap();
        assert!(scratch.iter().all(|s| !s.contains(q.phys())));
        m.free_pages(q, 512);
        m.free_pages(q, 512);
        assert_eq!(m.conflicts().len(), 1, "double free is recorded, not a panic");
        m.free_meta_page(meta);
        assert_eq!(m.stats().metadata_pages, 0);
    }

    #[test]
    fn memmap_reserve_claim_release() {
        let ram = Ram::create(256 << 20).unwrap();
        let scratch = cold_scratch_layout(256 << 20, ScratchSizes::default(), 1).unwrap();
        let m = Machine::boot(ram, scratch, 10, true).unwrap();
        let total = m.stats().free_general_pages;
        let mut map = m.memmap();
        assert!(!map.pfn_valid(Pfn::new(0).unwrap()));
        let pres = r(100 << 20, (100 << 20) + (4 << 20));
        map.reserve(&[pres]);
        assert_eq!(m.stats().free_general_pages, total - 1024);
        let b = Block::at(PhysAddr::new(100 << 20), kho_core::Order::new(9).unwrap()).unwrap();
        map.claim_folio(b);
        assert_eq!(m.state(pfn_of(100 << 20) + 5), Some(PageState::RestoredFolio(9)));
        let b2 = Block::at(PhysAddr::new((100 << 20) + (2 << 20)), kho_core::Order::new(9).unwrap()).unwrap();
        map.release(b2);
        assert_eq!(m.stats().free_general_pages, total - 512);
        m.end_scratch_only();
        m.free_pages(b.pfn(), 512);
        assert_eq!(m.stats().free_general_pages, total);
        assert!(m.conflicts().is_empty(), "{:?}", m.conflicts());
    }
}
