//! Every in-memory KHO structure as a type: little-endian `#[repr(C)]` layouts that
//! [`zerocopy`] reads from and writes to bytes without `unsafe`, with their sizes and field
//! offsets checked at compile time (as Linux checks its own with `static_assert`).
//!
//! The layouts are the facts of spec/kho-abi.md; the names follow the Linux ABI headers.
//! Every type is `Unaligned` (byte-array fields), so any byte slice of the right length
//! decodes: alignment is a property of the *pointer*, which the decoders check separately.
//! Decoders read a structure with `read_from_bytes`/`ref_from_bytes` of exactly its size and
//! fail with a typed error otherwise; nothing here reads 0 for a missing byte.

use core::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::types::{PAGE_BYTES, PhysAddr};

/// `struct kho_scratch`: one scratch area of the `kho_scratch[]` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KhoScratch {
    /// First byte of the area.
    pub addr: U64,
    /// Bytes in the area.
    pub size: U64,
}

/// `struct kho_data`: the x86 `SETUP_KEXEC_KHO` `setup_data` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KhoData {
    /// Physical address of the root FDT.
    pub fdt_addr: U64,
    /// Bytes at `fdt_addr`.
    pub fdt_size: U64,
    /// Physical address of `kho_scratch[]`.
    pub scratch_addr: U64,
    /// Bytes of `kho_scratch[]`.
    pub scratch_size: U64,
}

/// x86 `struct setup_data` header, followed by `len` payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SetupDataHeader {
    /// Physical address of the next node (0 ends the list).
    pub next: U64,
    /// Node type (`SETUP_KEXEC_KHO` = 10).
    pub kind: U32,
    /// Payload bytes.
    pub len: U32,
}

/// `struct khoser_mem_chunk_hdr` (kho-v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkHeader {
    /// Physical address of the next chunk (0 ends the list).
    pub next: U64,
    /// Order of every block this chunk's bitmaps describe.
    pub order: U32,
    /// Entries in use.
    pub num_elms: U32,
}

/// `struct khoser_mem_bitmap_ptr` (kho-v1): one bitmap and the address its bit 0 stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BitmapPtr {
    /// Physical address of the block bit 0 describes.
    pub phys_start: U64,
    /// Physical address of the bitmap.
    pub bitmap: U64,
}

/// Entries in one kho-v1 chunk page.
pub const CHUNK_ENTRIES: usize = (PAGE_BYTES - size_of::<ChunkHeader>()) / size_of::<BitmapPtr>();

/// `struct khoser_mem_chunk` (kho-v1): one page.
#[derive(Debug, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Chunk {
    /// The header.
    pub hdr: ChunkHeader,
    /// `num_elms` of these are in use.
    pub bitmaps: [BitmapPtr; CHUNK_ENTRIES],
}

/// `struct kho_vmalloc`: the descriptor of a preserved vmalloc area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KhoVmallocDesc {
    /// Physical address of the first chunk (`KHOSER_PTR`).
    pub first: U64,
    /// Pages in the area.
    pub total_pages: U32,
    /// `KHO_VMALLOC_*` flags.
    pub flags: U16,
    /// Order of every piece.
    pub order: U16,
}

/// Piece addresses in one `kho_vmalloc_chunk`.
pub const VMALLOC_CHUNK_ENTRIES: usize = (PAGE_BYTES - size_of::<U64>()) / size_of::<U64>();

/// `struct kho_vmalloc_chunk`: one page of piece addresses.
#[derive(Debug, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VmallocChunk {
    /// Physical address of the next chunk (0 ends the chain).
    pub next: U64,
    /// Piece addresses; the first 0 ends the list.
    pub phys: [U64; VMALLOC_CHUNK_ENTRIES],
}

/// Entries of one kho-v4 radix table node.
pub const RADIX_ENTRIES: usize = PAGE_BYTES / size_of::<U64>();

/// `struct kho_radix_node` (kho-v4): a page of child pointers; a leaf is the same page read as
/// a bitmap of `PAGE_BYTES * 8` keys.
#[derive(Debug, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RadixNode {
    /// Child pointers (table) or bitmap words (leaf).
    pub table: [U64; RADIX_ENTRIES],
}

/// Bytes of `previous_release` in `struct kho_kexec_metadata`, NUL included.
pub const RELEASE_BYTES: usize = 65;

/// `struct kho_kexec_metadata` (packed: 73 bytes).
#[derive(Debug, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KexecMetadataRaw {
    /// Layout version.
    pub version: U32,
    /// `uname -r` of the previous kernel, NUL terminated.
    pub previous_release: [u8; RELEASE_BYTES],
    /// Kexecs since cold boot.
    pub kexec_count: U32,
}

/// The address of the field `offset` bytes into a structure at `base` (for error messages;
/// saturates rather than wraps at the top of the address space).
#[must_use]
pub const fn field_addr(base: PhysAddr, offset: usize) -> PhysAddr {
    base.saturating_add(offset as u64)
}

// The sizes and offsets every reader of these structures relies on.
const _: () = {
    assert!(size_of::<KhoScratch>() == 16);
    assert!(size_of::<KhoData>() == 32);
    assert!(size_of::<SetupDataHeader>() == 16);
    assert!(offset_of!(SetupDataHeader, kind) == 8 && offset_of!(SetupDataHeader, len) == 12);
    assert!(size_of::<ChunkHeader>() == 16);
    assert!(offset_of!(ChunkHeader, order) == 8 && offset_of!(ChunkHeader, num_elms) == 12);
    assert!(size_of::<BitmapPtr>() == 16);
    assert!(CHUNK_ENTRIES == 255);
    assert!(size_of::<Chunk>() == PAGE_BYTES);
    assert!(size_of::<KhoVmallocDesc>() == 16);
    assert!(offset_of!(KhoVmallocDesc, flags) == 12 && offset_of!(KhoVmallocDesc, order) == 14);
    assert!(size_of::<VmallocChunk>() == PAGE_BYTES);
    assert!(size_of::<RadixNode>() == PAGE_BYTES);
    assert!(size_of::<KexecMetadataRaw>() == 73);
    assert!(offset_of!(KexecMetadataRaw, kexec_count) == 69);
};
