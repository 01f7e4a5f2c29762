//! kho-v1 (both bitmap sizes) and kho-v4 describe the same preserved set: for random sets of
//! blocks, each format's encoding decodes to exactly the set, and so to each other.

use std::collections::BTreeSet;

use kho_core::testing::TestPlatform;
use kho_core::{
    BitmapBytes, Block, FormatVersion, Handover, IncomingConfig, Kho, Order, OutgoingConfig, Pfn, PhysAddr, PhysRange,
};
use proptest::prelude::*;

const RAM_START: u64 = 0x10_0000;
const RAM_LEN: u64 = 8 << 30;

fn ram() -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(RAM_START), RAM_LEN).unwrap()]
}

fn handover_set(blocks: &BTreeSet<Block>, format: FormatVersion, bitmap: BitmapBytes) -> BTreeSet<Block> {
    let pool = PhysRange::new(PhysAddr::new(RAM_START + RAM_LEN - (256 << 20)), 128 << 20).unwrap();
    let scratch = PhysRange::new(PhysAddr::new(RAM_START + RAM_LEN - (64 << 20)), 32 << 20).unwrap();
    let plat = TestPlatform::new(&ram(), pool);
    let mut cfg = OutgoingConfig::new(ram(), vec![scratch]);
    cfg.bitmap_bytes = bitmap;
    cfg.max_order = Order::new(18).unwrap();
    let kho = Kho::new(&plat, cfg).unwrap();
    for b in blocks {
        kho.preserve_folio(b.pfn(), b.order()).unwrap();
    }
    let fin = kho.finalize(format).unwrap();
    let mut icfg = IncomingConfig::new(ram());
    icfg.v1_bitmap_bytes = bitmap;
    icfg.max_order = Order::new(18).unwrap();
    let h = Handover::parse(&plat, &fin.ptr, &icfg).unwrap();
    let fdt = Block::at(fin.ptr.fdt, Order::ZERO).unwrap();
    h.preserved().iter().filter(|&b| b != fdt).collect()
}

/// Disjoint blocks of mixed orders spread over 7.5 GiB, so bitmaps and leaves of many
/// indices and orders (up to 1 GiB blocks) are exercised.
fn blocks() -> impl Strategy<Value = BTreeSet<Block>> {
    proptest::collection::vec((0u64..(7 << 18), 0u32..=18), 0..300).prop_map(|raw| {
        let mut taken: Vec<PhysRange> = Vec::new();
        let mut set = BTreeSet::new();
        for (slot, order) in raw {
            let pfn = (RAM_START >> 12) + ((slot << 1) & !((1u64 << order) - 1));
            let Some(b) = Pfn::new(pfn).and_then(|p| Block::new(p, Order::new(order).unwrap())) else { continue };
            if b.phys().as_u64() < RAM_START || b.range().end().as_u64() > RAM_START + RAM_LEN - (256 << 20) {
                continue;
            }
            if taken.iter().any(|r| r.overlaps(b.range())) {
                continue;
            }
            taken.push(b.range());
            set.insert(b);
        }
        set
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 64 }, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v1_and_v4_describe_the_same_preserved_set(set in blocks()) {
        let v1_512 = handover_set(&set, FormatVersion::V1, BitmapBytes::B512);
        let v1_4096 = handover_set(&set, FormatVersion::V1, BitmapBytes::B4096);
        let v4 = handover_set(&set, FormatVersion::V4, BitmapBytes::B512);
        prop_assert_eq!(&v1_512, &set);
        prop_assert_eq!(&v1_4096, &set);
        prop_assert_eq!(&v4, &set);
    }
}
