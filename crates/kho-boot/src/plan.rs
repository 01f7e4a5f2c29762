//! Where each kexec segment goes.
//!
//! Rules (spec §1.6 and the facts of `kexec_load`): every segment is page aligned in address
//! and size and lies in RAM; segments do not overlap; at most 16. The handover (root FDT,
//! radix tree, blobs, preserved folios) must lie **outside every scratch area**: the next
//! kernel allocates only from scratch until it has walked the tree, and it does not check
//! (data there is silently overwritten). Everything else (kernel, initrd, zero page) goes
//! into scratch when it fits, as Linux's own `kexec_file_load` does, and otherwise into any
//! other free RAM. Nothing goes below 1 MiB (the next kernel's real-mode trampoline is
//! allocated there). Placement is top-down, like Linux's.

use alloc::vec::Vec;

use kho_core::types::{PAGE_SIZE, PhysAddr, PhysRange};

use crate::error::BootError;

/// `KEXEC_SEGMENT_MAX`.
pub const MAX_SEGMENTS: usize = 16;
/// Lowest address a segment may use.
pub const MIN_ADDR: u64 = 0x10_0000;

/// Where a segment may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In a scratch area if one has room, else anywhere in free RAM.
    PreferScratch,
    /// Never in a scratch area (handover data).
    OutsideScratch,
    /// Exactly at this address (a kernel that is not relocatable).
    Fixed(PhysAddr),
}

/// One segment to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Name, for the plan and errors.
    pub what: &'static str,
    /// Bytes of memory (rounded up to pages).
    pub size: u64,
    /// Alignment of the address (a power of two, at least a page).
    pub align: u64,
    /// Lowest address allowed.
    pub min: u64,
    /// The segment must end at or below this (e.g. 4 GiB for a kernel that cannot be loaded
    /// above).
    pub limit: u64,
    /// Where it may go.
    pub placement: Placement,
}

/// A placed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Name.
    pub what: &'static str,
    /// Physical memory it occupies.
    pub range: PhysRange,
    /// True if inside a scratch area.
    pub in_scratch: bool,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// `ranges` minus `cut`; sorted input gives sorted output. Public so the mini kernel's free
/// map shares it.
#[must_use]
pub fn subtract(ranges: &[PhysRange], cut: PhysRange) -> Vec<PhysRange> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &r in ranges {
        if !r.overlaps(cut) {
            out.push(r);
            continue;
        }
        if r.start() < cut.start() {
            out.extend(PhysRange::from_bounds(r.start(), cut.start()));
        }
        if cut.end() < r.end() {
            out.extend(PhysRange::from_bounds(cut.end(), r.end()));
        }
    }
    out
}

fn intersect(a: &[PhysRange], b: &[PhysRange]) -> Vec<PhysRange> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let s = x.start().max(y.start());
            let e = x.end().min(y.end());
            if s < e {
                out.extend(PhysRange::from_bounds(s, e));
            }
        }
    }
    out
}

/// Highest aligned start in `ranges` for `size` bytes within `[min, limit)`.
fn top_down(ranges: &[PhysRange], size: u64, align: u64, min: u64, limit: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    for r in ranges {
        let end = r.end().as_u64().min(limit);
        let lo = r.start().as_u64().max(min);
        let Some(start) = end.checked_sub(size).map(|s| s & !(align - 1)) else { continue };
        if start >= lo && end > lo && best.is_none_or(|b| start > b) {
            best = Some(start);
        }
    }
    best
}

/// Places `requests` in order in `ram` (sorted, disjoint), honouring `scratch`.
///
/// # Errors
/// [`BootError::NoRoom`] naming the first request that does not fit; [`BootError::TooLarge`]
/// if all of them need more than half of RAM;
/// [`BootError::TooManySegments`] for more than 16 requests; [`BootError::BadSegment`] for a
/// fixed address outside free RAM or inside scratch when it must not be.
pub fn place(ram: &[PhysRange], scratch: &[PhysRange], requests: &[Request]) -> Result<Vec<Placed>, BootError> {
    if requests.len() > MAX_SEGMENTS {
        return Err(BootError::TooManySegments { count: requests.len(), max: MAX_SEGMENTS });
    }
    let mut free: Vec<PhysRange> = ram.to_vec();
    if let Some(low) = PhysRange::new(PhysAddr::new(0), MIN_ADDR) {
        free = subtract(&free, low);
    }
    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        let size = align_up(req.size.max(1), PAGE_SIZE).unwrap_or(!(PAGE_SIZE - 1));
        let align = req.align.max(PAGE_SIZE).next_power_of_two();
        let min = align_up(req.min.max(MIN_ADDR), align).unwrap_or(u64::MAX);
        let no_room = |where_| BootError::NoRoom { what: req.what, size, align, min: PhysAddr::new(min), where_ };
        let start = match req.placement {
            Placement::Fixed(at) => {
                let r = PhysRange::new(at, size).ok_or(BootError::BadSegment {
                    what: req.what,
                    at,
                    problem: "address range overflows",
                })?;
                if !at.is_aligned(align) {
                    return Err(BootError::BadSegment { what: req.what, at, problem: "fixed address not aligned" });
                }
                if !free.iter().any(|f| f.contains_range(r)) {
                    return Err(BootError::BadSegment { what: req.what, at, problem: "fixed address not in free RAM" });
                }
                at.as_u64()
            }
            Placement::PreferScratch => {
                let in_scratch = intersect(&free, scratch);
                top_down(&in_scratch, size, align, min, req.limit)
                    .or_else(|| top_down(&free, size, align, min, req.limit))
                    .ok_or(no_room(" in RAM"))?
            }
            Placement::OutsideScratch => {
                let mut outside = free.clone();
                for &s in scratch {
                    outside = subtract(&outside, s);
                }
                top_down(&outside, size, align, min, req.limit).ok_or(no_room(" in RAM outside the scratch areas"))?
            }
        };
        let range = PhysRange::new(PhysAddr::new(start), size).ok_or(no_room(""))?;
        free = subtract(&free, range);
        out.push(Placed { what: req.what, range, in_scratch: scratch.iter().any(|s| s.contains_range(range)) });
    }
    check_total(&out, ram)?;
    Ok(out)
}

/// `kexec_load` refuses a segment, or all of them together, larger than half of RAM.
fn check_total(segments: &[Placed], ram: &[PhysRange]) -> Result<(), BootError> {
    let max = ram.iter().map(|r| r.len()).sum::<u64>() / 2;
    let total = segments.iter().map(|s| s.range.len()).sum::<u64>();
    if total > max { Err(BootError::TooLarge { total, max }) } else { Ok(()) }
}

/// Checks a finished plan against every rule, independently of how it was made: page
/// aligned, inside RAM and at or above 1 MiB, pairwise disjoint, at most 16 segments, at most
/// half of RAM in all, and the
/// segments named in `outside_scratch` clear of every scratch area.
///
/// # Errors
/// [`BootError::BadSegment`] or [`BootError::TooManySegments`] for the first broken rule.
pub fn check(
    segments: &[Placed],
    ram: &[PhysRange],
    scratch: &[PhysRange],
    outside_scratch: &[&str],
) -> Result<(), BootError> {
    if segments.len() > MAX_SEGMENTS {
        return Err(BootError::TooManySegments { count: segments.len(), max: MAX_SEGMENTS });
    }
    check_total(segments, ram)?;
    for (i, s) in segments.iter().enumerate() {
        let bad = |problem| BootError::BadSegment { what: s.what, at: s.range.start(), problem };
        if !s.range.start().is_page_aligned() || !s.range.end().is_page_aligned() || s.range.is_empty() {
            return Err(bad("not a whole number of pages"));
        }
        if s.range.start().as_u64() < MIN_ADDR {
            return Err(bad("below 1 MiB"));
        }
        if !ram.iter().any(|r| r.contains_range(s.range)) {
            return Err(bad("not inside one RAM range"));
        }
        if segments[..i].iter().any(|o| o.range.overlaps(s.range)) {
            return Err(bad("overlaps another segment"));
        }
        if outside_scratch.contains(&s.what) && scratch.iter().any(|sc| sc.overlaps(s.range)) {
            return Err(bad("handover data inside a scratch area"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const MIB: u64 = 1 << 20;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    fn req(what: &'static str, size: u64, align: u64, placement: Placement) -> Request {
        Request { what, size, align, min: 0, limit: u64::MAX, placement }
    }

    /// 1 GiB QEMU guest with kho_scratch=16M,128M,32M-like areas.
    fn guest() -> (Vec<PhysRange>, Vec<PhysRange>) {
        let ram = vec![r(0x1000, 0x9e000), r(MIB, 0x3fee_0000 - MIB + MIB)];
        let scratch = vec![r(0x0400_0000, 16 * MIB), r(0x3400_0000, 128 * MIB), r(0x3c00_0000, 32 * MIB)];
        (ram, scratch)
    }

    #[test]
    fn handover_outside_scratch_rest_inside() {
        let (ram, scratch) = guest();
        let reqs = [
            req("handover", 12 * MIB + 5, 4 * MIB, Placement::OutsideScratch),
            Request { min: 16 * MIB, ..req("kernel", 40 * MIB, 2 * MIB, Placement::PreferScratch) },
            req("initrd", 3 * MIB + 1, PAGE_SIZE, Placement::PreferScratch),
            req("boot", 3 * PAGE_SIZE, PAGE_SIZE, Placement::PreferScratch),
        ];
        let p = place(&ram, &scratch, &reqs).unwrap();
        check(&p, &ram, &scratch, &["handover"]).unwrap();
        assert!(!p[0].in_scratch && p[1].in_scratch && p[2].in_scratch && p[3].in_scratch, "{p:?}");
        assert_eq!(p[0].range.len(), 12 * MIB + PAGE_SIZE);
        assert!(p[0].range.start().is_aligned(4 * MIB));
        assert!(p[1].range.start().is_aligned(2 * MIB) && p[1].range.start().as_u64() >= 16 * MIB);
        assert_eq!(p[2].range.len(), 3 * MIB + PAGE_SIZE);
        // Top-down: the highest 4 MiB-aligned start below the end of RAM (0x3ffe0000).
        assert_eq!(p[0].range.start().as_u64(), 0x3f00_0000);
    }

    #[test]
    fn falls_back_outside_scratch_and_reports_no_room() {
        let (ram, scratch) = guest();
        let big = req("kernel", 200 * MIB, 2 * MIB, Placement::PreferScratch);
        let p = place(&ram, &scratch, &[big]).unwrap();
        assert!(!p[0].in_scratch);
        check(&p, &ram, &scratch, &[]).unwrap();
        let huge = req("handover", 900 * MIB, PAGE_SIZE, Placement::OutsideScratch);
        let e = place(&ram, &scratch, &[huge]).unwrap_err();
        assert!(matches!(e, BootError::NoRoom { what: "handover", .. }), "{e}");
    }

    #[test]
    fn segments_never_overlap_scratch_or_each_other() {
        // Many small scratch areas fragmenting RAM: the handover still avoids them all.
        let ram = vec![r(MIB, 511 * MIB)];
        let scratch: Vec<PhysRange> = (0..20).map(|i| r(8 * MIB + i * 24 * MIB, 4 * MIB)).collect();
        let mut reqs = vec![req("handover", 19 * MIB, 4 * MIB, Placement::OutsideScratch)];
        reqs.extend((0..10).map(|_| req("x", 2 * MIB, PAGE_SIZE, Placement::PreferScratch)));
        let p = place(&ram, &scratch, &reqs).unwrap();
        check(&p, &ram, &scratch, &["handover"]).unwrap();
        assert!(scratch.iter().all(|s| !s.overlaps(p[0].range)));
    }

    #[test]
    fn fixed_and_limits() {
        let (ram, scratch) = guest();
        let fixed = req("kernel", 8 * MIB, 2 * MIB, Placement::Fixed(PhysAddr::new(16 * MIB)));
        assert_eq!(place(&ram, &scratch, &[fixed]).unwrap()[0].range.start().as_u64(), 16 * MIB);
        let clash = [fixed, fixed];
        assert!(matches!(
            place(&ram, &scratch, &clash),
            Err(BootError::BadSegment { problem: "fixed address not in free RAM", .. })
        ));
        let low = Request { limit: 64 * MIB, ..req("boot", PAGE_SIZE, PAGE_SIZE, Placement::PreferScratch) };
        assert!(place(&ram, &scratch, &[low]).unwrap()[0].range.end().as_u64() <= 64 * MIB);
        let too_many = vec![req("x", PAGE_SIZE, PAGE_SIZE, Placement::PreferScratch); 17];
        assert_eq!(place(&ram, &scratch, &too_many), Err(BootError::TooManySegments { count: 17, max: 16 }));
    }

    #[test]
    fn more_than_half_of_ram_is_refused() {
        let ram = vec![r(MIB, 63 * MIB)];
        let big = [req("handover", 33 * MIB, PAGE_SIZE, Placement::OutsideScratch)];
        assert_eq!(place(&ram, &[], &big), Err(BootError::TooLarge { total: 33 * MIB, max: 63 * MIB / 2 }));
        let seg = Placed { what: "a", range: r(MIB, 32 * MIB), in_scratch: false };
        assert_eq!(check(&[seg], &ram, &[], &[]), Err(BootError::TooLarge { total: 32 * MIB, max: 63 * MIB / 2 }));
    }

    #[test]
    fn check_catches_each_rule() {
        let (ram, scratch) = guest();
        let seg = |what, start, len| Placed { what, range: r(start, len), in_scratch: false };
        let e = |s: &[Placed]| check(s, &ram, &scratch, &["handover"]).unwrap_err();
        assert!(matches!(e(&[seg("a", 0x1000, 0x1000)]), BootError::BadSegment { problem: "below 1 MiB", .. }));
        assert!(matches!(
            e(&[seg("a", 0x40_0000_0000, 0x1000)]),
            BootError::BadSegment { problem: "not inside one RAM range", .. }
        ));
        assert!(matches!(
            e(&[seg("a", 32 * MIB, 0x2000), seg("b", 32 * MIB + 0x1000, 0x1000)]),
            BootError::BadSegment { what: "b", problem: "overlaps another segment", .. }
        ));
        assert!(matches!(
            e(&[seg("handover", 0x3400_0000, 0x1000)]),
            BootError::BadSegment { problem: "handover data inside a scratch area", .. }
        ));
        assert!(matches!(
            e(&[seg("a", 32 * MIB + 1, 0x1000)]),
            BootError::BadSegment { problem: "not a whole number of pages", .. }
        ));
    }

    #[test]
    fn random_layouts_obey_every_rule() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut placed_ok = 0;
        for _ in 0..2000 {
            let ram: Vec<PhysRange> =
                (0..1 + next(4)).map(|i| r(i * 2048 * MIB + MIB * (1 + next(64)), MIB * (1 + next(1500)))).collect();
            let mut scratch: Vec<PhysRange> = Vec::new();
            for rr in &ram {
                if next(2) == 0 {
                    let s = r(rr.start().as_u64() + MIB * next(rr.len() / MIB / 2 + 1), 4 * MIB);
                    if rr.contains_range(s) {
                        scratch.push(s);
                    }
                }
            }
            let reqs = [
                req("handover", MIB * (1 + next(64)), 4 * MIB, Placement::OutsideScratch),
                Request { min: 16 * MIB, ..req("kernel", MIB * (1 + next(40)), 2 * MIB, Placement::PreferScratch) },
                req("initrd", PAGE_SIZE * (1 + next(5000)), PAGE_SIZE, Placement::PreferScratch),
                req("boot", 3 * PAGE_SIZE, PAGE_SIZE, Placement::PreferScratch),
            ];
            match place(&ram, &scratch, &reqs) {
                Ok(p) => {
                    check(&p, &ram, &scratch, &["handover"]).unwrap();
                    for (pl, rq) in p.iter().zip(&reqs) {
                        assert!(pl.range.len() >= rq.size && pl.range.start().is_aligned(rq.align));
                    }
                    placed_ok += 1;
                }
                Err(e) => assert!(matches!(e, BootError::NoRoom { .. } | BootError::TooLarge { .. }), "{e}"),
            }
        }
        assert!(placed_ok > 1000, "only {placed_ok} layouts placed");
    }
}
