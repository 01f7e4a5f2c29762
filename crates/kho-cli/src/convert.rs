//! `kho convert`: rewrite a handover in the other wire format (kho-v1 <-> kho-v4).
//!
//! The handover is read and checked exactly as `kho validate` does (an invalid one is
//! refused), then its preserved set is encoded again with kho-core's encoders into a fresh
//! in-memory machine that has the same RAM and scratch areas:
//!
//! - the new root FDT goes in the old root FDT's page when that page is known (it is a
//!   preserved block in both formats), so the preserved set stays identical; otherwise a new
//!   page is taken and preserved, and the manifest says so;
//! - metadata pages (radix nodes, or chunks and bitmaps) come from free RAM: not preserved,
//!   not scratch, not the old metadata, and not below 1 MiB (x86 lends `[0, 1 MiB)` to the
//!   next kernel as scratch while it boots);
//! - sub-blobs keep their addresses and bytes. kho-v1 sub-nodes can only point to FDTs
//!   (there is no size field), so a binary blob such as `kexec-metadata` is dropped from the
//!   v1 root FDT; its pages stay preserved.
//!
//! The output directory then holds `fdt.dtb`, `mem.img` (a sparse raw image of RAM from
//! physical address 0 with the metadata, the FDT, the sub-blobs and, unless
//! `--metadata-only`, every preserved byte; only non-zero pages take space), `setup_data.bin` (the x86 `kho_data` payload), `scratch_phys.txt` and
//! `scratch_len.txt` (debugfs format), and `manifest.json` with every address. Check it with
//! `kho inspect --setup-data DIR/setup_data.bin --mem DIR/mem.img@0`, or
//! `kho inspect --fdt DIR/fdt.dtb --mem DIR/mem.img@0 --scratch-phys … --scratch-len …`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use kho_core::fdt::FDT_MAGIC;
use kho_core::format::root::{self, Subtree};
use kho_core::format::{BitmapBytes, scratch, v1, v4};
use kho_core::incoming::Handover;
use kho_core::platform::{AllocError, MemError, MetaAlloc, PhysWrite};
use kho_core::{Block, BlockSet, FormatVersion, HandoverPtr, Order, PAGE_SIZE, PhysAddr, PhysRange, PhysRead};
use serde::Serialize;

use crate::inspect::{self, InputArgs};
use kho_core::types::merge_ranges;

/// Lowest address handed out for metadata: x86 lends `[0, 1 MiB)` to the booting kernel as
/// scratch (spec §1.6).
const LOW_LIMIT: u64 = 1 << 20;

/// The wire format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// kho-v1: chunk list of per-order bitmaps (Linux 6.16-6.19).
    V1,
    /// kho-v4: radix tree (Linux 7.2, 7.3).
    V4,
}

impl Target {
    fn format(self) -> FormatVersion {
        match self {
            Target::V1 => FormatVersion::V1,
            Target::V4 => FormatVersion::V4,
        }
    }
}

/// Arguments of `kho convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Format to write. kho-v1 bitmaps get the size --v1-bitmap-bytes names.
    #[arg(long, value_enum)]
    pub to: Target,
    /// Directory for fdt.dtb, mem.img, setup_data.bin, scratch_{phys,len}.txt and
    /// manifest.json (created if missing; existing files are overwritten).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Copy only the metadata, the root FDT and the sub-blobs into mem.img, not the contents
    /// of the other preserved blocks (blobs that point into preserved data, such as
    /// test_kho's vmalloc'd array, then no longer decode).
    #[arg(long)]
    pub metadata_only: bool,
    /// Bitmap size of the kho-v1 output: 512 (Linux 6.16, 6.17) or 4096 (6.18). Defaults to
    /// --v1-bitmap-bytes, the size assumed when reading a kho-v1 source.
    #[arg(long, value_name = "BYTES", value_parser = inspect::parse_bitmap_bytes)]
    pub out_v1_bitmap_bytes: Option<u64>,
}

/// The output image: RAM as a sparse map of pages (frame number to contents); pages never
/// written read as zero. The converter's own memory, not the engine's test double.
#[derive(Default)]
struct PageImage {
    pages: Mutex<BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>>,
}

impl PageImage {
    /// Visits `[phys, phys + len)` page by page as `(frame, offset in page, offset in buffer, n)`.
    fn chunks(phys: PhysAddr, len: usize, mut f: impl FnMut(u64, usize, usize, usize)) -> Option<()> {
        let mut addr = phys.as_u64();
        let mut done = 0usize;
        phys.as_u64().checked_add(len as u64)?;
        while done < len {
            let in_page = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - in_page).min(len - done);
            f(addr / PAGE_SIZE, in_page, done, n);
            done += n;
            addr += n as u64;
        }
        Some(())
    }

    /// Forgets a page (it reads as zero again).
    fn zero_page(&self, page: PhysAddr) {
        self.lock().remove(&(page.as_u64() / PAGE_SIZE));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>> {
        self.pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PhysRead for PageImage {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let pages = self.lock();
        let len = buf.len();
        PageImage::chunks(phys, len, |frame, off, at, n| match pages.get(&frame) {
            Some(p) => buf[at..at + n].copy_from_slice(&p[off..off + n]),
            None => buf[at..at + n].fill(0),
        })
        .ok_or(MemError::read(phys, len as u64))
    }
}

impl PhysWrite for PageImage {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let mut pages = self.lock();
        PageImage::chunks(phys, data.len(), |frame, off, at, n| {
            let p = pages.entry(frame).or_insert_with(|| Box::new([0u8; PAGE_SIZE as usize]));
            p[off..off + n].copy_from_slice(&data[at..at + n]);
        })
        .ok_or(MemError::write(phys, data.len() as u64))
    }
}

/// The machine the new handover is written into: sparse RAM plus a page allocator over the
/// free pages.
struct OutMachine {
    mem: PageImage,
    free: Mutex<FreePages>,
}

/// Free pages: walks RAM upwards skipping busy ranges; returned pages are reused first.
struct FreePages {
    ram: Vec<PhysRange>,
    busy: Vec<PhysRange>,
    next: u64,
    returned: Vec<u64>,
    taken: Vec<PhysAddr>,
}

impl FreePages {
    fn take(&mut self) -> Option<PhysAddr> {
        if let Some(p) = self.returned.pop() {
            return Some(PhysAddr::new(p));
        }
        loop {
            let cur = self.next;
            // The RAM range holding `cur`, or the next one above it.
            let i = self.ram.partition_point(|r| r.end().as_u64() <= cur);
            let r = self.ram.get(i)?;
            let start = cur.max(r.start().as_u64()).checked_next_multiple_of(PAGE_SIZE)?;
            if start.checked_add(PAGE_SIZE)? > r.end().as_u64() {
                self.next = r.end().as_u64();
                continue;
            }
            let j = self.busy.partition_point(|b| b.end().as_u64() <= start);
            if let Some(b) = self.busy.get(j).filter(|b| b.start().as_u64() < start + PAGE_SIZE) {
                self.next = b.end().as_u64();
                continue;
            }
            self.next = start + PAGE_SIZE;
            return Some(PhysAddr::new(start));
        }
    }
}

impl PhysRead for OutMachine {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_phys(phys, buf)
    }
}
impl PhysWrite for OutMachine {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.mem.write_phys(phys, data)
    }
}
impl MetaAlloc for OutMachine {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        let mut f = self.free.lock().map_err(|_| AllocError)?;
        let page = f.take().ok_or(AllocError)?;
        f.taken.push(page);
        drop(f);
        self.mem.zero_page(page);
        Ok(page)
    }
    fn free_meta_page(&self, page: PhysAddr) {
        if let Ok(mut f) = self.free.lock() {
            f.taken.retain(|&p| p != page);
            f.returned.push(page.as_u64());
        }
    }
}

/// What `manifest.json` records.
#[derive(Debug, Serialize)]
struct Manifest {
    format: String,
    source_format: String,
    v1_bitmap_bytes: Option<u64>,
    root_fdt: ManifestFdt,
    memory_map: u64,
    scratch_array: Option<ManifestRange>,
    scratch: Vec<ManifestRange>,
    metadata_pages: Vec<u64>,
    subtrees: Vec<ManifestSubtree>,
    dropped_subtrees: Vec<String>,
    preserved_blocks: u64,
    preserved_bytes: u64,
    mem_img: ManifestImage,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ManifestFdt {
    phys: u64,
    size: u64,
    file: String,
    reused_source_page: bool,
}

#[derive(Debug, Serialize)]
struct ManifestRange {
    phys: u64,
    size: u64,
}

#[derive(Debug, Serialize)]
struct ManifestSubtree {
    name: String,
    phys: u64,
    size: u64,
}

#[derive(Debug, Serialize)]
struct ManifestImage {
    file: String,
    base: u64,
    size: u64,
    nonzero_pages: usize,
    with_data: bool,
}

/// Runs `kho convert`: 0 written, 1 the source handover is invalid, `Err` for usage errors.
///
/// # Errors
/// Unreadable inputs, an unwritable output directory, or a converted handover that does not
/// read back the same (a bug, reported rather than written silently).
pub fn run(a: ConvertArgs) -> anyhow::Result<ExitCode> {
    let loaded = inspect::load(&a.input)?;
    if loaded.consumed {
        bail!(
            "the handover this kernel received has been consumed (its memory map is freed at boot): \
             there is nothing to convert; run kho convert before the kexec"
        );
    }
    let analysis = inspect::analyze(&loaded, &a.input);
    let Some(h) = analysis.handover.as_ref().filter(|_| analysis.report.valid) else {
        crate::errln!("kho convert: the source handover is invalid; nothing written:");
        for p in &analysis.report.problems {
            crate::errln!("  [{}] {}", p.kind, p.message);
        }
        return Ok(ExitCode::from(1));
    };
    let bitmap = BitmapBytes::from_bytes(a.out_v1_bitmap_bytes.unwrap_or(a.input.v1_bitmap_bytes)).unwrap_or_default();
    let out = convert(&loaded.mem, &loaded.mem.ram(), h, loaded.fdt_phys, a.to.format(), bitmap, !a.metadata_only)?;

    // Read it back with the same checks, and compare.
    let mut cfg = inspect::incoming_config(&a.input, loaded.mem.ram());
    cfg.v1_bitmap_bytes = bitmap;
    let back = Handover::parse_fdt(&out.machine, &out.dtb, out.ptr.fdt, h.scratch(), &cfg)
        .map_err(|e| anyhow!("the converted handover does not validate: {e}"))?;
    if back.preserved() != &out.preserved {
        bail!("the converted handover reads back a different preserved set (a bug in the converter)");
    }

    write_outputs(&a, &loaded.mem.ram(), h, &out, &analysis.report)?;
    crate::outln!(
        "{} -> {}: {} preserved block(s), {} metadata page(s); wrote {}",
        h.format().compatible(),
        out.format.compatible(),
        out.preserved.len(),
        out.metadata_pages.len(),
        a.out_dir.display()
    );
    for n in &out.notes {
        crate::outln!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A converted handover in its in-memory machine.
struct Converted {
    machine: OutMachine,
    format: FormatVersion,
    bitmap: BitmapBytes,
    dtb: Vec<u8>,
    ptr: HandoverPtr,
    memory_map: PhysAddr,
    metadata_pages: Vec<PhysAddr>,
    subtrees: Vec<Subtree>,
    dropped: Vec<String>,
    preserved: BlockSet,
    reused_fdt_page: bool,
    with_data: bool,
    notes: Vec<String>,
}

fn copy_range<M: PhysRead + ?Sized>(src: &M, dst: &PageImage, range: PhysRange) -> anyhow::Result<()> {
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    let mut at = range.start().as_u64();
    while at < range.end().as_u64() {
        let n = (range.end().as_u64() - at).min(PAGE_SIZE - at % PAGE_SIZE) as usize;
        let chunk = &mut buf[..n];
        src.read_phys(PhysAddr::new(at), chunk).map_err(|e| anyhow!("reading the source memory: {e}"))?;
        if chunk.iter().any(|&b| b != 0) {
            dst.write_phys(PhysAddr::new(at), chunk).map_err(|e| anyhow!("writing the output image: {e}"))?;
        }
        at += n as u64;
    }
    Ok(())
}

fn convert<M: PhysRead + ?Sized>(
    src: &M,
    ram: &[PhysRange],
    h: &Handover,
    fdt_phys: Option<PhysAddr>,
    format: FormatVersion,
    bitmap: BitmapBytes,
    with_data: bool,
) -> anyhow::Result<Converted> {
    let ram = merge_ranges(ram.to_vec());
    let mut preserved = h.preserved().clone();
    let mut notes = Vec::new();

    // The root FDT page: the source's own page when it is a preserved block.
    let old_fdt = fdt_phys.and_then(|p| Block::at(p, Order::ZERO)).filter(|b| preserved.contains(*b));
    let mut busy: Vec<PhysRange> = h.reserved_ranges().to_vec();
    busy.extend(h.scratch().iter().copied());
    busy.extend(h.metadata_pages().iter().filter_map(|&p| PhysRange::new(p, PAGE_SIZE)));
    let busy = merge_ranges(busy);
    let machine = OutMachine {
        mem: PageImage::default(),
        free: Mutex::new(FreePages { ram, busy, next: LOW_LIMIT, returned: Vec::new(), taken: Vec::new() }),
    };
    let fdt_page = match old_fdt {
        Some(b) => b.phys(),
        None => {
            let p = machine.alloc_meta_page().map_err(|_| anyhow!("no free page for the root FDT"))?;
            let b = Block::at(p, Order::ZERO).ok_or_else(|| anyhow!("page {p} is not page aligned"))?;
            preserved.insert(b);
            notes.push(format!("the source root FDT page is unknown (give --fdt-phys or --setup-data); the new one at {p} is preserved in addition"));
            p
        }
    };

    // Sub-blobs keep their bytes and addresses.
    let mut subtrees = Vec::new();
    let mut dropped = Vec::new();
    for s in h.subtrees() {
        let size = s.size.unwrap_or(0);
        let Some(range) = PhysRange::new(s.phys, size) else { continue };
        copy_range(src, &machine.mem, range)?;
        let mut magic = [0u8; 4];
        let is_fdt = src.read_phys(s.phys, &mut magic).is_ok() && magic == FDT_MAGIC.to_be_bytes();
        match format {
            FormatVersion::V1 if !is_fdt => {
                dropped.push(s.name.clone());
                notes.push(format!(
                    "sub-blob {:?} is not an FDT and kho-v1 sub-nodes can only point to FDTs: dropped from the root FDT (its pages stay preserved)",
                    s.name
                ));
            }
            FormatVersion::V1 => subtrees.push(Subtree { name: s.name.clone(), phys: s.phys, size: None }),
            FormatVersion::V4 => subtrees.push(Subtree { name: s.name.clone(), phys: s.phys, size: Some(size) }),
        }
    }
    if with_data {
        for r in h.reserved_ranges() {
            if old_fdt.is_some_and(|b| b.range() == *r) {
                continue;
            }
            copy_range(src, &machine.mem, *r)?;
        }
    }

    let (memory_map, mut metadata_pages) = match format {
        FormatVersion::V4 => {
            let tree = v4::encode(&machine, &preserved).map_err(|e| anyhow!("encoding the radix tree: {e}"))?;
            (tree.root, tree.pages)
        }
        FormatVersion::V1 => {
            let (entries, bitmap_pages) = write_v1_bitmaps(&machine, &preserved, bitmap)?;
            let list = v1::encode(&machine, &entries).map_err(|e| anyhow!("encoding the chunk list: {e}"))?;
            let mut pages = bitmap_pages;
            pages.extend(list.pages);
            (list.first, pages)
        }
    };
    let dtb = root::build(format, memory_map, &subtrees).map_err(|e| anyhow!("building the root FDT: {e}"))?;
    machine.mem.zero_page(fdt_page);
    machine.write_phys(fdt_page, &dtb).map_err(|e| anyhow!("writing the root FDT: {e}"))?;

    let scratch_bytes = scratch::encode(h.scratch());
    let (scratch_addr, scratch_size) = if scratch_bytes.is_empty() {
        notes.push("no scratch areas known: setup_data.bin has a NULL scratch array".into());
        (PhysAddr::new(0), 0)
    } else {
        if scratch_bytes.len() as u64 > PAGE_SIZE {
            bail!("{} scratch areas do not fit one page", h.scratch().len());
        }
        let p = machine.alloc_meta_page().map_err(|_| anyhow!("no free page for the scratch array"))?;
        machine.write_phys(p, &scratch_bytes).map_err(|e| anyhow!("writing the scratch array: {e}"))?;
        metadata_pages.push(p);
        (p, scratch_bytes.len() as u64)
    };
    metadata_pages.sort_unstable();
    let ptr = HandoverPtr { fdt: fdt_page, fdt_size: PAGE_SIZE, scratch: scratch_addr, scratch_size };
    Ok(Converted {
        machine,
        format,
        bitmap,
        dtb,
        ptr,
        memory_map,
        metadata_pages,
        subtrees,
        dropped,
        preserved,
        reused_fdt_page: old_fdt.is_some(),
        with_data,
        notes,
    })
}

/// Writes the kho-v1 bitmaps for `set` (512-byte ones packed eight to a page) and returns
/// the chunk entries, ascending by order and then address, and the bitmap pages.
fn write_v1_bitmaps(
    m: &OutMachine,
    set: &BlockSet,
    bitmap: BitmapBytes,
) -> anyhow::Result<(Vec<v1::Entry>, Vec<PhysAddr>)> {
    let words_per = bitmap.words();
    let per_page = (PAGE_SIZE / bitmap.bytes()) as usize;
    let mut entries = Vec::new();
    let mut pages = Vec::new();
    let mut slot = per_page;
    let mut page = PhysAddr::new(0);
    for order in set.orders() {
        for (base_pfn, words) in set.units(order) {
            for (j, part) in words.chunks(words_per).enumerate() {
                if part.iter().all(|&w| w == 0) {
                    continue;
                }
                if slot == per_page {
                    page = m.alloc_meta_page().map_err(|_| anyhow!("no free page for a kho-v1 bitmap"))?;
                    pages.push(page);
                    slot = 0;
                }
                let at = PhysAddr::new(page.as_u64() + slot as u64 * bitmap.bytes());
                slot += 1;
                let bytes: Vec<u8> = part.iter().flat_map(|w| w.to_le_bytes()).collect();
                m.write_phys(at, &bytes).map_err(|e| anyhow!("writing a bitmap: {e}"))?;
                let first_pfn = base_pfn + ((j as u64 * bitmap.bits()) << order.as_u32());
                entries.push(v1::Entry { order, phys_start: PhysAddr::new(first_pfn * PAGE_SIZE), bitmap: at });
            }
        }
    }
    Ok((entries, pages))
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn write_outputs(
    a: &ConvertArgs,
    ram: &[PhysRange],
    h: &Handover,
    out: &Converted,
    source: &crate::report::Report,
) -> anyhow::Result<()> {
    let dir = &a.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&dir.join("fdt.dtb"), &out.dtb)?;
    write_file(&dir.join("setup_data.bin"), &out.ptr.to_setup_data_payload())?;
    let mut phys = String::new();
    let mut lens = String::new();
    for s in h.scratch() {
        phys.push_str(&format!("{:#x}\n", s.start().as_u64()));
        lens.push_str(&format!("{:#x}\n", s.len()));
    }
    write_file(&dir.join("scratch_phys.txt"), phys.as_bytes())?;
    write_file(&dir.join("scratch_len.txt"), lens.as_bytes())?;

    // mem.img: sparse, file offset = physical address, as long as RAM reaches.
    let img_path = dir.join("mem.img");
    let size = ram.iter().map(|r| r.end().as_u64()).max().unwrap_or(0);
    let img = File::create(&img_path).with_context(|| format!("cannot create {}", img_path.display()))?;
    img.set_len(size).with_context(|| format!("cannot size {}", img_path.display()))?;
    let pages = collect_pages(&out.machine.mem, out, h);
    let mut nonzero = 0usize;
    for (pfn, data) in &pages {
        img.write_all_at(data, pfn * PAGE_SIZE).with_context(|| format!("cannot write {}", img_path.display()))?;
        nonzero += 1;
    }

    let manifest = Manifest {
        format: out.format.compatible().into(),
        source_format: h.format().compatible().into(),
        v1_bitmap_bytes: (out.format == FormatVersion::V1).then_some(out.bitmap.bytes()),
        root_fdt: ManifestFdt {
            phys: out.ptr.fdt.as_u64(),
            size: out.dtb.len() as u64,
            file: "fdt.dtb".into(),
            reused_source_page: out.reused_fdt_page,
        },
        memory_map: out.memory_map.as_u64(),
        scratch_array: (!out.ptr.scratch.is_null())
            .then_some(ManifestRange { phys: out.ptr.scratch.as_u64(), size: out.ptr.scratch_size }),
        scratch: h.scratch().iter().map(|s| ManifestRange { phys: s.start().as_u64(), size: s.len() }).collect(),
        metadata_pages: out.metadata_pages.iter().map(|p| p.as_u64()).collect(),
        subtrees: out
            .subtrees
            .iter()
            .map(|s| ManifestSubtree {
                name: s.name.clone(),
                phys: s.phys.as_u64(),
                size: h.subtree(&s.name).and_then(|x| x.size).unwrap_or(0),
            })
            .collect(),
        dropped_subtrees: out.dropped.clone(),
        preserved_blocks: out.preserved.len(),
        preserved_bytes: out.preserved.total_bytes(),
        mem_img: ManifestImage {
            file: "mem.img".into(),
            base: 0,
            size,
            nonzero_pages: nonzero,
            with_data: out.with_data,
        },
        notes: out.notes.iter().chain(source.notes.iter()).cloned().collect(),
    };
    let json = serde_json::to_string_pretty(&manifest).context("writing the manifest")?;
    write_file(&dir.join("manifest.json"), json.as_bytes())
}

/// Every non-zero page of the output machine, by frame number.
fn collect_pages(mem: &PageImage, out: &Converted, h: &Handover) -> BTreeMap<u64, Vec<u8>> {
    let mut frames: Vec<u64> = out.metadata_pages.iter().map(|p| p.as_u64() / PAGE_SIZE).collect();
    frames.push(out.ptr.fdt.as_u64() / PAGE_SIZE);
    for s in h.subtrees() {
        let size = s.size.unwrap_or(0);
        let first = s.phys.as_u64() / PAGE_SIZE;
        let last = (s.phys.as_u64() + size.max(1) - 1) / PAGE_SIZE;
        frames.extend(first..=last);
    }
    if out.with_data {
        for r in h.reserved_ranges() {
            frames.extend(r.start().as_u64() / PAGE_SIZE..r.end().as_u64() / PAGE_SIZE);
        }
    }
    frames.sort_unstable();
    frames.dedup();
    let mut pages = BTreeMap::new();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for f in frames {
        if mem.read_phys(PhysAddr::new(f * PAGE_SIZE), &mut buf).is_ok() && buf.iter().any(|&b| b != 0) {
            pages.insert(f, buf.clone());
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_image_reads_back_across_pages_and_forgets_zeroed_pages() {
        let m = PageImage::default();
        let data: Vec<u8> = (1..=16u8).collect();
        m.write_phys(PhysAddr::new(0x1ff8), &data).unwrap();
        let mut buf = [0u8; 20];
        m.read_phys(PhysAddr::new(0x1ff6), &mut buf).unwrap();
        assert_eq!(&buf[..2], &[0, 0]);
        assert_eq!(&buf[2..18], data.as_slice());
        assert_eq!(m.lock().len(), 2, "two pages written");
        m.zero_page(PhysAddr::new(0x1000));
        m.read_phys(PhysAddr::new(0x1ff8), &mut buf[..8]).unwrap();
        assert_eq!(&buf[..8], &[0; 8]);
        let e = m.write_phys(PhysAddr::new(u64::MAX - 3), &data).unwrap_err();
        assert_eq!(e, MemError::write(PhysAddr::new(u64::MAX - 3), 16));
    }
}
