//! The seed review's findings (kho-v5-09), each as a requirement with a test named after it.
//! The two splitting findings are unit tests in `src/split.rs`
//! (`order_bounded_when_splitting_a_range`, `alignment_respected_when_splitting`); the two
//! restore findings and the restore contract are here.

use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{
    Block, DecodeError, DecodeErrorKind, Field, FormatVersion, Handover, IncomingConfig, Kho, MemMap, Order,
    OutgoingConfig, PAGE_SIZE, Pfn, PhysAddr, PhysRange, RestoreError,
};

const RAM: (u64, u64) = (0x10_0000, 256 << 20);

fn ram() -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(RAM.0), RAM.1).unwrap()]
}
fn block(phys: u64, order: u32) -> Block {
    Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap()
}

/// Preserves `blocks` with a kernel whose maximum order is `out_max`, hands over in
/// `format`, and parses with a next kernel whose maximum order is `in_max`.
fn handover(blocks: &[Block], out_max: u32, in_max: u32, format: FormatVersion) -> (Handover, RecordingMap) {
    let plat = TestPlatform::new(&ram(), PhysRange::new(PhysAddr::new(RAM.0 + (200 << 20)), 16 << 20).unwrap());
    let scratch = PhysRange::new(PhysAddr::new(RAM.0 + (240 << 20)), 8 << 20).unwrap();
    let mut cfg = OutgoingConfig::new(ram(), vec![scratch]);
    cfg.max_order = Order::new(out_max).unwrap();
    let kho = Kho::new(&plat, cfg).unwrap();
    for b in blocks {
        kho.preserve_folio(b.pfn(), b.order()).unwrap();
    }
    let fin = kho.finalize(format).unwrap();
    let mut icfg = IncomingConfig::new(ram());
    icfg.max_order = Order::new(in_max).unwrap();
    let mut h = Handover::parse(&plat, &fin.ptr, &icfg).unwrap();
    let mut map = RecordingMap { ram: ram(), ..RecordingMap::default() };
    h.reserve(&mut map);
    // The FDT page is preserved too; take it out of the way so tests see only their blocks.
    h.restore_folio(&mut map, fin.ptr.fdt).unwrap();
    map.folios.clear();
    (h, map)
}

/// A memory map in which some RAM pages are offline: `pfn_valid` is false for them. Restore
/// must ask this before it reads any preserved state (v5 read `page->private` first).
struct OfflineMap {
    inner: RecordingMap,
    offline: Vec<Pfn>,
}

impl MemMap for OfflineMap {
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        !self.offline.contains(&pfn) && self.inner.pfn_valid(pfn)
    }
    fn reserve(&mut self, ranges: &[PhysRange]) {
        self.inner.reserve(ranges);
    }
    fn claim_folio(&mut self, block: Block) {
        self.inner.claim_folio(block);
    }
    fn claim_pages(&mut self, block: Block) {
        self.inner.claim_pages(block);
    }
    fn release(&mut self, block: Block) {
        self.inner.release(block);
    }
}

#[test]
fn no_page_state_read_before_valid_page_check() {
    let b = block(0x20_0000, 2);
    let (mut h, map) = handover(&[b], 10, 10, FormatVersion::V1);
    let mut offline = OfflineMap { inner: map, offline: vec![b.pfn()] };
    // The block is preserved, but its page is not a valid page here: the answer must be
    // "invalid page", not "restored", and the preserved state must be untouched.
    assert_eq!(h.restore_folio(&mut offline, b.phys()), Err(RestoreError::InvalidPage { phys: b.phys() }));
    assert!(h.preserved().contains(b), "state untouched by the refused restore");
    assert!(offline.inner.folios.is_empty());
    // Outside RAM entirely (v5 dereferenced a NULL page here).
    let far = PhysAddr::new(0x40_0000_0000);
    assert_eq!(h.restore_folio(&mut offline, far), Err(RestoreError::InvalidPage { phys: far }));
    // Once the page is valid, the same call restores it.
    offline.offline.clear();
    assert_eq!(h.restore_folio(&mut offline, b.phys()), Ok(b));
}

#[test]
fn order_checked_against_max_before_compound_page() {
    // The previous kernel supported order 12 (16 MiB folios); this one stops at 10.
    let big = block(0x100_0000, 12);
    let small = block(0x20_0000, 3);
    let (mut h, mut map) = handover(&[big, small], 12, 10, FormatVersion::V4);
    assert_eq!(h.oversized_blocks(), 1);
    assert_eq!(
        h.restore_folio(&mut map, big.phys()),
        Err(RestoreError::OrderTooLarge { block: big, max: Order::new(10).unwrap() })
    );
    assert!(map.folios.is_empty(), "no compound page was built for the oversized block");
    assert!(h.preserved().contains(big), "oversized memory stays reserved, never lost");
    // It is still reachable as order-0 pages.
    assert_eq!(h.restore_pages(&mut map, big.phys(), 1 << 12), Ok(vec![big]));
    assert_eq!(map.pages, [big]);
    assert_eq!(h.restore_folio(&mut map, small.phys()), Ok(small));
}

#[test]
fn restore_refuses_what_was_never_preserved() {
    let b = block(0x30_0000, 4);
    let (mut h, mut map) = handover(&[b], 10, 10, FormatVersion::V1);
    let nothing = PhysAddr::new(0x80_0000);
    assert_eq!(h.restore_folio(&mut map, nothing), Err(RestoreError::NeverPreserved { phys: nothing }));
    // Inside the block but not its head: a shape mismatch naming the real block.
    let inside = PhysAddr::new(0x30_1000);
    assert_eq!(
        h.restore_folio(&mut map, inside),
        Err(RestoreError::ShapeMismatch { requested: PhysRange::new(inside, PAGE_SIZE).unwrap(), found: b })
    );
    let odd = PhysAddr::new(0x30_0010);
    assert_eq!(h.restore_folio(&mut map, odd), Err(RestoreError::Misaligned { phys: PhysAddr::new(0x30_0010) }));
    assert_eq!(h.restore_folio(&mut map, b.phys()), Ok(b));
    assert_eq!(h.restore_folio(&mut map, b.phys()), Err(RestoreError::AlreadyRestored { block: b }));
    assert_eq!(map.folios, [b]);
}

#[test]
fn restore_pages_needs_an_exact_tiling_and_is_all_or_nothing() {
    let (a, b) = (block(0x40_0000, 1), block(0x40_2000, 0));
    let (mut h, mut map) = handover(&[a, b], 10, 10, FormatVersion::V4);
    // Three pages: a (2 pages) + b (1 page). Four pages would run into nothing.
    assert!(matches!(h.restore_pages(&mut map, a.phys(), 4), Err(RestoreError::NeverPreserved { .. })));
    // One page would cut block a in half.
    assert_eq!(
        h.restore_pages(&mut map, a.phys(), 1),
        Err(RestoreError::ShapeMismatch { requested: PhysRange::new(a.phys(), PAGE_SIZE).unwrap(), found: a })
    );
    assert!(map.pages.is_empty(), "failed calls restore nothing");
    assert_eq!(h.restore_pages(&mut map, a.phys(), 3), Ok(vec![a, b]));
    assert_eq!(h.restore_pages(&mut map, a.phys(), 3), Err(RestoreError::AlreadyRestored { block: a }));
    assert_eq!(h.restore_pages(&mut map, a.phys(), 0), Err(RestoreError::Empty { phys: a.phys() }));
}

#[test]
fn unclaimed_memory_is_listed_and_released() {
    let blocks = [block(0x50_0000, 0), block(0x60_0000, 9), block(0x90_0000, 2)];
    let (mut h, mut map) = handover(&blocks, 10, 10, FormatVersion::V1);
    h.restore_folio(&mut map, blocks[1].phys()).unwrap();
    let unclaimed: Vec<Block> = h.unclaimed().collect();
    assert_eq!(unclaimed, [blocks[0], blocks[2]]);
    assert_eq!(h.release_unclaimed(&mut map), 2);
    assert_eq!(map.released, [blocks[0], blocks[2]]);
    assert_eq!(h.unclaimed().count(), 0);
    assert!(matches!(h.restore_folio(&mut map, blocks[0].phys()), Err(RestoreError::NeverPreserved { .. })));
}

#[test]
fn reserve_is_one_sorted_coalesced_batch() {
    // Adjacent blocks of different orders merge into one range; separate ones stay apart.
    let blocks = [block(0x70_0000, 0), block(0x70_1000, 0), block(0x70_2000, 1), block(0x80_0000, 9)];
    let (h, map) = handover(&blocks, 10, 10, FormatVersion::V1);
    assert_eq!(map.reserved.len(), 1, "one batch");
    let want_first = PhysRange::new(PhysAddr::new(0x70_0000), 4 * PAGE_SIZE).unwrap();
    assert!(map.reserved[0].contains(&want_first));
    assert!(map.reserved[0].windows(2).all(|w| w[0].end() < w[1].start()), "sorted, disjoint, coalesced");
    assert_eq!(h.reserved_ranges(), map.reserved[0].as_slice());
}

#[test]
fn strict_policy_refuses_a_handover_with_oversized_blocks() {
    let plat = TestPlatform::new(&ram(), PhysRange::new(PhysAddr::new(RAM.0 + (200 << 20)), 16 << 20).unwrap());
    let scratch = PhysRange::new(PhysAddr::new(RAM.0 + (240 << 20)), 8 << 20).unwrap();
    let mut cfg = OutgoingConfig::new(ram(), vec![scratch]);
    cfg.max_order = Order::new(12).unwrap();
    let kho = Kho::new(&plat, cfg).unwrap();
    let (low, high) = (block(0x200_0000, 12), block(0x300_0000, 11));
    for b in [high, low] {
        kho.preserve_folio(b.pfn(), b.order()).unwrap();
    }
    let fin = kho.finalize(FormatVersion::V1).unwrap();
    let mut icfg = IncomingConfig::new(ram());
    icfg.oversized = kho_core::OversizedPolicy::Reject;
    // Order 11 comes first in the walk; the error names that order's lowest block.
    assert_eq!(
        Handover::parse(&plat, &fin.ptr, &icfg).unwrap_err(),
        DecodeError::new(Field::Block, high.phys(), DecodeErrorKind::OrderTooLarge { order: 11, max: 10 })
    );
    icfg.oversized = kho_core::OversizedPolicy::Reserve;
    assert_eq!(Handover::parse(&plat, &fin.ptr, &icfg).unwrap().oversized_blocks(), 2);
}
