//! Exhaustive interleavings of small scenarios over the real `Kho`, with loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p kho-core --test loom --release` (see
//! `.ci/loom.sh`). Under `cfg(loom)` the engine's lock (`src/sync.rs`) is loom's `Mutex`, so
//! loom explores every order in which the threads can take it.
//!
//! The `TestPlatform` underneath keeps its pages and its page pool behind `spin::Mutex`es,
//! which loom does not see. That is sound here: those locks are only taken inside a single
//! platform call (a page copy, an allocation) that performs no loom operation, so loom never
//! switches threads while one is held, no thread can ever find one taken, and they add no
//! interleavings loom would have to explore. The engine lock, which is held across those
//! calls, is the one loom schedules.
#![cfg(loom)]

use std::collections::BTreeSet;

use kho_core::testing::TestPlatform;
use kho_core::{
    Block, FormatVersion, Handover, IncomingConfig, Kho, Order, OutgoingConfig, OutgoingError, Pfn, PhysAddr, PhysRange,
};
use loom::sync::Arc;
use loom::thread;

const MIB: u64 = 1 << 20;

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}
fn ram() -> Vec<PhysRange> {
    vec![range(MIB, 1 << 30)]
}
fn engine() -> Arc<Kho<TestPlatform>> {
    let plat = TestPlatform::new(&ram(), range(64 * MIB, 16 * MIB));
    Arc::new(Kho::new(plat, OutgoingConfig::new(ram(), vec![range(256 * MIB, 16 * MIB)])).unwrap())
}
fn blk(phys: u64, order: u32) -> Block {
    Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap()
}
fn preserved(kho: &Kho<TestPlatform>) -> BTreeSet<Block> {
    kho.preserved().unwrap().iter().collect()
}

/// One thread preserves a block while another unpreserves it: the unpreserve succeeds
/// exactly when it runs second, and the final state says which happened.
#[test]
fn preserve_vs_unpreserve_of_one_block() {
    loom::model(|| {
        let kho = engine();
        let b = blk(512 * MIB, 3);
        let k = kho.clone();
        let t = thread::spawn(move || k.preserve_folio(b.pfn(), b.order()));
        let un = kho.unpreserve_folio(b.pfn(), b.order());
        assert_eq!(t.join().unwrap(), Ok(()));
        match un {
            Ok(()) => assert!(preserved(&kho).is_empty()),
            Err(e) => {
                assert_eq!(e, OutgoingError::NotPreserved { block: b });
                assert_eq!(preserved(&kho), BTreeSet::from([b]));
            }
        }
        assert_eq!(kho.stats().blocks, preserved(&kho).len() as u64);
    });
}

/// Two preserves race a finalize. Afterwards the handover decodes to exactly the preserves
/// that succeeded (plus the FDT page), every other one failed with `Finalized`, and a thread
/// that saw `Finalized` never succeeded later.
#[test]
fn preserve_vs_finalize() {
    loom::model(|| {
        let kho = engine();
        let (a, b) = (blk(512 * MIB, 0), blk(520 * MIB, 9));
        let k = kho.clone();
        let t = thread::spawn(move || [a, b].map(|x| k.preserve_folio(x.pfn(), x.order())));
        let fin = kho.finalize(FormatVersion::V4).unwrap();
        let results = t.join().unwrap();
        for r in &results {
            assert!(matches!(r, Ok(()) | Err(OutgoingError::Finalized)), "{r:?}");
        }
        assert!(!(results[0].is_err() && results[1].is_ok()), "a preserve succeeded after Finalized");
        assert_eq!(kho.preserve_folio(Pfn::new(0x30000).unwrap(), Order::ZERO), Err(OutgoingError::Finalized));
        let mut want: BTreeSet<Block> =
            [a, b].into_iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(x, _)| x).collect();
        want.insert(Block::at(fin.ptr.fdt, Order::ZERO).unwrap());
        let h = Handover::parse(kho.platform(), &fin.ptr, &IncomingConfig::new(ram())).unwrap();
        assert_eq!(h.preserved().iter().collect::<BTreeSet<_>>(), want);
        assert_eq!(fin.preserved_blocks, want.len() as u64);
    });
}

/// Two threads preserve overlapping ranges: exactly one wins, whole, and the loser gets an
/// overlap error naming a block of the winner's range.
#[test]
fn overlapping_preserve_pages_exactly_one_wins() {
    loom::model(|| {
        let kho = engine();
        let p = Pfn::new((512 * MIB) >> 12).unwrap();
        let q = Pfn::new(((512 * MIB) >> 12) + 8).unwrap();
        let k = kho.clone();
        let t = thread::spawn(move || k.preserve_pages(p, 16));
        let rq = kho.preserve_pages(q, 16);
        let rp = t.join().unwrap();
        assert!(rp.is_ok() != rq.is_ok(), "{rp:?} {rq:?}");
        let winner = if rp.is_ok() { (p, 16) } else { (q, 16) };
        let want: BTreeSet<Block> = kho_core::split::split_range(winner.0, winner.1, Order::LINUX_X86_MAX).collect();
        assert_eq!(preserved(&kho), want);
        let err = if rp.is_ok() { rq } else { rp }.unwrap_err();
        assert!(matches!(err, OutgoingError::Overlap { other, .. } if want.contains(&other)), "{err}");
    });
}

/// Three threads: preserve, unpreserve of another (already preserved) block, and a reader.
/// Every snapshot the reader takes is one of the four states a sequential order allows.
#[test]
fn reader_sees_only_sequential_states() {
    loom::model(|| {
        let kho = engine();
        let (a, b) = (blk(512 * MIB, 0), blk(600 * MIB, 2));
        kho.preserve_folio(b.pfn(), b.order()).unwrap();
        let k1 = kho.clone();
        let t1 = thread::spawn(move || k1.preserve_folio(a.pfn(), a.order()).unwrap());
        let k2 = kho.clone();
        let t2 = thread::spawn(move || k2.unpreserve_folio(b.pfn(), b.order()).unwrap());
        let seen = preserved(&kho);
        let allowed = [BTreeSet::from([b]), BTreeSet::from([a, b]), BTreeSet::new(), BTreeSet::from([a])];
        assert!(allowed.contains(&seen), "{seen:?}");
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(preserved(&kho), BTreeSet::from([a]));
    });
}
