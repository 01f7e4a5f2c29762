//! `Handover::reserve_streaming` (issue 10): the platform gets the same ranges as
//! `Handover::reserve`, in the same order, in batches of bounded size.

use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{FormatVersion, Handover, IncomingConfig, Kho, Order, OutgoingConfig, PhysAddr, PhysRange};

const RAM: (u64, u64) = (0x10_0000, 256 << 20);

fn ram() -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(RAM.0), RAM.1).unwrap()]
}

/// Preserves `n` isolated blocks of mixed orders (every one its own range) and parses.
fn handover(n: u64, format: FormatVersion) -> Handover {
    let plat = TestPlatform::new(&ram(), PhysRange::new(PhysAddr::new(RAM.0 + (200 << 20)), 16 << 20).unwrap());
    let scratch = PhysRange::new(PhysAddr::new(RAM.0 + (240 << 20)), 8 << 20).unwrap();
    let kho = Kho::new(&plat, OutgoingConfig::new(ram(), vec![scratch])).unwrap();
    for i in 0..n {
        let order = Order::new(u32::try_from(i % 3).unwrap()).unwrap();
        // 64 KiB apart: never adjacent, so every block is its own range.
        let pfn = kho_core::PhysAddr::new(RAM.0 + (4 << 20) + i * 0x1_0000).pfn().unwrap();
        kho.preserve_folio(pfn, order).unwrap();
    }
    let fin = kho.finalize(format).unwrap();
    Handover::parse(&plat, &fin.ptr, &IncomingConfig::new(ram())).unwrap()
}

fn check(h: &Handover, batch: usize) {
    let n = h.reserved_ranges().len();
    let mut map = RecordingMap { ram: ram(), ..RecordingMap::default() };
    let calls = h.reserve_streaming(&mut map, batch);
    assert_eq!(calls, n.div_ceil(batch), "{n} ranges in batches of {batch}");
    assert_eq!(map.reserved.len(), calls);
    for b in &map.reserved {
        assert!(!b.is_empty() && b.len() <= batch);
        assert!(b.windows(2).all(|w| w[0].end() < w[1].start()), "each batch sorted and disjoint");
    }
    let all: Vec<PhysRange> = map.reserved.concat();
    assert_eq!(all, h.reserved_ranges());
    let mut one = RecordingMap::default();
    h.reserve(&mut one);
    assert_eq!(one.reserved, vec![all], "the same ranges as reserve(), in one batch");
}

#[test]
fn batches_of_four_concatenate_to_the_reserved_ranges() {
    for format in [FormatVersion::V1, FormatVersion::V4] {
        let h = handover(37, format);
        // 37 blocks plus the root FDT (and any preserved metadata).
        assert!(h.reserved_ranges().len() >= 38);
        check(&h, 4);
        check(&h, 1);
        check(&h, 512);
    }
}

#[test]
fn after_a_restore_the_parse_time_ranges_are_streamed() {
    let mut h = handover(10, FormatVersion::V4);
    let first = h.preserved().iter().next().unwrap();
    let mut map = RecordingMap { ram: ram(), ..RecordingMap::default() };
    h.restore_folio(&mut map, first.phys()).unwrap();
    check(&h, 4);
}

#[test]
fn batch_zero_counts_as_one() {
    let h = handover(5, FormatVersion::V4);
    let mut map = RecordingMap::default();
    assert_eq!(h.reserve_streaming(&mut map, 0), h.reserved_ranges().len());
}
