//! The incoming side: the next kernel.
//!
//! [`Handover::parse`] takes the pointer the previous kernel left (x86 `setup_data` or DT
//! `/chosen`), checks the FDT and the scratch array, walks the memory map in whichever format
//! `compatible` names, and applies every check Linux leaves out (spec §2.8): pointers inside
//! RAM, aligned and outside scratch; bounded, cycle-free walks; orders in range; blocks inside
//! RAM, outside scratch and not overlapping each other or the metadata; sub-blobs inside
//! preserved memory. The result is a [`Handover`] that keeps the preserved index (one bit per
//! block, as on the wire) for restore, and the coalesced ranges for [`Handover::reserve`].
//!
//! Nothing is trusted before it is checked, nothing panics, and the work is bounded by the
//! size of the metadata (see [`Limits`]), never by the number of preserved pages.

use alloc::vec::Vec;

use crate::blockset::BlockSet;
use crate::error::{DecodeError, DecodeErrorKind, Field, RestoreError, Result};
use crate::fdt::{FDT_HEADER_BYTES, header_totalsize};
use crate::format::handover_ptr::HandoverPtr;
use crate::format::root::{self, Subtree};
use crate::format::{
    BitmapBytes, FormatVersion, Limits, WalkContext, check_in_ram, check_not_in_scratch, scratch, v1, v4,
};
use crate::platform::{MemMap, PhysRead};
use crate::types::{Block, Order, PAGE_SIZE, PhysAddr, PhysRange};

/// What to do with preserved blocks whose order is above this kernel's maximum (the seed
/// review's open question: "the next kernel might not support all the orders").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OversizedPolicy {
    /// Keep them: they are reserved like any other block (nothing preserved is lost),
    /// `restore_folio` refuses them with [`RestoreError::OrderTooLarge`] before building anything,
    /// and `restore_pages` restores them as order-0 pages.
    #[default]
    Reserve,
    /// Refuse the whole handover with [`DecodeErrorKind::OrderTooLarge`] (strict validation).
    Reject,
}

/// How the incoming kernel is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingConfig {
    /// RAM ranges, sorted and disjoint.
    pub ram: Vec<PhysRange>,
    /// This kernel's maximum folio order.
    pub max_order: Order,
    /// Which kho-v1 variant to assume (the format does not say).
    pub v1_bitmap_bytes: BitmapBytes,
    /// Blocks above `max_order`.
    pub oversized: OversizedPolicy,
    /// Work bounds.
    pub limits: Limits,
}

impl IncomingConfig {
    /// Defaults: maximum order 10, 512-byte kho-v1 bitmaps, oversized blocks reserved.
    #[must_use]
    pub fn new(ram: Vec<PhysRange>) -> Self {
        Self {
            ram,
            max_order: Order::LINUX_X86_MAX,
            v1_bitmap_bytes: BitmapBytes::B512,
            oversized: OversizedPolicy::Reserve,
            limits: Limits::default(),
        }
    }
}

/// The result of checking a handover with [`Handover::validate_fdt`]: every problem found,
/// and the handover if there were none.
#[derive(Debug)]
pub struct Validation {
    /// The handover, when valid.
    pub handover: Option<Handover>,
    /// Every problem, in the order found (empty when valid).
    pub problems: Vec<DecodeError>,
}

/// A validated incoming handover.
#[derive(Debug, Clone)]
pub struct Handover {
    version: FormatVersion,
    fdt_phys: PhysAddr,
    memory_map: PhysAddr,
    scratch: Vec<PhysRange>,
    subtrees: Vec<Subtree>,
    index: BlockSet,
    restored: BlockSet,
    ranges: Vec<PhysRange>,
    metadata_pages: Vec<PhysAddr>,
    oversized: u64,
    preserved_blocks: u64,
    preserved_bytes: u64,
    max_order: Order,
}

/// Most problems one validation reports.
const MAX_PROBLEMS: usize = 64;

impl Handover {
    /// Reads the FDT and scratch array the pointer names, then parses and checks everything.
    ///
    /// # Errors
    /// The first problem found, as a typed error naming field, address, value and
    /// expectation.
    pub fn parse<M: PhysRead + ?Sized>(mem: &M, ptr: &HandoverPtr, cfg: &IncomingConfig) -> Result<Self, DecodeError> {
        let fdt = read_root_fdt(mem, ptr, cfg)?;
        let scratch = scratch::decode(mem, &cfg.ram, ptr.scratch, ptr.scratch_size, cfg.limits.max_scratch_areas)?;
        Self::parse_fdt(mem, &fdt, ptr.fdt, &scratch, cfg)
    }

    /// Parses a handover whose root FDT is given as bytes (a debugfs file, say) found at
    /// `fdt_phys`, with scratch areas known from elsewhere.
    ///
    /// # Errors
    /// The first problem, as [`Handover::parse`].
    pub fn parse_fdt<M: PhysRead + ?Sized>(
        mem: &M,
        fdt: &[u8],
        fdt_phys: PhysAddr,
        scratch: &[PhysRange],
        cfg: &IncomingConfig,
    ) -> Result<Self, DecodeError> {
        let v = Self::validate_fdt(mem, fdt, fdt_phys, scratch, cfg);
        match v.handover {
            Some(h) => Ok(h),
            // `validate_fdt` gives no handover only with at least one problem.
            None => Err(v.problems.into_iter().next().unwrap_or(DecodeError::new(
                Field::RootFdt,
                fdt_phys,
                DecodeErrorKind::BadValue { found: 0, expected: "a handover (validation gave none and no problem)" },
            ))),
        }
    }

    /// Like [`Handover::parse_fdt`] but reports every problem it can find: a structural one
    /// (bad FDT, bad pointer, cycle) stops the walk; problems with individual blocks and
    /// blobs are all collected (up to 64).
    pub fn validate_fdt<M: PhysRead + ?Sized>(
        mem: &M,
        fdt: &[u8],
        fdt_phys: PhysAddr,
        scratch: &[PhysRange],
        cfg: &IncomingConfig,
    ) -> Validation {
        let mut problems = Vec::new();
        let handover = match Self::walk(mem, fdt, fdt_phys, scratch, cfg, &mut problems) {
            Ok(h) if problems.is_empty() => Some(h),
            Ok(_) => None,
            Err(e) => {
                problems.insert(0, e);
                None
            }
        };
        Validation { handover, problems }
    }

    fn walk<M: PhysRead + ?Sized>(
        mem: &M,
        fdt: &[u8],
        fdt_phys: PhysAddr,
        scratch: &[PhysRange],
        cfg: &IncomingConfig,
        problems: &mut Vec<DecodeError>,
    ) -> Result<Self, DecodeError> {
        let scratch = check_scratch(scratch)?;
        let root = root::parse(fdt, fdt_phys, &cfg.limits)?;
        let mut ctx = WalkContext::new(mem, &cfg.ram, &scratch, cfg.limits);
        let mut index = BlockSet::new();
        match root.version {
            FormatVersion::V1 => v1::decode(&mut ctx, root.memory_map, fdt_phys, cfg.v1_bitmap_bytes, &mut index)?,
            FormatVersion::V4 => v4::decode(&mut ctx, root.memory_map, fdt_phys, &mut index)?,
        }
        // A map that claims more than RAM holds is refused at the cost of its per-order counts.
        // The walk goes on (coalescing costs what the metadata holds: shared bitmaps and
        // shared radix nodes are refused by the decoders), so a dump that holds only part of
        // RAM still gets every out-of-RAM range named.
        if let Err(e) = ctx.check_claim(Field::PreservedMemoryMap, root.memory_map, &index) {
            problems.push(e);
        }
        let mut metadata_pages = core::mem::take(&mut ctx.metadata_pages);
        metadata_pages.sort_unstable();
        metadata_pages.dedup();
        let ranges = index.coalesced_ranges()?;
        let mut report = |e: DecodeError| {
            if problems.len() < MAX_PROBLEMS {
                problems.push(e);
            }
        };
        for &r in &ranges {
            if let Err(e) = check_in_ram(&cfg.ram, Field::Block, r.start(), r) {
                report(e);
            }
            if let Err(e) = check_not_in_scratch(&scratch, Field::Block, r.start(), r) {
                report(e);
            }
        }
        for &page in &metadata_pages {
            if let Some(other) = covering(&ranges, page).and_then(|_| index.block_containing(page.containing_pfn()?)) {
                let block = Block::at(page, Order::ZERO).expect("metadata pages are page aligned");
                report(DecodeError::new(
                    Field::PreservedMemoryMap,
                    block.phys(),
                    DecodeErrorKind::Overlap { block, other },
                ));
            }
        }
        let mut oversized = 0;
        for (order, n) in index.count_by_order() {
            if order > cfg.max_order {
                oversized += n;
                if cfg.oversized == OversizedPolicy::Reject {
                    let first = index.first_block(order).map_or(PhysAddr::new(0), Block::phys);
                    report(DecodeError::new(
                        Field::Block,
                        first,
                        DecodeErrorKind::OrderTooLarge {
                            order: u64::from(order.as_u32()),
                            max: cfg.max_order.as_u32(),
                        },
                    ));
                }
            }
        }
        let mut subtrees = root.subtrees;
        for s in &mut subtrees {
            if let Err(e) = resolve_blob(mem, &cfg.ram, &scratch, &cfg.limits, root.version, s).and_then(|range| {
                if ranges.iter().any(|r| r.contains_range(range)) {
                    Ok(())
                } else {
                    Err(DecodeError::new(
                        Field::SubtreeData,
                        range.start(),
                        DecodeErrorKind::BlobNotPreserved { name: s.name.clone(), range },
                    ))
                }
            }) {
                report(e);
            }
        }
        Ok(Self {
            version: root.version,
            fdt_phys,
            memory_map: root.memory_map,
            scratch,
            subtrees,
            preserved_blocks: index.len(),
            preserved_bytes: index.total_bytes(),
            index,
            restored: BlockSet::new(),
            ranges,
            metadata_pages,
            oversized,
            max_order: cfg.max_order,
        })
    }

    /// The format found.
    #[must_use]
    pub fn format(&self) -> FormatVersion {
        self.version
    }
    /// Where the root FDT is.
    #[must_use]
    pub fn fdt_phys(&self) -> PhysAddr {
        self.fdt_phys
    }
    /// `preserved-memory-map`: the first chunk (kho-v1) or the radix root (kho-v4).
    #[must_use]
    pub fn memory_map(&self) -> PhysAddr {
        self.memory_map
    }
    /// Scratch areas, sorted.
    #[must_use]
    pub fn scratch(&self) -> &[PhysRange] {
        &self.scratch
    }
    /// Sub-blobs in FDT order, sizes resolved.
    #[must_use]
    pub fn subtrees(&self) -> &[Subtree] {
        &self.subtrees
    }
    /// A sub-blob by name.
    #[must_use]
    pub fn subtree(&self, name: &str) -> Option<&Subtree> {
        self.subtrees.iter().find(|s| s.name == name)
    }
    /// Preserved blocks not yet restored (after parse: all of them).
    #[must_use]
    pub fn preserved(&self) -> &BlockSet {
        &self.index
    }
    /// Blocks restored so far.
    #[must_use]
    pub fn restored(&self) -> &BlockSet {
        &self.restored
    }
    /// Every preserved range, sorted, disjoint and coalesced.
    #[must_use]
    pub fn reserved_ranges(&self) -> &[PhysRange] {
        &self.ranges
    }
    /// Metadata pages the walk read (chunks, bitmaps or radix nodes), sorted. They are not
    /// preserved: once the handover is parsed the kernel may reuse them.
    #[must_use]
    pub fn metadata_pages(&self) -> &[PhysAddr] {
        &self.metadata_pages
    }
    /// Blocks whose order is above this kernel's maximum.
    #[must_use]
    pub fn oversized_blocks(&self) -> u64 {
        self.oversized
    }
    /// Blocks preserved, at parse time.
    #[must_use]
    pub fn preserved_blocks(&self) -> u64 {
        self.preserved_blocks
    }
    /// Bytes preserved, at parse time.
    #[must_use]
    pub fn preserved_bytes(&self) -> u64 {
        self.preserved_bytes
    }

    /// Hands the platform every preserved range as one sorted batch.
    pub fn reserve<T: MemMap + ?Sized>(&self, map: &mut T) {
        map.reserve(&self.ranges);
    }

    /// Hands the platform the same ranges as [`Handover::reserve`], in the same order, but in
    /// batches of at most `batch` (0 counts as 1) ranges, found as they are handed: straight
    /// from the preserved index through [`BlockSet::coalesced`], with one buffer of `batch`
    /// ranges and one cursor per order present. The memory this pass uses is bounded by
    /// `batch` and [`crate::blockset::MAX_ORDERS`], not by the number of ranges. Returns the
    /// number of `map.reserve` calls.
    ///
    /// Meant to run before any restore (as at boot). Once blocks have been restored the index
    /// no longer holds them, so the parse-time ranges (still kept for
    /// [`Handover::reserved_ranges`]) are handed instead, in the same batches.
    pub fn reserve_streaming<T: MemMap + ?Sized>(&self, map: &mut T, batch: usize) -> usize {
        let batch = batch.max(1);
        if self.restored.is_empty() {
            // Parse already refused overlapping blocks, so no `Err` can come; `map_while`
            // would stop at one rather than hand the platform a partial range.
            feed_batches(self.index.coalesced().map_while(Result::ok), map, batch)
        } else {
            feed_batches(self.ranges.iter().copied(), map, batch)
        }
    }

    /// What is preserved at `pfn`, for error messages: already restored, part of a larger or
    /// differently shaped block, or nothing.
    fn explain(&self, phys: PhysAddr, requested: PhysRange) -> RestoreError {
        let Some(pfn) = phys.pfn() else { return RestoreError::NeverPreserved { phys } };
        if let Some(b) = self.restored.block_starting_at(pfn) {
            return RestoreError::AlreadyRestored { block: b };
        }
        if let Some(found) = self.index.block_containing(pfn).or_else(|| self.restored.block_containing(pfn)) {
            return RestoreError::ShapeMismatch { requested, found };
        }
        RestoreError::NeverPreserved { phys }
    }

    /// Restores the folio preserved at `phys`: succeeds only for a block that starts exactly
    /// there, was not restored before, and whose order this kernel supports. The page is
    /// checked against the memory map before any preserved state is read, and the order
    /// before the platform builds a compound page (the seed review's findings 3 and 4).
    ///
    /// # Errors
    /// [`RestoreError::Misaligned`], [`RestoreError::InvalidPage`], [`RestoreError::NeverPreserved`],
    /// [`RestoreError::AlreadyRestored`], [`RestoreError::ShapeMismatch`], [`DecodeErrorKind::OrderTooLarge`].
    pub fn restore_folio<T: MemMap + ?Sized>(&mut self, map: &mut T, phys: PhysAddr) -> Result<Block, RestoreError> {
        let pfn = page_frame(phys)?;
        if !map.pfn_valid(pfn) {
            return Err(RestoreError::InvalidPage { phys });
        }
        let Some(block) = self.index.block_starting_at(pfn) else {
            let one = PhysRange::new(phys, PAGE_SIZE).expect("page");
            return Err(self.explain(phys, one));
        };
        if block.order() > self.max_order {
            return Err(RestoreError::OrderTooLarge { block, max: self.max_order });
        }
        self.index.remove(block);
        self.restored.insert(block);
        map.claim_folio(block);
        Ok(block)
    }

    /// Restores `count` pages from `phys` as order-0 pages. The range must be tiled exactly by
    /// preserved, unrestored blocks (of any orders, so a range split differently by the
    /// previous kernel, or blocks above this kernel's maximum order, still restore). All or
    /// nothing.
    ///
    /// # Errors
    /// As [`Handover::restore_folio`], plus [`RestoreError::Empty`].
    pub fn restore_pages<T: MemMap + ?Sized>(
        &mut self,
        map: &mut T,
        phys: PhysAddr,
        count: u64,
    ) -> Result<Vec<Block>, RestoreError> {
        let pfn = page_frame(phys)?;
        if count == 0 {
            return Err(RestoreError::Empty { phys });
        }
        let end = pfn
            .as_u64()
            .checked_add(count)
            .filter(|&e| e <= crate::types::PFN_LIMIT)
            .ok_or(RestoreError::InvalidPage { phys })?;
        let requested = PhysRange::new(phys, count * PAGE_SIZE).ok_or(RestoreError::InvalidPage { phys })?;
        let mut plan = Vec::new();
        let mut pos = pfn;
        while pos.as_u64() < end {
            if !map.pfn_valid(pos) {
                return Err(RestoreError::InvalidPage { phys: pos.phys() });
            }
            let Some(block) = self.index.block_starting_at(pos) else {
                return Err(self.explain(pos.phys(), requested));
            };
            if block.end_pfn() > end {
                return Err(RestoreError::ShapeMismatch { requested, found: block });
            }
            plan.push(block);
            pos = crate::types::Pfn::new(block.end_pfn()).unwrap_or(pos);
            if block.end_pfn() >= crate::types::PFN_LIMIT {
                break;
            }
        }
        for &b in &plan {
            self.index.remove(b);
            self.restored.insert(b);
            map.claim_pages(b);
        }
        Ok(plan)
    }

    /// Preserved blocks nobody restored.
    pub fn unclaimed(&self) -> impl Iterator<Item = Block> + '_ {
        self.index.iter()
    }

    /// Gives every unrestored preserved block back to the platform; returns how many.
    pub fn release_unclaimed<T: MemMap + ?Sized>(&mut self, map: &mut T) -> u64 {
        let blocks: Vec<Block> = self.index.iter().collect();
        for &b in &blocks {
            map.release(b);
        }
        self.index = BlockSet::new();
        blocks.len() as u64
    }
}

/// Feeds `ranges` to `map.reserve` in batches of `batch`, through one reused buffer; returns
/// the number of calls.
fn feed_batches<T: MemMap + ?Sized>(ranges: impl Iterator<Item = PhysRange>, map: &mut T, batch: usize) -> usize {
    let mut buf: Vec<PhysRange> = Vec::with_capacity(batch);
    let mut calls = 0;
    for r in ranges {
        buf.push(r);
        if buf.len() == batch {
            map.reserve(&buf);
            calls += 1;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        map.reserve(&buf);
        calls += 1;
    }
    calls
}

/// The frame a restore argument names; it must be page aligned.
fn page_frame(phys: PhysAddr) -> Result<crate::types::Pfn, RestoreError> {
    phys.pfn().ok_or(RestoreError::Misaligned { phys })
}

fn covering(ranges: &[PhysRange], addr: PhysAddr) -> Option<PhysRange> {
    let i = ranges.partition_point(|r| r.end() <= addr);
    ranges.get(i).copied().filter(|r| r.contains(addr))
}

/// Checks scratch areas however they were learnt (the `kho_scratch[]` array, debugfs
/// files, a caller's list): each below the 52-bit physical limit, and no two overlapping (an
/// overlap would hide preserved blocks that lie in scratch). Returns them sorted.
///
/// # Errors
/// [`DecodeErrorKind::InScratch`] naming the two areas, or [`DecodeErrorKind::BadValue`].
pub fn check_scratch(scratch: &[PhysRange]) -> Result<Vec<PhysRange>, DecodeError> {
    let mut sorted = scratch.to_vec();
    sorted.sort_unstable();
    for r in &sorted {
        crate::format::check_phys_range(Field::ScratchEntry, r.start(), r.start(), r.len())?;
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0].overlaps(w[1])) {
        return Err(DecodeError::new(
            Field::ScratchEntry,
            w[1].start(),
            DecodeErrorKind::InScratch { range: w[1], scratch: w[0] },
        ));
    }
    Ok(sorted)
}

/// Checks a handover pointer on its own, before anything it names is read: the FDT pointer
/// non-NULL with a size between the 40-byte FDT header and the blob limit, the scratch array
/// non-NULL with a non-zero size, and both ranges below the 52-bit physical limit. Every entry
/// point applies it (the library's [`Handover::parse`], the simulator, the CLI's `setup_data`
/// path), so `fdt_size` 0 or 2^63 is refused the same way everywhere.
///
/// # Errors
/// [`DecodeErrorKind::Null`] or [`DecodeErrorKind::BadValue`] naming the field.
pub fn check_handover_ptr(ptr: &HandoverPtr, limits: &Limits) -> Result<(), DecodeError> {
    let what = Field::RootFdt;
    if ptr.fdt.is_null() {
        return Err(DecodeError::new(what, ptr.fdt, DecodeErrorKind::Null));
    }
    if ptr.fdt_size < FDT_HEADER_BYTES as u64 || ptr.fdt_size > limits.max_blob_bytes {
        return Err(DecodeError::new(
            what,
            ptr.fdt,
            DecodeErrorKind::BadValue {
                found: ptr.fdt_size,
                expected: "an FDT size between the 40-byte header and the blob limit",
            },
        ));
    }
    crate::format::check_phys_range(what, ptr.fdt, ptr.fdt, ptr.fdt_size)?;
    if ptr.scratch.is_null() {
        return Err(DecodeError::new(Field::ScratchArray, ptr.scratch, DecodeErrorKind::Null));
    }
    crate::format::check_phys_range(Field::ScratchArray, ptr.scratch, ptr.scratch, ptr.scratch_size)?;
    Ok(())
}

/// Reads the root FDT the pointer names, after [`check_handover_ptr`]: header first, then
/// `totalsize` bytes, which must fit the size the previous kernel passed. The one reader of a
/// root FDT in memory, for every caller.
///
/// # Errors
/// As `check_handover_ptr`, plus [`DecodeErrorKind::OutsideRam`], an unreadable or malformed
/// header, or a `totalsize` above `fdt_size`.
pub fn read_root_fdt<M: PhysRead + ?Sized>(
    mem: &M,
    ptr: &HandoverPtr,
    cfg: &IncomingConfig,
) -> Result<Vec<u8>, DecodeError> {
    let what = Field::RootFdt;
    check_handover_ptr(ptr, &cfg.limits)?;
    let range = PhysRange::new(ptr.fdt, ptr.fdt_size).ok_or(DecodeError::new(
        what,
        ptr.fdt,
        DecodeErrorKind::BadValue { found: ptr.fdt_size, expected: "a range that does not wrap" },
    ))?;
    check_in_ram(&cfg.ram, what, ptr.fdt, range)?;
    let mut hdr = [0u8; FDT_HEADER_BYTES];
    mem.read_phys(ptr.fdt, &mut hdr).map_err(|e| DecodeError::unreadable(what, e))?;
    let total = u64::from(header_totalsize(&hdr, what, ptr.fdt)?);
    if total > ptr.fdt_size {
        return Err(DecodeError::new(
            what,
            ptr.fdt,
            DecodeErrorKind::BadValue {
                found: total,
                expected: "an FDT totalsize within the size the previous kernel passed",
            },
        ));
    }
    let mut buf = alloc::vec![0u8; usize::try_from(total).unwrap_or(0)];
    mem.read_phys(ptr.fdt, &mut buf).map_err(|e| DecodeError::unreadable(what, e))?;
    Ok(buf)
}

/// Checks a sub-blob's pointer and size (reading a kho-v1 blob's FDT header for its size).
fn resolve_blob<M: PhysRead + ?Sized>(
    mem: &M,
    ram: &[PhysRange],
    scratch: &[PhysRange],
    limits: &Limits,
    version: FormatVersion,
    s: &mut Subtree,
) -> Result<PhysRange, DecodeError> {
    let what = Field::SubtreeData;
    let ctx = WalkContext::new(mem, ram, scratch, *limits);
    ctx.check_pointer(what, s.phys, s.phys, FDT_HEADER_BYTES as u64, 1)?;
    let size = match version {
        FormatVersion::V4 => s.size.unwrap_or(0),
        FormatVersion::V1 => {
            let mut hdr = [0u8; FDT_HEADER_BYTES];
            mem.read_phys(s.phys, &mut hdr).map_err(|e| DecodeError::unreadable(what, e))?;
            u64::from(header_totalsize(&hdr, Field::Blob, s.phys)?)
        }
    };
    if size == 0 || size > limits.max_blob_bytes {
        return Err(DecodeError::new(
            Field::SubtreeSize,
            s.phys,
            DecodeErrorKind::BadValue { found: size, expected: "a blob size between 1 byte and the blob limit" },
        ));
    }
    s.size = Some(size);
    let range = ctx.check_pointer(what, s.phys, s.phys, size, 1)?;
    Ok(range)
}
