//! Fault injection: every metadata allocation an operation makes is made to fail in turn
//! (`TestPlatform::fail_alloc_at`). Each failing call must return `OutOfMemory` and leave the
//! engine exactly as it was: the same preserved set, the same live metadata pages (nothing
//! leaked, nothing freed twice), the same sub-blobs and counters, still not finalized; and a
//! finalize right after it must decode to that same set. The side that does not allocate
//! (unpreserve, abort, the whole incoming walk and restore) is checked to make no attempt.

use std::collections::BTreeSet;

use kho_core::outgoing::Stats;
use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{
    Access, BitmapBytes, Block, FormatVersion, Handover, IncomingConfig, Kho, MemError, Order, OutgoingConfig,
    OutgoingError, PAGE_SIZE, Pfn, PhysAddr, PhysRange, PhysWrite, Result,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const RAM: (u64, u64) = (MIB, 16 * GIB);
const SCRATCH: (u64, u64) = (256 * MIB, 16 * MIB);
const POOL: (u64, u64) = (64 * MIB, 64 * MIB);
const FORMATS: [(FormatVersion, BitmapBytes); 3] = [
    (FormatVersion::V1, BitmapBytes::B512),
    (FormatVersion::V1, BitmapBytes::B4096),
    (FormatVersion::V4, BitmapBytes::B512),
];

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}
fn ram() -> Vec<PhysRange> {
    vec![range(RAM.0, RAM.1 - RAM.0)]
}
fn pfn(phys: u64) -> Pfn {
    PhysAddr::new(phys).pfn().unwrap()
}
fn order(n: u32) -> Order {
    Order::new(n).unwrap()
}
fn blk(phys: u64, o: u32) -> Block {
    Block::at(PhysAddr::new(phys), order(o)).unwrap()
}

fn platform() -> TestPlatform {
    TestPlatform::new(&ram(), range(POOL.0, POOL.1))
}

fn engine(plat: &TestPlatform, bitmap: BitmapBytes) -> Kho<&TestPlatform> {
    let mut cfg = OutgoingConfig::new(ram(), vec![range(SCRATCH.0, SCRATCH.1)]);
    cfg.bitmap_bytes = bitmap;
    Kho::new(plat, cfg).unwrap()
}

/// Some state to start from: order-0 blocks at 2 GiB (their own bitmap index at every
/// bitmap size) and a one-page FDT blob at 3 GiB.
fn seed(kho: &Kho<&TestPlatform>, model: &mut BTreeSet<Block>) {
    for i in 0..5 {
        kho.preserve_folio(pfn(2 * GIB + i * 8 * PAGE_SIZE), Order::ZERO).unwrap();
        model.insert(blk(2 * GIB + i * 8 * PAGE_SIZE, 0));
    }
    add_blob(kho, "seed", 3 * GIB, 1, model);
}

fn add_blob(kho: &Kho<&TestPlatform>, name: &str, at: u64, pages: u64, model: &mut BTreeSet<Block>) {
    let dtb =
        kho_core::fdt::FdtTree { root: kho_core::fdt::FdtNode::new("").prop_str("compatible", name) }.to_dtb().unwrap();
    kho.platform().write_phys(PhysAddr::new(at), &dtb).unwrap();
    kho.add_subtree(name, PhysAddr::new(at), pages * PAGE_SIZE).unwrap();
    model.extend(kho_core::split::split_range(pfn(at), pages, order(10)));
}

/// Everything observable about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    preserved: BTreeSet<Block>,
    live_pages: BTreeSet<u64>,
    subtrees: Vec<(String, PhysAddr, u64)>,
    stats: Stats,
    finalized: bool,
}

fn snap(kho: &Kho<&TestPlatform>) -> Snap {
    Snap {
        preserved: kho.preserved().unwrap().iter().collect(),
        live_pages: kho.platform().live_meta_pages(),
        subtrees: kho.subtrees(),
        stats: kho.stats(),
        finalized: kho.finalized().is_some(),
    }
}

/// Finalizes without faults, decodes as the next kernel would, checks the set against
/// `want` (plus the FDT page), and aborts again.
fn finalize_decode_abort(kho: &Kho<&TestPlatform>, format: FormatVersion, want: &BTreeSet<Block>) {
    kho.platform().fail_alloc_at(None);
    let fin = kho.finalize(format).unwrap();
    let mut cfg = IncomingConfig::new(ram());
    cfg.v1_bitmap_bytes = kho.config().bitmap_bytes;
    let h = Handover::parse(kho.platform(), &fin.ptr, &cfg).unwrap();
    let mut expect = want.clone();
    expect.insert(Block::at(fin.ptr.fdt, Order::ZERO).unwrap());
    assert_eq!(h.preserved().iter().collect::<BTreeSet<_>>(), expect);
    let names: Vec<String> = h.subtrees().iter().map(|s| s.name.clone()).collect();
    let want_names: Vec<String> = kho.subtrees().into_iter().map(|s| s.0).collect();
    assert_eq!(names, want_names);
    kho.abort().unwrap();
}

/// Makes allocation 0, 1, 2, ... of `op` fail until it needs no more, checking after each
/// failure that nothing changed. Returns how many allocations the successful call made.
fn sweep<T: std::fmt::Debug>(
    kho: &Kho<&TestPlatform>,
    format: FormatVersion,
    what: &str,
    op: impl Fn() -> Result<T, OutgoingError>,
) -> (u64, T) {
    let plat = kho.platform();
    let before = snap(kho);
    for n in 0.. {
        assert!(n < 10_000, "{what}: no end to the allocations");
        plat.fail_alloc_at(Some(n));
        let r = op();
        let attempts = plat.alloc_attempts();
        match r {
            Ok(v) => {
                assert_eq!(attempts, n, "{what}: succeeded without reaching allocation {n}");
                plat.fail_alloc_at(None);
                return (n, v);
            }
            Err(e) => {
                assert_eq!(e, OutgoingError::OutOfMemory, "{what}: allocation {n}");
                assert_eq!(attempts, n + 1, "{what}: stopped at the failing allocation {n}");
                assert_eq!(snap(kho), before, "{what}: state changed by failing allocation {n}");
                finalize_decode_abort(kho, format, &before.preserved);
                assert_eq!(snap(kho), before, "{what}: finalize + abort after failure {n}");
            }
        }
    }
    unreachable!()
}

#[test]
fn every_failing_allocation_of_preserve_is_rolled_back() {
    let mut counts = Vec::new();
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        let per_page = PAGE_SIZE / bitmap.bytes();

        // Allocations kept by a successful call are exactly the new live pages.
        let live = |kho: &Kho<&TestPlatform>| kho.platform().live_meta_pages().len() as u64;

        // A folio in a new bitmap: a page of its own with 4096-byte bitmaps, a free slot of
        // the seed's page with 512-byte ones.
        let pages_before = live(&kho);
        let (n, ()) = sweep(&kho, format, "preserve_folio", || kho.preserve_folio(pfn(4 * GIB), order(3)));
        assert_eq!(n, u64::from(per_page == 1));
        assert_eq!(live(&kho) - pages_before, n);
        model.insert(blk(4 * GIB, 3));

        // A range starting one page past 1 GiB: orders 0..=10 up, then 9, 8, 7, 5, 4, 3, 0
        // down: eleven orders, eleven new bitmaps.
        let (start, count) = (GIB + PAGE_SIZE, 3000);
        let blocks: Vec<Block> = kho_core::split::split_range(pfn(start), count, order(10)).collect();
        assert_eq!(blocks.len(), 18);
        let (bitmaps_before, pages_before) = (kho.stats().bitmaps, live(&kho));
        let (n, ()) = sweep(&kho, format, "preserve_pages", || kho.preserve_pages(pfn(start), count));
        assert_eq!(kho.stats().bitmaps - bitmaps_before, 11);
        assert_eq!(live(&kho) - pages_before, n);
        // Four slots of the seed's page were free (512-byte bitmaps): one more page holds the rest.
        assert_eq!(n, if per_page == 1 { 11 } else { 1 }, "{format:?} {bitmap:?}");
        model.extend(blocks);

        // A three-page blob: an order-1 and an order-0 block, each in a new bitmap.
        let dtb = kho_core::fdt::FdtTree { root: kho_core::fdt::FdtNode::new("").prop_str("compatible", "blob") }
            .to_dtb()
            .unwrap();
        plat.write_phys(PhysAddr::new(6 * GIB), &dtb).unwrap();
        let pages_before = live(&kho);
        let (n, ()) =
            sweep(&kho, format, "add_subtree", || kho.add_subtree("blob", PhysAddr::new(6 * GIB), 3 * PAGE_SIZE));
        assert_eq!(n, if per_page == 1 { 2 } else { 0 });
        assert_eq!(live(&kho) - pages_before, n);
        model.extend([blk(6 * GIB, 1), blk(6 * GIB + 2 * PAGE_SIZE, 0)]);
        counts.push((format, bitmap, n));

        finalize_decode_abort(&kho, format, &model);
        assert_eq!(kho.preserved().unwrap().iter().collect::<BTreeSet<_>>(), model);
    }
    println!("add_subtree allocations: {counts:?}");
    assert_eq!(counts.len(), 3);
}

#[test]
fn every_failing_allocation_of_finalize_is_rolled_back() {
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        // Several orders, several bitmaps of order 0.
        for i in 0..40u64 {
            let o = (i % 11) as u32;
            let at = 4 * GIB + i * 64 * MIB;
            kho.preserve_folio(pfn(at), order(o)).unwrap();
            model.insert(blk(at, o));
        }
        let before = kho.stats();
        let (n, fin) = sweep(&kho, format, "finalize", || kho.finalize(format));
        let after = kho.stats();
        // The FDT page, a bitmap page for it if its slot is new, the map, the scratch array.
        // kho-v1 hands the tracker's bitmap pages over too (kho-v4 does not need them).
        let tracker_pages = if format == FormatVersion::V1 { after.bitmap_pages } else { 0 };
        let map_and_scratch = fin.metadata_pages.len() as u64 - tracker_pages;
        assert_eq!(n, 1 + (after.bitmap_pages - before.bitmap_pages) + map_and_scratch, "{format:?} {bitmap:?}");
        println!("finalize {format:?} {bitmap:?}: {n} allocations, each failed once");
        kho.abort().unwrap();
        finalize_decode_abort(&kho, format, &model);
    }
}

/// Finalize interrupted at every allocation, each time followed by a successful finalize,
/// an abort and one more preservation: the tracker keeps working and keeps everything.
#[test]
fn interrupted_finalize_then_abort_keeps_every_preservation() {
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        let mut n = 0;
        loop {
            let before = snap(&kho);
            plat.fail_alloc_at(Some(n));
            let r = kho.finalize(format);
            plat.fail_alloc_at(None);
            match r {
                Err(e) => {
                    assert_eq!(e, OutgoingError::OutOfMemory);
                    assert_eq!(snap(&kho), before, "failure at allocation {n}");
                }
                Ok(_) => {
                    kho.abort().unwrap();
                    assert_eq!(snap(&kho), before, "abort after finalize");
                    break;
                }
            }
            kho.finalize(format).unwrap();
            assert_eq!(kho.preserve_folio(pfn(5 * GIB), Order::ZERO), Err(OutgoingError::Finalized));
            kho.abort().unwrap();
            assert_eq!(snap(&kho), before, "finalize + abort after failure {n}");
            // One more block (alternating orders, so new bitmaps keep appearing).
            let at = 5 * GIB + n * 16 * MIB;
            let o = (n % 4) as u32 * 3;
            kho.preserve_folio(pfn(at), order(o)).unwrap();
            model.insert(blk(at, o));
            n += 1;
        }
        assert!(n >= 4, "{format:?}: finalize made only {n} allocations");
        assert_eq!(kho.preserved().unwrap().iter().collect::<BTreeSet<_>>(), model);
        finalize_decode_abort(&kho, format, &model);
        println!("interrupted finalize {format:?} {bitmap:?}: {n} interruptions");
    }
}

#[test]
fn unpreserve_and_abort_never_allocate() {
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        kho.preserve_pages(pfn(GIB + PAGE_SIZE), 3000).unwrap();
        kho.preserve_folio(pfn(4 * GIB), order(9)).unwrap();
        let live = plat.live_meta_pages();
        kho.finalize(format).unwrap();
        // Every allocation fails from here on; none may be attempted.
        plat.fail_alloc_at(Some(0));
        kho.abort().unwrap();
        assert_eq!(plat.live_meta_pages(), live);
        kho.unpreserve_folio(pfn(4 * GIB), order(9)).unwrap();
        kho.unpreserve_pages(pfn(GIB + PAGE_SIZE), 3000).unwrap();
        kho.remove_subtree("seed").unwrap();
        kho.unpreserve_phys(PhysAddr::new(2 * GIB), PAGE_SIZE).unwrap();
        assert_eq!(
            kho.unpreserve_folio(pfn(4 * GIB), order(9)),
            Err(OutgoingError::NotPreserved { block: blk(4 * GIB, 9) })
        );
        assert_eq!(plat.alloc_attempts(), 0);
        // The emptied bitmaps went back: only the four remaining order-0 blocks' page.
        let left: BTreeSet<Block> = (1..5).map(|i| blk(2 * GIB + i * 8 * PAGE_SIZE, 0)).collect();
        assert_eq!(kho.preserved().unwrap().iter().collect::<BTreeSet<_>>(), left);
        assert_eq!(plat.live_meta_pages().len(), 1);
        assert_eq!(kho.stats().bitmaps, 1);
    }
}

#[test]
fn incoming_walk_and_restore_never_allocate() {
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        kho.preserve_pages(pfn(GIB + PAGE_SIZE), 3000).unwrap();
        let fin = kho.finalize(format).unwrap();
        plat.fail_alloc_at(Some(0));
        let mut cfg = IncomingConfig::new(ram());
        cfg.v1_bitmap_bytes = bitmap;
        let mut h = Handover::parse(&plat, &fin.ptr, &cfg).unwrap();
        let mut map = RecordingMap { ram: ram(), ..RecordingMap::default() };
        h.reserve(&mut map);
        let b = blk(2 * GIB, 0);
        assert_eq!(h.restore_folio(&mut map, b.phys()), Ok(b));
        let restored = h.restore_pages(&mut map, PhysAddr::new(GIB + PAGE_SIZE), 3000).unwrap();
        assert_eq!(restored.len(), 18);
        assert_eq!(h.release_unclaimed(&mut map), 4 + 1 + 1);
        assert_eq!(plat.alloc_attempts(), 0, "{format:?}: the incoming side allocated");
    }
}

/// Makes write 0, 1, 2, ... of `op` fail until it needs no more, checking after each failure
/// that the caller got the write error itself (not a rollback's) and that nothing changed:
/// no page leaked, no block gained or lost. Returns how many writes the successful call made.
fn sweep_writes<T: std::fmt::Debug>(
    kho: &Kho<&TestPlatform>,
    format: FormatVersion,
    what: &str,
    op: impl Fn() -> Result<T, OutgoingError>,
) -> (u64, T) {
    let plat = kho.platform();
    let before = snap(kho);
    for n in 0.. {
        assert!(n < 100_000, "{what}: no end to the writes");
        plat.fail_write_at(Some(n));
        let r = op();
        let attempts = plat.write_attempts();
        plat.fail_write_at(None);
        match r {
            Ok(v) => return (n, v),
            Err(e) => {
                assert!(
                    matches!(e, OutgoingError::Memory { source: MemError { access: Access::Write, .. }, .. }),
                    "{what}: write {n}: {e:?}"
                );
                assert!(attempts > n, "{what}: failed before reaching write {n}");
                assert_eq!(snap(kho), before, "{what}: state changed by failing write {n}");
                finalize_decode_abort(kho, format, &before.preserved);
                assert_eq!(snap(kho), before, "{what}: finalize + abort after write failure {n}");
            }
        }
    }
    unreachable!()
}

#[test]
fn every_failing_write_is_reported_as_a_write_and_rolled_back() {
    for (format, bitmap) in FORMATS {
        let plat = platform();
        let kho = engine(&plat, bitmap);
        let mut model = BTreeSet::new();
        seed(&kho, &mut model);
        let (start, count) = (GIB + PAGE_SIZE, 3000);
        let (n, ()) = sweep_writes(&kho, format, "preserve_pages", || kho.preserve_pages(pfn(start), count));
        // One read-modify-write per block of the split.
        assert_eq!(n, 18, "{format:?} {bitmap:?}");
        model.extend(kho_core::split::split_range(pfn(start), count, order(10)));
        let (n, ()) = sweep_writes(&kho, format, "unpreserve_pages", || kho.unpreserve_pages(pfn(start), count));
        assert_eq!(n, 18, "{format:?} {bitmap:?}");
        for b in kho_core::split::split_range(pfn(start), count, order(10)) {
            model.remove(&b);
        }
        kho.preserve_pages(pfn(start), count).unwrap();
        model.extend(kho_core::split::split_range(pfn(start), count, order(10)));
        let (n, fin) = sweep_writes(&kho, format, "finalize", || kho.finalize(format));
        assert!(n >= 3, "{format:?}: finalize wrote only {n} times");
        assert_eq!(fin.preserved_blocks, model.len() as u64 + 1);
        kho.abort().unwrap();
        finalize_decode_abort(&kho, format, &model);
        println!("write faults {format:?} {bitmap:?}: finalize made {n} writes, each failed once");
    }
}

#[test]
fn a_blob_owns_its_pages() {
    let plat = platform();
    let kho = engine(&plat, BitmapBytes::B512);
    let mut model = BTreeSet::new();
    add_blob(&kho, "owned", 3 * GIB, 3, &mut model);
    let before = snap(&kho);
    // Neither the blob's range, nor one page of it, nor its order-1 block can be unpreserved
    // on its own: the handover would name a blob whose memory is not preserved.
    assert_eq!(
        kho.unpreserve_phys(PhysAddr::new(3 * GIB), 3 * PAGE_SIZE),
        Err(OutgoingError::OwnedByBlob { block: blk(3 * GIB, 1), name: "owned".into() })
    );
    assert_eq!(
        kho.unpreserve_folio(pfn(3 * GIB + 2 * PAGE_SIZE), Order::ZERO),
        Err(OutgoingError::OwnedByBlob { block: blk(3 * GIB + 2 * PAGE_SIZE, 0), name: "owned".into() })
    );
    assert_eq!(
        kho.unpreserve_folio(pfn(3 * GIB), order(1)),
        Err(OutgoingError::OwnedByBlob { block: blk(3 * GIB, 1), name: "owned".into() })
    );
    assert_eq!(snap(&kho), before);
    // The next kernel accepts the handover with the blob.
    finalize_decode_abort(&kho, FormatVersion::V4, &model);
    // Removing the blob gives its pages back.
    kho.remove_subtree("owned").unwrap();
    assert!(kho.preserved().unwrap().is_empty());
}

#[test]
fn an_engine_without_scratch_is_refused() {
    let plat = platform();
    let cfg = OutgoingConfig::new(ram(), Vec::new());
    assert_eq!(Kho::new(&plat, cfg).unwrap_err(), OutgoingError::NoScratch);
}
