//! Golden test: the exact bytes of the spec's worked kho-v1 example (spec §1.3,
//! `tests/data/spec-examples/v1-small`): our encoder writes those chunk and bitmap bytes,
//! and our decoder reads the example back to exactly its blocks.

use std::collections::BTreeSet;

use kho_core::format::{BitmapBytes, FormatVersion, Limits, WalkContext, v1};
use kho_core::testing::{SparseMem, TestPlatform};
use kho_core::{Block, BlockSet, Kho, Order, OutgoingConfig, PhysAddr, PhysRange, PhysRead};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spec-examples/v1-small");

fn expected_blocks() -> BTreeSet<(u64, u32)> {
    let json = std::fs::read_to_string(format!("{DIR}/expected.json")).unwrap();
    // A tiny reader for the example's fixed shape: "phys": N, "order": M pairs.
    let nums: Vec<u64> =
        json.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    // bitmap_bytes, first_chunk, then (phys, order) * 5, then the subtree's fdt.
    assert_eq!(nums[0], 512);
    nums[2..12].chunks(2).map(|c| (c[0], u32::try_from(c[1]).unwrap())).collect()
}

/// Loads pages.hex ("0xADDR: 16 bytes" lines) into memory.
fn load_pages(mem: &SparseMem) -> usize {
    let text = std::fs::read_to_string(format!("{DIR}/pages.hex")).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| l.starts_with("0x")) {
        let (addr, bytes) = line.split_once(':').unwrap();
        let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
        let data: Vec<u8> = bytes.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        assert_eq!(data.len(), 16);
        mem.write_bytes(PhysAddr::new(addr), &data);
        lines += 1;
    }
    lines
}

fn ram() -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(0x1000), 0x2_0000_0000).unwrap()]
}

#[test]
fn decoder_reads_the_worked_example() {
    let mem = SparseMem::new();
    assert_eq!(load_pages(&mem), 12);
    let ram = ram();
    let mut ctx = WalkContext::new(&mem, &ram, &[], Limits::default());
    let mut set = BlockSet::new();
    v1::decode(&mut ctx, PhysAddr::new(1_052_672), PhysAddr::new(0), BitmapBytes::B512, &mut set).unwrap();
    let got: BTreeSet<(u64, u32)> = set.iter().map(|b| (b.phys().as_u64(), b.order().as_u32())).collect();
    assert_eq!(got, expected_blocks());
    // Four chunks plus the one page holding all four bitmaps.
    let mut pages = ctx.metadata_pages.clone();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), 5);
}

#[test]
fn encoder_writes_the_worked_example_bytes() {
    // Bitmaps from a pool at 0x100000 (packed 8 per page), chunks after them: the example's
    // placement, which our allocator reproduces when preserving in ascending order.
    let ram = ram();
    let plat = TestPlatform::new(&ram, PhysRange::new(PhysAddr::new(0x10_0000), 0x10_0000).unwrap());
    let scratch = PhysRange::new(PhysAddr::new(0x1_fff0_0000), 0x10_0000).unwrap();
    let mut cfg = OutgoingConfig::new(ram.clone(), vec![scratch]);
    cfg.max_order = Order::new(18).unwrap();
    let kho = Kho::new(&plat, cfg).unwrap();
    let mut by_order: Vec<(u64, u32)> = expected_blocks().into_iter().collect();
    by_order.sort_by_key(|&(p, o)| (o, p));
    for (phys, order) in by_order {
        let b = Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap();
        kho.preserve_folio(b.pfn(), b.order()).unwrap();
    }
    let want = SparseMem::new();
    load_pages(&want);
    // The tracker's bitmaps sit exactly where the example put them.
    for addr in [0x10_0000u64, 0x10_0200, 0x10_0400, 0x10_0600] {
        let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
        plat.read_phys(PhysAddr::new(addr), &mut a).unwrap();
        want.read_phys(PhysAddr::new(addr), &mut b).unwrap();
        assert_eq!(a, b, "bitmap at {addr:#x}");
    }
    // The chunk encoder, fed the example's entries with chunk pages from 0x101000, writes
    // every chunk byte for byte, `next` links included.
    let chunk_plat = TestPlatform::new(&ram, PhysRange::new(PhysAddr::new(0x10_1000), 0x10_0000).unwrap());
    let mut entries: Vec<v1::Entry> = Vec::new();
    let mut sorted: Vec<(u64, u32)> = expected_blocks().into_iter().collect();
    sorted.sort_by_key(|&(p, o)| (o, p));
    for (phys, order) in &sorted {
        let span = 4096u64 << (order + 12);
        let phys_start = phys & !(span - 1);
        let bitmap = 0x10_0000
            + 0x200
                * match order {
                    0 => 0u64,
                    1 => 1,
                    9 => 2,
                    _ => 3,
                };
        let e = v1::Entry {
            order: Order::new(*order).unwrap(),
            phys_start: PhysAddr::new(phys_start),
            bitmap: PhysAddr::new(bitmap),
        };
        if !entries.contains(&e) {
            entries.push(e);
        }
    }
    let list = v1::encode(&chunk_plat, &entries).unwrap();
    assert_eq!(list.first, PhysAddr::new(1_052_672));
    assert_eq!(list.pages.len(), 4);
    for &page in &list.pages {
        let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
        chunk_plat.read_phys(page, &mut a).unwrap();
        want.read_phys(page, &mut b).unwrap();
        assert!(a == b, "chunk page {page} differs from the example");
    }
    // Through the engine, finalize also preserves the FDT page (order 0) and links chunks
    // the same way; the decoder must give back the example's blocks plus that page.
    let fin = kho.finalize(FormatVersion::V1).unwrap();
    let fdt_block = Block::at(fin.ptr.fdt, Order::ZERO).unwrap();
    assert!(kho.is_preserved(fdt_block));
    let mut ctx = WalkContext::new(&plat, &ram, &[], Limits::default());
    let mut set = BlockSet::new();
    let dtb_len = {
        let mut h = [0u8; 8];
        plat.read_phys(fin.ptr.fdt, &mut h).unwrap();
        u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize
    };
    let mut dtb = vec![0u8; dtb_len];
    plat.read_phys(fin.ptr.fdt, &mut dtb).unwrap();
    let root = kho_core::format::root::parse(&dtb, fin.ptr.fdt, &Limits::default()).unwrap();
    v1::decode(&mut ctx, root.memory_map, fin.ptr.fdt, BitmapBytes::B512, &mut set).unwrap();
    let mut want_blocks = expected_blocks();
    want_blocks.insert((fin.ptr.fdt.as_u64(), 0));
    let got: BTreeSet<(u64, u32)> = set.iter().map(|b| (b.phys().as_u64(), b.order().as_u32())).collect();
    assert_eq!(got, want_blocks);
}
