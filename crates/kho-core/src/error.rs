//! One error type for the whole engine.
//!
//! Every variant that comes from untrusted input names the structure field ([`Field`]), the
//! physical address where it was found, the value found and what was expected, so an operator
//! can go straight to the offending byte.

use alloc::string::String;
use core::fmt;

use crate::platform::{AllocError, MemError};
use crate::types::{Block, PhysAddr, PhysRange};

/// The structure field an error is about, named as in the Linux ABI headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// An argument of an outgoing API call.
    Argument,
    /// A preserved block.
    Block,
    /// The root KHO FDT (header or structure).
    RootFdt,
    /// The root node's `compatible`.
    Compatible,
    /// The root node's `preserved-memory-map`.
    PreservedMemoryMap,
    /// A sub-node's name.
    SubtreeName,
    /// A sub-node's `fdt` (kho-v1) or `preserved-data` (kho-v4) pointer.
    SubtreeData,
    /// A sub-node's `blob-size` (kho-v4).
    SubtreeSize,
    /// A sub-blob's content.
    Blob,
    /// The `kho_scratch[]` array (address or size).
    ScratchArray,
    /// One `struct kho_scratch` entry.
    ScratchEntry,
    /// x86 `setup_data` payload (`struct kho_data`).
    SetupData,
    /// Device-tree `/chosen` `linux,kho-fdt`.
    ChosenKhoFdt,
    /// Device-tree `/chosen` `linux,kho-scratch`.
    ChosenKhoScratch,
    /// `khoser_mem_chunk.hdr.next`.
    ChunkNext,
    /// `khoser_mem_chunk.hdr.order`.
    ChunkOrder,
    /// `khoser_mem_chunk.hdr.num_elms`.
    ChunkNumElms,
    /// `khoser_mem_bitmap_ptr.phys_start`.
    ChunkPhysStart,
    /// `khoser_mem_bitmap_ptr.bitmap`.
    ChunkBitmap,
    /// A radix tree table entry (`kho_radix_node.table[i]`).
    RadixEntry,
    /// A radix tree key (decoded from a leaf bit).
    RadixKey,
    /// `kho_vmalloc.first` / `kho_vmalloc_chunk.hdr.next`.
    VmallocChunk,
    /// `kho_vmalloc_chunk.phys[i]`.
    VmallocPiece,
    /// `kho_vmalloc.total_pages`.
    VmallocTotalPages,
    /// `kho_vmalloc.flags`.
    VmallocFlags,
    /// `kho_vmalloc.order`.
    VmallocOrder,
    /// A memory source (dump file, `--mem` argument).
    MemorySource,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Field::Argument => "argument",
            Field::Block => "preserved block",
            Field::RootFdt => "root FDT",
            Field::Compatible => "/compatible",
            Field::PreservedMemoryMap => "/preserved-memory-map",
            Field::SubtreeName => "sub-node name",
            Field::SubtreeData => "sub-node fdt/preserved-data",
            Field::SubtreeSize => "sub-node blob-size",
            Field::Blob => "sub-blob",
            Field::ScratchArray => "kho_scratch[] array",
            Field::ScratchEntry => "kho_scratch entry",
            Field::SetupData => "setup_data kho_data",
            Field::ChosenKhoFdt => "/chosen/linux,kho-fdt",
            Field::ChosenKhoScratch => "/chosen/linux,kho-scratch",
            Field::ChunkNext => "khoser_mem_chunk.hdr.next",
            Field::ChunkOrder => "khoser_mem_chunk.hdr.order",
            Field::ChunkNumElms => "khoser_mem_chunk.hdr.num_elms",
            Field::ChunkPhysStart => "khoser_mem_bitmap_ptr.phys_start",
            Field::ChunkBitmap => "khoser_mem_bitmap_ptr.bitmap",
            Field::RadixEntry => "kho_radix_node entry",
            Field::RadixKey => "kho radix key",
            Field::VmallocChunk => "kho_vmalloc chunk pointer",
            Field::VmallocPiece => "kho_vmalloc_chunk.phys[]",
            Field::VmallocTotalPages => "kho_vmalloc.total_pages",
            Field::VmallocFlags => "kho_vmalloc.flags",
            Field::VmallocOrder => "kho_vmalloc.order",
            Field::MemorySource => "memory source",
        };
        f.write_str(s)
    }
}

/// Everything that can go wrong, on either side of the handover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- outgoing side -------------------------------------------------------------------
    /// Preservations are frozen between `finalize` and `abort`.
    #[error("the handover is finalized: abort it before changing preservations")]
    Finalized,
    /// The operation needs a finalized handover.
    #[error("the handover is not finalized")]
    NotFinalized,
    /// A range of zero pages.
    #[error("{what}: empty range")]
    Empty {
        /// Which field.
        what: Field,
    },
    /// The platform ran out of metadata pages.
    #[error("out of memory for KHO metadata")]
    OutOfMemory,
    /// The block is already preserved with exactly this shape.
    #[error("{block} is already preserved")]
    AlreadyPreserved {
        /// The block.
        block: Block,
    },
    /// Unpreserve of a block that is not preserved with exactly this shape.
    #[error("{block} is not preserved")]
    NotPreserved {
        /// The block.
        block: Block,
    },
    /// A blob of this name already exists.
    #[error("a sub-blob named {name:?} already exists")]
    DuplicateBlob {
        /// Its name.
        name: String,
    },
    /// No blob of this name.
    #[error("no sub-blob named {name:?}")]
    UnknownBlob {
        /// Its name.
        name: String,
    },
    /// The root FDT does not fit in its page.
    #[error("the root FDT needs {needed} bytes, more than its {limit}-byte page")]
    FdtTooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        limit: u64,
    },

    // ---- values that break a rule (both sides) ----------------------------------------------
    /// An address or size that must be aligned is not.
    #[error("{what} at {at}: value {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// Which field.
        what: Field,
        /// Where the field was read (or the argument's own value on the outgoing side).
        at: PhysAddr,
        /// Value found.
        value: u64,
        /// Alignment expected.
        align: u64,
    },
    /// A range is not inside RAM.
    #[error("{what} at {at}: {range} is outside RAM")]
    OutsideRam {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
        /// The offending range.
        range: PhysRange,
    },
    /// A range overlaps a scratch area.
    #[error("{what} at {at}: {range} overlaps scratch area {scratch}")]
    InScratch {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
        /// The offending range.
        range: PhysRange,
        /// The scratch area.
        scratch: PhysRange,
    },
    /// Two preserved blocks overlap (or a block overlaps metadata).
    #[error("{what}: {block} overlaps {other}")]
    Overlap {
        /// Which field.
        what: Field,
        /// The block found second.
        block: Block,
        /// The block found first.
        other: Block,
    },
    /// An order above the limit that applies.
    #[error("{what} at {at}: order {order} is above the maximum order {max}")]
    OrderTooLarge {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
        /// Order found.
        order: u64,
        /// Largest order allowed.
        max: u32,
    },
    /// A count or length outside what the structure can hold.
    #[error("{what} at {at}: found {found}, expected {expected}")]
    BadValue {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
        /// Value found.
        found: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A pointer that must not be NULL is.
    #[error("{what} at {at}: NULL pointer")]
    Null {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
    },
    /// A linked structure points back to an element already visited.
    #[error("{what} at {at}: points to {target}, already visited (cycle)")]
    Cycle {
        /// Which field.
        what: Field,
        /// Where the field was read.
        at: PhysAddr,
        /// Where it points.
        target: PhysAddr,
    },
    /// A structure is longer than the configured bound.
    #[error("{what} at {at}: more than {limit} elements")]
    TooMany {
        /// Which field.
        what: Field,
        /// Where the limit was hit.
        at: PhysAddr,
        /// The bound.
        limit: u64,
    },
    /// Memory that the handover points to is not readable.
    #[error("{what}: cannot read {len} bytes at {at}: not in memory")]
    Unreadable {
        /// Which field pointed there.
        what: Field,
        /// First byte.
        at: PhysAddr,
        /// Bytes.
        len: u64,
    },

    // ---- FDT ----------------------------------------------------------------------------------
    /// A malformed FDT.
    #[error("{what} at {at}: malformed FDT: {reason}")]
    BadFdt {
        /// Which FDT.
        what: Field,
        /// Its address.
        at: PhysAddr,
        /// What the parser said.
        reason: String,
    },
    /// The root compatible string is not one this crate speaks.
    #[error("handover at {at} is {found:?}; supported: {supported}")]
    Incompatible {
        /// Root FDT address.
        at: PhysAddr,
        /// Compatible string found.
        found: String,
        /// The versions this crate supports.
        supported: &'static str,
    },
    /// A required property is missing.
    #[error("node {node:?} of the FDT at {at}: missing property {prop:?}")]
    MissingProperty {
        /// FDT address.
        at: PhysAddr,
        /// Node path.
        node: String,
        /// Property name.
        prop: &'static str,
    },
    /// A property has the wrong length.
    #[error("node {node:?} of the FDT at {at}: property {prop:?} is {len} bytes, expected {expected}")]
    PropertyLength {
        /// FDT address.
        at: PhysAddr,
        /// Node path.
        node: String,
        /// Property name.
        prop: &'static str,
        /// Length found.
        len: usize,
        /// Length expected.
        expected: usize,
    },

    /// A sub-blob that is not inside preserved memory: the next kernel would read memory
    /// nobody promised to keep.
    #[error("sub-blob {name:?} at {range} is not inside preserved memory")]
    BlobNotPreserved {
        /// Sub-node name.
        name: String,
        /// The blob's bytes.
        range: PhysRange,
    },

    // ---- restore ------------------------------------------------------------------------------
    /// The address is not a page this kernel manages.
    #[error("restore of {phys}: not a valid page of RAM")]
    InvalidPage {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// Nothing was preserved at this address.
    #[error("restore of {phys}: never preserved")]
    NeverPreserved {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// Already restored once.
    #[error("restore of {block}: already restored")]
    AlreadyRestored {
        /// The block.
        block: Block,
    },
    /// Preserved with another shape than the one asked for.
    #[error("restore of {requested}: preserved as {found}")]
    ShapeMismatch {
        /// What the caller asked for.
        requested: PhysRange,
        /// What was preserved there.
        found: Block,
    },
}

impl From<AllocError> for Error {
    fn from(_: AllocError) -> Self {
        Error::OutOfMemory
    }
}

impl Error {
    /// The error for an unreadable structure that `what` pointed to.
    #[must_use]
    pub fn unreadable(what: Field, e: MemError) -> Self {
        Error::Unreadable { what, at: e.phys, len: e.len }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl From<MemError> for Error {
    fn from(e: MemError) -> Self {
        Error::Unreadable { what: Field::MemorySource, at: e.phys, len: e.len }
    }
}
