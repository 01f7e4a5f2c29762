//! Subsystems that use KHO the way Linux subsystems do.
//!
//! - `guest`: a VM's RAM as 2 MiB folios (order 9, or the kernel's maximum if smaller).
//! - `page-cache`: 4 KiB folios (order 0).
//! - `table`: a vmalloc-style table of order-0 pages, each allocated on its own (so
//!   physically wherever the allocator puts it), preserved exactly as Linux's
//!   `kho_preserve_vmalloc` does (spec §2.3): every page with `preserve_pages(page, 1)`, a
//!   chain of one-page `kho_vmalloc_chunk`s listing them (each chunk preserved too), and the
//!   16-byte `struct kho_vmalloc` in the blob's `vmalloc` property. The next kernel walks the
//!   chain, restores every page and chunk, and frees the chunks, as `kho_restore_vmalloc`.
//!   Order 0 with `KHO_VMALLOC_ALLOC` is what a plain `vmalloc()` area looks like.
//!
//! Each fills its memory with seeded pseudo-random data, keeps a 64-bit hash per item (for
//! the table: per page, in area order, next to the descriptor) in a blob (an FDT whose u64
//! values are raw little-endian) in pages it allocates, and registers the blob with
//! `add_subtree`. After a kexec it finds the blob, restores every item and checks every byte
//! against the hash; on a mismatch it regenerates the data to name the first wrong page and
//! whether that page holds poison (it was not preserved).

use kho_core::fdt::{FdtNode, FdtTree};
use kho_core::format::vmalloc::{self, KhoVmalloc};
use kho_core::format::{Limits, WalkContext};
use kho_core::incoming::{Handover, OversizedPolicy};
use kho_core::outgoing::Kho;
use kho_core::{Field, MetaAlloc, Order, PAGE_SIZE, Pfn, PhysAddr, PhysRange, PhysRead, PhysWrite, RestoreError};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::kexec::{POISON_BYTE, is_poisoned};
use crate::machine::Machine;

/// Sizes of the workload, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// Guest memory (2 MiB folios).
    pub guest: u64,
    /// Page cache (4 KiB folios).
    pub page_cache: u64,
    /// Scattered table.
    pub table: u64,
    /// Percent of items replaced between kexecs.
    pub churn_percent: u32,
}

/// Guest folio order (2 MiB).
pub const GUEST_ORDER: u32 = 9;
const CHUNK: usize = 2 << 20;
/// Order of every piece of the table's vmalloc area (`struct kho_vmalloc.order`).
pub const TABLE_ORDER: u32 = 0;
/// `struct kho_vmalloc.flags` of the table: a plain `vmalloc()` area.
const TABLE_FLAGS: u16 = vmalloc::FLAG_ALLOC;
/// Bytes per table piece in the blob's `checks` property: seed and hash.
const CHECK_BYTES: usize = 16;

/// A deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the data stream of `seed`, starting at word `first`.
fn generate(seed: u64, first: u64, buf: &mut [u8]) {
    for (i, c) in buf.chunks_exact_mut(8).enumerate() {
        let w = mix(seed ^ (first + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        c.copy_from_slice(&w.to_le_bytes());
    }
}

fn hash_step(h: u64, buf: &[u8]) -> u64 {
    buf.chunks_exact(8).fold(h, |h, c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        (h ^ u64::from_le_bytes(a)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23)
    })
}

/// How an item is preserved and restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Each item a folio, listed in the blob.
    Folio,
    /// Items are the pieces of one vmalloc area, listed by its chunk chain (spec §2.3).
    Vmalloc,
}

/// One preserved object: a folio, or a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    phys: u64,
    pages: u64,
    /// Folio order (folios only).
    order: u32,
    /// Preserved as a folio (else as pages).
    folio: bool,
    seed: u64,
    hash: u64,
}

const ITEM_BYTES: usize = 40;

/// One subsystem.
#[derive(Debug, Clone)]
struct Subsystem {
    name: &'static str,
    kind: Kind,
    items: Vec<Item>,
    /// Pages released just before the last kexec (must read as poison after it).
    released: Vec<u64>,
    /// [`Kind::Vmalloc`]: the area's descriptor and its preserved chunk pages (this kernel's;
    /// those of the previous kernel are restored and freed by [`Workload::restore`]).
    area: KhoVmalloc,
    chunks: Vec<PhysAddr>,
}

/// Counters for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// Items restored as folios.
    pub folios_restored: u64,
    /// Items restored as pages.
    pub page_runs_restored: u64,
    /// Folios whose order is above this kernel's maximum, restored as pages instead.
    pub oversized_as_pages: u64,
    /// Bytes checked against their hashes.
    pub verified_bytes: u64,
    /// Pages released before the kexec and checked to hold poison.
    pub released_pages_checked: u64,
    /// Items preserved.
    pub items_preserved: u64,
    /// Bytes preserved by the workload (blobs excluded).
    pub workload_bytes: u64,
    /// Items replaced by the churn.
    pub items_replaced: u64,
    /// Everything that went wrong, each naming the page.
    pub problems: Vec<String>,
}

/// The workload of one kernel.
#[derive(Debug, Clone)]
pub struct Workload {
    subs: Vec<Subsystem>,
    rng: Rng,
    /// Pages the previous kernel released, to be checked for poison by [`Workload::verify`]
    /// (the oracle; reading them inside restore put thousands of page reads, and a scan of
    /// every reserved range per page, into the blackout of every kexec after the first).
    poison_checks: Vec<(&'static str, u64)>,
}

fn sub_names() -> [(&'static str, Kind); 3] {
    [("guest", Kind::Folio), ("page-cache", Kind::Folio), ("table", Kind::Vmalloc)]
}

impl Workload {
    /// A workload with nothing allocated yet.
    #[must_use]
    pub fn empty(seed: u64) -> Self {
        let subs = sub_names().into_iter().map(|(name, kind)| Subsystem {
            name,
            kind,
            items: Vec::new(),
            released: Vec::new(),
            area: KhoVmalloc::default(),
            chunks: Vec::new(),
        });
        Self { subs: subs.collect(), rng: Rng::new(seed), poison_checks: Vec::new() }
    }

    /// Allocates and fills the initial workload.
    ///
    /// # Errors
    /// Out of memory, or a memory error.
    pub fn create(
        &mut self,
        m: &Machine,
        cfg: &WorkloadConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), SimError> {
        let total = cfg.guest + cfg.page_cache + cfg.table;
        let mut done = 0u64;
        let guest_order = GUEST_ORDER.min(m.max_order());
        let targets = [(0usize, cfg.guest), (1, cfg.page_cache), (2, cfg.table)];
        for (i, bytes) in targets {
            let mut have = 0u64;
            while have < bytes {
                let item = match i {
                    0 => self.new_folio(m, guest_order)?,
                    1 => self.new_folio(m, 0)?,
                    _ => self.new_piece(m)?,
                };
                have += item.pages * PAGE_SIZE;
                done += item.pages * PAGE_SIZE;
                self.subs[i].items.push(item);
                progress(done.min(total), total);
            }
        }
        Ok(())
    }

    fn new_folio(&mut self, m: &Machine, order: u32) -> Result<Item, SimError> {
        let pfn = m.alloc(order)?;
        let seed = self.rng.next_u64();
        let mut item = Item { phys: pfn.phys().as_u64(), pages: 1 << order, order, folio: true, seed, hash: 0 };
        item.hash = fill(m, &item)?;
        Ok(item)
    }

    fn new_piece(&mut self, m: &Machine) -> Result<Item, SimError> {
        let pfn = m.alloc(TABLE_ORDER)?;
        let seed = self.rng.next_u64();
        let (phys, pages) = (pfn.phys().as_u64(), 1 << TABLE_ORDER);
        let mut item = Item { phys, pages, order: TABLE_ORDER, folio: false, seed, hash: 0 };
        item.hash = fill(m, &item)?;
        Ok(item)
    }

    /// Replaces `churn_percent` of each subsystem's items: new items are allocated, filled
    /// and preserved first; then old ones are unpreserved and freed (their pages are listed
    /// in the blob as released, so the next kernel can check they were poisoned).
    ///
    /// # Errors
    /// Engine or allocation errors.
    pub fn churn(&mut self, m: &Machine, kho: &Kho<&Machine>, percent: u32) -> Result<u64, SimError> {
        let mut replaced = 0;
        let guest_order = GUEST_ORDER.min(m.max_order());
        for i in 0..self.subs.len() {
            let n = (self.subs[i].items.len() as u64 * u64::from(percent)).div_ceil(100);
            let mut fresh = Vec::new();
            for _ in 0..n {
                let item = match (i, self.subs[i].kind) {
                    (0, _) => self.new_folio(m, guest_order)?,
                    (_, Kind::Folio) => self.new_folio(m, 0)?,
                    (_, Kind::Vmalloc) => self.new_piece(m)?,
                };
                preserve_item(kho, &item)?;
                fresh.push(item);
            }
            let mut released = Vec::new();
            for _ in 0..n {
                if self.subs[i].items.is_empty() {
                    break;
                }
                let idx = self.rng.below(self.subs[i].items.len() as u64) as usize;
                let old = self.subs[i].items.swap_remove(idx);
                let pfn = pfn_of(old.phys)?;
                if old.folio {
                    kho.unpreserve_folio(pfn, order(old.order)?)
                } else {
                    kho.unpreserve_pages(pfn, old.pages)
                }
                .map_err(SimError::kho(format!("{}: unpreserve {:#x}", self.subs[i].name, old.phys)))?;
                m.free_pages(pfn, old.pages);
                released.extend((0..old.pages).map(|p| old.phys + p * PAGE_SIZE));
                replaced += 1;
            }
            self.subs[i].items.extend(fresh);
            if self.subs[i].kind == Kind::Vmalloc {
                // The area changed: describe it again, then drop the old chunk chain.
                released.extend(self.subs[i].rebuild_area(m, kho)?);
            }
            self.subs[i].released = released;
        }
        Ok(replaced)
    }

    /// Preserves every item. With `forget`, the first page-cache folio is then unpreserved
    /// again but kept in the blob: a subsystem bug the next kernel must detect.
    ///
    /// # Errors
    /// Engine errors.
    pub fn preserve(&mut self, m: &Machine, kho: &Kho<&Machine>, forget: bool) -> Result<u64, SimError> {
        let mut n = 0;
        for s in &mut self.subs {
            for it in &mut s.items {
                // A folio above this kernel's maximum order (restored as pages after a kexec
                // into a kernel with a smaller maximum) is preserved as pages from now on.
                if it.folio && it.order > m.max_order() {
                    it.folio = false;
                }
                preserve_item(kho, it)?;
                n += 1;
            }
            if s.kind == Kind::Vmalloc {
                let old = s.rebuild_area(m, kho)?;
                s.released.extend(old);
            }
        }
        if forget && let Some(it) = self.subs[1].items.first() {
            kho.unpreserve_folio(pfn_of(it.phys)?, order(it.order)?)
                .map_err(SimError::kho("forget-preserve: unpreserve"))?;
        }
        Ok(n)
    }

    /// Bytes of workload memory.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.subs.iter().flat_map(|s| &s.items).map(|i| i.pages * PAGE_SIZE).sum()
    }

    /// Writes each subsystem's blob into pages it allocates and registers it.
    ///
    /// # Errors
    /// Engine, allocation or memory errors.
    pub fn publish(&self, m: &Machine, kho: &Kho<&Machine>, generation: u64) -> Result<u64, SimError> {
        let mut blob_bytes = 0;
        for s in &self.subs {
            let dtb = blob(s, &s.released, generation)?;
            let pages = (dtb.len() as u64).div_ceil(PAGE_SIZE);
            let pfn = m.alloc_contig(pages)?;
            // The blob may have landed on released pages: those are no longer released.
            let (lo, hi) = (pfn.phys().as_u64(), pfn.phys().as_u64() + pages * PAGE_SIZE);
            let released: Vec<u64> =
                s.released.iter().copied().filter(|&p| !(lo..hi).contains(&p) && m.is_free(p)).collect();
            let dtb = blob(s, &released, generation)?;
            m.write_phys(pfn.phys(), &dtb)?;
            kho.add_subtree(&format!("sim-{}", s.name), pfn.phys(), dtb.len() as u64)
                .map_err(SimError::kho(format!("add_subtree sim-{}", s.name)))?;
            blob_bytes += dtb.len() as u64;
        }
        Ok(blob_bytes)
    }

    /// Finds each blob in the handover, restores every item and checks released pages hold
    /// poison, except pages the previous kernel reused after the release for the handover
    /// itself (its metadata, its root FDT, the scratch array: listed in `handover_pages`, and
    /// every preserved range). Data is not checked here (see [`Workload::verify`]).
    pub fn restore(
        m: &Machine,
        h: &mut Handover,
        policy: OversizedPolicy,
        seed: u64,
        handover_pages: &[PhysRange],
    ) -> (Self, WorkloadReport) {
        let mut exempt: Vec<PhysRange> = h.reserved_ranges().to_vec();
        exempt.extend(h.metadata_pages().iter().filter_map(|&p| PhysRange::new(p, PAGE_SIZE)));
        exempt.extend_from_slice(handover_pages);
        let exempt = kho_core::types::merge_ranges(exempt);
        let mut w = Self::empty(seed);
        let mut rep = WorkloadReport::default();
        for s in &mut w.subs {
            let name = format!("sim-{}", s.name);
            let Some(sub) = h.subtree(&name).cloned() else {
                rep.problems.push(format!("{name}: blob missing from the handover: all its memory is lost"));
                continue;
            };
            let size = sub.size.unwrap_or(PAGE_SIZE);
            let pages = size.div_ceil(PAGE_SIZE);
            if let Err(e) = h.restore_pages(&mut m.memmap(), sub.phys, pages) {
                rep.problems.push(format!("{name}: cannot restore its blob at {}: {e}", sub.phys));
                continue;
            }
            let parsed = read_blob(m, sub.phys, size, &name);
            if let Some(pfn) = sub.phys.pfn() {
                m.free_pages(pfn, pages);
            }
            let parsed = match parsed {
                Ok(v) => v,
                Err(e) => {
                    rep.problems.push(e);
                    continue;
                }
            };
            w.rng = Rng::new(w.rng.0 ^ parsed.generation);
            let (items, chunks) = match &parsed.area {
                None => (parsed.items, Vec::new()),
                Some((desc, checks)) => match area_items(m, h, desc, checks, sub.phys, &name) {
                    Ok(v) => v,
                    Err(e) => {
                        rep.problems.push(e);
                        continue;
                    }
                },
            };
            let released = parsed.released;
            for it in items {
                let res = match it.folio {
                    true => match h.restore_folio(&mut m.memmap(), PhysAddr::new(it.phys)) {
                        Err(RestoreError::OrderTooLarge { .. }) if policy == OversizedPolicy::Reserve => {
                            rep.oversized_as_pages += 1;
                            h.restore_pages(&mut m.memmap(), PhysAddr::new(it.phys), it.pages).map(|_| ())
                        }
                        Err(e) => Err(e),
                        Ok(_) => {
                            rep.folios_restored += 1;
                            Ok(())
                        }
                    },
                    false => {
                        let r = h.restore_pages(&mut m.memmap(), PhysAddr::new(it.phys), it.pages).map(|_| ());
                        if r.is_ok() {
                            rep.page_runs_restored += 1;
                        }
                        r
                    }
                };
                match res {
                    Ok(()) => s.items.push(it),
                    Err(e) => {
                        let poisoned = is_poisoned(m, PhysAddr::new(it.phys)).unwrap_or(false);
                        rep.problems.push(format!(
                            "{name}: item at {:#x} ({} pages) cannot be restored: {e}{}",
                            it.phys,
                            it.pages,
                            if poisoned { "; page holds poison: it was not preserved, its data is lost" } else { "" }
                        ));
                    }
                }
            }
            // The chunk pages were the area's metadata: restore them and free them.
            for c in chunks {
                match h.restore_pages(&mut m.memmap(), c, 1) {
                    Ok(_) => {
                        if let Some(pfn) = c.pfn() {
                            m.free_pages(pfn, 1);
                        }
                    }
                    Err(e) => rep.problems.push(format!("{name}: vmalloc chunk {c} cannot be restored: {e}")),
                }
            }
            for p in released {
                let a = PhysAddr::new(p);
                let i = exempt.partition_point(|r| r.end() <= a);
                if exempt.get(i).is_some_and(|r| r.contains(a)) {
                    continue;
                }
                w.poison_checks.push((s.name, p));
            }
        }
        w.poison_checks.sort_unstable_by_key(|&(_, p)| p);
        (w, rep)
    }

    /// Checks every byte of every item against its hash.
    pub fn verify(&self, m: &Machine, rep: &mut WorkloadReport, progress: &mut dyn FnMut(u64, u64)) {
        for &(name, p) in &self.poison_checks {
            rep.released_pages_checked += 1;
            match is_poisoned(m, PhysAddr::new(p)) {
                Ok(true) => {}
                Ok(false) => rep.problems.push(format!(
                    "sim-{name}: released page {p:#x} does not hold poison: unpreserved memory survived the kexec"
                )),
                Err(e) => rep.problems.push(format!("sim-{name}: released page {p:#x}: {e}")),
            }
        }
        let total = self.bytes();
        let mut done = 0;
        for s in &self.subs {
            for it in &s.items {
                match hash_item(m, it) {
                    Ok(h) if h == it.hash => rep.verified_bytes += it.pages * PAGE_SIZE,
                    Ok(_) => rep.problems.push(locate(m, s.name, it)),
                    Err(e) => rep.problems.push(format!("sim-{}: item at {:#x}: {e}", s.name, it.phys)),
                }
                done += it.pages * PAGE_SIZE;
                progress(done, total);
            }
        }
    }
}

impl Subsystem {
    /// Writes the chunk chain of the vmalloc area (the items, in order), preserves each chunk
    /// page, then unpreserves and frees the previous chain, whose pages it returns.
    fn rebuild_area(&mut self, m: &Machine, kho: &Kho<&Machine>) -> Result<Vec<u64>, SimError> {
        let name = self.name;
        let pieces: Vec<PhysAddr> = self.items.iter().map(|it| PhysAddr::new(it.phys)).collect();
        let (area, chunks) = vmalloc::encode(m, &pieces, order(TABLE_ORDER)?, TABLE_FLAGS)
            .map_err(SimError::kho(format!("sim-{name}: write the vmalloc chunk chain")))?;
        for &c in &chunks {
            kho.preserve_pages(pfn_of(c.as_u64())?, 1)
                .map_err(SimError::kho(format!("sim-{name}: preserve vmalloc chunk {c}")))?;
        }
        self.area = area;
        let old = std::mem::replace(&mut self.chunks, chunks);
        let mut released = Vec::with_capacity(old.len());
        for c in old {
            kho.unpreserve_pages(pfn_of(c.as_u64())?, 1)
                .map_err(SimError::kho(format!("sim-{name}: unpreserve vmalloc chunk {c}")))?;
            m.free_meta_page(c);
            released.push(c.as_u64());
        }
        Ok(released)
    }
}

fn pfn_of(phys: u64) -> Result<Pfn, SimError> {
    PhysAddr::new(phys).pfn().ok_or_else(|| SimError::Config(format!("{phys:#x} is not a page address")))
}

fn order(o: u32) -> Result<Order, SimError> {
    Order::new(o).ok_or_else(|| SimError::Config(format!("order {o} is out of range")))
}

fn preserve_item(kho: &Kho<&Machine>, it: &Item) -> Result<(), SimError> {
    let pfn = pfn_of(it.phys)?;
    if it.folio { kho.preserve_folio(pfn, order(it.order)?) } else { kho.preserve_pages(pfn, it.pages) }
        .map_err(SimError::kho(format!("preserve {:#x} ({} pages)", it.phys, it.pages)))
}

fn fill(m: &Machine, it: &Item) -> Result<u64, SimError> {
    hash_chunks(it, |phys, off, chunk| {
        generate(it.seed, off / 8, chunk);
        Ok(m.write_phys(phys, chunk)?)
    })
}

fn hash_item(m: &Machine, it: &Item) -> Result<u64, SimError> {
    hash_chunks(it, |phys, _, chunk| Ok(m.read_phys(phys, chunk)?))
}

/// Walks an item's bytes in chunks: `io` fills or writes each chunk (given its address and
/// byte offset), then the chunk goes into the item's hash. Filling and verifying share this,
/// so both hash exactly the same byte stream.
fn hash_chunks(
    it: &Item,
    mut io: impl FnMut(PhysAddr, u64, &mut [u8]) -> Result<(), SimError>,
) -> Result<u64, SimError> {
    let len = it.pages * PAGE_SIZE;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut h = it.seed;
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        io(PhysAddr::new(it.phys + off), off, &mut buf[..n])?;
        h = hash_step(h, &buf[..n]);
        off += n as u64;
    }
    Ok(h)
}

/// Names the first wrong page of an item whose hash does not match.
fn locate(m: &Machine, name: &str, it: &Item) -> String {
    let mut want = vec![0u8; PAGE_SIZE as usize];
    let mut got = vec![0u8; PAGE_SIZE as usize];
    let mut bad_pages = 0u64;
    let mut first: Option<(u64, usize, bool)> = None;
    for p in 0..it.pages {
        let phys = it.phys + p * PAGE_SIZE;
        generate(it.seed, p * PAGE_SIZE / 8, &mut want);
        if m.read_phys(PhysAddr::new(phys), &mut got).is_err() {
            continue;
        }
        if let Some(i) = want.iter().zip(&got).position(|(a, b)| a != b) {
            bad_pages += 1;
            if first.is_none() {
                first = Some((phys, i, got.iter().all(|&b| b == POISON_BYTE)));
            }
        }
    }
    match first {
        Some((phys, _, true)) => format!(
            "sim-{name}: page {phys:#x} of the item at {:#x} holds poison: it was not preserved ({bad_pages} of {} pages lost)",
            it.phys, it.pages
        ),
        Some((phys, i, false)) => format!(
            "sim-{name}: page {phys:#x} of the item at {:#x} is corrupted from byte {i} ({bad_pages} of {} pages differ)",
            it.phys, it.pages
        ),
        None => format!("sim-{name}: item at {:#x}: hash mismatch but every page matches its data", it.phys),
    }
}

/// The blob's `compatible`: the table's layout (descriptor + checks) is version 2.
fn compatible(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Folio => format!("kho-sim,{name}-v1"),
        Kind::Vmalloc => format!("kho-sim,{name}-v2"),
    }
}

fn kind_of(name: &str) -> Kind {
    sub_names().into_iter().find(|(n, _)| *n == name).map_or(Kind::Folio, |(_, k)| k)
}

fn blob(s: &Subsystem, released: &[u64], generation: u64) -> Result<Vec<u8>, SimError> {
    let rel: Vec<u8> = released.iter().flat_map(|p| p.to_le_bytes()).collect();
    let root = FdtNode::new("").prop_str("compatible", &compatible(s.name, s.kind)).prop_le64("generation", generation);
    let root = match s.kind {
        Kind::Folio => {
            let mut items = Vec::with_capacity(s.items.len() * ITEM_BYTES);
            for it in &s.items {
                let shape = u64::from(it.order) | (u64::from(!it.folio) << 32);
                for v in [it.phys, it.pages, shape, it.seed, it.hash] {
                    items.extend_from_slice(&v.to_le_bytes());
                }
            }
            root.prop("items", &items)
        }
        Kind::Vmalloc => {
            // Where the pieces are is the chunk chain's business; the blob keeps the
            // descriptor and, per piece in area order, what its data must hash to.
            let checks: Vec<u8> = s.items.iter().flat_map(|it| [it.seed, it.hash]).flat_map(u64::to_le_bytes).collect();
            root.prop("vmalloc", &s.area.to_bytes()).prop("checks", &checks)
        }
    };
    let root = root.prop("released", &rel);
    FdtTree { root }.to_dtb().map_err(SimError::kho(format!("sim-{}: build blob", s.name)))
}

/// What a blob holds.
struct Parsed {
    /// Folio subsystems: every item.
    items: Vec<Item>,
    /// Vmalloc subsystems: the area's descriptor and (seed, hash) of each piece, in order.
    area: Option<(KhoVmalloc, Vec<(u64, u64)>)>,
    released: Vec<u64>,
    generation: u64,
}

fn word(c: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&c[i * 8..i * 8 + 8]);
    u64::from_le_bytes(a)
}

fn read_blob(m: &Machine, phys: PhysAddr, size: u64, name: &str) -> Result<Parsed, String> {
    let mut buf = vec![0u8; usize::try_from(size).map_err(|_| format!("{name}: blob size {size} is too large"))?];
    m.read_phys(phys, &mut buf).map_err(|e| format!("{name}: blob unreadable: {e}"))?;
    let t = FdtTree::parse(&buf, Field::Blob, phys).map_err(|e| format!("{name}: {e}"))?;
    let short = name.trim_start_matches("sim-");
    let kind = kind_of(short);
    let want = compatible(short, kind);
    if !t.root.is_compatible(&want) {
        return Err(format!("{name}: blob at {phys} is not {want:?}"));
    }
    let generation = t.root.le64(phys, "/", "generation").map_err(|e| format!("{name}: {e}"))?;
    let released = t.root.get("released").unwrap_or(&[]).chunks_exact(8).map(|c| word(c, 0)).collect();
    if kind == Kind::Vmalloc {
        let raw = t.root.get("vmalloc").ok_or_else(|| format!("{name}: blob has no vmalloc descriptor"))?;
        let desc = KhoVmalloc::from_bytes(raw, phys).map_err(|e| format!("{name}: vmalloc descriptor: {e}"))?;
        let raw = t.root.get("checks").ok_or_else(|| format!("{name}: blob has no checks"))?;
        if raw.len() % CHECK_BYTES != 0 {
            return Err(format!("{name}: checks property of {} bytes is not a multiple of {CHECK_BYTES}", raw.len()));
        }
        let checks = raw.chunks_exact(CHECK_BYTES).map(|c| (word(c, 0), word(c, 1))).collect();
        return Ok(Parsed { items: Vec::new(), area: Some((desc, checks)), released, generation });
    }
    let raw = t.root.get("items").ok_or_else(|| format!("{name}: blob has no items"))?;
    if raw.len() % ITEM_BYTES != 0 {
        return Err(format!("{name}: items property of {} bytes is not a multiple of {ITEM_BYTES}", raw.len()));
    }
    let items = raw
        .chunks_exact(ITEM_BYTES)
        .map(|c| Item {
            phys: word(c, 0),
            pages: word(c, 1).max(1),
            order: (word(c, 2) & 0xffff_ffff) as u32,
            folio: word(c, 2) >> 32 == 0,
            seed: word(c, 3),
            hash: word(c, 4),
        })
        .collect();
    Ok(Parsed { items, area: None, released, generation })
}

/// Walks a vmalloc area's chunk chain (every check of [`vmalloc::decode_chain`]) and pairs
/// each piece with its check; returns the pieces as items and the chunk pages.
fn area_items(
    m: &Machine,
    h: &Handover,
    desc: &KhoVmalloc,
    checks: &[(u64, u64)],
    at: PhysAddr,
    name: &str,
) -> Result<(Vec<Item>, Vec<PhysAddr>), String> {
    if u32::from(desc.order) != TABLE_ORDER {
        return Err(format!("{name}: vmalloc area of order {} (this table uses order {TABLE_ORDER})", desc.order));
    }
    let ram = [m.ram_range()];
    let mut ctx = WalkContext::new(m, &ram, h.scratch(), Limits::default());
    let area = vmalloc::decode_chain(&mut ctx, desc, at)
        .map_err(|e| format!("{name}: vmalloc chunk chain refused: {e}: all its memory is lost"))?;
    if area.pieces.len() != checks.len() {
        return Err(format!(
            "{name}: vmalloc area lists {} pieces but the blob checks {}: all its memory is lost",
            area.pieces.len(),
            checks.len()
        ));
    }
    let pages = 1u64 << desc.order;
    let items = area
        .pieces
        .iter()
        .zip(checks)
        .map(|(p, &(seed, hash))| Item {
            phys: p.as_u64(),
            pages,
            order: u32::from(desc.order),
            folio: false,
            seed,
            hash,
        })
        .collect();
    Ok((items, area.chunk_pages))
}
