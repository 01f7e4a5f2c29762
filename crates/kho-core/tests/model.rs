//! Model-based property test of the whole engine: random sequences of preserve, unpreserve,
//! add/remove blob, finalize and abort run against a `BTreeSet` of blocks; then the bytes are
//! decoded by the incoming side and must give exactly the model's set, and every block
//! restores once and only once.

use std::collections::{BTreeMap, BTreeSet};

use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{
    Block, FormatVersion, Handover, IncomingConfig, Kho, Order, OutgoingConfig, OutgoingError, PAGE_SIZE, Pfn,
    PhysAddr, PhysRange, RestoreError,
};
use proptest::prelude::*;

const RAM_START: u64 = 0x10_0000;
const RAM_LEN: u64 = 64 << 20;
/// Preservations are drawn from the first 36 MiB of RAM, which includes the scratch area.
const PFN_SPAN: u64 = (36 << 20) / PAGE_SIZE;
const SCRATCH: (u64, u64) = (RAM_START + (32 << 20), 4 << 20);
const POOL: (u64, u64) = (RAM_START + (40 << 20), 24 << 20);
const MAX_ORDER: u32 = 10;

#[derive(Debug, Clone)]
enum Op {
    PreserveFolio(u64, u32),
    UnpreserveFolio(u64, u32),
    PreservePages(u64, u64),
    UnpreservePages(u64, u64),
    AddBlob(u8, u64, u64),
    RemoveBlob(u8),
    Finalize(bool),
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    let pfn = (0..PFN_SPAN).prop_map(|p| RAM_START / PAGE_SIZE + p);
    prop_oneof![
        4 => (pfn.clone(), 0..=MAX_ORDER + 1).prop_map(|(p, o)| Op::PreserveFolio(p & !((1 << o) - 1), o)),
        2 => (pfn.clone(), 0..=MAX_ORDER).prop_map(|(p, o)| Op::UnpreserveFolio(p & !((1 << o) - 1), o)),
        3 => (pfn.clone(), 1u64..3000).prop_map(|(p, n)| Op::PreservePages(p, n)),
        1 => (pfn.clone(), 1u64..3000).prop_map(|(p, n)| Op::UnpreservePages(p, n)),
        1 => (0u8..4, pfn, 1u64..4).prop_map(|(i, p, n)| Op::AddBlob(i, p, n)),
        1 => (0u8..4).prop_map(Op::RemoveBlob),
        1 => any::<bool>().prop_map(Op::Finalize),
        1 => Just(Op::Abort),
    ]
}

fn ram() -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(RAM_START), RAM_LEN).unwrap()]
}
fn scratch() -> PhysRange {
    PhysRange::new(PhysAddr::new(SCRATCH.0), SCRATCH.1).unwrap()
}
fn pfn(n: u64) -> Pfn {
    Pfn::new(n).unwrap()
}
fn order(n: u32) -> Order {
    Order::new(n).unwrap()
}

#[derive(Default)]
struct Model {
    blocks: BTreeSet<Block>,
    blobs: BTreeMap<String, (u64, u64)>,
    finalized: bool,
}

/// What the model expects a preserve of `blocks` to say: `None` for success, else the error
/// the first offending block must give (checked in the engine's documented order: inside
/// RAM, outside scratch, not overlapping anything preserved).
#[derive(Debug, PartialEq)]
enum Want {
    Ok,
    Finalized,
    OutsideRam(Block),
    InScratch(Block),
    AlreadyPreserved(Block),
    Overlap(Block),
    OwnedByBlob(Block),
    NotPreserved(Block),
}

impl Model {
    fn preserve(&self, blocks: &[Block]) -> Want {
        if self.finalized {
            return Want::Finalized;
        }
        for &b in blocks {
            if b.phys().as_u64() < RAM_START || b.range().end().as_u64() > RAM_START + RAM_LEN {
                return Want::OutsideRam(b);
            }
            if b.range().overlaps(scratch()) {
                return Want::InScratch(b);
            }
            if self.blocks.contains(&b) {
                return Want::AlreadyPreserved(b);
            }
            if self.blocks.iter().any(|m| m.range().overlaps(b.range())) {
                return Want::Overlap(b);
            }
        }
        Want::Ok
    }
    fn unpreserve(&self, blocks: &[Block]) -> Want {
        if self.finalized {
            return Want::Finalized;
        }
        for &b in blocks {
            if self.blobs.values().any(|&(bp, bn)| b.pfn().as_u64() < bp + bn && bp < b.end_pfn()) {
                return Want::OwnedByBlob(b);
            }
            if !self.blocks.contains(&b) {
                return Want::NotPreserved(b);
            }
        }
        Want::Ok
    }
    /// The model's own split of `n` pages from `p`: at each step the largest naturally
    /// aligned block that fits, capped at the maximum order (written here independently of
    /// `kho_core::split`).
    fn split(p: u64, n: u64) -> Vec<Block> {
        let (mut at, end, mut out) = (p, p + n, Vec::new());
        while at < end {
            let mut o = 0;
            while o < MAX_ORDER && at % (2 << o) == 0 && at + (2 << o) <= end {
                o += 1;
            }
            out.push(Block::new(pfn(at), order(o)).unwrap());
            at += 1 << o;
        }
        out
    }
}

/// The engine's answer, in the model's terms.
fn got(r: Result<(), OutgoingError>) -> Want {
    match r {
        Ok(()) => Want::Ok,
        Err(OutgoingError::Finalized) => Want::Finalized,
        Err(OutgoingError::OutsideRam { range, .. }) => {
            Want::OutsideRam(Block::at(range.start(), Order::ZERO).unwrap())
        }
        Err(OutgoingError::InScratch { at, .. }) => Want::InScratch(Block::at(at, Order::ZERO).unwrap()),
        Err(OutgoingError::AlreadyPreserved { block }) => Want::AlreadyPreserved(block),
        Err(OutgoingError::Overlap { block, .. }) => Want::Overlap(block),
        Err(OutgoingError::OwnedByBlob { block, .. }) => Want::OwnedByBlob(block),
        Err(OutgoingError::NotPreserved { block }) => Want::NotPreserved(block),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Compares ignoring the order of range errors (their messages name the range, not the block).
fn same(want: &Want, got: &Want) -> bool {
    match (want, got) {
        (Want::OutsideRam(a), Want::OutsideRam(b)) | (Want::InScratch(a), Want::InScratch(b)) => a.phys() == b.phys(),
        _ => want == got,
    }
}

fn blob_name(i: u8) -> String {
    format!("blob-{i}")
}

/// The page the FDT lives in is preserved by finalize; the test checks it separately.
fn decode(plat: &TestPlatform, kho: &Kho<&TestPlatform>) -> Handover {
    let fin = kho.finalized().expect("finalized");
    let mut cfg = IncomingConfig::new(ram());
    cfg.max_order = order(MAX_ORDER);
    cfg.v1_bitmap_bytes = kho.config().bitmap_bytes;
    Handover::parse(plat, &fin.ptr, &cfg).unwrap()
}

fn run(ops: Vec<Op>, format: FormatVersion, bitmap: kho_core::BitmapBytes) -> Result<(), TestCaseError> {
    let plat = TestPlatform::new(&ram(), PhysRange::new(PhysAddr::new(POOL.0), POOL.1).unwrap());
    let mut cfg = OutgoingConfig::new(ram(), vec![scratch()]);
    cfg.max_order = order(MAX_ORDER);
    cfg.bitmap_bytes = bitmap;
    let kho = Kho::new(&plat, cfg).unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::PreserveFolio(p, o) => {
                let r = kho.preserve_folio(pfn(p), order(o));
                let b = Block::new(pfn(p), order(o)).unwrap();
                if o > MAX_ORDER {
                    prop_assert!(matches!(r, Err(OutgoingError::OrderTooLarge { .. })), "{:?} -> {:?}", op, r);
                    continue;
                }
                let want = m.preserve(&[b]);
                let g = got(r);
                prop_assert!(same(&want, &g), "{:?}: want {:?}, got {:?}", op, want, g);
                if want == Want::Ok {
                    m.blocks.insert(b);
                }
            }
            Op::UnpreserveFolio(p, o) => {
                let r = kho.unpreserve_folio(pfn(p), order(o));
                let b = Block::new(pfn(p), order(o)).unwrap();
                let want = m.unpreserve(&[b]);
                let g = got(r);
                prop_assert_eq!(&g, &want, "{:?}", op);
                if want == Want::Ok {
                    m.blocks.remove(&b);
                }
            }
            Op::PreservePages(p, n) => {
                let blocks = Model::split(p, n);
                let r = kho.preserve_pages(pfn(p), n);
                let want = m.preserve(&blocks);
                let g = got(r);
                prop_assert!(same(&want, &g), "{:?}: want {:?}, got {:?}", op, want, g);
                if want == Want::Ok {
                    m.blocks.extend(blocks);
                }
            }
            Op::UnpreservePages(p, n) => {
                let blocks = Model::split(p, n);
                let r = kho.unpreserve_pages(pfn(p), n);
                let want = m.unpreserve(&blocks);
                let g = got(r);
                prop_assert_eq!(&g, &want, "{:?}", op);
                if want == Want::Ok {
                    for b in &blocks {
                        m.blocks.remove(b);
                    }
                }
            }
            Op::AddBlob(i, p, n) => {
                let name = blob_name(i);
                let blocks = Model::split(p, n);
                // kho-v1 blobs are FDTs (the format has no size field).
                let dtb =
                    kho_core::fdt::FdtTree { root: kho_core::fdt::FdtNode::new("").prop_str("compatible", &name) }
                        .to_dtb()
                        .unwrap();
                let _ = kho_core::PhysWrite::write_phys(&plat, pfn(p).phys(), &dtb);
                let r = kho.add_subtree(&name, pfn(p).phys(), n * PAGE_SIZE);
                let ok = !m.finalized && !m.blobs.contains_key(&name) && m.preserve(&blocks) == Want::Ok;
                prop_assert_eq!(r.is_ok(), ok, "{:?} -> {:?}", op, r);
                if ok {
                    m.blocks.extend(blocks);
                    m.blobs.insert(name, (p, n));
                }
            }
            Op::RemoveBlob(i) => {
                let name = blob_name(i);
                let r = kho.remove_subtree(&name);
                let ok = !m.finalized && m.blobs.contains_key(&name);
                prop_assert_eq!(r.is_ok(), ok, "{:?} -> {:?}", op, r);
                if ok {
                    let (p, n) = m.blobs.remove(&name).unwrap();
                    for b in Model::split(p, n) {
                        m.blocks.remove(&b);
                    }
                }
            }
            Op::Finalize(v4) => {
                let fmt = if v4 { FormatVersion::V4 } else { format };
                let r = kho.finalize(fmt);
                prop_assert_eq!(r.is_ok(), !m.finalized, "{:?}", r);
                if r.is_ok() {
                    m.finalized = true;
                    let h = decode(&plat, &kho);
                    let fdt = Block::at(kho.finalized().unwrap().ptr.fdt, Order::ZERO).unwrap();
                    let mut want = m.blocks.clone();
                    want.insert(fdt);
                    let got: BTreeSet<Block> = h.preserved().iter().collect();
                    prop_assert_eq!(got, want);
                }
            }
            Op::Abort => {
                let r = kho.abort();
                prop_assert_eq!(r.is_ok(), m.finalized);
                m.finalized = false;
            }
        }
        let got: BTreeSet<Block> = kho.preserved().unwrap().iter().collect();
        let fdt = kho.finalized().map(|f| Block::at(f.ptr.fdt, Order::ZERO).unwrap());
        let want: BTreeSet<Block> = m.blocks.iter().copied().chain(fdt).collect();
        prop_assert_eq!(got, want);
    }
    if !m.finalized {
        kho.finalize(format).unwrap();
    }
    let mut h = decode(&plat, &kho);
    let names: BTreeSet<String> = h.subtrees().iter().map(|s| s.name.clone()).collect();
    prop_assert_eq!(names, m.blobs.keys().cloned().collect::<BTreeSet<_>>());
    let mut map = RecordingMap { ram: ram(), ..RecordingMap::default() };
    h.reserve(&mut map);
    let pages: u64 = map.reserved[0].iter().map(|r| r.len() / PAGE_SIZE).sum();
    prop_assert_eq!(pages, m.blocks.iter().map(|b| b.order().nr_pages()).sum::<u64>() + 1);
    for &b in &m.blocks {
        prop_assert_eq!(h.restore_folio(&mut map, b.phys()), Ok(b));
        prop_assert_eq!(h.restore_folio(&mut map, b.phys()), Err(RestoreError::AlreadyRestored { block: b }));
    }
    prop_assert_eq!(h.unclaimed().count(), 1, "only the FDT page is left");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_v1_512(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FormatVersion::V1, kho_core::BitmapBytes::B512)?;
    }

    #[test]
    fn engine_matches_model_v1_4096(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FormatVersion::V1, kho_core::BitmapBytes::B4096)?;
    }

    #[test]
    fn engine_matches_model_v4(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FormatVersion::V4, kho_core::BitmapBytes::B512)?;
    }
}
