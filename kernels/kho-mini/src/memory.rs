//! The mini kernel's memory bookkeeping and its kho-core platform.
//!
//! [`FreeMap`] is the list of free physical ranges: RAM minus everything in use (the first
//! MiB, the kernel image, boot data, the payload, the heap) and, once the handover is
//! parsed, minus every preserved range. [`MiniPlatform`] puts kho-core on top of any
//! physical memory (the identity map in the kernel, a byte store in tests): metadata pages
//! come from free RAM outside the next kernel's scratch areas, and the incoming side's
//! reservations are taken out of the free map.

use alloc::vec::Vec;
use core::cell::RefCell;

use kho_core::{
    Access, AllocError, Block, MemError, MemMap, MetaAlloc, PAGE_SIZE, Pfn, PhysAddr, PhysRange, PhysRead, PhysWrite,
};

/// Sorted, disjoint ranges of free memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeMap {
    free: Vec<PhysRange>,
}

/// `ranges` minus `cut` (one implementation, shared with `kho kexec`'s planner).
pub use kho_boot::plan::subtract;

/// The parts of `ranges` inside `within` (both sorted and disjoint).
#[must_use]
pub fn intersect(ranges: &[PhysRange], within: &[PhysRange]) -> Vec<PhysRange> {
    let mut out = Vec::new();
    for &r in ranges {
        for &w in within {
            let s = r.start().max(w.start());
            let e = r.end().min(w.end());
            if s < e {
                out.extend(PhysRange::from_bounds(s, e));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Where to look for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone<'a> {
    /// Only inside these ranges.
    Inside(&'a [PhysRange]),
    /// Only outside these ranges.
    Outside(&'a [PhysRange]),
}

impl FreeMap {
    /// Everything in `ram` is free.
    #[must_use]
    pub fn new(ram: &[PhysRange]) -> Self {
        let mut free = ram.to_vec();
        free.sort_unstable();
        Self { free: kho_core::types::merge_ranges(free) }
    }

    /// The free ranges.
    #[must_use]
    pub fn ranges(&self) -> &[PhysRange] {
        &self.free
    }

    /// Marks `r` used.
    pub fn take(&mut self, r: PhysRange) {
        self.free = subtract(&self.free, r);
    }

    /// Marks `r` free again.
    pub fn give(&mut self, r: PhysRange) {
        self.free.push(r);
        self.free.sort_unstable();
        self.free = kho_core::types::merge_ranges(core::mem::take(&mut self.free));
    }

    /// Free ranges in `zone`, at or above `floor`.
    #[must_use]
    pub fn candidates(&self, zone: Zone<'_>, floor: u64) -> Vec<PhysRange> {
        let mut c = match zone {
            Zone::Inside(w) => intersect(&self.free, w),
            Zone::Outside(w) => w.iter().fold(self.free.clone(), |acc, &x| subtract(&acc, x)),
        };
        if floor > 0 {
            c = subtract(&c, PhysRange::from_bounds(PhysAddr::new(0), PhysAddr::new(floor)).expect("floor > 0"));
        }
        c
    }

    /// Takes `size` bytes aligned to `align` (a power of two) from the highest free address
    /// in `zone` at or above `floor`.
    pub fn alloc_top(&mut self, size: u64, align: u64, zone: Zone<'_>, floor: u64) -> Option<PhysRange> {
        let c = self.candidates(zone, floor);
        let r = c.iter().rev().find_map(|r| {
            let top = r.end().as_u64().checked_sub(size)? & !(align - 1);
            (top >= r.start().as_u64()).then(|| PhysRange::new(PhysAddr::new(top), size))?
        })?;
        self.take(r);
        Some(r)
    }

    /// Takes `size` bytes aligned to `align` from the lowest free address in `zone` at or
    /// above `floor`.
    pub fn alloc_bottom(&mut self, size: u64, align: u64, zone: Zone<'_>, floor: u64) -> Option<PhysRange> {
        let c = self.candidates(zone, floor);
        let r = c.iter().find_map(|r| {
            let start = r.start().as_u64().checked_add(align - 1)? & !(align - 1);
            let range = PhysRange::new(PhysAddr::new(start), size)?;
            r.contains_range(range).then_some(range)
        })?;
        self.take(r);
        Some(r)
    }

    /// The largest free range in `zone` at or above `floor`.
    #[must_use]
    pub fn largest(&self, zone: Zone<'_>, floor: u64) -> Option<PhysRange> {
        self.candidates(zone, floor).into_iter().max_by_key(|r| r.len())
    }
}

/// Counters of what the incoming side did with the memory map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Ranges reserved.
    pub reserved_ranges: u64,
    /// Bytes reserved.
    pub reserved_bytes: u64,
    /// Folios restored.
    pub folios: u64,
    /// Blocks restored as order-0 pages.
    pub page_blocks: u64,
    /// Blocks given back unrestored.
    pub released: u64,
}

/// kho-core's platform for the mini kernel, over physical memory `M`.
#[derive(Debug)]
pub struct MiniPlatform<M> {
    mem: M,
    ram: Vec<PhysRange>,
    /// The next kernel's scratch areas: KHO metadata must stay out of them.
    scratch: Vec<PhysRange>,
    free: RefCell<FreeMap>,
    /// Lowest address for metadata and preserved pages.
    floor: u64,
    stats: MapStats,
}

/// Lowest address the mini kernel hands out: the first 16 MiB stay for firmware, the
/// real-mode trampoline and the default load address of the next Linux.
pub const ALLOC_FLOOR: u64 = 16 << 20;

impl<M: PhysWrite> MiniPlatform<M> {
    /// A platform over `mem` with RAM `ram`, free memory `free`, and the next kernel's
    /// `scratch` areas.
    pub fn new(mem: M, ram: Vec<PhysRange>, free: FreeMap, scratch: Vec<PhysRange>) -> Self {
        Self { mem, ram, scratch, free: RefCell::new(free), floor: ALLOC_FLOOR, stats: MapStats::default() }
    }

    /// The memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// RAM ranges.
    #[must_use]
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram
    }

    /// The next kernel's scratch areas.
    #[must_use]
    pub fn scratch(&self) -> &[PhysRange] {
        &self.scratch
    }

    /// Replaces the next kernel's scratch areas (before any metadata is allocated).
    pub fn set_scratch(&mut self, scratch: Vec<PhysRange>) {
        self.scratch = scratch;
    }

    /// What the incoming side did.
    #[must_use]
    pub fn stats(&self) -> MapStats {
        self.stats
    }

    /// Free memory.
    #[must_use]
    pub fn free_map(&self) -> FreeMap {
        self.free.borrow().clone()
    }

    /// Takes `pages` zeroed pages aligned to their size from free memory outside scratch
    /// (for folios and blobs the mini kernel preserves).
    ///
    /// # Errors
    /// `None` if no such memory is free.
    pub fn alloc_preservable(&self, pages: u64) -> Option<PhysRange> {
        let size = pages.checked_mul(PAGE_SIZE)?;
        let align = size.next_power_of_two();
        let r = self.free.borrow_mut().alloc_top(size, align, Zone::Outside(&self.scratch), self.floor)?;
        self.zero(r).ok()?;
        Some(r)
    }

    /// Takes `size` bytes aligned to `align` from free memory, inside scratch first (where
    /// Linux's own kexec puts the next kernel), else anywhere.
    pub fn alloc_anywhere(&self, size: u64, align: u64) -> Option<PhysRange> {
        let mut f = self.free.borrow_mut();
        f.alloc_top(size, align, Zone::Inside(&self.scratch), self.floor)
            .or_else(|| f.alloc_top(size, align, Zone::Outside(&[]), self.floor))
    }

    fn zero(&self, r: PhysRange) -> Result<(), MemError> {
        let zeros = [0u8; 4096];
        let mut p = r.start().as_u64();
        while p < r.end().as_u64() {
            let n = (r.end().as_u64() - p).min(4096);
            self.mem.write_phys(PhysAddr::new(p), &zeros[..n as usize])?;
            p += n;
        }
        Ok(())
    }
}

impl<M: PhysRead> PhysRead for MiniPlatform<M> {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_phys(phys, buf)
    }
}

impl<M: PhysWrite> PhysWrite for MiniPlatform<M> {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.mem.write_phys(phys, data)
    }
}

impl<M: PhysWrite> MetaAlloc for MiniPlatform<M> {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        self.alloc_preservable(1).map(PhysRange::start).ok_or(AllocError)
    }

    fn free_meta_page(&self, page: PhysAddr) {
        if let Some(r) = PhysRange::new(page, PAGE_SIZE) {
            self.free.borrow_mut().give(r);
        }
    }
}

impl<M: PhysWrite> MemMap for MiniPlatform<M> {
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        let p = pfn.phys();
        self.ram.iter().any(|r| r.contains(p))
    }

    fn reserve(&mut self, ranges: &[PhysRange]) {
        let f = self.free.get_mut();
        for &r in ranges {
            f.take(r);
            self.stats.reserved_ranges += 1;
            self.stats.reserved_bytes += r.len();
        }
    }

    fn claim_folio(&mut self, _block: Block) {
        self.stats.folios += 1;
    }

    fn claim_pages(&mut self, _block: Block) {
        self.stats.page_blocks += 1;
    }

    fn release(&mut self, block: Block) {
        self.free.get_mut().give(block.range());
        self.stats.released += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::TestMem;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(s), PhysAddr::new(e)).unwrap()
    }

    #[test]
    fn subtract_and_intersect() {
        let v = [r(0, 0x1000), r(0x2000, 0x8000)];
        assert_eq!(subtract(&v, r(0x3000, 0x4000)), vec![r(0, 0x1000), r(0x2000, 0x3000), r(0x4000, 0x8000)]);
        assert_eq!(subtract(&v, r(0, 0x9000)), vec![]);
        assert_eq!(
            intersect(&v, &[r(0x800, 0x2800), r(0x7000, 0x10000)]),
            vec![r(0x800, 0x1000), r(0x2000, 0x2800), r(0x7000, 0x8000)]
        );
    }

    #[test]
    fn allocations_respect_zone_floor_and_alignment() {
        let mut f = FreeMap::new(&[r(0, 0x4000_0000)]);
        f.take(r(0x3000_0000, 0x4000_0000));
        let scratch = [r(0x1000_0000, 0x2000_0000)];
        let a = f.alloc_top(0x1000, 0x1000, Zone::Outside(&scratch), ALLOC_FLOOR).unwrap();
        assert_eq!(a, r(0x2fff_f000, 0x3000_0000));
        let b = f.alloc_top(0x40_0000, 0x20_0000, Zone::Inside(&scratch), ALLOC_FLOOR).unwrap();
        assert_eq!(b, r(0x1fc0_0000, 0x2000_0000));
        let c = f.alloc_bottom(0x2000, 0x2000, Zone::Outside(&scratch), ALLOC_FLOOR).unwrap();
        assert_eq!(c, r(0x100_0000, 0x100_2000));
        // Nothing of 512 MiB outside scratch above the floor.
        assert_eq!(f.alloc_top(0x2000_0000, 0x1000, Zone::Outside(&scratch), ALLOC_FLOOR), None);
        assert_eq!(f.largest(Zone::Inside(&scratch), 0), Some(r(0x1000_0000, 0x1fc0_0000)));
        f.give(b);
        assert_eq!(f.largest(Zone::Inside(&scratch), 0), Some(r(0x1000_0000, 0x2000_0000)));
    }

    #[test]
    fn platform_meta_pages_are_zeroed_outside_scratch_and_reservations_leave_the_free_map() {
        let mem = TestMem::new(&[(0, 0x1000_0000)]);
        let ram = vec![r(0, 0x1000_0000)];
        let scratch = vec![r(0x800_0000, 0x1000_0000)];
        mem.write(0x7ff_f000, &[0xaa; 4096]);
        let mut p = MiniPlatform::new(&mem, ram.clone(), FreeMap::new(&ram), scratch);
        let page = p.alloc_meta_page().unwrap();
        assert_eq!(page, PhysAddr::new(0x7ff_f000));
        assert_eq!(mem.read(0x7ff_f000, 4096), vec![0u8; 4096]);
        p.reserve(&[r(0x7f0_0000, 0x7ff_f000)]);
        assert_eq!(p.stats().reserved_bytes, 0xf_f000);
        let next = p.alloc_meta_page().unwrap();
        assert_eq!(next, PhysAddr::new(0x7ef_f000));
        assert!(p.pfn_valid(Pfn::new(0xffff).unwrap()));
        assert!(!p.pfn_valid(Pfn::new(0x1_0000).unwrap()));
        let k = p.alloc_anywhere(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(k, r(0xfe0_0000, 0x1000_0000));
    }
}

/// The rule the kernel's identity-mapped memory enforces before any raw access: `len`
/// bytes at `phys` must lie inside one `ram` range (which the kernel has already clipped to
/// its mapped window, above the null pointer) and touch none of `own` (the image and heap,
/// where Rust objects live).
///
/// # Errors
/// [`MemError`] for the whole access.
pub fn check_access(
    ram: &[PhysRange],
    own: &[PhysRange],
    access: Access,
    phys: PhysAddr,
    len: usize,
) -> Result<(), MemError> {
    let err = MemError { access, phys, len: len as u64 };
    let r = PhysRange::new(phys, (len as u64).max(1)).ok_or(err)?;
    if !ram.iter().any(|x| x.contains_range(r)) || own.iter().any(|o| o.overlaps(r)) {
        return Err(err);
    }
    Ok(())
}

/// One step of the kernel heap's bump allocator: from the next free byte `next` of a region
/// ending at `end`, the start of `size` bytes aligned to `align` (a power of two) and the new
/// next free byte, or `None` when they do not fit.
#[must_use]
pub fn bump(next: u64, end: u64, size: u64, align: u64) -> Option<(u64, u64)> {
    let start = next.checked_add(align - 1)? & !(align - 1);
    let new_next = start.checked_add(size)?;
    (new_next <= end).then_some((start, new_next))
}

#[cfg(test)]
mod seam_tests {
    use super::*;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(s), PhysAddr::new(e)).unwrap()
    }

    #[test]
    fn access_rule_keeps_out_of_own_memory_and_holes() {
        let ram = [r(0x100, 0x9f000), r(0x10_0000, 0x4000_0000)];
        let own = [r(0x10_0000, 0x30_0000), r(0x3800_0000, 0x3c00_0000)];
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x5a8), 24).is_ok());
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0), 8).is_err(), "null");
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x9eff8), 16).is_err(), "runs into the hole");
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x2f_fff0), 16).is_err(), "the image");
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x30_0000), 4096).is_ok());
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x37ff_f000), 0x1001).is_err(), "the heap");
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x3fff_f000), 0x1000).is_ok());
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(0x3fff_f000), 0x1001).is_err(), "past RAM");
        assert!(check_access(&ram, &own, Access::Read, PhysAddr::new(u64::MAX - 3), 8).is_err(), "wraps");
        let e = check_access(&ram, &own, Access::Read, PhysAddr::new(0x2f_fff0), 16).unwrap_err();
        assert_eq!(e, MemError::read(PhysAddr::new(0x2f_fff0), 16));
        let e = check_access(&ram, &own, Access::Write, PhysAddr::new(0), 1).unwrap_err();
        assert_eq!(e, MemError::write(PhysAddr::new(0), 1));
    }

    #[test]
    fn bump_aligns_and_stops_at_the_end() {
        assert_eq!(bump(0x1001, 0x3000, 0x100, 0x1000), Some((0x2000, 0x2100)));
        assert_eq!(bump(0x1001, 0x3000, 0x1000, 0x1000), Some((0x2000, 0x3000)));
        assert_eq!(bump(0x1001, 0x3000, 0x1001, 0x1000), None);
        assert_eq!(bump(0x10, 0x20, 1, 1), Some((0x10, 0x11)));
        assert_eq!(bump(u64::MAX - 2, u64::MAX, 1, 8), None);
        assert_eq!(bump(0, u64::MAX, u64::MAX, 1), Some((0, u64::MAX)));
    }
}
