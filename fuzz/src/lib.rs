//! Shared pieces of the KHO fuzz targets: the fixed machine every image-based target
//! simulates, the byte layouts of the target inputs (so the corpus generator can write seeds
//! the targets read back exactly), the invariant checks, and the structure-aware handover
//! builder behind `mutate_v1` / `mutate_v4`.
//!
//! Every input layout is "fixed header, then RAM image": the header carries pointers and
//! knobs as little-endian integers (missing bytes read as zero), the rest of the input is a
//! sparse image of the first [`IMAGE_MAX_PAGES`] pages of RAM (see [`image_mem`]); the rest
//! of RAM reads as zero. Pointers in the header are absolute physical addresses, so a seed
//! made from a real handover decodes to exactly that handover.

use std::fmt::Write as _;

use kho_core::format::{BitmapBytes, FormatVersion};
use kho_core::testing::{SparseMem, TestPlatform};
use kho_core::{Block, BlockSet, Finalized, OutgoingError, Kho, Order, OutgoingConfig, PAGE_SIZE, Pfn, PhysAddr, PhysRange};

/// First byte of RAM in every simulated machine (1 MiB, as on a PC).
pub const RAM_BASE: u64 = 0x10_0000;
/// Pages of RAM: 32 MiB.
pub const RAM_PAGES: u64 = 8192;
/// Most RAM pages an input may fill; the rest of RAM reads as zero.
pub const IMAGE_MAX_PAGES: usize = 64;
/// Metadata pool of the structure-aware targets (they need no image): the first 1 MiB of RAM.
pub const MUTATE_POOL_PAGES: u64 = 256;

/// The machine's RAM.
#[must_use]
pub fn ram() -> Vec<PhysRange> {
    vec![range(RAM_BASE, RAM_PAGES * PAGE_SIZE)]
}

/// `[start, start + len)`; panics on an empty or wrapping range (only used with constants).
#[must_use]
pub fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).expect("valid constant range")
}

/// A little-endian reader over a header that yields zeros once the bytes run out.
#[derive(Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads from the start of `bytes`.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        out
    }
    /// Next byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    /// Next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    /// Next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    /// Next `n` bytes (fewer if the input ends).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.bytes.len());
        let end = self.pos.saturating_add(n).min(self.bytes.len());
        self.pos = self.pos.saturating_add(n);
        &self.bytes[start..end]
    }
    /// Everything after the bytes read so far.
    #[must_use]
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or(&[])
    }
}

/// Memory of the simulated machine with a sparse image applied. The image is a sequence of
/// records `page: u8, offset: u16, len: u16, bytes[len]` (little-endian); each writes its
/// bytes at `RAM_BASE + (page % IMAGE_MAX_PAGES) * PAGE_SIZE + offset % PAGE_SIZE`, cut at the
/// end of the image area. Later records overwrite earlier ones; a short last record writes
/// what it has. Sparse because metadata pages are mostly zeros: seeds stay small and the
/// fuzzer spends its mutations on the bytes that matter.
#[must_use]
pub fn image_mem(image: &[u8]) -> SparseMem {
    let mem = SparseMem::with_ram(&ram());
    let limit = RAM_BASE + IMAGE_MAX_PAGES as u64 * PAGE_SIZE;
    let mut c = Cursor::new(image);
    while !c.rest().is_empty() {
        let page = u64::from(c.u8()) % IMAGE_MAX_PAGES as u64;
        let off = u64::from(c.u16()) % PAGE_SIZE;
        let len = usize::from(c.u16());
        let bytes = c.bytes(len);
        let at = RAM_BASE + page * PAGE_SIZE + off;
        let n = bytes.len().min(usize::try_from(limit - at).expect("small"));
        if n > 0 {
            mem.write_bytes(PhysAddr::new(at), &bytes[..n]);
        }
    }
    mem
}

/// The sparse image (see [`image_mem`]) of the first `pages` pages of RAM: one record per
/// stretch of non-zero bytes (stretches closer than 16 bytes are merged).
#[must_use]
pub fn dump_image(mem: &SparseMem, pages: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut page_buf = vec![0u8; PAGE_SIZE as usize];
    for p in 0..pages.min(IMAGE_MAX_PAGES as u64) {
        mem.read_phys_checked(PhysAddr::new(RAM_BASE + p * PAGE_SIZE), &mut page_buf);
        let mut i = 0;
        while i < page_buf.len() {
            if page_buf[i] == 0 {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i + 1;
            let mut j = end;
            while j < page_buf.len() && j < end + 16 {
                if page_buf[j] != 0 {
                    end = j + 1;
                }
                j += 1;
            }
            out.push(p as u8);
            out.extend_from_slice(&(start as u16).to_le_bytes());
            out.extend_from_slice(&((end - start) as u16).to_le_bytes());
            out.extend_from_slice(&page_buf[start..end]);
            i = end;
        }
    }
    out
}

/// A scratch area from a header's (page offset, pages) pair, clamped into RAM; `None` for 0
/// pages.
#[must_use]
pub fn scratch_from(page_off: u32, pages: u32) -> Option<PhysRange> {
    if pages == 0 {
        return None;
    }
    let off = u64::from(page_off) % RAM_PAGES;
    let n = u64::from(pages).min(RAM_PAGES - off);
    PhysRange::new(PhysAddr::new(RAM_BASE + off * PAGE_SIZE), n * PAGE_SIZE)
}

/// The header fields of a scratch area, for seeds.
#[must_use]
pub fn scratch_to(r: PhysRange) -> (u32, u32) {
    let off = (r.start().as_u64() - RAM_BASE) / PAGE_SIZE;
    (off as u32, (r.len() / PAGE_SIZE) as u32)
}

/// Formats an error and checks the message is not empty: every error must `Display`.
pub fn show<E: std::fmt::Display + std::fmt::Debug>(e: &E) -> String {
    let mut s = String::new();
    write!(s, "{e}").expect("Display of an error failed");
    assert!(!s.is_empty(), "empty message for {e:?}");
    let _ = format!("{e:?}");
    s
}

/// Panics unless every range lies inside RAM and outside every scratch area.
pub fn assert_ranges_ok(ranges: &[PhysRange], ram: &[PhysRange], scratch: &[PhysRange], what: &str) {
    for r in ranges {
        assert!(ram.iter().any(|m| m.contains_range(*r)), "{what}: {r} outside RAM {ram:?}");
        assert!(!scratch.iter().any(|s| s.overlaps(*r)), "{what}: {r} overlaps scratch {scratch:?}");
    }
}

/// Blocks of a set as a sorted list (for comparisons that do not depend on internal layout).
#[must_use]
pub fn block_list(set: &BlockSet) -> Vec<Block> {
    set.sorted_by_address()
}

// ---- structure-aware handover builder --------------------------------------------------------

/// Scratch area of the structure-aware machine: 4 MiB at RAM + 8 MiB.
#[must_use]
pub fn mutate_scratch() -> Vec<PhysRange> {
    vec![range(RAM_BASE + (8 << 20), 4 << 20)]
}

/// One preserve call decoded from the input.
#[derive(Debug, Clone, Copy)]
pub enum PreserveOp {
    /// `preserve_folio(pfn, order)`.
    Folio { pfn: u64, order: u32 },
    /// `preserve_pages(pfn, count)`.
    Pages { pfn: u64, count: u64 },
    /// `unpreserve_folio(pfn, order)`.
    Unfolio { pfn: u64, order: u32 },
}

/// One mutation applied to a page of the finalized handover.
#[derive(Debug, Clone, Copy)]
pub struct Mutation {
    /// Index into `[fdt page, metadata pages...]` (taken modulo their number).
    pub target: u8,
    /// What to do (see [`apply_mutation`]).
    pub kind: u8,
    /// Byte offset in the page (taken modulo the page size).
    pub offset: u16,
    /// Operand.
    pub value: u64,
}

/// A decoded structure-aware input.
#[derive(Debug, Clone)]
pub struct MutateInput {
    /// kho-v1 bitmap size.
    pub bitmap: BitmapBytes,
    /// Whether to register sub-blobs.
    pub blobs: bool,
    /// Preserve calls, in order.
    pub ops: Vec<PreserveOp>,
    /// Mutations, in order.
    pub muts: Vec<Mutation>,
}

/// First frame preserve ops may use: right after the metadata pool.
pub const PRESERVE_BASE_PFN: u64 = (RAM_BASE >> 12) + MUTATE_POOL_PAGES;
/// Frames preserve ops may use.
pub const PRESERVE_SPAN: u64 = RAM_PAGES - MUTATE_POOL_PAGES;

impl MutateInput {
    /// Decodes: flags byte, op count, 4 bytes per op, mutation count, 12 bytes per mutation.
    #[must_use]
    pub fn decode(data: &[u8]) -> Self {
        let mut c = Cursor::new(data);
        let flags = c.u8();
        let nops = usize::from(c.u8() % 12) + 1;
        let mut ops = Vec::with_capacity(nops);
        for _ in 0..nops {
            let kind = c.u8();
            let off = u64::from(c.u16());
            let arg = c.u8();
            let pfn = PRESERVE_BASE_PFN + off % PRESERVE_SPAN;
            ops.push(match kind % 4 {
                0 | 3 => PreserveOp::Folio { pfn: pfn & !((1u64 << (arg % 11)) - 1), order: u32::from(arg % 11) },
                1 => PreserveOp::Pages { pfn, count: u64::from(arg) + 1 },
                _ => PreserveOp::Unfolio { pfn: pfn & !((1u64 << (arg % 11)) - 1), order: u32::from(arg % 11) },
            });
        }
        let nmuts = usize::from(c.u8() % 9);
        let mut muts = Vec::with_capacity(nmuts);
        for _ in 0..nmuts {
            muts.push(Mutation { target: c.u8(), kind: c.u8(), offset: c.u16(), value: c.u64() });
        }
        Self {
            bitmap: if flags & 1 != 0 { BitmapBytes::B4096 } else { BitmapBytes::B512 },
            blobs: flags & 2 != 0,
            ops,
            muts,
        }
    }
}

/// A finalized handover on its platform.
#[derive(Debug)]
pub struct Built {
    /// The platform (RAM + pool).
    pub plat: TestPlatform,
    /// What finalize returned.
    pub fin: Finalized,
    /// Blocks preserved at finalize.
    pub preserved: Vec<Block>,
}

/// Runs the preserve ops on a fresh `Kho` and finalizes in `format`. Preserve errors are
/// expected (overlaps, alignment, pool exhausted) and ignored, but each must `Display`.
/// Returns `None` if finalize fails (only when the metadata pool runs out).
#[must_use]
pub fn build(input: &MutateInput, format: FormatVersion) -> Option<Built> {
    let ram = ram();
    let plat = TestPlatform::new(&ram, range(RAM_BASE, MUTATE_POOL_PAGES * PAGE_SIZE));
    let mut cfg = OutgoingConfig::new(ram.clone(), mutate_scratch());
    cfg.bitmap_bytes = input.bitmap;
    let preserved;
    let fin;
    {
        let kho = Kho::new(&plat, cfg).expect("valid configuration");
        for op in &input.ops {
            let r = match *op {
                PreserveOp::Folio { pfn, order } => {
                    kho.preserve_folio(Pfn::new(pfn).expect("in RAM"), Order::new(order).expect("order"))
                }
                PreserveOp::Pages { pfn, count } => kho.preserve_pages(Pfn::new(pfn).expect("in RAM"), count),
                PreserveOp::Unfolio { pfn, order } => {
                    kho.unpreserve_folio(Pfn::new(pfn).expect("in RAM"), Order::new(order).expect("order"))
                }
            };
            if let Err(e) = r {
                show(&e);
            }
        }
        if input.blobs {
            add_blobs(&kho, format);
        }
        fin = match kho.finalize(format) {
            Ok(f) => f,
            Err(e) => {
                assert!(matches!(e, OutgoingError::OutOfMemory), "finalize failed: {}", show(&e));
                return None;
            }
        };
        preserved = block_list(&kho.preserved().expect("snapshot"));
        // `kho` only borrows the platform; dropping it keeps everything finalize wrote.
    }
    Some(Built { plat, fin, preserved })
}

/// Registers a `memblock` FDT blob (both formats) and a `kexec-metadata` blob (kho-v4),
/// each in its own page just above the preserve area's start.
fn add_blobs<P: kho_core::Platform>(kho: &Kho<P>, format: FormatVersion) {
    use kho_core::format::{kexec_metadata::KexecMetadata, memblock};
    let mb = memblock::build(&[memblock::ReserveMem {
        name: "trace".into(),
        start: PhysAddr::new(RAM_BASE + (16 << 20)),
        size: 1 << 20,
    }])
    .expect("memblock blob");
    let page = PhysAddr::new(RAM_BASE + (20 << 20));
    kho.platform().write_phys(page, &mb).expect("in RAM");
    if let Err(e) = kho.add_subtree("memblock", page, mb.len() as u64) {
        show(&e);
    }
    if format == FormatVersion::V4 {
        let md = KexecMetadata::new("7.3.4-fuzz", 3).to_bytes();
        let page = PhysAddr::new(RAM_BASE + (20 << 20) + PAGE_SIZE);
        kho.platform().write_phys(page, &md).expect("in RAM");
        if let Err(e) = kho.add_subtree("kexec-metadata", page, md.len() as u64) {
            show(&e);
        }
    }
}

/// Pages a mutation may target: the FDT page, then every metadata page.
#[must_use]
pub fn mutation_pages(fin: &Finalized) -> Vec<PhysAddr> {
    let mut v = vec![fin.ptr.fdt];
    v.extend(fin.metadata_pages.iter().copied());
    v
}

/// Applies one mutation through the platform's memory:
/// 0 xor a byte; 1 store a u64; 2 store the address of another handover page (plus a small
/// offset); 3 store a small u32 (orders, counts); 4 move a u64 by a signed number of pages;
/// 5 zero a u64; 6 store the address of a page outside RAM or in scratch; 7 copy one handover
/// page over another.
pub fn apply_mutation(mem: &SparseMem, pages: &[PhysAddr], m: &Mutation) {
    let page = pages[usize::from(m.target) % pages.len()];
    let off = u64::from(m.offset) % PAGE_SIZE;
    let at = PhysAddr::new(page.as_u64() + off);
    let at8 = PhysAddr::new(page.as_u64() + (off & !7));
    let read8 = |a: PhysAddr| {
        let mut b = [0u8; 8];
        mem.read_phys_checked(a, &mut b);
        u64::from_le_bytes(b)
    };
    match m.kind % 8 {
        0 => {
            let mut b = [0u8; 1];
            mem.read_phys_checked(at, &mut b);
            mem.write_bytes(at, &[b[0] ^ (m.value as u8 | 1)]);
        }
        1 => mem.write_bytes(at8, &m.value.to_le_bytes()),
        2 => {
            let target = pages[(m.value as usize) % pages.len()].as_u64() + ((m.value >> 32) & 0xe00);
            mem.write_bytes(at8, &target.to_le_bytes());
        }
        3 => {
            let at4 = PhysAddr::new(page.as_u64() + (off & !3));
            mem.write_bytes(at4, &((m.value % 64) as u32).to_le_bytes());
        }
        4 => {
            let delta = i64::from(m.value as i8) * PAGE_SIZE as i64;
            mem.write_bytes(at8, &read8(at8).wrapping_add_signed(delta).to_le_bytes());
        }
        5 => mem.write_bytes(at8, &[0u8; 8]),
        6 => {
            let candidates = [
                RAM_BASE - PAGE_SIZE,
                RAM_BASE + RAM_PAGES * PAGE_SIZE,
                RAM_BASE + (8 << 20),
                RAM_BASE + (10 << 20) + 0x200,
                u64::MAX & !0xfff,
                1 << 52,
            ];
            mem.write_bytes(at8, &candidates[(m.value as usize) % candidates.len()].to_le_bytes());
        }
        _ => {
            let src = pages[(m.value as usize) % pages.len()];
            let mut buf = vec![0u8; PAGE_SIZE as usize];
            mem.read_phys_checked(src, &mut buf);
            mem.write_bytes(page, &buf);
        }
    }
}

/// `read_phys` for addresses known to be backed.
pub trait ReadChecked {
    /// Reads; panics if not backed (only used on handover pages, which are in RAM).
    fn read_phys_checked(&self, at: PhysAddr, buf: &mut [u8]);
}
impl ReadChecked for SparseMem {
    fn read_phys_checked(&self, at: PhysAddr, buf: &mut [u8]) {
        use kho_core::PhysRead;
        self.read_phys(at, buf).expect("handover pages are in RAM");
    }
}

/// The body of `mutate_v1` / `mutate_v4`: build, mutate, parse, check.
pub fn run_mutate(data: &[u8], format: FormatVersion) {
    use kho_core::{Handover, IncomingConfig, PhysRead};
    let input = MutateInput::decode(data);
    let Some(built) = build(&input, format) else { return };
    let pages = mutation_pages(&built.fin);
    for m in &input.muts {
        apply_mutation(&built.plat.mem, &pages, m);
    }
    let ram = ram();
    let mut cfg = IncomingConfig::new(ram.clone());
    cfg.v1_bitmap_bytes = input.bitmap;
    match Handover::parse(&built.plat.mem, &built.fin.ptr, &cfg) {
        Ok(h) => {
            assert_ranges_ok(h.reserved_ranges(), &ram, h.scratch(), "reserved range");
            for s in h.subtrees() {
                let size = s.size.expect("sizes are resolved");
                let r = PhysRange::new(s.phys, size).expect("checked blob range");
                assert!(h.reserved_ranges().iter().any(|x| x.contains_range(r)), "blob {} not preserved", s.name);
                let mut blob = vec![0u8; usize::try_from(size).expect("blob size")];
                built.plat.mem.read_phys(s.phys, &mut blob).expect("blob is in RAM");
                sub_blob_parsers(&blob, s.phys);
            }
            if input.muts.is_empty() {
                assert_eq!(block_list(h.preserved()), built.preserved, "unmutated handover decodes differently");
                assert_eq!(h.scratch(), mutate_scratch().as_slice());
            }
        }
        Err(e) => {
            assert!(!input.muts.is_empty(), "unmutated handover refused: {}", show(&e));
            show(&e);
        }
    }
    let fdt_len = usize::try_from(built.fin.ptr.fdt_size).expect("page");
    let mut fdt = vec![0u8; fdt_len];
    built.plat.mem.read_phys(built.fin.ptr.fdt, &mut fdt).expect("fdt in RAM");
    let scratch = mutate_scratch();
    let v = Handover::validate_fdt(&built.plat.mem, &fdt, built.fin.ptr.fdt, &scratch, &cfg);
    for p in &v.problems {
        show(p);
    }
    assert_eq!(v.handover.is_some(), v.problems.is_empty());
}

/// Runs every sub-blob parser on `blob` (found at `at`); every error must `Display`, and a
/// successful parse must survive a round trip through the matching encoder.
pub fn sub_blob_parsers(blob: &[u8], at: PhysAddr) {
    use kho_core::format::{kexec_metadata::KexecMetadata, memblock, test_kho::TestKho, vmalloc::KhoVmalloc};
    match memblock::parse(blob, at) {
        Ok(regions) => {
            if let Ok(again) = memblock::build(&regions) {
                assert_eq!(memblock::parse(&again, at).expect("rebuilt memblock blob parses"), regions);
            }
        }
        Err(e) => {
            show(&e);
        }
    }
    match KexecMetadata::parse(blob, at) {
        Ok(md) => {
            if md.previous_release.len() < kho_core::format::kexec_metadata::RELEASE_BYTES {
                let again = KexecMetadata::parse(&md.to_bytes(), at).expect("re-encoded metadata parses");
                assert_eq!(again, md);
            }
        }
        Err(e) => {
            show(&e);
        }
    }
    match TestKho::parse(blob, at) {
        Ok(t) => {
            let again = t.to_blob().expect("test_kho blob builds");
            assert_eq!(TestKho::parse(&again, at).expect("rebuilt test_kho blob parses"), t);
        }
        Err(e) => {
            show(&e);
        }
    }
    for window in [blob, blob.get(..16).unwrap_or(blob)] {
        match KhoVmalloc::from_bytes(window, at) {
            Ok(v) => assert_eq!(v.to_bytes().as_slice(), window),
            Err(e) => {
                show(&e);
            }
        }
    }
}

/// Serializes a structure-aware input (for seeds): the inverse of [`MutateInput::decode`]
/// for inputs whose fields are already in range.
#[must_use]
pub fn encode_mutate(flags: u8, ops: &[(u8, u16, u8)], muts: &[Mutation]) -> Vec<u8> {
    let mut v = vec![flags, (ops.len() as u8).saturating_sub(1)];
    for &(k, off, arg) in ops {
        v.push(k);
        v.extend_from_slice(&off.to_le_bytes());
        v.push(arg);
    }
    v.push(muts.len() as u8);
    for m in muts {
        v.push(m.target);
        v.push(m.kind);
        v.extend_from_slice(&m.offset.to_le_bytes());
        v.extend_from_slice(&m.value.to_le_bytes());
    }
    v
}
