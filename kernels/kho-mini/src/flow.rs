//! What the mini kernel does, step by step, over any physical memory: the kernel runs it
//! over its identity map, the tests over a byte store.
//!
//! 1. [`Probe::new`]: read boot_params, the `setup_data` chain, the `SETUP_KEXEC_KHO` pointer
//!    and the scratch areas; list the memory in use.
//! 2. [`Probe::heap_region`]: the heap comes from a scratch area (the only memory the
//!    previous kernel promised not to need) until preserved memory is reserved.
//! 3. [`restore`]: validate the handover with kho-core, reserve, restore and check every
//!    `kho_test` folio against the blob's checksum; print the verdict.
//! 4. [`handover_out`]: preserve those folios again plus some of our own, write a kho-v4
//!    handover with a `kho_test` blob and a `kexec-metadata` blob naming this kernel, and
//!    check it with kho-core's incoming side.
//! 5. [`prepare_next`]: place the next Linux from the payload, build its boot_params with a
//!    `SETUP_KEXEC_KHO` entry, and say where to jump.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use kho_core::format::handover_ptr::HandoverPtr;
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::{self, TestKho};
use kho_core::format::vmalloc;
use kho_core::format::{FormatVersion, Limits, WalkContext};
use kho_core::{
    Block, Handover, IncomingConfig, Kho, Order, OutgoingConfig, PAGE_SIZE, PhysAddr, PhysRange, PhysRead, PhysWrite,
};

use crate::bootparams::{self, BOOT_PARAMS_BYTES, BootInfo, SetupData};
use crate::bzimage::ENTRY_64_OFFSET;
use crate::error::{MiniError, Result, bad};
use crate::memory::{ALLOC_FLOOR, FreeMap, MiniPlatform, Zone};
use crate::payload::{self, Payload};
use kho_boot::bootparams::BootLayout;
use kho_boot::bzimage::BzImage;
use kho_core::format::csum::csum_partial;
use zerocopy::IntoBytes;

/// What this kernel calls itself in the `kexec-metadata` blob it hands over.
pub const RELEASE: &str = concat!("kho-mini-", env!("CARGO_PKG_VERSION"));
/// Sub-node name of the kexec-metadata blob (spec §2.5).
pub const KEXEC_METADATA: &str = "kexec-metadata";
/// Folios of its own the mini kernel preserves, by order.
pub const OWN_FOLIO_ORDERS: [u32; 6] = [0, 1, 2, 3, 0, 4];
/// Largest `kho_test` blob and `folios_info` array the mini kernel reads (its heap is tens
/// of MiB; test_kho's blob is one page and its array 8 bytes per folio, so 1 MiB is 128k
/// folios). Larger claims are refused with a typed error instead of exhausting the heap.
pub const MINI_BLOB_LIMIT: u64 = 1 << 20;
/// Largest next kernel read from the payload (a distribution bzImage is about 15 MiB).
pub const MAX_NEXT_KERNEL: u64 = 64 << 20;
/// Scratch areas invented on a cold boot are aligned to 4 MiB, as Linux 7.3 aligns its own.
pub const SCRATCH_ALIGN: u64 = 4 << 20;
/// Largest scratch area invented on a cold boot.
pub const SCRATCH_MAX: u64 = 512 << 20;

/// Reads `len` bytes at `at`.
fn read_vec<M: PhysRead + ?Sized>(mem: &M, what: &'static str, at: PhysAddr, len: usize) -> Result<Vec<u8>> {
    let mut v = alloc::vec![0u8; len];
    mem.read_phys(at, &mut v).map_err(|err| MiniError::Unreadable { what, err })?;
    Ok(v)
}

/// Everything the mini kernel learns from its loader.
#[derive(Debug)]
pub struct Probe {
    /// Where boot_params is.
    pub bp_phys: PhysAddr,
    /// Its bytes.
    pub bp: Box<[u8; BOOT_PARAMS_BYTES]>,
    /// Decoded fields.
    pub info: BootInfo,
    /// The `setup_data` chain.
    pub chain: Vec<SetupData>,
    /// The KHO pointer, or why the `setup_data` node could not be read.
    pub kho: Option<core::result::Result<HandoverPtr, MiniError>>,
    /// The incoming scratch areas, if the pointer names a readable array.
    pub scratch: Option<Vec<PhysRange>>,
    /// Usable RAM.
    pub ram: Vec<PhysRange>,
    /// Memory in use, named.
    pub used: Vec<(&'static str, PhysRange)>,
    /// RAM minus what is in use.
    pub free: FreeMap,
    /// The command line this kernel was given.
    pub cmdline: String,
}

impl Probe {
    /// Reads what the loader left: boot_params at `bp_phys`, this kernel's `image`.
    ///
    /// # Errors
    /// Unreadable or malformed boot_params or `setup_data` chain.
    pub fn new<M: PhysRead + ?Sized>(mem: &M, bp_phys: PhysAddr, image: PhysRange) -> Result<Self> {
        let mut bp = Box::new([0u8; BOOT_PARAMS_BYTES]);
        mem.read_phys(bp_phys, &mut bp[..]).map_err(|err| MiniError::Unreadable { what: "boot_params", err })?;
        Self::from_bytes(mem, bp_phys, bp, image)
    }

    /// As [`Probe::new`] with boot_params already read (or built, for a PVH boot: then
    /// `bp_phys` is 0 and no memory holds them).
    ///
    /// # Errors
    /// As [`Probe::new`].
    pub fn from_bytes<M: PhysRead + ?Sized>(
        mem: &M,
        bp_phys: PhysAddr,
        bp: Box<[u8; BOOT_PARAMS_BYTES]>,
        image: PhysRange,
    ) -> Result<Self> {
        let info = BootInfo::parse(&bp, bp_phys)?;
        let ram = info.ram();
        let chain = bootparams::walk_setup_data(mem, info.setup_data)?;
        let kho = bootparams::find_kho(mem, &chain).transpose();
        let cmd = bootparams::read_cmdline(mem, info.cmdline, 4096)?;
        let mut used: Vec<(&'static str, PhysRange)> = Vec::new();
        let page = |a: PhysAddr, len: u64| {
            let start = a.as_u64() & !(PAGE_SIZE - 1);
            let end = a.as_u64().checked_add(len.max(1))?.checked_next_multiple_of(PAGE_SIZE)?;
            PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end))
        };
        used.extend(page(PhysAddr::new(0), ALLOC_FLOOR.min(1 << 20)).map(|r| ("first MiB", r)));
        used.extend(page(image.start(), image.len()).map(|r| ("kho-mini image", r)));
        if !bp_phys.is_null() {
            used.extend(page(bp_phys, BOOT_PARAMS_BYTES as u64).map(|r| ("boot_params", r)));
        }
        if !info.cmdline.is_null() {
            used.extend(page(info.cmdline, cmd.len() as u64 + 1).map(|r| ("command line", r)));
        }
        for s in &chain {
            used.extend(s.range().and_then(|r| page(r.start(), r.len())).map(|r| ("setup_data", r)));
        }
        if let Some(r) = info.initrd {
            used.extend(page(r.start(), r.len()).map(|r| ("initrd (payload)", r)));
        }
        let mut scratch = None;
        if let Some(Ok(ptr)) = &kho {
            used.extend(page(ptr.fdt, ptr.fdt_size.min(1 << 20)).map(|r| ("KHO root FDT", r)));
            if ptr.scratch_size > 0 {
                used.extend(page(ptr.scratch, ptr.scratch_size.min(1 << 20)).map(|r| ("kho_scratch[]", r)));
            }
            scratch = kho_core::format::scratch::decode(mem, &ram, ptr.scratch, ptr.scratch_size, 64).ok();
        }
        let mut free = FreeMap::new(&ram);
        for &(_, r) in &used {
            free.take(r);
        }
        let cmdline = String::from_utf8_lossy(&cmd).into_owned();
        Ok(Self { bp_phys, bp, info, chain, kho, scratch, ram, used, free, cmdline })
    }

    /// Takes up to `max` bytes for the heap: from the largest free part of a scratch area
    /// when there is a handover, else from the largest free RAM above 16 MiB.
    pub fn heap_region(&mut self, max: u64) -> Option<PhysRange> {
        let zone_ranges = self.scratch.clone().unwrap_or_default();
        let zone = if zone_ranges.is_empty() { Zone::Outside(&[]) } else { Zone::Inside(&zone_ranges) };
        let largest = self.free.largest(zone, ALLOC_FLOOR)?;
        let size = largest.len().min(max) & !(PAGE_SIZE - 1);
        let r = PhysRange::from_bounds(PhysAddr::new(largest.end().as_u64() - size), largest.end())?;
        self.free.take(r);
        self.used.push(("heap", r));
        Some(r)
    }
}

/// How the incoming handover ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No `SETUP_KEXEC_KHO` entry.
    NoHandover,
    /// kho-core refused the handover: the kernel boots cold.
    Refused(MiniError),
    /// Valid, but without a `kho_test` blob to check.
    NoTestBlob,
    /// Every folio restored and its checksum matches.
    Verified {
        /// Folios.
        folios: u64,
        /// Bytes.
        bytes: u64,
        /// The matching checksum.
        csum: u32,
    },
    /// The `kho_test` blob or its folios did not check out.
    Failed(MiniError),
}

impl core::fmt::Display for Verdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Verdict::NoHandover => write!(f, "kho-mini: no KHO handover; cold boot"),
            Verdict::Refused(e) => write!(f, "kho-mini: handover refused: {e}; cold boot"),
            Verdict::NoTestBlob => write!(f, "kho-mini: handover valid, no kho_test blob to check"),
            Verdict::Verified { folios, bytes, csum } => {
                write!(f, "kho-mini: KHO restore verified {folios} folios ({bytes} bytes, csum {csum:#010x})")
            }
            Verdict::Failed(e) => write!(f, "kho-mini: KHO restore FAILED: {e}"),
        }
    }
}

/// What [`restore`] hands on.
#[derive(Debug)]
pub struct Restored {
    /// The verdict, also printed.
    pub verdict: Verdict,
    /// The `kho_test` folios restored, in the blob's order.
    pub folios: Vec<Block>,
    /// `kexec_count` of the incoming `kexec-metadata` (0 on a cold boot).
    pub kexec_count: u32,
    /// Scratch areas for the next kernel: the incoming layout, reused as Linux does.
    pub scratch: Option<Vec<PhysRange>>,
}

/// The `kho_test` check: parse the blob, walk `folios_info`, restore each folio (its order
/// must be the recorded one), checksum them in order and compare.
fn check_test_blob<M: PhysWrite>(
    plat: &mut MiniPlatform<M>,
    h: &mut Handover,
    blob_at: PhysAddr,
    size: u64,
) -> Result<(Vec<Block>, u32, u64)> {
    let limits = Limits { max_blob_bytes: MINI_BLOB_LIMIT, ..Limits::default() };
    if size > limits.max_blob_bytes {
        return Err(bad("kho_test blob-size", blob_at.as_u64(), size, "a blob of at most 1 MiB"));
    }
    let blob = read_vec(plat.mem(), "kho_test blob", blob_at, size as usize)?;
    let t = TestKho::parse(&blob, blob_at)?;
    let ram = plat.ram().to_vec();
    let scratch = h.scratch().to_vec();
    let (folios, area) = {
        let mut ctx = WalkContext::new(plat.mem(), &ram, &scratch, limits);
        let area = vmalloc::decode_chain(&mut ctx, &t.folios_info, blob_at)?;
        let mut ctx = WalkContext::new(plat.mem(), &ram, &scratch, limits);
        (test_kho::decode_folios(&mut ctx, &t, blob_at)?, area)
    };
    let order = Order::new(u32::from(t.folios_info.order)).unwrap_or(Order::ZERO);
    for &piece in &area.pieces {
        h.restore_pages(plat, piece, order.nr_pages())?;
    }
    for &chunk in &area.chunk_pages {
        h.restore_pages(plat, chunk, 1)?;
    }
    let mut sum = 0u32;
    let mut bytes = 0u64;
    let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
    for &f in &folios {
        let got = h.restore_folio(plat, f.phys())?;
        if got.order() != f.order() {
            return Err(MiniError::OrderMismatch {
                phys: f.phys(),
                preserved: got.order().as_u32(),
                listed: f.order().as_u32(),
            });
        }
        for i in 0..f.order().nr_pages() {
            let p = PhysAddr::new(f.phys().as_u64() + i * PAGE_SIZE);
            plat.mem().read_phys(p, &mut page).map_err(|err| MiniError::Unreadable { what: "kho_test folio", err })?;
            sum = csum_partial(&page, sum);
        }
        bytes += f.order().bytes();
    }
    if sum != t.csum {
        return Err(MiniError::Verify { what: "kho_test csum", found: sum.into(), expected: t.csum.into() });
    }
    Ok((folios, sum, bytes))
}

/// Validates the incoming handover, reserves it, restores and checks the `kho_test` folios,
/// and gives every other preserved block back. Prints what it found and the verdict.
pub fn restore<M: PhysWrite, W: Write>(plat: &mut MiniPlatform<M>, probe: &Probe, out: &mut W) -> Restored {
    let mut r = Restored { verdict: Verdict::NoHandover, folios: Vec::new(), kexec_count: 0, scratch: None };
    let ptr = match &probe.kho {
        None => {
            let _ = writeln!(out, "{}", r.verdict);
            return r;
        }
        Some(Err(e)) => {
            r.verdict = Verdict::Refused(e.clone());
            let _ = writeln!(out, "{}", r.verdict);
            return r;
        }
        Some(Ok(p)) => *p,
    };
    let _ = writeln!(
        out,
        "kho-mini: SETUP_KEXEC_KHO: fdt {} ({} bytes), scratch array {} ({} bytes)",
        ptr.fdt, ptr.fdt_size, ptr.scratch, ptr.scratch_size
    );
    let cfg = IncomingConfig::new(probe.ram.clone());
    let mut h = match Handover::parse(plat.mem(), &ptr, &cfg) {
        Ok(h) => h,
        Err(e) => {
            r.verdict = Verdict::Refused(e.into());
            let _ = writeln!(out, "{}", r.verdict);
            return r;
        }
    };
    let names: Vec<&str> = h.subtrees().iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        out,
        "kho-mini: handover {} valid: {} blocks, {} bytes preserved, {} scratch areas, blobs {:?}",
        h.format().compatible(),
        h.preserved_blocks(),
        h.preserved_bytes(),
        h.scratch().len(),
        names
    );
    for &(what, u) in probe.used.iter().filter(|(w, _)| *w != "KHO root FDT") {
        if let Some(p) = h.reserved_ranges().iter().find(|p| p.overlaps(u)) {
            let _ = writeln!(out, "kho-mini: WARNING: {what} {u} overlaps preserved memory {p}");
        }
    }
    for &(what, u) in probe.used.iter().filter(|(w, _)| matches!(*w, "kho-mini image" | "initrd (payload)")) {
        if !h.scratch().iter().any(|s| s.contains_range(u)) {
            let _ = writeln!(out, "kho-mini: WARNING: {what} {u} is not inside a scratch area");
        }
    }
    h.reserve(plat);
    r.scratch = Some(h.scratch().to_vec());
    if let Some(s) = h.subtree(KEXEC_METADATA) {
        let len = s.size.unwrap_or(0).min(PAGE_SIZE) as usize;
        match read_vec(plat.mem(), "kexec-metadata", s.phys, len).map(|b| KexecMetadata::parse(&b, s.phys)) {
            Ok(Ok(m)) => {
                let _ = writeln!(out, "kho-mini: exec from: {} (count {})", m.previous_release, m.kexec_count);
                r.kexec_count = m.kexec_count;
            }
            Ok(Err(e)) => {
                let _ = writeln!(out, "kho-mini: kexec-metadata ignored: {e}");
            }
            Err(e) => {
                let _ = writeln!(out, "kho-mini: kexec-metadata ignored: {e}");
            }
        }
    }
    r.verdict = match h.subtree(test_kho::SUBTREE_NAME).map(|s| (s.phys, s.size.unwrap_or(0))) {
        None => Verdict::NoTestBlob,
        Some((at, size)) => match check_test_blob(plat, &mut h, at, size) {
            Ok((folios, csum, bytes)) => {
                let n = folios.len() as u64;
                r.folios = folios;
                Verdict::Verified { folios: n, bytes, csum }
            }
            Err(e) => Verdict::Failed(e),
        },
    };
    let released = h.release_unclaimed(plat);
    let st = plat.stats();
    let _ = writeln!(
        out,
        "kho-mini: reserved {} ranges ({} bytes); restored {} folios and {} page blocks; released {}",
        st.reserved_ranges, st.reserved_bytes, st.folios, st.page_blocks, released
    );
    let _ = writeln!(out, "{}", r.verdict);
    r
}

/// Scratch areas for the next kernel when there was no handover: the lower part of the
/// largest free range above 16 MiB (half of it, at most 512 MiB), aligned to 4 MiB.
#[must_use]
pub fn invent_scratch(free: &FreeMap) -> Vec<PhysRange> {
    let Some(big) = free.largest(Zone::Outside(&[]), ALLOC_FLOOR) else { return Vec::new() };
    let start = big.start().as_u64().next_multiple_of(SCRATCH_ALIGN);
    let len = (big.len() / 2).min(SCRATCH_MAX) & !(SCRATCH_ALIGN - 1);
    PhysRange::new(PhysAddr::new(start), len).filter(|r| len > 0 && big.contains_range(*r)).into_iter().collect()
}

/// The content of the mini kernel's own folio at `phys`: each 8-byte word is a hash of its
/// own address, so anyone can check it from the address alone.
#[must_use]
pub fn own_word(addr: u64) -> u64 {
    let mut z = addr.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_own(mem: &impl PhysWrite, block: Block) -> Result<()> {
    let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
    for i in 0..block.order().nr_pages() {
        let base = block.phys().as_u64() + i * PAGE_SIZE;
        for (j, w) in page.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&own_word(base + j as u64 * 8).to_le_bytes());
        }
        mem.write_phys(PhysAddr::new(base), &page).map_err(|err| MiniError::Unreadable { what: "own folio", err })?;
    }
    Ok(())
}

fn csum_blocks(mem: &impl PhysRead, blocks: &[Block]) -> Result<u32> {
    let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
    let mut sum = 0;
    for b in blocks {
        for i in 0..b.order().nr_pages() {
            let p = PhysAddr::new(b.phys().as_u64() + i * PAGE_SIZE);
            mem.read_phys(p, &mut page).map_err(|err| MiniError::Unreadable { what: "folio", err })?;
            sum = csum_partial(&page, sum);
        }
    }
    Ok(sum)
}

/// What [`handover_out`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where the next kernel finds it.
    pub ptr: HandoverPtr,
    /// Folios listed in the `kho_test` blob, in order.
    pub folios: Vec<Block>,
    /// Their checksum.
    pub csum: u32,
    /// Blocks preserved in all (folios, blobs, the FDT page, vmalloc pages).
    pub blocks: u64,
    /// `kexec_count` written.
    pub kexec_count: u32,
}

fn oom(what: &'static str, pages: u64) -> MiniError {
    MiniError::NoRoom { what, size: pages * PAGE_SIZE, align: PAGE_SIZE }
}

/// Preserves `incoming` folios again and [`OWN_FOLIO_ORDERS`] new ones, and writes a kho-v4
/// handover with a `kho_test` blob listing all of them and a `kexec-metadata` blob, then
/// validates it with kho-core's incoming side and re-checks the blob's checksum.
///
/// # Errors
/// The engine's errors; [`MiniError::NoRoom`] when memory outside scratch runs out;
/// [`MiniError::Verify`] if the self-check disagrees.
pub fn handover_out<M: PhysWrite, W: Write>(
    plat: &MiniPlatform<M>,
    incoming: &[Block],
    incoming_count: u32,
    out: &mut W,
) -> Result<Outgoing> {
    let kho = Kho::new(plat, OutgoingConfig::new(plat.ram().to_vec(), plat.scratch().to_vec()))?;
    let mut folios = incoming.to_vec();
    for &b in incoming {
        kho.preserve_folio(b.pfn(), b.order())?;
    }
    for &o in &OWN_FOLIO_ORDERS {
        let order = Order::new(o).expect("small order");
        let r = plat.alloc_preservable(order.nr_pages()).ok_or_else(|| oom("own folio", order.nr_pages()))?;
        let b = Block::at(r.start(), order).expect("allocated aligned to its size");
        fill_own(plat.mem(), b)?;
        kho.preserve_folio(b.pfn(), order)?;
        folios.push(b);
    }
    let csum = csum_blocks(plat.mem(), &folios)?;
    // folios_info: a vmalloc'd array of phys | order, one page per piece, as Linux's
    // vmalloc_array gives.
    let mut entries = Vec::with_capacity(folios.len() * 8);
    for &b in &folios {
        entries.extend_from_slice(&test_kho::folio_entry(b).to_le_bytes());
    }
    let mut pieces = Vec::new();
    for chunk in entries.chunks(PAGE_SIZE as usize) {
        let p = plat.alloc_preservable(1).ok_or_else(|| oom("folios_info page", 1))?;
        plat.write_phys(p.start(), chunk).map_err(|err| MiniError::Unreadable { what: "folios_info", err })?;
        kho.preserve_pages(p.start().pfn().expect("page"), 1)?;
        pieces.push(p.start());
    }
    let (desc, chunks) = vmalloc::encode(plat, &pieces, Order::ZERO, vmalloc::FLAG_ALLOC)?;
    for c in &chunks {
        kho.preserve_pages(c.pfn().expect("page"), 1)?;
    }
    let t = TestKho { nr_folios: folios.len() as u32, folios_info: desc, csum };
    let blob = t.to_blob()?;
    let pages = (blob.len() as u64).div_ceil(PAGE_SIZE);
    let at = plat.alloc_preservable(pages).ok_or_else(|| oom("kho_test blob", pages))?;
    plat.write_phys(at.start(), &blob).map_err(|err| MiniError::Unreadable { what: "kho_test blob", err })?;
    kho.add_subtree(test_kho::SUBTREE_NAME, at.start(), blob.len() as u64)?;
    let kexec_count = incoming_count.saturating_add(1);
    let meta = KexecMetadata::new(RELEASE, kexec_count).to_bytes();
    let m = plat.alloc_preservable(1).ok_or_else(|| oom("kexec-metadata", 1))?;
    plat.write_phys(m.start(), &meta).map_err(|err| MiniError::Unreadable { what: "kexec-metadata", err })?;
    kho.add_subtree(KEXEC_METADATA, m.start(), meta.len() as u64)?;
    let fin = kho.finalize(FormatVersion::V4)?;
    let _ = writeln!(
        out,
        "kho-mini: outgoing kho-v4 handover: fdt {}, {} blocks ({} bytes) preserved, {} metadata pages, {} folios in kho_test (csum {:#010x})",
        fin.ptr.fdt,
        fin.preserved_blocks,
        fin.preserved_bytes,
        fin.metadata_pages.len(),
        folios.len(),
        csum
    );
    // Self-check: our own incoming side must accept it, and the blob must check out.
    let h = Handover::parse(plat, &fin.ptr, &IncomingConfig::new(plat.ram().to_vec()))?;
    if h.preserved_blocks() != fin.preserved_blocks {
        return Err(MiniError::Verify {
            what: "self-check preserved blocks",
            found: h.preserved_blocks(),
            expected: fin.preserved_blocks,
        });
    }
    let s = h.subtree(test_kho::SUBTREE_NAME).ok_or_else(|| bad("self-check kho_test", 0, 0, "the blob"))?;
    let back = TestKho::parse(&read_vec(plat, "kho_test blob", s.phys, s.size.unwrap_or(0) as usize)?, s.phys)?;
    let mut ctx = WalkContext::new(plat, plat.ram(), h.scratch(), Limits::default());
    let listed = test_kho::decode_folios(&mut ctx, &back, s.phys)?;
    let again = csum_blocks(plat.mem(), &listed)?;
    if listed != folios || again != back.csum {
        return Err(MiniError::Verify { what: "self-check kho_test csum", found: again.into(), expected: csum.into() });
    }
    let _ = writeln!(
        out,
        "kho-mini: self-check: kho-core accepts the handover; kho_test lists {} folios, csum ok",
        listed.len()
    );
    Ok(Outgoing { ptr: fin.ptr, folios, csum, blocks: fin.preserved_blocks, kexec_count })
}

/// Where to jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// The next kernel's 64-bit entry (load address + 0x200).
    pub entry: PhysAddr,
    /// Its boot_params, for `rsi`.
    pub boot_params: PhysAddr,
    /// Where its protected-mode part was placed (`init_size` bytes).
    pub kernel: PhysRange,
    /// Where its initrd was placed.
    pub initrd: Option<PhysRange>,
}

fn copy_phys<M: PhysWrite>(mem: &M, from: u64, to: u64, len: u64) -> Result<()> {
    let mut buf = alloc::vec![0u8; 64 << 10];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        mem.read_phys(PhysAddr::new(from + done), &mut buf[..n])
            .map_err(|err| MiniError::Unreadable { what: "payload", err })?;
        mem.write_phys(PhysAddr::new(to + done), &buf[..n])
            .map_err(|err| MiniError::Unreadable { what: "next kernel", err })?;
        done += n as u64;
    }
    Ok(())
}

/// Places the next Linux carried in the payload (this kernel's initrd), its initrd and
/// command line, and builds its boot_params with a `SETUP_KEXEC_KHO` entry for `ptr`.
///
/// # Errors
/// No payload, a malformed payload or bzImage, or no room.
pub fn prepare_next<M: PhysWrite, W: Write>(
    plat: &MiniPlatform<M>,
    probe: &Probe,
    ptr: &HandoverPtr,
    out: &mut W,
) -> Result<Jump> {
    let pay = probe.info.initrd.ok_or_else(|| bad("boot_params.hdr.ramdisk_image", 0, 0, "a payload (initrd)"))?;
    let base = pay.start().as_u64();
    if !probe.ram.iter().any(|r| r.contains_range(pay)) {
        return Err(bad("boot_params.hdr.ramdisk_size", base, pay.len(), "a payload (initrd) inside one RAM range"));
    }
    let hdr = read_vec(plat, "payload", pay.start(), payload::HEADER_BYTES.min(pay.len() as usize))?;
    let p = Payload::parse(&hdr, pay.len(), base)?;
    if p.kernel.1 > MAX_NEXT_KERNEL {
        return Err(bad("payload kernel", base + 24, p.kernel.1, "a kernel of at most 64 MiB"));
    }
    // kho-boot (the user-space loader's crate) checks the bzImage and builds the zero page.
    let file = read_vec(plat, "payload kernel", PhysAddr::new(base + p.kernel.0), p.kernel.1 as usize)?;
    let bz = BzImage::parse(&file)?;
    let size = bz.init_size().max(bz.kernel().len() as u64).next_multiple_of(PAGE_SIZE);
    let align = bz.alignment().max(PAGE_SIZE);
    let kernel = if bz.relocatable() {
        plat.alloc_anywhere(size, align)
    } else {
        let want = PhysRange::new(PhysAddr::new(bz.pref_address()), size);
        want.filter(|w| plat.free_map().ranges().iter().any(|f| f.contains_range(*w)))
    }
    .ok_or(MiniError::NoRoom { what: "next kernel", size, align })?;
    plat.write_phys(kernel.start(), bz.kernel()).map_err(|err| MiniError::Unreadable { what: "next kernel", err })?;
    let initrd = if p.initrd.1 == 0 {
        None
    } else {
        let len = p.initrd.1.next_multiple_of(PAGE_SIZE); // inside the payload, inside RAM
        let r = plat.alloc_anywhere(len, PAGE_SIZE).ok_or(MiniError::NoRoom {
            what: "next initrd",
            size: len,
            align: PAGE_SIZE,
        })?;
        copy_phys(plat, base + p.initrd.0, r.start().as_u64(), p.initrd.1)?;
        PhysRange::new(r.start(), p.initrd.1)
    };
    // Two pages: boot_params, then the setup_data node and the command line.
    let page = plat.alloc_preservable(2).ok_or_else(|| oom("next boot_params", 2))?;
    let bp_at = page.start();
    let sd_at = PhysAddr::new(bp_at.as_u64() + PAGE_SIZE);
    let cmd_at = PhysAddr::new(sd_at.as_u64() + 256);
    let cmd_len = p.cmdline.1.min(PAGE_SIZE - 256 - 1).min(u64::from(bz.cmdline_size())) as usize;
    let mut cmd = read_vec(plat, "payload cmdline", PhysAddr::new(base + p.cmdline.0), cmd_len)?;
    cmd.push(0);
    plat.write_phys(cmd_at, &cmd).map_err(|err| MiniError::Unreadable { what: "next cmdline", err })?;
    plat.write_phys(sd_at, &ptr.to_setup_data_node(PhysAddr::new(0)))
        .map_err(|err| MiniError::Unreadable { what: "next setup_data", err })?;
    let firmware = kho_boot::bootparams::BootParams::from_bytes(&probe.bp[..])?;
    let layout = BootLayout { cmdline: cmd_at, initrd: initrd.map(|r| (r.start(), r.len())), setup_data: sd_at };
    let bp = kho_boot::bootparams::build(&firmware, bz.header_bytes(), &layout);
    plat.write_phys(bp_at, bp.as_bytes()).map_err(|err| MiniError::Unreadable { what: "next boot_params", err })?;
    let entry = PhysAddr::new(kernel.start().as_u64() + ENTRY_64_OFFSET);
    let _ = writeln!(
        out,
        "kho-mini: next kernel: bzImage protocol {:#x}, {} bytes at {} (init_size {:#x}), initrd {:?}, cmdline \"{}\"",
        bz.version(),
        bz.kernel().len(),
        kernel.start(),
        bz.init_size(),
        initrd.map(|r| (r.start().as_u64(), r.len())),
        String::from_utf8_lossy(&cmd[..cmd.len() - 1])
    );
    Ok(Jump { entry, boot_params: bp_at, kernel, initrd })
}

/// Everything [`run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The incoming verdict.
    pub verdict: Verdict,
    /// The handover written.
    pub outgoing: Outgoing,
    /// Where to jump.
    pub jump: Jump,
}

/// Steps 3 to 5 over memory `mem`, once the heap is up: restore and check, hand over, place
/// the next kernel. On a cold boot (no handover, or a refused one) the next kernel's scratch
/// areas are invented with [`invent_scratch`]; otherwise the incoming layout is reused.
///
/// # Errors
/// As [`handover_out`] and [`prepare_next`]; the incoming side never fails: its problems
/// are the verdict.
pub fn run<M: PhysWrite, W: Write>(mem: M, probe: &Probe, out: &mut W) -> Result<Summary> {
    let scratch = probe.scratch.clone().unwrap_or_default();
    let mut plat = MiniPlatform::new(mem, probe.ram.clone(), probe.free.clone(), scratch);
    let restored = restore(&mut plat, probe, out);
    let scratch = match restored.scratch.clone() {
        Some(s) => s,
        None => invent_scratch(&plat.free_map()),
    };
    let _ = writeln!(out, "kho-mini: next kernel's scratch areas: {scratch:?}");
    plat.set_scratch(scratch);
    let outgoing = handover_out(&plat, &restored.folios, restored.kexec_count, out)?;
    let jump = prepare_next(&plat, probe, &outgoing.ptr, out)?;
    Ok(Summary { verdict: restored.verdict, outgoing, jump })
}
