//! Issue 10, classes 1 and 4: work and memory bounded by the metadata, and one set of checks
//! for every entry point. Each test asserts where (and so how early) the walk stopped.

use kho_core::error::DecodeErrorKind;
use kho_core::format::root;
use kho_core::incoming::{check_handover_ptr, check_scratch};
use kho_core::testing::SparseMem;
use kho_core::{Field, FormatVersion, Handover, HandoverPtr, IncomingConfig, Limits, PhysAddr, PhysRange};

const RAM_START: u64 = 0x4000_0000;

fn r(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

/// A kho-v1 handover: one order-0 chunk at `chunk` whose entries are `(phys_start, bitmap)`.
fn v1_chunk(mem: &SparseMem, chunk: u64, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    page[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, &(start, bm)) in entries.iter().enumerate() {
        let off = 16 + 16 * i;
        page[off..off + 8].copy_from_slice(&start.to_le_bytes());
        page[off + 8..off + 16].copy_from_slice(&bm.to_le_bytes());
    }
    mem.write_bytes(PhysAddr::new(chunk), &page);
    root::build(FormatVersion::V1, PhysAddr::new(chunk), &[]).unwrap()
}

#[test]
fn a_bitmap_shared_by_many_entries_is_refused_at_the_second_entry() {
    // 255 entries (16 MiB apart) behind one alternating bitmap would be 255 * 2048 ranges;
    // a MiB of such chunks, 2^27. The walk stops at the second entry's bitmap pointer.
    let ram = [r(RAM_START, 8 << 30)];
    let mem = SparseMem::with_ram(&ram);
    let bm = RAM_START + 0x1_0000;
    mem.write_bytes(PhysAddr::new(bm), &[0x55; 512]);
    let entries: Vec<(u64, u64)> = (0..255).map(|i| (RAM_START + (1 << 30) + i * (16 << 20), bm)).collect();
    let chunk = RAM_START + 0x2_0000;
    let fdt = v1_chunk(&mem, chunk, &entries);
    let e =
        Handover::parse_fdt(&mem, &fdt, PhysAddr::new(RAM_START), &[], &IncomingConfig::new(ram.to_vec())).unwrap_err();
    assert_eq!(e.field, Field::ChunkBitmap);
    assert_eq!(e.at, PhysAddr::new(chunk + 16 + 16 + 8), "the second entry's bitmap field");
    assert!(matches!(e.kind, DecodeErrorKind::BadValue { found, .. } if found == bm), "{e}");
}

#[test]
fn a_map_claiming_more_than_ram_is_refused_first() {
    // 64 MiB of RAM; two order-10 entries with full bitmaps claim 2 * 16 GiB.
    let ram = [r(RAM_START, 64 << 20)];
    let mem = SparseMem::with_ram(&ram);
    let (b1, b2) = (RAM_START + 0x1_0000, RAM_START + 0x1_0200);
    mem.write_bytes(PhysAddr::new(b1), &[0xff; 512]);
    mem.write_bytes(PhysAddr::new(b2), &[0xff; 512]);
    let mut page = vec![0u8; 4096];
    page[8..12].copy_from_slice(&10u32.to_le_bytes());
    page[12..16].copy_from_slice(&2u32.to_le_bytes());
    for (i, (start, bm)) in [(0u64, b1), (16u64 << 30, b2)].into_iter().enumerate() {
        page[16 + 16 * i..24 + 16 * i].copy_from_slice(&start.to_le_bytes());
        page[24 + 16 * i..32 + 16 * i].copy_from_slice(&bm.to_le_bytes());
    }
    let chunk = RAM_START + 0x2_0000;
    mem.write_bytes(PhysAddr::new(chunk), &page);
    let fdt = root::build(FormatVersion::V1, PhysAddr::new(chunk), &[]).unwrap();
    let v = Handover::validate_fdt(&mem, &fdt, PhysAddr::new(RAM_START), &[], &IncomingConfig::new(ram.to_vec()));
    assert!(v.handover.is_none());
    // The claim is the first problem; what the ranges break follows (outside RAM, overlapping
    // the metadata).
    assert_eq!(v.problems.len(), 4, "{:?}", v.problems);
    let e = &v.problems[0];
    assert_eq!(e.field, Field::PreservedMemoryMap);
    assert!(matches!(e.kind, DecodeErrorKind::BadValue { found, .. } if found == 32 << 30), "{e}");
}

#[test]
fn overlapping_scratch_areas_are_refused_on_every_path() {
    let areas = [r(0x200_0000, 0x100_0000), r(0x280_0000, 0x100_0000)];
    let e = check_scratch(&areas).unwrap_err();
    assert_eq!(e.field, Field::ScratchEntry);
    assert_eq!(e.kind, DecodeErrorKind::InScratch { range: areas[1], scratch: areas[0] });
    // Through the library's FDT entry point too (scratch known from debugfs, say).
    let ram = [r(RAM_START, 64 << 20)];
    let mem = SparseMem::with_ram(&ram);
    let fdt = v1_chunk(&mem, RAM_START + 0x2_0000, &[]);
    let cfg = IncomingConfig::new(ram.to_vec());
    let e = Handover::parse_fdt(&mem, &fdt, PhysAddr::new(RAM_START), &areas, &cfg).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::InScratch { .. }), "{e}");
    assert!(check_scratch(&[areas[0], r(0x400_0000, 0x1000)]).is_ok());
}

#[test]
fn handover_pointers_are_checked_before_anything_is_read() {
    let limits = Limits::default();
    let good = HandoverPtr {
        fdt: PhysAddr::new(0x18_2000),
        fdt_size: 4096,
        scratch: PhysAddr::new(0x18_3000),
        scratch_size: 32,
    };
    assert!(check_handover_ptr(&good, &limits).is_ok());
    for (ptr, field, expected) in [
        (
            HandoverPtr { fdt_size: 0, ..good },
            Field::RootFdt,
            "an FDT size between the 40-byte header and the blob limit",
        ),
        (
            HandoverPtr { fdt_size: 1 << 63, ..good },
            Field::RootFdt,
            "an FDT size between the 40-byte header and the blob limit",
        ),
        (
            HandoverPtr { fdt: PhysAddr::new(1 << 52), ..good },
            Field::RootFdt,
            "an address below the 52-bit physical limit",
        ),
        (
            HandoverPtr { scratch: PhysAddr::new((1 << 52) - 8), ..good },
            Field::ScratchArray,
            "an address below the 52-bit physical limit",
        ),
    ] {
        let e = check_handover_ptr(&ptr, &limits).unwrap_err();
        assert_eq!(e.field, field, "{ptr:?}");
        assert!(matches!(e.kind, DecodeErrorKind::BadValue { expected: x, .. } if x == expected), "{e}");
    }
    // Memory that claims RAM above 2^52 does not make a pointer there acceptable.
    let ram = [r(1 << 51, 1 << 51)];
    let mem = SparseMem::with_ram(&ram);
    let ptr = HandoverPtr { fdt: PhysAddr::new((1 << 52) + 0x1000), ..good };
    let e = Handover::parse(&mem, &ptr, &IncomingConfig::new(ram.to_vec())).unwrap_err();
    assert!(
        matches!(e.kind, DecodeErrorKind::BadValue { expected: "an address below the 52-bit physical limit", .. }),
        "{e}"
    );
}
