//! A handover written by this project's engine for the next Linux's `test_kho` module.
//!
//! [`Staging`] is a platform whose "physical memory" is one buffer standing for the RAM
//! range `[base, base + len)` of the next kernel: the engine writes its root FDT, radix tree
//! and scratch array there, folios are carved from it, and the whole buffer becomes one kexec
//! segment. [`write_test_handover`] does what `test_kho`'s save path does (spec §6): folios of
//! random orders up to a total size, filled with random bytes, their x86 `csum_partial`, a
//! vmalloc'd `folios_info` array (`phys | order` per folio), the `kho_test` FDT blob, all
//! preserved; then finalizes to kho-v4. [`verify_test_handover`] is that module's restore
//! path run on our own incoming side: parse, reserve, restore the array and every folio at
//! its recorded order, and compare the checksum.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use kho_core::format::csum::csum_partial;
use kho_core::format::handover_ptr::HandoverPtr;
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::{self, TestKho};
use kho_core::format::{FormatVersion, Limits, WalkContext, vmalloc};
use kho_core::incoming::{Handover, IncomingConfig};
use kho_core::outgoing::{Kho, OutgoingConfig};
use kho_core::platform::{Access, AllocError, MemError, MemMap, MetaAlloc, PhysRead, PhysWrite};
use kho_core::types::{Block, Order, PAGE_BYTES, PAGE_SIZE, Pfn, PhysAddr, PhysRange};

/// Linux's `NR_PAGE_ORDERS` on x86-64 (orders 0..=10).
pub const NR_PAGE_ORDERS: u32 = 11;
/// Sub-blob name of the kexec metadata.
pub const KEXEC_METADATA: &str = "kexec-metadata";
/// Metadata pages reserved in the arena besides one per folio key path (radix nodes, FDT,
/// scratch array, blobs, vmalloc chunks and array pages, tracker bitmaps).
const META_PAGES_BASE: u64 = 64;

/// A deliberate defect, for negative tests: each must make the next kernel refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The blob's `csum` is off by one.
    Checksum,
    /// One folio is listed in `folios_info` but not preserved.
    MissingFolio,
    /// One folio is listed with an order one less than it was preserved with.
    WrongOrder,
    /// The root FDT's compatible is "kho-v9", which Linux 7.3 does not speak.
    UnknownCompatible,
}

impl Corruption {
    /// Name as used on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Checksum => "checksum",
            Self::MissingFolio => "missing-folio",
            Self::WrongOrder => "wrong-order",
            Self::UnknownCompatible => "unknown-compatible",
        }
    }
}

/// Errors of the handover writer.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The engine refused a step.
    #[error("{step}: {source}")]
    Engine {
        /// What was being done.
        step: &'static str,
        /// The engine's error.
        source: kho_core::error::Error,
    },
    /// The staging arena is full.
    #[error("staging arena of {len:#x} bytes at {base} is full ({what})")]
    ArenaFull {
        /// Arena base.
        base: PhysAddr,
        /// Arena size.
        len: u64,
        /// What did not fit.
        what: &'static str,
    },
    /// A memory access outside the arena.
    #[error("{0}")]
    Mem(#[from] MemError),
}

fn engine<E: Into<kho_core::error::Error>>(step: &'static str) -> impl FnOnce(E) -> HandoverError {
    move |source| HandoverError::Engine { step, source: source.into() }
}

#[derive(Debug)]
struct Arena {
    bytes: Vec<u8>,
    /// Next folio offset (grows up).
    low: u64,
    /// Lowest metadata page offset handed out (grows down).
    high: u64,
    free_meta: Vec<u64>,
}

/// RAM `[base, base + len)` staged in a buffer: the engine's platform, and the bytes of one
/// kexec segment.
#[derive(Debug)]
pub struct Staging {
    base: PhysAddr,
    arena: spin::Mutex<Arena>,
}

impl Staging {
    /// `len` bytes of zeroed staging memory standing for physical `base` (page aligned).
    #[must_use]
    pub fn new(base: PhysAddr, len: u64) -> Self {
        let len = len / PAGE_SIZE * PAGE_SIZE;
        let bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let high = bytes.len() as u64;
        Self { base, arena: spin::Mutex::new(Arena { bytes, low: 0, high, free_meta: Vec::new() }) }
    }

    /// The physical range staged (`None` for an empty arena).
    #[must_use]
    pub fn range(&self) -> Option<PhysRange> {
        PhysRange::new(self.base, self.len())
    }

    /// Bytes staged.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.arena.lock().bytes.len() as u64
    }

    /// True if nothing is staged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The staged bytes (the kexec segment's buffer).
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.arena.into_inner().bytes
    }

    /// A copy of the staged bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.arena.lock().bytes.clone()
    }

    /// Carves a `2^order`-page folio, aligned to its size, from the bottom of the arena.
    ///
    /// # Errors
    /// [`HandoverError::ArenaFull`].
    pub fn alloc_folio(&self, order: Order) -> Result<PhysAddr, HandoverError> {
        let mut a = self.arena.lock();
        let size = order.bytes();
        let base = self.base.as_u64();
        let start = (base + a.low).div_ceil(size) * size - base;
        if start + size > a.high {
            let len = a.bytes.len() as u64;
            return Err(HandoverError::ArenaFull { base: self.base, len, what: "folio" });
        }
        a.low = start + size;
        Ok(PhysAddr::new(base + start))
    }

    fn offset(&self, access: Access, phys: PhysAddr, len: usize) -> Result<usize, MemError> {
        let err = MemError { access, phys, len: len as u64 };
        let off = phys.as_u64().checked_sub(self.base.as_u64()).ok_or(err)?;
        let off = usize::try_from(off).map_err(|_| err)?;
        Ok(off)
    }
}

impl PhysRead for Staging {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.offset(Access::Read, phys, buf.len())?;
        let a = self.arena.lock();
        let src = a.bytes.get(off..off + buf.len()).ok_or(MemError::read(phys, buf.len() as u64))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl PhysWrite for Staging {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let off = self.offset(Access::Write, phys, data.len())?;
        let mut a = self.arena.lock();
        let dst = a.bytes.get_mut(off..off + data.len()).ok_or(MemError::write(phys, data.len() as u64))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

impl MetaAlloc for Staging {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        let mut a = self.arena.lock();
        let off = match a.free_meta.pop() {
            Some(off) => off,
            None => {
                if a.high < a.low + PAGE_SIZE {
                    return Err(AllocError);
                }
                a.high -= PAGE_SIZE;
                a.high
            }
        };
        let o = off as usize;
        a.bytes[o..o + PAGE_BYTES].fill(0);
        Ok(PhysAddr::new(self.base.as_u64() + off))
    }

    fn free_meta_page(&self, page: PhysAddr) {
        if let Some(off) = page.as_u64().checked_sub(self.base.as_u64()) {
            self.arena.lock().free_meta.push(off);
        }
    }
}

/// A small xorshift generator: reproducible folio orders and contents from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Folio orders as `test_kho` draws them: uniformly in `0..NR_PAGE_ORDERS` until
/// `total` bytes, with the order shrunk near the limit so the total is never exceeded.
#[must_use]
pub fn folio_orders(total: u64, seed: u64) -> Vec<Order> {
    let total = total / PAGE_SIZE * PAGE_SIZE;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut sum = 0u64;
    while sum < total {
        let mut order = (rng.next_u64() % u64::from(NR_PAGE_ORDERS)) as u32;
        while order > 0 && sum + (PAGE_SIZE << order) > total {
            order -= 1;
        }
        sum += PAGE_SIZE << order;
        out.push(Order::new(order).unwrap_or(Order::ZERO));
    }
    out
}

/// Arena bytes for folios of `orders` plus metadata, and the alignment it needs (the
/// largest folio).
#[must_use]
pub fn arena_size(orders: &[Order]) -> (u64, u64) {
    let align = orders.iter().map(|o| o.bytes()).max().unwrap_or(PAGE_SIZE);
    let mut sorted: Vec<u64> = orders.iter().map(|o| o.bytes()).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let folios: u64 = sorted.iter().sum();
    let array_pages = (orders.len() as u64 * 8).div_ceil(PAGE_SIZE);
    let meta = (META_PAGES_BASE + 6 * orders.len() as u64 + 2 * array_pages) * PAGE_SIZE;
    (folios.div_ceil(align) * align + meta.div_ceil(align) * align, align)
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSpec {
    /// Folio orders, in `folios_info` order.
    pub orders: Vec<Order>,
    /// Seed of the folio contents.
    pub seed: u64,
    /// RAM of the next kernel (sorted, disjoint).
    pub ram: Vec<PhysRange>,
    /// Its scratch areas (sorted, disjoint).
    pub scratch: Vec<PhysRange>,
    /// A kexec-metadata blob: release string and kexec count.
    pub metadata: Option<(String, u32)>,
    /// A deliberate defect.
    pub corrupt: Option<Corruption>,
}

/// One folio of the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestFolio {
    /// The folio as allocated and (unless corrupted) preserved.
    pub block: Block,
    /// The order written into `folios_info`.
    pub listed_order: Order,
    /// False for the folio a `MissingFolio` corruption leaves out.
    pub preserved: bool,
}

/// The handover written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The `SETUP_KEXEC_KHO` payload.
    pub ptr: HandoverPtr,
    /// Folios in `folios_info` order.
    pub folios: Vec<TestFolio>,
    /// The checksum of all folios (the blob holds this unless corrupted).
    pub csum: u32,
    /// The value written into the blob.
    pub blob_csum: u32,
    /// Where the `kho_test` blob is.
    pub blob: PhysAddr,
    /// Preserved blocks and bytes, as the engine counted them.
    pub preserved_blocks: u64,
    /// Bytes preserved.
    pub preserved_bytes: u64,
    /// Pages of metadata (radix nodes, scratch array) the next kernel must find intact.
    pub metadata_pages: Vec<PhysAddr>,
}

fn pfn_of(p: PhysAddr) -> Pfn {
    p.pfn().unwrap_or(Pfn::new(0).expect("pfn 0"))
}

/// Writes the `test_kho` handover into `staging` (see the module documentation).
///
/// # Errors
/// [`HandoverError::ArenaFull`] if the arena is too small; [`HandoverError::Engine`] naming
/// the step the engine refused (e.g. a folio in scratch or outside RAM).
pub fn write_test_handover(staging: &Staging, spec: &TestSpec) -> Result<Written, HandoverError> {
    // Folios: allocate largest first so alignment wastes nothing, list in draw order.
    let mut idx: Vec<usize> = (0..spec.orders.len()).collect();
    idx.sort_by_key(|&i| core::cmp::Reverse(spec.orders[i]));
    let mut addrs = vec![PhysAddr::new(0); spec.orders.len()];
    for &i in &idx {
        addrs[i] = staging.alloc_folio(spec.orders[i])?;
    }
    let mut rng = Rng::new(spec.seed);
    let mut csum = 0u32;
    let mut buf = Vec::new();
    for (i, &order) in spec.orders.iter().enumerate() {
        buf.resize(usize::try_from(order.bytes()).unwrap_or(0), 0);
        rng.fill(&mut buf);
        staging.write_phys(addrs[i], &buf)?;
        csum = csum_partial(&buf, csum);
    }

    let cfg = OutgoingConfig::new(spec.ram.clone(), spec.scratch.clone());
    let kho = Kho::new(staging, cfg).map_err(engine("set up the engine"))?;
    let missing = (spec.corrupt == Some(Corruption::MissingFolio)).then_some(spec.orders.len() / 2);
    let wrong = if spec.corrupt == Some(Corruption::WrongOrder) {
        spec.orders.iter().position(|o| o.as_u32() > 0)
    } else {
        None
    };
    let mut folios = Vec::with_capacity(spec.orders.len());
    for (i, (&order, &phys)) in spec.orders.iter().zip(&addrs).enumerate() {
        let block = Block::at(phys, order).expect("folios are aligned to their order");
        let preserved = missing != Some(i);
        if preserved {
            kho.preserve_folio(pfn_of(phys), order).map_err(engine("preserve a folio"))?;
        }
        let listed_order = if wrong == Some(i) { Order::new(order.as_u32() - 1).unwrap_or(order) } else { order };
        folios.push(TestFolio { block, listed_order, preserved });
    }

    // folios_info: a vmalloc'd array of phys | order, its pages and chunk pages preserved.
    let mut array = Vec::with_capacity(folios.len() * 8);
    for f in &folios {
        array.extend_from_slice(&(f.block.phys().as_u64() | u64::from(f.listed_order.as_u32())).to_le_bytes());
    }
    let mut pieces = Vec::new();
    for chunk in array.chunks(PAGE_BYTES) {
        let page = staging.alloc_meta_page().map_err(|_| HandoverError::ArenaFull {
            base: staging.base,
            len: staging.len(),
            what: "array",
        })?;
        staging.write_phys(page, chunk)?;
        pieces.push(page);
    }
    let (desc, chunks) =
        vmalloc::encode(staging, &pieces, Order::ZERO, vmalloc::FLAG_ALLOC).map_err(engine("encode folios_info"))?;
    for &p in pieces.iter().chain(&chunks) {
        kho.preserve_pages(pfn_of(p), 1).map_err(engine("preserve a folios_info page"))?;
    }

    let blob_csum = if spec.corrupt == Some(Corruption::Checksum) { csum.wrapping_add(1) } else { csum };
    let t = TestKho { nr_folios: folios.len() as u32, folios_info: desc, csum: blob_csum };
    let blob = t.to_blob().map_err(engine("build the kho_test blob"))?;
    let blob_page = put_blob(staging, &blob)?;
    kho.add_subtree(test_kho::SUBTREE_NAME, blob_page, blob.len() as u64).map_err(engine("add kho_test"))?;

    if let Some((release, count)) = &spec.metadata {
        let md = KexecMetadata::new(release, *count).to_bytes();
        let page = put_blob(staging, &md)?;
        kho.add_subtree(KEXEC_METADATA, page, md.len() as u64).map_err(engine("add kexec-metadata"))?;
    }

    let fin = kho.finalize(FormatVersion::V4).map_err(engine("finalize"))?;
    if spec.corrupt == Some(Corruption::UnknownCompatible) {
        let mut page = vec![0u8; PAGE_BYTES];
        staging.read_phys(fin.ptr.fdt, &mut page)?;
        let compat = FormatVersion::V4.compatible().as_bytes();
        if let Some(pos) =
            page.windows(compat.len() + 1).position(|w| &w[..compat.len()] == compat && w[compat.len()] == 0)
        {
            page[pos + compat.len() - 1] = b'9';
        }
        staging.write_phys(fin.ptr.fdt, &page)?;
    }
    Ok(Written {
        ptr: fin.ptr,
        folios,
        csum,
        blob_csum,
        blob: blob_page,
        preserved_blocks: fin.preserved_blocks,
        preserved_bytes: fin.preserved_bytes,
        metadata_pages: fin.metadata_pages,
    })
}

fn put_blob(staging: &Staging, blob: &[u8]) -> Result<PhysAddr, HandoverError> {
    if blob.len() > PAGE_BYTES {
        return Err(HandoverError::ArenaFull { base: staging.base, len: staging.len(), what: "blob over a page" });
    }
    let page = staging.alloc_meta_page().map_err(|_| HandoverError::ArenaFull {
        base: staging.base,
        len: staging.len(),
        what: "blob",
    })?;
    staging.write_phys(page, blob)?;
    Ok(page)
}

/// A memory map that accepts every page of RAM and records nothing (the dry run only needs
/// the engine's own bookkeeping).
#[derive(Debug)]
struct DryMap<'a> {
    ram: &'a [PhysRange],
}

impl MemMap for DryMap<'_> {
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.ram.iter().any(|r| r.contains(pfn.phys()))
    }
    fn reserve(&mut self, _ranges: &[PhysRange]) {}
    fn claim_folio(&mut self, _block: Block) {}
    fn claim_pages(&mut self, _block: Block) {}
    fn release(&mut self, _block: Block) {}
}

/// What the dry run found: the next kernel's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Blocks preserved in the tree.
    pub preserved_blocks: u64,
    /// Bytes preserved.
    pub preserved_bytes: u64,
    /// Folios restored and checksummed.
    pub folios: usize,
    /// Their checksum, equal to the blob's.
    pub csum: u32,
    /// The kexec-metadata blob, if any.
    pub metadata: Option<(String, u32)>,
}

/// Why the dry run refused, as `test_kho` or KHO would.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The engine's incoming side refused the handover or a blob.
    #[error("{step}: {source}")]
    Invalid {
        /// The step.
        step: &'static str,
        /// The error.
        source: kho_core::error::Error,
    },
    /// No `kho_test` sub-blob.
    #[error("no kho_test sub-blob in the handover")]
    NoTestBlob,
    /// A listed folio could not be restored (Linux: `kho_restore_folio` returns NULL).
    #[error("folio {index} at {phys}: {source}")]
    Folio {
        /// Index in `folios_info`.
        index: usize,
        /// Its address.
        phys: PhysAddr,
        /// Why.
        source: kho_core::error::RestoreError,
    },
    /// A folio restored with another order than listed.
    #[error("folio {index} at {phys}: listed with order {listed}, preserved with order {found}")]
    Order {
        /// Index.
        index: usize,
        /// Address.
        phys: PhysAddr,
        /// Order in `folios_info`.
        listed: u32,
        /// Order in the tree.
        found: u32,
    },
    /// The checksum differs.
    #[error("checksum of the restored folios is {found:#010x}, the blob says {expected:#010x}")]
    Checksum {
        /// Computed.
        found: u32,
        /// From the blob.
        expected: u32,
    },
    /// Memory could not be read.
    #[error("{0}")]
    Mem(#[from] MemError),
}

fn invalid<E: Into<kho_core::error::Error>>(step: &'static str) -> impl FnOnce(E) -> Refusal {
    move |source| Refusal::Invalid { step, source: source.into() }
}

/// Runs the next kernel's side on `mem`: our incoming engine parses and reserves the
/// handover `ptr` names, then `test_kho`'s restore path: the blob, `folios_info`
/// (restored as pages), every folio restored at its listed order, and the checksum.
///
/// # Errors
/// The first [`Refusal`], in the order Linux would meet it.
pub fn verify_test_handover<M: PhysRead + ?Sized>(
    mem: &M,
    ptr: &HandoverPtr,
    ram: &[PhysRange],
) -> Result<Verified, Refusal> {
    let cfg = IncomingConfig::new(ram.to_vec());
    let mut h = Handover::parse(mem, ptr, &cfg).map_err(invalid("parse the handover"))?;
    let mut map = DryMap { ram };
    h.reserve(&mut map);
    let metadata = match h.subtree(KEXEC_METADATA).cloned() {
        Some(s) => {
            let mut b = vec![0u8; usize::try_from(s.size.unwrap_or(0)).unwrap_or(0).min(PAGE_BYTES)];
            mem.read_phys(s.phys, &mut b)?;
            let md = KexecMetadata::parse(&b, s.phys).map_err(invalid("read kexec-metadata"))?;
            Some((md.previous_release, md.kexec_count))
        }
        None => None,
    };
    let sub = h.subtree(test_kho::SUBTREE_NAME).cloned().ok_or(Refusal::NoTestBlob)?;
    let mut blob = vec![0u8; usize::try_from(sub.size.unwrap_or(0)).unwrap_or(0).min(16 * PAGE_BYTES)];
    mem.read_phys(sub.phys, &mut blob)?;
    let t = TestKho::parse(&blob, sub.phys).map_err(invalid("parse the kho_test blob"))?;
    let scratch = h.scratch().to_vec();
    let mut ctx = WalkContext::new(mem, ram, &scratch, Limits::default());
    let area = vmalloc::decode_chain(&mut ctx, &t.folios_info, sub.phys).map_err(invalid("walk folios_info"))?;
    let listed = test_kho::decode_folios(&mut ctx, &t, sub.phys).map_err(invalid("read folios_info"))?;
    let piece_pages = 1u64 << t.folios_info.order;
    for &p in area.pieces.iter() {
        h.restore_pages(&mut map, p, piece_pages).map_err(invalid("restore a folios_info page"))?;
    }
    for &c in &area.chunk_pages {
        h.restore_pages(&mut map, c, 1).map_err(invalid("restore a folios_info chunk"))?;
    }
    let mut csum = 0u32;
    let mut buf = Vec::new();
    for (index, want) in listed.iter().enumerate() {
        let phys = want.phys();
        let got = h.restore_folio(&mut map, phys).map_err(|source| Refusal::Folio { index, phys, source })?;
        if got.order() != want.order() {
            return Err(Refusal::Order { index, phys, listed: want.order().as_u32(), found: got.order().as_u32() });
        }
        buf.resize(usize::try_from(got.order().bytes()).unwrap_or(0), 0);
        mem.read_phys(phys, &mut buf)?;
        csum = csum_partial(&buf, csum);
    }
    if csum != t.csum {
        return Err(Refusal::Checksum { found: csum, expected: t.csum });
    }
    Ok(Verified {
        preserved_blocks: h.preserved_blocks(),
        preserved_bytes: h.preserved_bytes(),
        folios: listed.len(),
        csum,
        metadata,
    })
}

/// Names of the corruptions, for help texts.
#[must_use]
pub fn corruption_names() -> String {
    [Corruption::Checksum, Corruption::MissingFolio, Corruption::WrongOrder, Corruption::UnknownCompatible]
        .iter()
        .map(|c| c.name().to_string())
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    fn setup(corrupt: Option<Corruption>) -> (Staging, TestSpec) {
        let orders = folio_orders(8 * MIB, 42);
        let (len, align) = arena_size(&orders);
        let base = 0x3000_0000;
        assert_eq!(base % align, 0);
        let staging = Staging::new(PhysAddr::new(base), len);
        let spec = TestSpec {
            orders,
            seed: 7,
            ram: vec![r(MIB, 1023 * MIB)],
            scratch: vec![r(0x0400_0000, 16 * MIB), r(0x3800_0000, 64 * MIB)],
            metadata: Some(("7.3.4".to_string(), 1)),
            corrupt,
        };
        (staging, spec)
    }

    #[test]
    fn orders_fill_the_total_like_test_kho() {
        let o = folio_orders(8 * MIB, 1);
        assert_eq!(o.iter().map(|o| o.bytes()).sum::<u64>(), 8 * MIB);
        assert!(o.iter().all(|o| o.as_u32() < NR_PAGE_ORDERS));
        assert_eq!(o, folio_orders(8 * MIB, 1), "reproducible");
        assert_ne!(o, folio_orders(8 * MIB, 2));
    }

    #[test]
    fn written_handover_passes_our_test_kho_restore() {
        let (staging, spec) = setup(None);
        let w = write_test_handover(&staging, &spec).unwrap();
        assert_eq!(w.csum, w.blob_csum);
        assert!(staging.range().unwrap().contains(w.ptr.fdt));
        for f in &w.folios {
            assert!(spec.scratch.iter().all(|s| !s.overlaps(f.block.range())));
        }
        let v = verify_test_handover(&staging, &w.ptr, &spec.ram).unwrap();
        assert_eq!(v.folios, spec.orders.len());
        assert_eq!(v.csum, w.csum);
        assert_eq!(v.metadata, Some(("7.3.4".to_string(), 1)));
        // Folios + array page + chunk page + FDT page + two blobs.
        assert_eq!(v.preserved_blocks, spec.orders.len() as u64 + 5);
        assert_eq!(v.preserved_blocks, w.preserved_blocks);
    }

    #[test]
    fn each_corruption_is_refused_for_its_own_reason() {
        let (staging, spec0) = setup(Some(Corruption::Checksum));
        let w = write_test_handover(&staging, &spec0).unwrap();
        let e = verify_test_handover(&staging, &w.ptr, &spec0.ram).unwrap_err();
        assert!(matches!(e, Refusal::Checksum { found, expected } if found == w.csum && expected == w.csum + 1), "{e}");

        let (staging, spec) = setup(Some(Corruption::MissingFolio));
        let w = write_test_handover(&staging, &spec).unwrap();
        let missing = spec.orders.len() / 2;
        assert!(!w.folios[missing].preserved);
        let e = verify_test_handover(&staging, &w.ptr, &spec.ram).unwrap_err();
        assert!(matches!(e, Refusal::Folio { index, .. } if index == missing), "{e}");

        let (staging, spec) = setup(Some(Corruption::WrongOrder));
        let w = write_test_handover(&staging, &spec).unwrap();
        let i = spec.orders.iter().position(|o| o.as_u32() > 0).unwrap();
        let e = verify_test_handover(&staging, &w.ptr, &spec.ram).unwrap_err();
        assert!(matches!(e, Refusal::Order { index, listed, found, .. } if index == i && listed + 1 == found), "{e}");

        let (staging, spec) = setup(Some(Corruption::UnknownCompatible));
        let w = write_test_handover(&staging, &spec).unwrap();
        let e = verify_test_handover(&staging, &w.ptr, &spec.ram).unwrap_err();
        assert!(matches!(&e, Refusal::Invalid { step: "parse the handover", .. }), "{e}");
        assert!(e.to_string().contains("kho-v9"), "{e}");
    }

    #[test]
    fn arena_too_small_is_an_error() {
        let (_, spec) = setup(None);
        let staging = Staging::new(PhysAddr::new(0x3000_0000), 2 * MIB);
        let e = write_test_handover(&staging, &spec).unwrap_err();
        assert!(matches!(e, HandoverError::ArenaFull { what: "folio", .. }), "{e}");
    }

    #[test]
    fn folios_in_scratch_are_refused_by_the_engine() {
        let (_, mut spec) = setup(None);
        let staging = Staging::new(PhysAddr::new(0x3000_0000), arena_size(&spec.orders).0);
        spec.scratch = vec![r(0x3000_0000, 4 * MIB)];
        let e = write_test_handover(&staging, &spec).unwrap_err();
        assert!(matches!(e, HandoverError::Engine { step: "preserve a folio", .. }), "{e}");
    }
}
