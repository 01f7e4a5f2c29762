//! Many threads on one `Kho`: writers preserve and unpreserve ranges that overlap other
//! threads' ranges and ranges only they use, while a reader keeps taking `preserved()`
//! snapshots. Every operation takes the engine's one lock, so the run is equivalent to some
//! sequential order; the test checks what any such order implies.
//!
//! The ranges are chosen so that no two of them share a block (see `shared_range`): a block
//! can then only come and go with its own range, each range's successful operations must
//! alternate preserve, unpreserve, preserve..., and the final state is the union of the
//! ranges preserved once more than unpreserved. That model is replayed on a fresh engine and
//! compared with the concurrent one, then both are finalized and decoded.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kho_core::split::split_range;
use kho_core::testing::TestPlatform;
use kho_core::{
    Block, FormatVersion, Handover, IncomingConfig, Kho, Order, OutgoingConfig, OutgoingError, PAGE_SIZE, Pfn,
    PhysAddr, PhysRange,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const WRITERS: usize = 4;
const OPS: usize = 1500;
const SHARED: usize = 16;
const PRIVATE: usize = 8;

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}
fn ram() -> Vec<PhysRange> {
    vec![range(MIB, 16 * GIB)]
}
fn platform() -> TestPlatform {
    TestPlatform::new(&ram(), range(64 * MIB, 64 * MIB))
}
fn engine(plat: &TestPlatform) -> Kho<&TestPlatform> {
    Kho::new(plat, OutgoingConfig::new(ram(), vec![range(256 * MIB, 16 * MIB)])).unwrap()
}

/// Shared range `k`: 64 pages at `2 GiB + 32k pages`. Even ranges are one order-6 block,
/// odd ones two order-5 blocks in the middle of two even ranges: neighbours overlap, but no
/// two ranges share a block.
fn shared_range(k: usize) -> (u64, u64) {
    (2 * GIB / PAGE_SIZE + 32 * k as u64, 64)
}

/// Private range `i` of writer `t`: disjoint from everything, split into assorted orders.
fn private_range(t: usize, i: usize) -> (u64, u64) {
    let base = (4 + t as u64) * GIB + i as u64 * 16 * MIB;
    (base / PAGE_SIZE + 1 + i as u64, 1 + 397 * i as u64)
}

/// Range ids: shared ones first, then each writer's private ones.
fn range_of(id: usize) -> (u64, u64) {
    if id < SHARED { shared_range(id) } else { private_range((id - SHARED) / PRIVATE, (id - SHARED) % PRIVATE) }
}
const RANGES: usize = SHARED + WRITERS * PRIVATE;

fn blocks(id: usize) -> Vec<Block> {
    let (p, n) = range_of(id);
    split_range(Pfn::new(p).unwrap(), n, Order::LINUX_X86_MAX).collect()
}

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Preserve,
    Unpreserve,
}

#[test]
fn concurrent_preserve_unpreserve_matches_a_sequential_model() {
    // No two ranges share a block, as the model needs.
    let mut all = BTreeSet::new();
    for id in 0..RANGES {
        for b in blocks(id) {
            assert!(all.insert(b), "range {id} shares {b:?}");
        }
    }
    let plat = platform();
    let kho = engine(&plat);
    let owner: std::collections::BTreeMap<Block, usize> =
        (0..RANGES).flat_map(|id| blocks(id).into_iter().map(move |b| (b, id))).collect();
    let done = AtomicBool::new(false);
    let snapshots = AtomicU64::new(0);

    let logs: Vec<Vec<(usize, Op)>> = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut partial = Vec::new();
            while !done.load(Ordering::Acquire) {
                let snap = kho.preserved().unwrap();
                // Internally consistent: no two blocks overlap.
                assert!(snap.coalesced_ranges().is_ok(), "overlapping blocks in a snapshot");
                // Atomic: a range is either wholly there or not at all.
                let present: BTreeSet<Block> = snap.iter().collect();
                for b in &present {
                    let id = owner[b];
                    if !blocks(id).iter().all(|x| present.contains(x)) {
                        partial.push(id);
                    }
                }
                snapshots.fetch_add(1, Ordering::Relaxed);
            }
            partial
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let kho = &kho;
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                    let mut log = Vec::new();
                    for _ in 0..OPS {
                        let r = rng.next();
                        let id = if r % 10 < 6 {
                            (r >> 8) as usize % SHARED
                        } else {
                            SHARED + t * PRIVATE + (r >> 8) as usize % PRIVATE
                        };
                        let (p, n) = range_of(id);
                        let pfn = Pfn::new(p).unwrap();
                        let op = if (r >> 40) % 100 < 55 { Op::Preserve } else { Op::Unpreserve };
                        let res = match op {
                            Op::Preserve => kho.preserve_pages(pfn, n),
                            Op::Unpreserve => kho.unpreserve_pages(pfn, n),
                        };
                        match (op, res) {
                            (_, Ok(())) => log.push((id, op)),
                            (
                                Op::Preserve,
                                Err(OutgoingError::AlreadyPreserved { .. } | OutgoingError::Overlap { .. }),
                            ) => {}
                            (Op::Unpreserve, Err(OutgoingError::NotPreserved { .. })) => {}
                            (op, Err(e)) => panic!("{op:?} of range {id}: unexpected {e}"),
                        }
                    }
                    log
                })
            })
            .collect();
        let logs = writers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        let partial = reader.join().unwrap();
        assert!(partial.is_empty(), "snapshots showed ranges half preserved: {partial:?}");
        logs
    });
    assert!(snapshots.load(Ordering::Relaxed) > 0);

    // Per range: successes alternate, so preserves - unpreserves is 0 or 1.
    let mut net = [0i64; RANGES];
    let mut successes = 0;
    for log in &logs {
        for &(id, op) in log {
            net[id] += if op == Op::Preserve { 1 } else { -1 };
            successes += 1;
        }
    }
    for (id, &n) in net.iter().enumerate() {
        assert!(n == 0 || n == 1, "range {id}: {n} more preserves than unpreserves");
    }
    let want: BTreeSet<Block> = (0..RANGES).filter(|&id| net[id] == 1).flat_map(blocks).collect();
    let got: BTreeSet<Block> = kho.preserved().unwrap().iter().collect();
    assert_eq!(got, want);
    println!(
        "{WRITERS} writers x {OPS} ops: {successes} succeeded, {} reader snapshots, {} ranges preserved at the end",
        snapshots.load(Ordering::Relaxed),
        net.iter().filter(|&&n| n == 1).count()
    );

    // Sequential replay of the model on a fresh engine.
    let plat2 = platform();
    let replay = engine(&plat2);
    for id in (0..RANGES).filter(|&id| net[id] == 1) {
        let (p, n) = range_of(id);
        replay.preserve_pages(Pfn::new(p).unwrap(), n).unwrap();
    }
    assert_eq!(replay.preserved().unwrap().iter().collect::<BTreeSet<_>>(), got);
    assert_eq!(replay.stats().blocks, kho.stats().blocks);
    assert_eq!(replay.stats().bytes, kho.stats().bytes);

    // The concurrent engine's handover decodes to the same set.
    for format in [FormatVersion::V1, FormatVersion::V4] {
        let fin = kho.finalize(format).unwrap();
        let h = Handover::parse(&plat, &fin.ptr, &IncomingConfig::new(ram())).unwrap();
        let mut expect = want.clone();
        expect.insert(Block::at(fin.ptr.fdt, Order::ZERO).unwrap());
        assert_eq!(h.preserved().iter().collect::<BTreeSet<_>>(), expect);
        kho.abort().unwrap();
    }
}

/// Finalize racing with writers: every preserve either lands before finalize (and is in the
/// handover) or fails with `Finalized`; after abort nothing was lost.
#[test]
fn concurrent_finalize_freezes_a_consistent_set() {
    let plat = platform();
    let kho = engine(&plat);
    let progress = AtomicU64::new(0);
    let (fin, logs) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (kho, progress) = (&kho, &progress);
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let mut frozen = false;
                    // Until finalize stops them (the cap is never reached in practice).
                    for i in 0..100_000u64 {
                        let b = Block::at(PhysAddr::new((4 + t as u64) * GIB + i * 8 * 1024), Order::ZERO).unwrap();
                        // The engine lock is a spin lock, which is not fair: once finalize is
                        // due, let it in (on two cores four spinning writers starve it).
                        if progress.load(Ordering::Relaxed) >= 200 {
                            std::thread::yield_now();
                        }
                        match kho.preserve_folio(b.pfn(), Order::ZERO) {
                            Ok(()) => {
                                assert!(!frozen, "a preserve succeeded after one saw Finalized");
                                ok.push(b);
                                progress.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(OutgoingError::Finalized) => {
                                frozen = true;
                                // Stay a little longer: later calls must fail too.
                                if ok.len() + 16 < i as usize {
                                    break;
                                }
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (ok, frozen)
                })
            })
            .collect();
        // Finalize in the middle of the writers' run.
        while progress.load(Ordering::Relaxed) < 200 {
            std::thread::yield_now();
        }
        let fin = kho.finalize(FormatVersion::V4).unwrap();
        (fin, writers.into_iter().map(|w| w.join().unwrap()).collect::<Vec<_>>())
    });
    let landed: BTreeSet<Block> = logs.iter().flat_map(|(ok, _)| ok.iter().copied()).collect();
    let h = Handover::parse(&plat, &fin.ptr, &IncomingConfig::new(ram())).unwrap();
    let mut expect = landed.clone();
    expect.insert(Block::at(fin.ptr.fdt, Order::ZERO).unwrap());
    assert_eq!(h.preserved().iter().collect::<BTreeSet<_>>(), expect);
    assert_eq!(fin.preserved_blocks, expect.len() as u64);
    kho.abort().unwrap();
    assert_eq!(kho.preserved().unwrap().iter().collect::<BTreeSet<_>>(), landed);
    assert!(landed.len() >= 200, "finalize ran before the writers got going");
    assert!(logs.iter().all(|(_, frozen)| *frozen), "every writer ran into the finalize");
    println!(
        "finalize race: {} preserves landed before finalize, {} writers saw Finalized",
        landed.len(),
        logs.iter().filter(|(_, f)| *f).count()
    );
}
