//! The outgoing side: the kernel that is about to kexec.
//!
//! [`Kho`] records preservations in the [`tracker`], keeps the named subsystem
//! blobs, and at [`Kho::finalize`] writes the memory map in the chosen wire format plus the
//! root FDT and the scratch array, returning the [`HandoverPtr`] the next kernel needs.
//! Between `finalize` and [`Kho::abort`] preservations are frozen; `abort` keeps every one of
//! them (Linux 6.16 dropped them all, spec §4i).
//!
//! All state sits behind one lock, so every method takes `&self` and is safe to call from
//! many threads. A preserve is a lock, an O(log n) map lookup and one word read-modify-write.

pub mod tracker;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::sync::{Guard, Lock};

use crate::blockset::BlockSet;
use crate::error::{Field, OutgoingError, Result};
use crate::fdt::is_valid_subtree_name;
use crate::format::handover_ptr::HandoverPtr;
use crate::format::root::{self, Subtree};
use crate::format::{BitmapBytes, FormatVersion, check_in_ram, check_not_in_scratch, scratch, v1, v4};
use crate::platform::Platform;
use crate::split::split_range;
use crate::types::{Block, Order, PAGE_SIZE, Pfn, PhysAddr, PhysRange};
use tracker::{Tracker, check_meta_page};

/// How the outgoing kernel is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingConfig {
    /// RAM ranges, sorted and disjoint. Preserving outside them is an error.
    pub ram: Vec<PhysRange>,
    /// Scratch areas for the next kernel, sorted and disjoint; nothing preserved may
    /// overlap them.
    pub scratch: Vec<PhysRange>,
    /// This kernel's maximum folio order; also caps the blocks a range is split into.
    pub max_order: Order,
    /// Tracker bitmap size, which is also the kho-v1 wire bitmap size.
    pub bitmap_bytes: BitmapBytes,
    /// Most sub-blobs (the root FDT must also fit one page).
    pub max_subtrees: usize,
}

impl OutgoingConfig {
    /// Defaults: Linux x86-64 maximum order (10), 512-byte bitmaps, up to 64 sub-blobs.
    #[must_use]
    pub fn new(ram: Vec<PhysRange>, scratch: Vec<PhysRange>) -> Self {
        Self { ram, scratch, max_order: Order::LINUX_X86_MAX, bitmap_bytes: BitmapBytes::B512, max_subtrees: 64 }
    }
}

/// What `finalize` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finalized {
    /// Where the next kernel finds the handover.
    pub ptr: HandoverPtr,
    /// The wire format written.
    pub format: FormatVersion,
    /// Every page of KHO metadata the next kernel needs intact (not preserved blocks
    /// themselves): tracker bitmaps (kho-v1), chunks or radix nodes, the scratch array. The
    /// root FDT page is preserved, so it is in the preserved set instead.
    pub metadata_pages: Vec<PhysAddr>,
    /// Bytes of metadata (pages above, plus the FDT page).
    pub metadata_bytes: u64,
    /// Bytes preserved.
    pub preserved_bytes: u64,
    /// Blocks preserved.
    pub preserved_blocks: u64,
}

/// Counters for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Blocks preserved.
    pub blocks: u64,
    /// Bytes preserved.
    pub bytes: u64,
    /// Tracker bitmaps.
    pub bitmaps: u64,
    /// Pages holding tracker bitmaps.
    pub bitmap_pages: u64,
    /// Sub-blobs.
    pub subtrees: u64,
}

#[derive(Debug)]
struct Output {
    finalized: Finalized,
    fdt_page: PhysAddr,
    /// Pages finalize allocated (freed again by abort).
    pages: Vec<PhysAddr>,
}

#[derive(Debug)]
struct State {
    tracker: Tracker,
    subtrees: Vec<Subtree>,
    output: Option<Output>,
}

/// The outgoing KHO engine over platform `P`.
#[derive(Debug)]
pub struct Kho<P: Platform> {
    platform: P,
    config: OutgoingConfig,
    state: Lock<State>,
}

impl<P: Platform> Kho<P> {
    /// A tracker with nothing preserved.
    ///
    /// # Errors
    /// [`OutgoingError::BadValue`] if RAM or scratch ranges are unsorted, overlapping or unaligned,
    /// or a scratch area lies outside RAM.
    pub fn new(platform: P, config: OutgoingConfig) -> Result<Self, OutgoingError> {
        if config.scratch.is_empty() {
            return Err(OutgoingError::NoScratch);
        }
        for (list, what) in [(&config.ram, Field::Argument), (&config.scratch, Field::ScratchEntry)] {
            for w in list.windows(2) {
                if w[0].end() > w[1].start() {
                    return Err(OutgoingError::BadValue {
                        what,
                        at: w[1].start(),
                        found: w[1].start().as_u64(),
                        expected: "sorted, disjoint ranges",
                    });
                }
            }
            for r in list {
                if !r.start().is_page_aligned() || !r.end().is_page_aligned() {
                    return Err(OutgoingError::Misaligned {
                        what,
                        at: r.start(),
                        value: r.start().as_u64(),
                        align: PAGE_SIZE,
                    });
                }
            }
        }
        for s in &config.scratch {
            check_in_ram(&config.ram, Field::ScratchEntry, s.start(), *s)?;
        }
        // The scratch array is handed over in one page.
        if config.scratch.len() as u64 * scratch::ENTRY_BYTES > PAGE_SIZE {
            return Err(OutgoingError::TooMany { what: Field::ScratchArray, limit: PAGE_SIZE / scratch::ENTRY_BYTES });
        }
        let tracker = Tracker::new(config.bitmap_bytes);
        Ok(Self { platform, config, state: Lock::new(State { tracker, subtrees: Vec::new(), output: None }) })
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration.
    pub fn config(&self) -> &OutgoingConfig {
        &self.config
    }

    fn check_block(&self, st: &State, block: Block) -> Result<(), OutgoingError> {
        let range = block.range();
        check_in_ram(&self.config.ram, Field::Block, block.phys(), range)?;
        check_not_in_scratch(&self.config.scratch, Field::Block, block.phys(), range)?;
        if let Some(other) = st.tracker.overlapping(&self.platform, block)? {
            return Err(if other == block {
                OutgoingError::AlreadyPreserved { block }
            } else {
                OutgoingError::Overlap { what: Field::Block, block, other }
            });
        }
        let first = block.phys().as_u64() & !(PAGE_SIZE - 1);
        if let Some(meta) = st.tracker.bitmap_page_in(first, range.end().as_u64()) {
            let meta_block = Block::at(PhysAddr::new(meta), Order::ZERO).expect("page aligned");
            return Err(OutgoingError::Overlap { what: Field::ChunkBitmap, block, other: meta_block });
        }
        Ok(())
    }

    fn insert_blocks(&self, st: &mut State, blocks: impl Iterator<Item = Block>) -> Result<(), OutgoingError> {
        let mut done: Vec<Block> = Vec::new();
        for b in blocks {
            let r = self.check_block(st, b).and_then(|()| st.tracker.insert(&self.platform, &self.config.scratch, b));
            if let Err(e) = r {
                // Best effort: the caller gets the error that stopped us, not a rollback's.
                for d in done.into_iter().rev() {
                    let _ = st.tracker.remove(&self.platform, d);
                }
                return Err(e);
            }
            done.push(b);
        }
        Ok(())
    }

    /// Unpreserves `blocks`, all or nothing. Blocks that hold a sub-blob are refused unless
    /// `blob` names that blob (only [`Kho::remove_subtree`] may drop them): a blob owns its
    /// pages, so a handover can never name a blob whose memory is not preserved.
    fn remove_blocks(&self, st: &mut State, blocks: &[Block], blob: Option<&str>) -> Result<(), OutgoingError> {
        for &b in blocks {
            if let Some(s) = st.subtrees.iter().find(|s| Some(s.name.as_str()) != blob && blob_overlaps(s, b)) {
                return Err(OutgoingError::OwnedByBlob { block: b, name: s.name.clone() });
            }
            if !st.tracker.contains(&self.platform, b)? {
                return Err(OutgoingError::NotPreserved { block: b });
            }
        }
        for (i, &b) in blocks.iter().enumerate() {
            if let Err(e) = st.tracker.remove(&self.platform, b) {
                // Best effort: put back what was removed; the caller gets the first error.
                for &d in blocks[..i].iter().rev() {
                    let _ = st.tracker.insert(&self.platform, &self.config.scratch, d);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn open(&self) -> Result<Guard<'_, State>, OutgoingError> {
        let st = self.state.lock();
        if st.output.is_some() { Err(OutgoingError::Finalized) } else { Ok(st) }
    }

    fn folio(&self, pfn: Pfn, order: Order) -> Result<Block, OutgoingError> {
        if order > self.config.max_order {
            return Err(OutgoingError::OrderTooLarge {
                what: Field::Argument,
                at: pfn.phys(),
                order: u64::from(order.as_u32()),
                max: self.config.max_order.as_u32(),
            });
        }
        Block::new(pfn, order).ok_or(OutgoingError::Misaligned {
            what: Field::Argument,
            at: pfn.phys(),
            value: pfn.phys().as_u64(),
            align: order.bytes(),
        })
    }

    fn range_blocks(&self, pfn: Pfn, count: u64) -> Result<Vec<Block>, OutgoingError> {
        if count == 0 {
            return Err(OutgoingError::Empty { what: Field::Argument });
        }
        if pfn.checked_add(count - 1).is_none() {
            let range = PhysRange::new(pfn.phys(), PAGE_SIZE).expect("one page");
            return Err(OutgoingError::OutsideRam { what: Field::Argument, at: pfn.phys(), range });
        }
        Ok(split_range(pfn, count, self.config.max_order).collect())
    }

    /// Preserves the folio of `2^order` pages at `pfn`.
    ///
    /// # Errors
    /// [`OutgoingError::Finalized`], [`OutgoingError::OrderTooLarge`] above this kernel's maximum,
    /// [`OutgoingError::Misaligned`], [`OutgoingError::OutsideRam`], [`OutgoingError::InScratch`],
    /// [`OutgoingError::AlreadyPreserved`], [`OutgoingError::Overlap`], [`OutgoingError::OutOfMemory`].
    pub fn preserve_folio(&self, pfn: Pfn, order: Order) -> Result<(), OutgoingError> {
        let block = self.folio(pfn, order)?;
        let mut st = self.open()?;
        // One block: nothing to roll back, so no undo list (an allocation per call).
        self.check_block(&st, block)?;
        st.tracker.insert(&self.platform, &self.config.scratch, block)
    }

    /// Undoes [`Kho::preserve_folio`]; the shape must match exactly.
    ///
    /// # Errors
    /// [`OutgoingError::Finalized`], [`OutgoingError::NotPreserved`], argument errors.
    pub fn unpreserve_folio(&self, pfn: Pfn, order: Order) -> Result<(), OutgoingError> {
        let block = self.folio(pfn, order)?;
        let mut st = self.open()?;
        self.remove_blocks(&mut st, &[block], None)
    }

    /// Preserves `count` pages from `pfn`, split into aligned blocks (see [`crate::split`]).
    /// All or nothing: a failure part-way leaves nothing of the range preserved.
    ///
    /// # Errors
    /// As [`Kho::preserve_folio`], plus [`OutgoingError::Empty`].
    pub fn preserve_pages(&self, pfn: Pfn, count: u64) -> Result<(), OutgoingError> {
        let blocks = self.range_blocks(pfn, count)?;
        let mut st = self.open()?;
        self.insert_blocks(&mut st, blocks.into_iter())
    }

    /// Undoes [`Kho::preserve_pages`] with the same arguments; all or nothing.
    ///
    /// # Errors
    /// [`OutgoingError::NotPreserved`] naming the first block of the split that is not preserved.
    pub fn unpreserve_pages(&self, pfn: Pfn, count: u64) -> Result<(), OutgoingError> {
        let blocks = self.range_blocks(pfn, count)?;
        let mut st = self.open()?;
        self.remove_blocks(&mut st, &blocks, None)
    }

    fn phys_range(phys: PhysAddr, size: u64) -> Result<(Pfn, u64), OutgoingError> {
        if !phys.is_page_aligned() {
            return Err(OutgoingError::Misaligned {
                what: Field::Argument,
                at: phys,
                value: phys.as_u64(),
                align: PAGE_SIZE,
            });
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(OutgoingError::Misaligned { what: Field::Argument, at: phys, value: size, align: PAGE_SIZE });
        }
        let pfn = phys.pfn().ok_or(OutgoingError::BadValue {
            what: Field::Argument,
            at: phys,
            found: phys.as_u64(),
            expected: "an address below the 52-bit limit",
        })?;
        Ok((pfn, size / PAGE_SIZE))
    }

    /// Preserves the byte range `[phys, phys + size)`; both must be page aligned.
    ///
    /// # Errors
    /// As [`Kho::preserve_pages`], plus [`OutgoingError::Misaligned`].
    pub fn preserve_phys(&self, phys: PhysAddr, size: u64) -> Result<(), OutgoingError> {
        let (pfn, count) = Self::phys_range(phys, size)?;
        self.preserve_pages(pfn, count)
    }

    /// Undoes [`Kho::preserve_phys`] with the same arguments.
    ///
    /// # Errors
    /// As [`Kho::unpreserve_pages`].
    pub fn unpreserve_phys(&self, phys: PhysAddr, size: u64) -> Result<(), OutgoingError> {
        let (pfn, count) = Self::phys_range(phys, size)?;
        self.unpreserve_pages(pfn, count)
    }

    /// True if exactly this block is preserved.
    pub fn is_preserved(&self, block: Block) -> bool {
        let st = self.state.lock();
        st.tracker.contains(&self.platform, block).unwrap_or(false)
    }

    /// A snapshot of every preserved block.
    ///
    /// # Errors
    /// Platform read errors.
    pub fn preserved(&self) -> Result<BlockSet, OutgoingError> {
        let st = self.state.lock();
        st.tracker.snapshot(&self.platform)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let st = self.state.lock();
        Stats {
            blocks: st.tracker.blocks(),
            bytes: st.tracker.bytes(),
            bitmaps: st.tracker.bitmap_count() as u64,
            bitmap_pages: st.tracker.bitmap_page_count() as u64,
            subtrees: st.subtrees.len() as u64,
        }
    }

    /// Names of the sub-blobs, in the order they were added.
    pub fn subtrees(&self) -> Vec<(String, PhysAddr, u64)> {
        self.state.lock().subtrees.iter().map(|s| (s.name.clone(), s.phys, s.size.unwrap_or(0))).collect()
    }

    /// Registers the blob `[blob, blob + size)` under `name` and preserves its pages, so the
    /// next kernel finds it by name. For kho-v1 output the blob must be an FDT (the format
    /// has no size field); finalize checks that.
    ///
    /// # Errors
    /// [`OutgoingError::DuplicateBlob`], [`OutgoingError::BadValue`] for a bad name or too many blobs,
    /// [`OutgoingError::Empty`], and any preserve error for the blob's pages.
    pub fn add_subtree(&self, name: &str, blob: PhysAddr, size: u64) -> Result<(), OutgoingError> {
        if !is_valid_subtree_name(name) {
            return Err(OutgoingError::BadValue {
                what: Field::SubtreeName,
                at: blob,
                found: name.len() as u64,
                expected: "1-63 characters from [A-Za-z0-9,._+-]",
            });
        }
        if size == 0 {
            return Err(OutgoingError::Empty { what: Field::Blob });
        }
        let (pfn, _) = Self::phys_range(blob, 0)?;
        let pages = size.div_ceil(PAGE_SIZE);
        let blocks = self.range_blocks(pfn, pages)?;
        let mut st = self.open()?;
        if st.subtrees.iter().any(|s| s.name == name) {
            return Err(OutgoingError::DuplicateBlob { name: name.to_string() });
        }
        if st.subtrees.len() >= self.config.max_subtrees {
            return Err(OutgoingError::BadValue {
                what: Field::SubtreeName,
                at: blob,
                found: st.subtrees.len() as u64,
                expected: "fewer sub-blobs than the configured maximum",
            });
        }
        self.insert_blocks(&mut st, blocks.into_iter())?;
        st.subtrees.push(Subtree { name: name.to_string(), phys: blob, size: Some(size) });
        Ok(())
    }

    /// Removes a sub-blob and unpreserves its pages.
    ///
    /// # Errors
    /// [`OutgoingError::UnknownBlob`], [`OutgoingError::Finalized`].
    pub fn remove_subtree(&self, name: &str) -> Result<(), OutgoingError> {
        let mut st = self.open()?;
        let i = st
            .subtrees
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| OutgoingError::UnknownBlob { name: name.to_string() })?;
        let s = &st.subtrees[i];
        let (pfn, _) = Self::phys_range(s.phys, 0)?;
        let blocks = self.range_blocks(pfn, s.size.unwrap_or(0).div_ceil(PAGE_SIZE))?;
        self.remove_blocks(&mut st, &blocks, Some(name))?;
        st.subtrees.remove(i);
        Ok(())
    }

    /// Writes the handover in `format`: the memory map, the root FDT (in a page that is itself
    /// preserved, as Linux does) and the scratch array. Preservations are then frozen until
    /// [`Kho::abort`]. On error nothing changes and every page taken is given back.
    ///
    /// # Errors
    /// [`OutgoingError::Finalized`], [`OutgoingError::OutOfMemory`], [`OutgoingError::FdtTooLarge`],
    /// [`OutgoingError::BadBlob`] for a kho-v1 blob that is not an FDT, [`OutgoingError::InScratch`] if the
    /// platform handed out a metadata page inside scratch.
    pub fn finalize(&self, format: FormatVersion) -> Result<Finalized, OutgoingError> {
        let mut st = self.open()?;
        let mut pages: Vec<PhysAddr> = Vec::new();
        let mut fdt_page = None;
        let r = self.write_handover(&mut st, format, &mut pages, &mut fdt_page);
        match r {
            Ok(out) => {
                let f = out.finalized.clone();
                st.output = Some(out);
                Ok(f)
            }
            Err(e) => {
                // Best effort, and every page is given back: the caller gets the first error.
                if let Some(page) = fdt_page {
                    let _ = st.tracker.remove(&self.platform, Block::at(page, Order::ZERO).expect("page"));
                    self.platform.free_meta_page(page);
                }
                for p in pages {
                    self.platform.free_meta_page(p);
                }
                Err(e)
            }
        }
    }

    fn alloc_page(&self, what: Field, pages: &mut Vec<PhysAddr>) -> Result<PhysAddr, OutgoingError> {
        let p = self.platform.alloc_meta_page()?;
        pages.push(p);
        check_meta_page(&self.config.scratch, what, p)?;
        Ok(p)
    }

    fn write_handover(
        &self,
        st: &mut State,
        format: FormatVersion,
        pages: &mut Vec<PhysAddr>,
        fdt_page: &mut Option<PhysAddr>,
    ) -> Result<Output, OutgoingError> {
        let write_err = |e| OutgoingError::memory(Field::RootFdt, e);
        // The FDT page first: it is preserved, so it must be in the map we serialize.
        let page = self.alloc_page(Field::RootFdt, pages)?;
        let fdt_block = Block::at(page, Order::ZERO).expect("page aligned");
        self.insert_blocks(st, core::iter::once(fdt_block))?;
        pages.pop();
        *fdt_page = Some(page);
        let mut subtrees = st.subtrees.clone();
        let (memory_map, map_pages, bitmap_pages) = match format {
            FormatVersion::V1 => {
                for s in &mut subtrees {
                    let mut hdr = [0u8; crate::fdt::FDT_HEADER_BYTES];
                    self.platform.read_phys(s.phys, &mut hdr).map_err(|e| OutgoingError::memory(Field::Blob, e))?;
                    let total = crate::fdt::header_totalsize(&hdr, Field::Blob, s.phys)
                        .map_err(|source| OutgoingError::BadBlob { name: s.name.clone(), source })?;
                    if u64::from(total) > s.size.unwrap_or(0) {
                        return Err(OutgoingError::BadValue {
                            what: Field::Blob,
                            at: s.phys,
                            found: u64::from(total),
                            expected: "an FDT blob no larger than the registered size (kho-v1 blobs must be FDTs)",
                        });
                    }
                    s.size = None;
                }
                let bits = st.tracker.bitmap_bytes().bits();
                let entries: Vec<v1::Entry> = st
                    .tracker
                    .bitmaps()
                    .map(|b| v1::Entry {
                        order: b.order,
                        phys_start: Pfn::new((b.index * bits) << b.order.as_u32()).map_or(PhysAddr::new(0), Pfn::phys),
                        bitmap: b.phys,
                    })
                    .collect();
                let list = v1::encode(&self.platform, &entries)?;
                pages.extend(list.pages.iter().copied());
                for &p in &list.pages {
                    check_meta_page(&self.config.scratch, Field::ChunkNext, p)?;
                }
                (list.first, list.pages, st.tracker.bitmap_pages().into_iter().map(PhysAddr::new).collect::<Vec<_>>())
            }
            FormatVersion::V4 => {
                let set = st.tracker.snapshot(&self.platform)?;
                let tree = v4::encode(&self.platform, &set)?;
                pages.extend(tree.pages.iter().copied());
                for &p in &tree.pages {
                    check_meta_page(&self.config.scratch, Field::RadixEntry, p)?;
                }
                (tree.root, tree.pages, Vec::new())
            }
        };
        let dtb = root::build(format, memory_map, &subtrees)?;
        self.platform.write_phys(page, &dtb).map_err(write_err)?;
        let scratch_bytes = scratch::encode(&self.config.scratch);
        let mut scratch_pages = Vec::new();
        let scratch_addr = if scratch_bytes.is_empty() {
            PhysAddr::new(0)
        } else {
            let first = self.alloc_page(Field::ScratchArray, pages)?;
            scratch_pages.push(first);
            self.platform
                .write_phys(first, &scratch_bytes)
                .map_err(|e| OutgoingError::memory(Field::ScratchArray, e))?;
            first
        };
        let mut metadata_pages = bitmap_pages;
        metadata_pages.extend(map_pages);
        metadata_pages.extend(scratch_pages);
        let finalized = Finalized {
            ptr: HandoverPtr {
                fdt: page,
                fdt_size: PAGE_SIZE,
                scratch: scratch_addr,
                scratch_size: scratch_bytes.len() as u64,
            },
            format,
            metadata_bytes: (metadata_pages.len() as u64 + 1) * PAGE_SIZE,
            metadata_pages,
            preserved_bytes: st.tracker.bytes(),
            preserved_blocks: st.tracker.blocks(),
        };
        Ok(Output { finalized, fdt_page: page, pages: core::mem::take(pages) })
    }

    /// The handover written by the last successful `finalize`, if still finalized.
    pub fn finalized(&self) -> Option<Finalized> {
        self.state.lock().output.as_ref().map(|o| o.finalized.clone())
    }

    /// Undoes `finalize`: frees the chunks or radix nodes, the FDT and the scratch array and
    /// unfreezes preservations. Every preservation made before `finalize` is kept.
    ///
    /// # Errors
    /// [`OutgoingError::NotFinalized`].
    pub fn abort(&self) -> Result<(), OutgoingError> {
        let mut st = self.state.lock();
        let out = st.output.take().ok_or(OutgoingError::NotFinalized)?;
        for p in out.pages {
            self.platform.free_meta_page(p);
        }
        st.tracker.remove(&self.platform, Block::at(out.fdt_page, Order::ZERO).expect("page aligned"))?;
        self.platform.free_meta_page(out.fdt_page);
        Ok(())
    }
}

/// True if `block` overlaps the pages of sub-blob `s`.
fn blob_overlaps(s: &Subtree, block: Block) -> bool {
    let pages = s.size.unwrap_or(0).div_ceil(PAGE_SIZE);
    let first = s.phys.as_u64() / PAGE_SIZE;
    let (b0, b1) = (block.pfn().as_u64(), block.end_pfn());
    b0 < first.saturating_add(pages) && first < b1
}
