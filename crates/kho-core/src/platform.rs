//! The platform boundary: how the engine reads and writes physical memory, gets pages for its
//! metadata, and tells the memory map what was reserved and restored.
//!
//! The same engine runs inside a kernel (direct map, buddy allocator, memmap), in the hosted
//! simulator (a shared memory file), in tests (a `Vec`) and in the `kho` tool (a memory dump,
//! read-only). Every method takes `&self`: a kernel's allocator and direct map are shared,
//! and the engine serializes its own updates under its lock.

use crate::types::{Block, Pfn, PhysAddr, PhysRange};

/// Which way a memory access went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
}

impl Access {
    /// True for [`Access::Write`].
    #[must_use]
    pub const fn is_write(self) -> bool {
        matches!(self, Access::Write)
    }
}

/// A read or write touched bytes the platform does not back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} {len} bytes at {phys}: not backed by memory", if access.is_write() { "write" } else { "read" })]
pub struct MemError {
    /// Read or write.
    pub access: Access,
    /// First byte asked for.
    pub phys: PhysAddr,
    /// Bytes asked for.
    pub len: u64,
}

impl MemError {
    /// A failed read of `len` bytes at `phys`.
    #[must_use]
    pub const fn read(phys: PhysAddr, len: u64) -> Self {
        Self { access: Access::Read, phys, len }
    }
    /// A failed write of `len` bytes at `phys`.
    #[must_use]
    pub const fn write(phys: PhysAddr, len: u64) -> Self {
        Self { access: Access::Write, phys, len }
    }
}

/// Read access to physical memory. Must fail, not panic, for unbacked addresses.
pub trait PhysRead {
    /// Fills `buf` from physical memory starting at `phys`.
    ///
    /// # Errors
    /// [`MemError`] if any byte of `[phys, phys + buf.len())` is not backed.
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError>;

    /// Reads a little-endian `u64` (all in-memory KHO structures are native little-endian).
    ///
    /// # Errors
    /// As [`PhysRead::read_phys`].
    fn read_u64(&self, phys: PhysAddr) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read_phys(phys, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Write access to physical memory.
pub trait PhysWrite: PhysRead {
    /// Copies `data` to physical memory starting at `phys`.
    ///
    /// # Errors
    /// [`MemError`] if any byte is not backed.
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError>;

    /// Writes a little-endian `u64`.
    ///
    /// # Errors
    /// As [`PhysWrite::write_phys`].
    fn write_u64(&self, phys: PhysAddr, value: u64) -> Result<(), MemError> {
        self.write_phys(phys, &value.to_le_bytes())
    }
}

/// The platform could not provide a metadata page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of memory for KHO metadata")]
pub struct AllocError;

/// Pages for KHO's own metadata: tracker bitmaps, chunk lists, radix nodes, the root FDT.
///
/// Pages must come from memory the next kernel will not touch before it has consumed the
/// handover: outside every scratch area (the engine checks this and refuses otherwise).
pub trait MetaAlloc {
    /// Allocates one zeroed page.
    ///
    /// # Errors
    /// [`AllocError`] when no page is available (fault injection uses this too).
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError>;
    /// Returns a page obtained from [`MetaAlloc::alloc_meta_page`].
    fn free_meta_page(&self, page: PhysAddr);
}

/// Everything the outgoing side needs.
pub trait Platform: PhysWrite + MetaAlloc {}
impl<T: PhysWrite + MetaAlloc + ?Sized> Platform for T {}

/// The next kernel's memory map, as the incoming side sees it.
pub trait MemMap {
    /// True if `pfn` is a page of RAM this kernel manages (Linux `pfn_to_online_page`).
    /// The restore path asks this before it looks at any state of the page.
    fn pfn_valid(&self, pfn: Pfn) -> bool;
    /// Reserves preserved memory: disjoint, coalesced ranges, sorted by address. They may
    /// arrive in one call ([`crate::incoming::Handover::reserve`]) or in several
    /// ([`crate::incoming::Handover::reserve_streaming`]); each call's ranges are sorted and
    /// start above the previous call's, so the concatenation is one sorted list and a platform
    /// can still insert them in linear time, appending.
    fn reserve(&mut self, ranges: &[PhysRange]);
    /// A preserved block was restored as one folio of its order (a compound page).
    fn claim_folio(&mut self, block: Block);
    /// A preserved block was restored as `2^order` independent order-0 pages.
    fn claim_pages(&mut self, block: Block);
    /// Preserved memory nobody restored goes back to the allocator.
    fn release(&mut self, block: Block);
}

impl<T: PhysRead + ?Sized> PhysRead for &T {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read_phys(phys, buf)
    }
    // Forwarded so a platform's fast word access is kept behind a reference.
    fn read_u64(&self, phys: PhysAddr) -> Result<u64, MemError> {
        (**self).read_u64(phys)
    }
}
impl<T: PhysWrite + ?Sized> PhysWrite for &T {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        (**self).write_phys(phys, data)
    }
    fn write_u64(&self, phys: PhysAddr, value: u64) -> Result<(), MemError> {
        (**self).write_u64(phys, value)
    }
}
impl<T: MetaAlloc + ?Sized> MetaAlloc for &T {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        (**self).alloc_meta_page()
    }
    fn free_meta_page(&self, page: PhysAddr) {
        (**self).free_meta_page(page);
    }
}
