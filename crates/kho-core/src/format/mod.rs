//! Wire formats: pure functions over bytes, one module per ABI.
//!
//! Decoders read through [`WalkContext`], which applies the checks every pointer in every
//! format must pass (not NULL, aligned, inside RAM, outside scratch, readable), and write the
//! blocks they find into a [`BlockSet`](crate::blockset::BlockSet). Encoders take a
//! `BlockSet` (or the tracker's own bitmaps) and write pages the platform provides.

pub mod abi;
pub mod handover_ptr;
pub mod root;
pub mod scratch;
pub mod v1;
pub mod v4;

pub mod csum;
pub mod kexec_metadata;
pub mod memblock;
pub mod test_kho;
pub mod vmalloc;

use alloc::vec::Vec;

use crate::error::{DecodeError, DecodeErrorKind, Field, Result};
use crate::platform::PhysRead;
use crate::types::{PAGE_BYTES, PAGE_SIZE, PhysAddr, PhysRange};

/// The handover formats this crate speaks, by root `compatible` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatVersion {
    /// `kho-v1`: chunk list of per-order bitmaps (Linux 6.16 to 6.19).
    V1,
    /// `kho-v4`: radix tree (Linux 7.2, 7.3).
    V4,
}

impl FormatVersion {
    /// The root `compatible` string.
    #[must_use]
    pub const fn compatible(self) -> &'static str {
        match self {
            FormatVersion::V1 => "kho-v1",
            FormatVersion::V4 => "kho-v4",
        }
    }
    /// Every supported compatible string, for error messages.
    pub const SUPPORTED: &'static str = "kho-v1, kho-v4";

    /// The version named by a compatible string.
    #[must_use]
    pub fn from_compatible(s: &str) -> Option<Self> {
        match s {
            "kho-v1" => Some(FormatVersion::V1),
            "kho-v4" => Some(FormatVersion::V4),
            _ => None,
        }
    }
}

/// Size of one kho-v1 bitmap. Not recorded anywhere in the format (spec §1.10): the reader
/// must be told which kernel generation wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BitmapBytes {
    /// 512 bytes (4096 blocks): Linux 6.16 and 6.17, the seed's design.
    #[default]
    B512,
    /// 4096 bytes (32768 blocks): Linux 6.18.
    B4096,
}

impl BitmapBytes {
    /// Bytes per bitmap.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        match self {
            BitmapBytes::B512 => 512,
            BitmapBytes::B4096 => 4096,
        }
    }
    /// Blocks per bitmap.
    #[must_use]
    pub const fn bits(self) -> u64 {
        self.bytes() * 8
    }
    /// `u64` words per bitmap.
    #[must_use]
    pub const fn words(self) -> usize {
        (self.bytes() / 8) as usize
    }
    /// From a byte count (512 or 4096).
    #[must_use]
    pub const fn from_bytes(n: u64) -> Option<Self> {
        match n {
            512 => Some(BitmapBytes::B512),
            4096 => Some(BitmapBytes::B4096),
            _ => None,
        }
    }
}

/// Bounds on the work a decoder may do, so hostile metadata cannot make it loop or allocate
/// without limit. Defaults fit a 64 TiB host preserved entirely at order 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most metadata pages (chunks, bitmaps, radix nodes, vmalloc chunks) one walk visits.
    pub max_metadata_pages: u64,
    /// Largest sub-blob, in bytes.
    pub max_blob_bytes: u64,
    /// Most sub-nodes in the root FDT.
    pub max_subtrees: usize,
    /// Most scratch areas.
    pub max_scratch_areas: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_metadata_pages: 1 << 24, max_blob_bytes: 64 << 20, max_subtrees: 256, max_scratch_areas: 4096 }
    }
}

/// What a decoder needs to check pointers: memory, where RAM and scratch are, limits; and
/// the metadata pages it has visited so far (counted against the limit, reported later).
#[derive(Debug)]
pub struct WalkContext<'a, M: ?Sized> {
    /// Physical memory.
    pub mem: &'a M,
    /// RAM ranges, sorted and disjoint.
    pub ram: &'a [PhysRange],
    /// Scratch areas, sorted and disjoint.
    pub scratch: &'a [PhysRange],
    /// Work bounds.
    pub limits: Limits,
    /// Metadata pages visited, in visit order.
    pub metadata_pages: Vec<PhysAddr>,
}

impl<M: ?Sized> WalkContext<'_, M> {
    /// Refuses a memory map that already claims more preserved bytes than RAM holds: a cheap
    /// bound checked as blocks are added, so a map that repeats itself is refused before it
    /// costs anything.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadValue`] naming the structure just decoded (`what` at `at`).
    pub fn check_claim(&self, what: Field, at: PhysAddr, set: &crate::blockset::BlockSet) -> Result<(), DecodeError> {
        let ram: u64 = self.ram.iter().fold(0u64, |a, r| a.saturating_add(r.len()));
        let claimed = set.total_bytes();
        if claimed > ram {
            return Err(DecodeError::new(
                what,
                at,
                DecodeErrorKind::BadValue { found: claimed, expected: "preserved bytes no more than RAM holds" },
            ));
        }
        Ok(())
    }
}

impl<'a, M: PhysRead + ?Sized> WalkContext<'a, M> {
    /// A context with no pages visited yet.
    pub fn new(mem: &'a M, ram: &'a [PhysRange], scratch: &'a [PhysRange], limits: Limits) -> Self {
        Self { mem, ram, scratch, limits, metadata_pages: Vec::new() }
    }

    /// Checks that `[ptr, ptr + len)` (pointed to by `what`, read at `at`) is not NULL,
    /// aligned to `align`, inside one RAM range and outside every scratch area.
    ///
    /// # Errors
    /// [`DecodeErrorKind::Null`], [`DecodeErrorKind::Misaligned`], [`DecodeErrorKind::OutsideRam`], [`DecodeErrorKind::InScratch`].
    pub fn check_pointer(
        &self,
        what: Field,
        at: PhysAddr,
        ptr: PhysAddr,
        len: u64,
        align: u64,
    ) -> Result<PhysRange, DecodeError> {
        if ptr.is_null() {
            return Err(DecodeError::new(what, at, DecodeErrorKind::Null));
        }
        if !ptr.is_aligned(align) {
            return Err(DecodeError::new(what, at, DecodeErrorKind::Misaligned { value: ptr.as_u64(), align }));
        }
        let range = check_phys_range(what, at, ptr, len.max(1))?;
        check_in_ram(self.ram, what, at, range)?;
        check_not_in_scratch(self.scratch, what, at, range)?;
        Ok(range)
    }

    /// Checks a metadata page pointer ([`WalkContext::check_pointer`] with page size and
    /// alignment), counts it against the limit, and reads it into `buf`.
    ///
    /// # Errors
    /// As `check_pointer`, plus [`DecodeErrorKind::TooMany`] past the page limit and
    /// [`DecodeErrorKind::Unreadable`] if memory does not hold the page.
    pub fn read_meta_page(
        &mut self,
        what: Field,
        at: PhysAddr,
        page: PhysAddr,
        buf: &mut [u8; PAGE_BYTES],
    ) -> Result<(), DecodeError> {
        self.check_pointer(what, at, page, PAGE_SIZE, PAGE_SIZE)?;
        if self.metadata_pages.len() as u64 >= self.limits.max_metadata_pages {
            return Err(DecodeError::new(what, at, DecodeErrorKind::TooMany { limit: self.limits.max_metadata_pages }));
        }
        self.mem.read_phys(page, buf).map_err(|e| DecodeError::unreadable(what, e))?;
        self.metadata_pages.push(page);
        Ok(())
    }
}

impl<M: PhysRead + ?Sized> WalkContext<'_, M> {
    /// Checks a pointer to a metadata object of `buf.len()` bytes aligned to `align` (a
    /// kho-v1 bitmap, say), counts its page against the budget the first time it is seen in
    /// a row, and reads it.
    ///
    /// # Errors
    /// As [`WalkContext::read_meta_page`].
    pub fn read_meta(
        &mut self,
        what: Field,
        at: PhysAddr,
        ptr: PhysAddr,
        buf: &mut [u8],
        align: u64,
    ) -> Result<(), DecodeError> {
        self.check_pointer(what, at, ptr, buf.len() as u64, align)?;
        let page = ptr.page_base();
        if self.metadata_pages.last() != Some(&page) {
            if self.metadata_pages.len() as u64 >= self.limits.max_metadata_pages {
                return Err(DecodeError::new(
                    what,
                    at,
                    DecodeErrorKind::TooMany { limit: self.limits.max_metadata_pages },
                ));
            }
            self.metadata_pages.push(page);
        }
        self.mem.read_phys(ptr, buf).map_err(|e| DecodeError::unreadable(what, e))
    }
}

/// Checks that `[ptr, ptr + len)` is a physical range: it does not wrap and ends at or below
/// the 52-bit physical address limit (whatever RAM a memory source claims to have above it).
///
/// # Errors
/// [`DecodeErrorKind::BadValue`] naming the pointer.
pub fn check_phys_range(what: Field, at: PhysAddr, ptr: PhysAddr, len: u64) -> Result<PhysRange, DecodeError> {
    let limit = crate::types::PFN_LIMIT << crate::types::PAGE_SHIFT;
    match PhysRange::new(ptr, len) {
        Some(r) if r.end().as_u64() <= limit => Ok(r),
        Some(_) => Err(DecodeError::new(
            what,
            at,
            DecodeErrorKind::BadValue { found: ptr.as_u64(), expected: "an address below the 52-bit physical limit" },
        )),
        None => Err(DecodeError::new(
            what,
            at,
            DecodeErrorKind::BadValue { found: ptr.as_u64(), expected: "a non-empty range that does not wrap" },
        )),
    }
}

/// Checks that `range` lies inside one RAM range.
///
/// # Errors
/// [`DecodeErrorKind::OutsideRam`].
pub fn check_in_ram(ram: &[PhysRange], what: Field, at: PhysAddr, range: PhysRange) -> Result<(), DecodeError> {
    let i = ram.partition_point(|r| r.end() <= range.start());
    match ram.get(i) {
        Some(r) if r.contains_range(range) => Ok(()),
        _ => Err(DecodeError::new(what, at, DecodeErrorKind::OutsideRam { range })),
    }
}

/// Checks that `range` overlaps no scratch area.
///
/// # Errors
/// [`DecodeErrorKind::InScratch`] naming the first scratch area it overlaps.
pub fn check_not_in_scratch(
    scratch: &[PhysRange],
    what: Field,
    at: PhysAddr,
    range: PhysRange,
) -> Result<(), DecodeError> {
    let i = scratch.partition_point(|r| r.end() <= range.start());
    match scratch.get(i) {
        Some(&s) if s.overlaps(range) => {
            Err(DecodeError::new(what, at, DecodeErrorKind::InScratch { range, scratch: s }))
        }
        _ => Ok(()),
    }
}
